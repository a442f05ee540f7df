//! Camera trajectories for rendered drone flights over a [`super::world::World`]: a straight
//! pass at constant altitude and heading, and an orbit that keeps a ground point at the
//! image centre. Each frame is a [`Camera`]; render it with
//! [`super::camera::render_perspective`]. Units: metres, seconds, degrees (heading from north,
//! clockwise; pitch below the horizon).

use super::camera::Camera;
use super::{Result, SynthError};
use serde::{Deserialize, Serialize};

/// Shared flight settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlightConfig {
    pub altitude_m: f64,
    pub speed_mps: f64,
    pub fps: f64,
    pub pitch_deg: f64,
    pub hfov_deg: f64,
    pub width: u32,
    pub height: u32,
}

impl Default for FlightConfig {
    fn default() -> Self {
        FlightConfig {
            altitude_m: 120.0,
            speed_mps: 12.0,
            fps: 30.0,
            pitch_deg: 60.0,
            hfov_deg: 70.0,
            width: 1280,
            height: 720,
        }
    }
}

impl FlightConfig {
    fn frames(&self, duration_s: f64) -> Result<usize> {
        if !(self.fps > 0.0 && self.fps <= 240.0) {
            let value = self.fps.to_string();
            return Err(SynthError::InvalidConfig { field: "fps", value, why: "need 0 < fps ≤ 240" });
        }
        if !(0.0..=200.0).contains(&self.speed_mps) {
            let value = self.speed_mps.to_string();
            return Err(SynthError::InvalidConfig { field: "speed_mps", value, why: "need 0 ≤ speed ≤ 200" });
        }
        if !(0.0..=3600.0).contains(&duration_s) {
            let value = duration_s.to_string();
            return Err(SynthError::InvalidConfig { field: "duration_s", value, why: "need 0 ≤ duration ≤ 3600" });
        }
        Ok((duration_s * self.fps).floor() as usize + 1)
    }
}

/// Straight pass from `start` (m) along `heading_deg` for `duration_s`; frame k is at
/// t = k / fps, position start + speed·t·(sin h, cos h).
pub fn straight(start: (f64, f64), heading_deg: f64, duration_s: f64, cfg: &FlightConfig) -> Result<Vec<Camera>> {
    let n = cfg.frames(duration_s)?;
    let (s, c) = heading_deg.to_radians().sin_cos();
    (0..n)
        .map(|k| {
            let d = cfg.speed_mps * k as f64 / cfg.fps;
            let pos = [start.0 + d * s, start.1 + d * c, cfg.altitude_m];
            Camera::new(pos, heading_deg, cfg.pitch_deg, 0.0, cfg.hfov_deg, cfg.width, cfg.height)
        })
        .collect()
}

/// Clockwise orbit around ground point `centre`, camera looking at it (image centre), at the
/// horizontal radius implied by altitude and pitch; angular speed = speed / radius.
pub fn orbit(centre: (f64, f64), start_bearing_deg: f64, duration_s: f64, cfg: &FlightConfig) -> Result<Vec<Camera>> {
    let n = cfg.frames(duration_s)?;
    let radius = cfg.altitude_m / cfg.pitch_deg.to_radians().tan();
    let centre_px = (cfg.width as f64 / 2.0, cfg.height as f64 / 2.0);
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        let t = k as f64 / cfg.fps;
        let bearing = start_bearing_deg + (cfg.speed_mps * t / radius.max(1e-6)).to_degrees();
        // The camera sits at `bearing` from the centre and looks back at it.
        let heading = (bearing + 180.0).rem_euclid(360.0);
        let cam = Camera::looking_at(
            centre,
            centre_px,
            cfg.altitude_m,
            heading,
            cfg.pitch_deg,
            cfg.hfov_deg,
            cfg.width,
            cfg.height,
        )?;
        out.push(cam.ok_or(SynthError::InvalidCamera { field: "pitch_deg", value: cfg.pitch_deg })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn straight_pass_spacing_and_heading() {
        let cfg = FlightConfig { fps: 10.0, speed_mps: 15.0, ..Default::default() };
        let cams = straight((100.0, 200.0), 90.0, 2.0, &cfg).unwrap();
        assert_eq!(cams.len(), 21);
        // Heading 90° = east: 1.5 m per frame along +x.
        assert!((cams[20].x - 130.0).abs() < 1e-9 && (cams[20].y - 200.0).abs() < 1e-9);
        assert!((cams[1].x - cams[0].x - 1.5).abs() < 1e-9);
        assert!(straight((0.0, 0.0), 0.0, 1.0, &FlightConfig { fps: 0.0, ..cfg }).is_err());
    }

    #[test]
    fn orbit_keeps_centre_in_view_at_constant_radius() {
        let cfg = FlightConfig { pitch_deg: 45.0, altitude_m: 100.0, width: 320, height: 240, ..Default::default() };
        let cams = orbit((500.0, 500.0), 0.0, 3.0, &cfg).unwrap();
        for c in &cams {
            let p = c.project([500.0, 500.0, 0.0]).unwrap();
            assert!((p.0 - 160.0).abs() < 1e-6 && (p.1 - 120.0).abs() < 1e-6, "{p:?}");
            assert!(((c.x - 500.0).hypot(c.y - 500.0) - 100.0).abs() < 1e-6);
        }
        // First frame: bearing 0 → camera due north of the centre, looking south.
        assert!((cams[0].y - 600.0).abs() < 1e-6 && (cams[0].heading_deg - 180.0).abs() < 1e-9);
    }
}
