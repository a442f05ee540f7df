//! Perspective pinhole camera over the flat world and the drone-view renderer.
//!
//! World frame: x east, y north, z up (metres), ground plane z = 0. Orientation:
//! heading ψ (degrees from north, clockwise), pitch θ (degrees below the horizon, 90 = nadir;
//! at nadir the heading direction points to the top of the image), roll φ about the optical
//! axis (positive = right side of the image down). Intrinsics: square pixels, principal point
//! at the image centre, focal length f = (W/2) / tan(hfov/2) pixels. Pixel (px, py) is a
//! continuous coordinate with pixel i covering [i, i+1]; py grows downwards.
//!
//! The perspective renderer uses a **flat-world approximation**: every ray is intersected
//! with z = 0 and coloured from a high-resolution ortho tile of the footprint rendered with
//! the drone appearance, so building heights do not displace roofs (no parallax/occlusion);
//! shadows are still drawn. Rays above the horizon or beyond `8 × altitude` fade into haze.

use super::raster::Canvas;
use super::render::{finish, render_canvas, Appearance};
use super::world::World;
use super::{Result, SynthError};
use image::RgbImage;
use serde::{Deserialize, Serialize};

type V3 = [f64; 3];

fn dot(a: V3, b: V3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Pinhole camera pose + intrinsics; see the module docs for conventions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Camera {
    /// Position (m): east, north, height above ground.
    pub x: f64,
    pub y: f64,
    pub z: f64,
    pub heading_deg: f64,
    pub pitch_deg: f64,
    pub roll_deg: f64,
    pub hfov_deg: f64,
    pub width: u32,
    pub height: u32,
}

impl Camera {
    /// Validated constructor: z > 0, 0 < pitch ≤ 90, 1 ≤ hfov ≤ 170, non-empty image.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pos: V3,
        heading_deg: f64,
        pitch_deg: f64,
        roll_deg: f64,
        hfov_deg: f64,
        width: u32,
        height: u32,
    ) -> Result<Self> {
        let bad = |field: &'static str, value: f64| Err(SynthError::InvalidCamera { field, value });
        if pos[2].is_nan() || pos[2] <= 0.0 {
            return bad("z", pos[2]);
        }
        if !(pitch_deg > 0.0 && pitch_deg <= 90.0) {
            return bad("pitch_deg", pitch_deg);
        }
        if !(1.0..=170.0).contains(&hfov_deg) {
            return bad("hfov_deg", hfov_deg);
        }
        if width == 0 || height == 0 {
            return bad("width/height", width.min(height) as f64);
        }
        let c = Camera { x: pos[0], y: pos[1], z: pos[2], heading_deg, pitch_deg, roll_deg, hfov_deg, width, height };
        Ok(c)
    }

    /// Focal length in pixels.
    pub fn focal_px(&self) -> f64 {
        self.width as f64 / 2.0 / (self.hfov_deg.to_radians() / 2.0).tan()
    }

    /// Orthonormal (forward, right, up) camera axes in world coordinates.
    pub fn basis(&self) -> (V3, V3, V3) {
        let (h, p, r) = (self.heading_deg.to_radians(), self.pitch_deg.to_radians(), self.roll_deg.to_radians());
        let fh = [h.sin(), h.cos(), 0.0];
        let fwd = [p.cos() * fh[0], p.cos() * fh[1], -p.sin()];
        let right = [h.cos(), -h.sin(), 0.0];
        let up = [p.sin() * fh[0], p.sin() * fh[1], p.cos()];
        let r2 = std::array::from_fn(|k| r.cos() * right[k] - r.sin() * up[k]);
        let u2 = std::array::from_fn(|k| r.sin() * right[k] + r.cos() * up[k]);
        (fwd, r2, u2)
    }

    /// Unnormalised world-space ray direction through image point (px, py).
    pub fn ray(&self, px: f64, py: f64) -> V3 {
        let (f, r, u) = self.basis();
        let (a, b, fl) = (px - self.width as f64 / 2.0, py - self.height as f64 / 2.0, self.focal_px());
        std::array::from_fn(|k| fl * f[k] + a * r[k] - b * u[k])
    }

    /// Image point of a world point; `None` when it is not in front of the camera. The point
    /// may fall outside the image (check with [`Camera::in_image`]).
    pub fn project(&self, p: V3) -> Option<(f64, f64)> {
        let (f, r, u) = self.basis();
        let d = [p[0] - self.x, p[1] - self.y, p[2] - self.z];
        let zc = dot(d, f);
        if zc <= 1e-9 {
            return None;
        }
        let fl = self.focal_px();
        Some((self.width as f64 / 2.0 + fl * dot(d, r) / zc, self.height as f64 / 2.0 - fl * dot(d, u) / zc))
    }

    /// Ground point (z = 0) seen at image point (px, py); `None` for rays that do not descend.
    pub fn unproject_ground(&self, px: f64, py: f64) -> Option<(f64, f64)> {
        let d = self.ray(px, py);
        if d[2] >= -1e-12 {
            return None;
        }
        let t = self.z / -d[2];
        Some((self.x + t * d[0], self.y + t * d[1]))
    }

    /// Ground corners seen at the image corners (0,0), (W,0), (W,H), (0,H); `None` when a
    /// corner ray does not reach the ground.
    pub fn footprint(&self) -> Option<[(f64, f64); 4]> {
        let (w, h) = (self.width as f64, self.height as f64);
        Some([
            self.unproject_ground(0.0, 0.0)?,
            self.unproject_ground(w, 0.0)?,
            self.unproject_ground(w, h)?,
            self.unproject_ground(0.0, h)?,
        ])
    }

    /// True when (px, py) lies inside the image with `margin` pixels to spare.
    pub fn in_image(&self, p: (f64, f64), margin: f64) -> bool {
        p.0 >= margin && p.1 >= margin && p.0 <= self.width as f64 - margin && p.1 <= self.height as f64 - margin
    }

    /// Place a camera with the given attitude at height `altitude_m` so that ground point
    /// `target` appears at image point `pixel`. `None` when that pixel's ray does not descend
    /// steeply enough (less than ~3° below the horizon).
    #[allow(clippy::too_many_arguments)]
    pub fn looking_at(
        target: (f64, f64),
        pixel: (f64, f64),
        altitude_m: f64,
        heading_deg: f64,
        pitch_deg: f64,
        hfov_deg: f64,
        width: u32,
        height: u32,
    ) -> Result<Option<Camera>> {
        let probe = Camera::new([0.0, 0.0, altitude_m], heading_deg, pitch_deg, 0.0, hfov_deg, width, height)?;
        let d = probe.ray(pixel.0, pixel.1);
        let n = dot(d, d).sqrt();
        if d[2] / n > -0.05 {
            return Ok(None);
        }
        let t = altitude_m / -d[2];
        Ok(Some(Camera { x: target.0 - t * d[0], y: target.1 - t * d[1], ..probe }))
    }
}

/// Render the drone view by inverse mapping (flat world, see module docs), 2×2 rays per
/// output pixel, with distance haze, then the appearance's finishing.
pub fn render_perspective(world: &World, app: &Appearance, cam: &Camera) -> RgbImage {
    let tile = ground_canvas(world, app, std::slice::from_ref(cam), 2048);
    render_perspective_on(tile.as_ref(), app, cam)
}

/// [`render_perspective`] from a prepared ground canvas ([`ground_canvas`] of a camera set
/// that includes `cam`), so that consecutive frames of a flight can share one canvas.
/// `None` renders sky only.
pub fn render_perspective_on(tile: Option<&Canvas>, app: &Appearance, cam: &Camera) -> RgbImage {
    let max_range = 8.0 * cam.z;
    let (w, h) = (cam.width as usize, cam.height as usize);
    let mut out = Canvas::new(w, h, 0.0, 0.0, 1.0);
    let sky = [196.0f32, 204.0, 214.0];
    // `Camera::unproject_ground` with the basis computed once (same arithmetic).
    let (f, r, u) = cam.basis();
    let fl = cam.focal_px();
    let (cx, cy) = (cam.width as f64 / 2.0, cam.height as f64 / 2.0);
    let ground = |px: f64, py: f64| -> Option<(f64, f64)> {
        let (a, b) = (px - cx, py - cy);
        let d: V3 = std::array::from_fn(|k| fl * f[k] + a * r[k] - b * u[k]);
        if d[2] >= -1e-12 {
            return None;
        }
        let t = cam.z / -d[2];
        Some((cam.x + t * d[0], cam.y + t * d[1]))
    };
    for j in 0..h {
        for i in 0..w {
            let mut acc = [0.0f32; 3];
            for (di, dj) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                let c = match (ground(i as f64 + di, j as f64 + dj), tile) {
                    (Some(g), Some(t)) => {
                        let dist = (g.0 - cam.x).hypot(g.1 - cam.y);
                        let fade = ((dist / max_range).min(1.0) as f32).powi(2);
                        let c = t.bilinear((g.0 - t.x0) / t.step, (t.y0 - g.1) / t.step);
                        std::array::from_fn(|k| c[k] * (1.0 - fade) + sky[k] * fade)
                    }
                    _ => sky,
                };
                acc = std::array::from_fn(|k| acc[k] + 0.25 * c[k]);
            }
            out.data[j * w + i] = acc;
        }
    }
    finish(out, app)
}

/// Ortho canvas (float, unfinished) covering the ground every camera of `cams` sees out to
/// its haze range (8 × its height), at about the finest ground sampling of their image
/// centres, at most `max_side` px a side (coarser beyond). `None` when no camera sees ground.
pub fn ground_canvas(world: &World, app: &Appearance, cams: &[Camera], max_side: usize) -> Option<Canvas> {
    let mut pts = Vec::new();
    let mut finest = f64::INFINITY;
    let n = 16;
    for cam in cams {
        let max_range = 8.0 * cam.z;
        for a in 0..=n {
            for b in 0..=n {
                let (px, py) = (a as f64 / n as f64 * cam.width as f64, b as f64 / n as f64 * cam.height as f64);
                if let Some(g) = cam.unproject_ground(px, py) {
                    let (dx, dy) = (g.0 - cam.x, g.1 - cam.y);
                    let d = dx.hypot(dy);
                    let s = if d > max_range { max_range / d } else { 1.0 };
                    pts.push((cam.x + dx * s, cam.y + dy * s));
                }
            }
        }
        // Ground size of one pixel at the image centre (distance / focal length).
        if let Some(centre) = cam.unproject_ground(cam.width as f64 / 2.0, cam.height as f64 / 2.0) {
            let range = ((centre.0 - cam.x).powi(2) + (centre.1 - cam.y).powi(2) + cam.z * cam.z).sqrt();
            finest = finest.min(range / cam.focal_px() / 2.0);
        }
    }
    if !finest.is_finite() {
        return None;
    }
    let b = super::geom::bbox_of(pts.iter())?;
    let extent = (b[2] - b[0]).max(b[3] - b[1]).max(1.0);
    let step = finest.max(extent / max_side.max(16) as f64).max(0.05);
    let (w, h) = (((b[2] - b[0]) / step).ceil() as usize + 2, ((b[3] - b[1]) / step).ceil() as usize + 2);
    Some(render_canvas(world, app, b[0] - step, b[3] + step, step, w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cam(h: f64, p: f64, r: f64) -> Camera {
        Camera::new([120.0, -40.0, 150.0], h, p, r, 65.0, 256, 192).unwrap()
    }

    #[test]
    fn project_unproject_round_trip() {
        for (h, p, r) in [(0.0, 90.0, 0.0), (37.0, 60.0, 3.0), (250.0, 45.0, -8.0), (123.0, 75.0, 0.0)] {
            let c = cam(h, p, r);
            for (px, py) in [(10.0, 10.0), (128.0, 96.0), (250.0, 180.0), (3.5, 170.25)] {
                let g = c.unproject_ground(px, py).unwrap();
                let back = c.project([g.0, g.1, 0.0]).unwrap();
                assert!((back.0 - px).abs() < 1e-7 && (back.1 - py).abs() < 1e-7, "{back:?} vs {px},{py}");
                // And ground → pixel → ground in metres.
                let g2 = c.unproject_ground(back.0, back.1).unwrap();
                assert!((g2.0 - g.0).abs() < 1e-6 && (g2.1 - g.1).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn nadir_footprint_matches_fov_geometry() {
        // 100 m up, hfov 60°, 400×300 px: half-width = 100·tan 30° = 57.735 m,
        // half-height = 57.735·300/400 = 43.301 m. Heading 0: image top = north.
        let c = Camera::new([10.0, 20.0, 100.0], 0.0, 90.0, 0.0, 60.0, 400, 300).unwrap();
        let hw = 100.0 * 30f64.to_radians().tan();
        let hh = hw * 0.75;
        let want = [(10.0 - hw, 20.0 + hh), (10.0 + hw, 20.0 + hh), (10.0 + hw, 20.0 - hh), (10.0 - hw, 20.0 - hh)];
        let got = c.footprint().unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g.0 - w.0).abs() < 1e-9 && (g.1 - w.1).abs() < 1e-9, "{g:?} vs {w:?}");
        }
        // Heading 90° (east up): the top-left corner moves to the north-east.
        let e = Camera { heading_deg: 90.0, ..c };
        let tl = e.footprint().unwrap()[0];
        assert!((tl.0 - (10.0 + hh)).abs() < 1e-9 && (tl.1 - (20.0 + hw)).abs() < 1e-9, "{tl:?}");
    }

    #[test]
    fn oblique_view_sees_ahead_and_horizon_is_none() {
        let c = cam(0.0, 30.0, 0.0);
        // Image centre looks north, 150 / tan 30° m ahead.
        let g = c.unproject_ground(128.0, 96.0).unwrap();
        assert!((g.0 - 120.0).abs() < 1e-9 && (g.1 - (-40.0 + 150.0 / 30f64.to_radians().tan())).abs() < 1e-6);
        assert!(c.unproject_ground(128.0, -1000.0).is_none());
        assert!(c.project([120.0, -200.0, 150.0]).is_none(), "behind the camera");
    }

    #[test]
    fn looking_at_puts_target_on_requested_pixel() {
        let c = Camera::looking_at((500.0, 400.0), (60.0, 200.0), 120.0, 211.0, 55.0, 70.0, 256, 256).unwrap().unwrap();
        let p = c.project([500.0, 400.0, 0.0]).unwrap();
        assert!((p.0 - 60.0).abs() < 1e-7 && (p.1 - 200.0).abs() < 1e-7);
        assert!(Camera::new([0.0, 0.0, -1.0], 0.0, 90.0, 0.0, 60.0, 10, 10).is_err());
    }
}
