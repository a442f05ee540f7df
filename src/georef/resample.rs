//! In-process reprojection of a chip (nearest or bilinear), the fast path behind
//! `ChipGrid::LocalUtm` on mosaics in another CRS.
//!
//! Like GDAL's approximate transformer, exact CRS transforms are computed on a control
//! grid every [`STEP`] chip pixels and interpolated bilinearly in between (for a few
//! hundred metres of chip the interpolation error is far below 1e-3 px). The source
//! window under the chip is read once with `RasterIO` — downsampled by an integer factor
//! when the chip is coarser than the mosaic, so GDAL serves it from an overview — and
//! each chip pixel centre then samples that buffer. A chip pixel counts as covered when
//! its centre falls inside the mosaic and inside a source footprint.

use gdal::spatial_ref::CoordTransform;

use super::chip::ChipRequest;
use super::error::{GeorefError, Result};
use super::gdalutil::{read_rgb, ReadWindow, Resampling};
use super::mosaic::MosaicReader;
use super::transform::spatial_ref;
use super::types::{Chip, Crs, GeoTransform};

/// Control-grid spacing in chip pixels.
pub const STEP: usize = 16;

/// Chip pixel centre → mosaic pixel coordinates, for every chip pixel (row-major).
struct SourceMap {
    w: usize,
    gx: usize,
    grid: Vec<(f64, f64)>,
}

impl SourceMap {
    fn new(
        chip_gt: &GeoTransform,
        w: usize,
        h: usize,
        from: &Crs,
        to: &Crs,
        mosaic_inv: &GeoTransform,
    ) -> Result<Self> {
        let (gx, gy) = (w.div_ceil(STEP) + 1, h.div_ceil(STEP) + 1);
        let mut xs = Vec::with_capacity(gx * gy);
        let mut ys = Vec::with_capacity(gx * gy);
        for j in 0..gy {
            for i in 0..gx {
                let (x, y) = chip_gt.apply((i * STEP) as f64, (j * STEP) as f64);
                xs.push(x);
                ys.push(y);
            }
        }
        let ct = CoordTransform::new(&spatial_ref(from)?, &spatial_ref(to)?);
        let err = |msg: String| GeorefError::Transform { from: from.label(), to: to.label(), msg };
        let ct = ct.map_err(|e| err(e.to_string()))?;
        ct.transform_coords(&mut xs, &mut ys, &mut []).map_err(|e| err(e.to_string()))?;
        if xs.iter().chain(&ys).any(|v| !v.is_finite()) {
            return Err(err("chip grid outside the mosaic CRS's domain".into()));
        }
        let grid = xs.into_iter().zip(ys).map(|(x, y)| mosaic_inv.apply(x, y)).collect();
        Ok(SourceMap { w, gx, grid })
    }

    /// Mosaic pixel coordinates of chip point (col, row) (fractional, corner convention).
    fn at(&self, col: f64, row: f64) -> (f64, f64) {
        let (fi, fj) = (col / STEP as f64, row / STEP as f64);
        let (i, j) = ((fi.floor() as usize).min(self.gx - 2), fj.floor() as usize);
        let (tx, ty) = (fi - i as f64, fj - j as f64);
        let p = |a: usize, b: usize| self.grid[b * self.gx + a];
        let (a, b, c, d) = (p(i, j), p(i + 1, j), p(i, j + 1), p(i + 1, j + 1));
        let lerp = |u: f64, v: f64, t: f64| u + (v - u) * t;
        (lerp(lerp(a.0, b.0, tx), lerp(c.0, d.0, tx), ty), lerp(lerp(a.1, b.1, tx), lerp(c.1, d.1, tx), ty))
    }

    /// Bounding box of all grid points: [xmin, ymin, xmax, ymax] in mosaic pixels.
    fn bounds(&self) -> [f64; 4] {
        self.grid.iter().fold([f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY], |b, &(x, y)| {
            [b[0].min(x), b[1].min(y), b[2].max(x), b[3].max(y)]
        })
    }

    /// Mosaic pixels per chip pixel (largest of the two axes, at the chip centre).
    fn scale(&self, h: usize) -> f64 {
        let (cx, cy) = ((self.w / 2) as f64, (h / 2) as f64);
        let o = self.at(cx, cy);
        let (a, b) = (self.at(cx + 1.0, cy), self.at(cx, cy + 1.0));
        let d = |p: (f64, f64)| ((p.0 - o.0).powi(2) + (p.1 - o.1).powi(2)).sqrt();
        d(a).max(d(b))
    }
}

/// The source window read into memory: origin and decimation in mosaic pixels.
struct SourceBuf {
    x0: f64,
    y0: f64,
    /// Buffer pixels per mosaic pixel along x (1 / decimation).
    inv_k: f64,
    /// Buffer pixels per mosaic pixel along y.
    inv_ky: f64,
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl SourceBuf {
    fn nearest(&self, sx: f64, sy: f64) -> [u8; 3] {
        // `as usize` truncates, which is floor for the non-negative values left by max(0):
        // cheaper than f64::floor, a libm call on baseline x86-64.
        let c = (((sx - self.x0) * self.inv_k).max(0.0) as usize).min(self.w - 1);
        let r = (((sy - self.y0) * self.inv_ky).max(0.0) as usize).min(self.h - 1);
        let i = (r * self.w + c) * 3;
        [self.px[i], self.px[i + 1], self.px[i + 2]]
    }

    fn bilinear(&self, sx: f64, sy: f64) -> [u8; 3] {
        let fx = ((sx - self.x0) * self.inv_k - 0.5).clamp(0.0, (self.w - 1) as f64);
        let fy = ((sy - self.y0) * self.inv_ky - 0.5).clamp(0.0, (self.h - 1) as f64);
        let (c, r) = ((fx as usize).min(self.w.saturating_sub(2)), (fy as usize).min(self.h.saturating_sub(2)));
        let (tx, ty) = (fx - c as f64, fy - r as f64);
        let c1 = (c + 1).min(self.w - 1);
        let r1 = (r + 1).min(self.h - 1);
        let g = |cc: usize, rr: usize, b: usize| self.px[(rr * self.w + cc) * 3 + b] as f64;
        let mut out = [0u8; 3];
        for (b, o) in out.iter_mut().enumerate() {
            let top = g(c, r, b) * (1.0 - tx) + g(c1, r, b) * tx;
            let bot = g(c, r1, b) * (1.0 - tx) + g(c1, r1, b) * tx;
            *o = (top * (1.0 - ty) + bot * ty).round().clamp(0.0, 255.0) as u8;
        }
        out
    }
}

/// Fill `out` (HWC, `size` = chip width, height) from `src`; returns the covered count.
fn sample(
    map: &SourceMap,
    src: &SourceBuf,
    rects: &[[f64; 4]],
    bilinear: bool,
    size: (usize, usize),
    out: &mut [u8],
) -> usize {
    let (w, h) = size;
    let mut covered = 0usize;
    let mut row_pts = vec![(0.0, 0.0); map.gx];
    let mut near: Vec<[f64; 4]> = Vec::with_capacity(rects.len());
    for r in 0..h {
        // Exact control columns of this row; linear in between along x.
        for (i, p) in row_pts.iter_mut().enumerate() {
            *p = map.at((i * STEP) as f64, r as f64 + 0.5);
        }
        // Footprints this row can touch; none to test when one holds the whole row.
        let rb = row_pts.iter().fold([f64::MAX, f64::MAX, f64::MIN, f64::MIN], |b, &(x, y)| {
            [b[0].min(x), b[1].min(y), b[2].max(x), b[3].max(y)]
        });
        near.clear();
        near.extend(rects.iter().filter(|b| rb[0] < b[2] && rb[2] >= b[0] && rb[1] < b[3] && rb[3] >= b[1]));
        let whole = near.iter().any(|b| rb[0] >= b[0] && rb[2] < b[2] && rb[1] >= b[1] && rb[3] < b[3]);
        for c in 0..w {
            let (i, t) = (c / STEP, ((c % STEP) as f64 + 0.5) / STEP as f64);
            let (a, b) = (row_pts[i], row_pts[i + 1]);
            let (sx, sy) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
            if !whole && !near.iter().any(|b| sx >= b[0] && sx < b[2] && sy >= b[1] && sy < b[3]) {
                continue;
            }
            let v = if bilinear { src.bilinear(sx, sy) } else { src.nearest(sx, sy) };
            let o = (r * w + c) * 3;
            out[o..o + 3].copy_from_slice(&v);
            covered += 1;
        }
    }
    covered
}

impl MosaicReader {
    /// Reproject a chip on grid `gt` (in `crs`) with nearest or bilinear sampling.
    pub(crate) fn chip_resample(&self, req: &ChipRequest, crs: Crs, gt: GeoTransform, gsd_m: f64) -> Result<Chip> {
        let (w, h) = (req.width, req.height);
        let map = SourceMap::new(&gt, w, h, &crs, &self.crs, &self.gt.invert()?)?;
        let fill = match req.coverage {
            super::chip::CoveragePolicy::Fill { value, .. } => value,
            super::chip::CoveragePolicy::Refuse => 0,
        };
        let mut pixels = vec![fill; w * h * 3];
        let mut covered = 0usize;
        if let Some(src) = self.read_source(&map, h)? {
            let rects = self.footprint_pixel_rects();
            let bilinear = req.resampling == Resampling::Bilinear;
            covered = sample(&map, &src, &rects, bilinear, (w, h), &mut pixels);
        }
        Ok(Chip {
            pixels,
            width: w,
            height: h,
            geotransform: gt,
            crs,
            coverage: covered as f64 / (w * h) as f64,
            fill,
            gsd_m,
            sources: self.files.clone(),
        })
    }

    /// Read the mosaic window under the chip (None when it misses the mosaic).
    fn read_source(&self, map: &SourceMap, h: usize) -> Result<Option<SourceBuf>> {
        let b = map.bounds();
        let (mw, mh) = (self.size.0 as f64, self.size.1 as f64);
        let x0 = (b[0].floor() - 1.0).clamp(0.0, mw);
        let y0 = (b[1].floor() - 1.0).clamp(0.0, mh);
        let x1 = (b[2].ceil() + 1.0).clamp(0.0, mw);
        let y1 = (b[3].ceil() + 1.0).clamp(0.0, mh);
        if x1 <= x0 || y1 <= y0 {
            return Ok(None);
        }
        let k = map.scale(h).floor().max(1.0);
        let (bw, bh) = ((((x1 - x0) / k).ceil()) as usize, (((y1 - y0) / k).ceil()) as usize);
        let mut px = vec![0u8; bw * bh * 3];
        let win = ReadWindow { src: [x0, y0, x1 - x0, y1 - y0], dst: [0, 0, bw, bh] };
        let alg = if k > 1.0 { Resampling::Average } else { Resampling::Nearest };
        read_rgb(&self.ds, self.bands, &win, &mut px, bw, alg)?;
        // The buffer's pixel size is (x1-x0)/bw, within rounding of k.
        let (inv_k, inv_ky) = (bw as f64 / (x1 - x0), bh as f64 / (y1 - y0));
        Ok(Some(SourceBuf { x0, y0, inv_k, inv_ky, w: bw, h: bh, px }))
    }

    /// Source footprints as mosaic pixel rectangles [xmin, ymin, xmax, ymax].
    fn footprint_pixel_rects(&self) -> Vec<[f64; 4]> {
        let inv = match self.gt.invert() {
            Ok(i) => i,
            Err(_) => return Vec::new(),
        };
        self.footprints
            .iter()
            .map(|f| {
                let (a, b) = (inv.apply(f.bounds[0], f.bounds[1]), inv.apply(f.bounds[2], f.bounds[3]));
                [a.0.min(b.0), a.1.min(b.1), a.0.max(b.0), a.1.max(b.1)]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::georef::chip::{ChipGrid, CoveragePolicy};
    use crate::georef::mosaic::MosaicSpec;
    use crate::georef::testutil::{write_grid, GT_3857};
    use crate::georef::transform::CrsTransform;
    use crate::georef::types::LonLat;

    fn setup() -> (tempfile::TempDir, MosaicReader) {
        let dir = tempfile::tempdir().unwrap();
        write_grid(dir.path(), 3857, GT_3857, (400, 400), (2, 2));
        let r = MosaicSpec::from_path(dir.path()).open().unwrap();
        (dir, r)
    }

    fn lonlat(r: &MosaicReader, gx: f64, gy: f64) -> LonLat {
        let (x, y) = r.geotransform().apply(gx, gy);
        CrsTransform::new(r.crs()).unwrap().to_lonlat(&[(x, y)]).unwrap()[0]
    }

    /// In-process nearest agrees with GDAL's own warper (same grid) on nearly every pixel;
    /// disagreements can only come from centres within float noise of a source pixel edge.
    #[test]
    fn nearest_matches_gdalwarp() {
        let (_d, r) = setup();
        let mut req = ChipRequest::new(lonlat(&r, 200.0, 200.0));
        (req.width, req.height, req.gsd_m, req.grid) = (96, 80, Some(0.37), ChipGrid::LocalUtm);
        let ours = r.chip(&req).unwrap();
        let crs = ours.crs.clone();
        let args: Vec<String> = {
            let g = ours.geotransform.0;
            let (x1, y0) = (g[0] + g[1] * 96.0, g[3] + g[5] * 80.0);
            let v = ["-of", "MEM", "-t_srs", "EPSG:32632", "-r", "near", "-q"];
            let mut a: Vec<String> = v.iter().map(|s| s.to_string()).collect();
            a.extend(["-te", &g[0].to_string(), &y0.to_string(), &x1.to_string(), &g[3].to_string()].map(String::from));
            a.extend(["-ts", "96", "80"].map(String::from));
            a
        };
        let theirs = crate::georef::gdalutil::warp(&[&r.ds], "", &args).unwrap();
        let mut buf = vec![0u8; 96 * 80 * 3];
        let win = ReadWindow { src: [0.0, 0.0, 96.0, 80.0], dst: [0, 0, 96, 80] };
        read_rgb(&theirs, [1, 2, 3], &win, &mut buf, 96, Resampling::Nearest).unwrap();
        let same = ours.pixels.chunks(3).zip(buf.chunks(3)).filter(|(a, b)| a == b).count();
        assert!(same as f64 >= 0.99 * (96.0 * 80.0), "{same} of {}", 96 * 80);
        assert_eq!(crs.epsg, Some(32632));
    }

    #[test]
    fn partial_coverage_and_cubic_warp_path() {
        let (_d, r) = setup();
        // Centred on the mosaic's west edge: about half the chip is covered.
        let mut req = ChipRequest::new(lonlat(&r, 0.0, 200.0));
        (req.width, req.height, req.gsd_m, req.grid) = (64, 64, Some(0.4), ChipGrid::LocalUtm);
        req.coverage = CoveragePolicy::Fill { value: 9, min_coverage: 0.0 };
        let a = r.chip(&req).unwrap();
        assert!((a.coverage - 0.5).abs() < 0.05, "{}", a.coverage);
        assert_eq!(a.rgb(0, 32), Some([9, 9, 9]));
        req.resampling = Resampling::Cubic;
        let b = r.chip(&req).unwrap();
        assert!((b.coverage - a.coverage).abs() < 0.05, "{} vs {}", b.coverage, a.coverage);
        assert_eq!(b.geotransform.0[0], a.geotransform.0[0]);
        req.resampling = Resampling::Bilinear;
        let c = r.chip(&req).unwrap();
        assert_eq!(c.coverage, a.coverage);
    }
}
