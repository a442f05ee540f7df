//! Low-level raster helpers: a float RGB canvas mapped onto a north-up metric window,
//! even-odd scanline polygon fill (pixel-centre sampling), hash/value noise, box
//! downsampling and separable Gaussian blur.
//!
//! Canvas pixel (i, j) covers world x in [x0 + i·step, x0 + (i+1)·step] and world y in
//! [y0 − (j+1)·step, y0 − j·step]: (x0, y0) is the north-west corner, rows go south.

use super::geom::P2;

/// Float RGB image (0–255 scale), row-major.
#[derive(Clone, Debug)]
pub struct Canvas {
    pub w: usize,
    pub h: usize,
    /// World x (m) of the west edge.
    pub x0: f64,
    /// World y (m) of the north edge.
    pub y0: f64,
    /// Metres per pixel.
    pub step: f64,
    pub data: Vec<[f32; 3]>,
}

impl Canvas {
    pub fn new(w: usize, h: usize, x0: f64, y0: f64, step: f64) -> Self {
        Canvas { w, h, x0, y0, step, data: vec![[0.0; 3]; w * h] }
    }

    /// World coordinates of the centre of pixel (i, j).
    #[inline]
    pub fn world(&self, i: usize, j: usize) -> P2 {
        (self.x0 + (i as f64 + 0.5) * self.step, self.y0 - (j as f64 + 0.5) * self.step)
    }

    /// Call `f(i, j)` for every pixel whose centre lies inside the even-odd polygon `rings`
    /// (world metres). Scanline: per row, edge crossings are sorted and spans filled.
    pub fn scan(&self, rings: &[Vec<P2>], mut f: impl FnMut(usize, usize)) {
        let inv = 1.0 / self.step;
        let mut edges: Vec<(f64, f64, f64, f64)> = Vec::new();
        for r in rings {
            let n = r.len();
            for k in 0..n {
                let (a, b) = (r[k], r[(k + 1) % n]);
                let (ua, va) = ((a.0 - self.x0) * inv, (self.y0 - a.1) * inv);
                let (ub, vb) = ((b.0 - self.x0) * inv, (self.y0 - b.1) * inv);
                if va != vb {
                    edges.push((ua, va, ub, vb));
                }
            }
        }
        let vmin = edges.iter().map(|e| e.1.min(e.3)).fold(f64::INFINITY, f64::min);
        let vmax = edges.iter().map(|e| e.1.max(e.3)).fold(f64::NEG_INFINITY, f64::max);
        if edges.is_empty() || vmax < 0.0 || vmin > self.h as f64 {
            return;
        }
        let j0 = (vmin - 0.5).ceil().max(0.0) as usize;
        let j1 = ((vmax - 0.5).floor() as i64).min(self.h as i64 - 1);
        let mut xs: Vec<f64> = Vec::with_capacity(16);
        if j1 < j0 as i64 {
            return;
        }
        for j in j0..=(j1 as usize) {
            let yc = j as f64 + 0.5;
            xs.clear();
            for &(ua, va, ub, vb) in &edges {
                // Half-open rule so a vertex on the scanline is counted once.
                if (va <= yc) != (vb <= yc) {
                    xs.push(ua + (yc - va) / (vb - va) * (ub - ua));
                }
            }
            xs.sort_by(|a, b| a.total_cmp(b));
            for p in xs.chunks_exact(2) {
                let i0 = (p[0] - 0.5).ceil().max(0.0) as usize;
                let i1 = ((p[1] - 0.5).ceil() as i64).min(self.w as i64);
                for i in i0..i1.max(0) as usize {
                    f(i, j);
                }
            }
        }
    }

    /// Average `k`×`k` blocks (anti-aliasing after supersampling).
    pub fn downsample(&self, k: usize) -> Canvas {
        if k <= 1 {
            return self.clone();
        }
        let (w, h) = (self.w / k, self.h / k);
        let mut out = Canvas::new(w, h, self.x0, self.y0, self.step * k as f64);
        let norm = 1.0 / (k * k) as f32;
        for j in 0..h {
            for i in 0..w {
                let mut s = [0.0f32; 3];
                for dj in 0..k {
                    let row = (j * k + dj) * self.w + i * k;
                    for p in &self.data[row..row + k] {
                        s = [s[0] + p[0], s[1] + p[1], s[2] + p[2]];
                    }
                }
                out.data[j * w + i] = s.map(|v| v * norm);
            }
        }
        out
    }

    /// Separable Gaussian blur with standard deviation `sigma` pixels (no-op below 0.2).
    pub fn blur(&mut self, sigma: f32) {
        if sigma < 0.2 {
            return;
        }
        let r = (2.5 * sigma).ceil() as i64;
        let k: Vec<f32> = (-r..=r).map(|d| (-(d * d) as f32 / (2.0 * sigma * sigma)).exp()).collect();
        let ks: f32 = k.iter().sum();
        let k: Vec<f32> = k.iter().map(|v| v / ks).collect();
        let (w, h) = (self.w as i64, self.h as i64);
        let mut tmp = vec![[0.0f32; 3]; self.data.len()];
        for pass in 0..2 {
            let (src, dst) = if pass == 0 { (&self.data, &mut tmp) } else { (&tmp, &mut self.data) };
            for j in 0..h {
                for i in 0..w {
                    let mut s = [0.0f32; 3];
                    for (t, kv) in k.iter().enumerate() {
                        let d = t as i64 - r;
                        let (ii, jj) =
                            if pass == 0 { ((i + d).clamp(0, w - 1), j) } else { (i, (j + d).clamp(0, h - 1)) };
                        let p = src[(jj * w + ii) as usize];
                        s = [s[0] + kv * p[0], s[1] + kv * p[1], s[2] + kv * p[2]];
                    }
                    dst[(j * w + i) as usize] = s;
                }
            }
        }
    }

    /// Bilinear sample at continuous pixel coordinates (u, v) (pixel centres at +0.5).
    pub fn bilinear(&self, u: f64, v: f64) -> [f32; 3] {
        let (x, y) = ((u - 0.5).clamp(0.0, self.w as f64 - 1.0), (v - 0.5).clamp(0.0, self.h as f64 - 1.0));
        let (i0, j0) = (x.floor() as usize, y.floor() as usize);
        let (i1, j1) = ((i0 + 1).min(self.w - 1), (j0 + 1).min(self.h - 1));
        let (fx, fy) = ((x - i0 as f64) as f32, (y - j0 as f64) as f32);
        let px = |i: usize, j: usize| self.data[j * self.w + i];
        let (a, b, c, d) = (px(i0, j0), px(i1, j0), px(i0, j1), px(i1, j1));
        std::array::from_fn(|k| (a[k] * (1.0 - fx) + b[k] * fx) * (1.0 - fy) + (c[k] * (1.0 - fx) + d[k] * fx) * fy)
    }
}

/// Integer hash → [0, 1).
#[inline]
pub fn hash01(x: i64, y: i64, seed: u32) -> f32 {
    let mut h =
        (x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (y as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ seed as u64;
    h ^= h >> 31;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 29;
    (h >> 40) as f32 / (1u64 << 24) as f32
}

/// Smooth value noise in [0, 1) with unit lattice spacing.
#[inline]
pub fn value_noise(x: f64, y: f64, seed: u32) -> f32 {
    let (xf, yf) = (x.floor(), y.floor());
    let (ix, iy) = (xf as i64, yf as i64);
    let (fx, fy) = ((x - xf) as f32, (y - yf) as f32);
    let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
    let a = hash01(ix, iy, seed) * (1.0 - sx) + hash01(ix + 1, iy, seed) * sx;
    let b = hash01(ix, iy + 1, seed) * (1.0 - sx) + hash01(ix + 1, iy + 1, seed) * sx;
    a * (1.0 - sy) + b * sy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_fills_exact_pixel_count_for_aligned_square() {
        // 10 m × 10 m square at 1 m/px → exactly 100 pixel centres.
        let c = Canvas::new(32, 32, 0.0, 32.0, 1.0);
        let sq = vec![vec![(4.0, 4.0), (14.0, 4.0), (14.0, 14.0), (4.0, 14.0)]];
        let mut n = 0;
        c.scan(&sq, |i, j| {
            n += 1;
            assert!((4..14).contains(&i) && (18..28).contains(&j), "pixel {i},{j}");
        });
        assert_eq!(n, 100);
        // A hole of 4×4 m removes 16 pixels (even-odd).
        let mut holed = sq.clone();
        holed.push(vec![(7.0, 7.0), (11.0, 7.0), (11.0, 11.0), (7.0, 11.0)]);
        let mut m = 0;
        c.scan(&holed, |_, _| m += 1);
        assert_eq!(m, 84);
    }

    #[test]
    fn noise_is_bounded_and_continuous() {
        for k in 0..200 {
            let (x, y) = (k as f64 * 0.37, k as f64 * 0.11);
            let v = value_noise(x, y, 3);
            assert!((0.0..1.0).contains(&v));
            assert!((value_noise(x + 1e-4, y, 3) - v).abs() < 1e-2);
        }
    }
}
