//! Frame ↔ ground geometry from KLV telemetry, for choosing the satellite chip and for
//! keeping a tracked click on its object as the drone moves.
//!
//! - [`FrameGeo`]: a plane homography between video-frame pixels and a local ENU
//!   tangent plane (metres), fitted to the four KLV image corners (MISB ST 0601 corner
//!   points 1–4 = top-left, top-right, bottom-right, bottom-left of the frame). It
//!   assumes locally flat ground, as the corner tags themselves do.
//! - [`chip_centre`]: the KLV frame centre (tags 23/24), else the sensor line of sight
//!   intersected with the ground (sensor position, platform + sensor angles, flat ground
//!   at the frame-centre elevation or 0 m), else a configured position.
//!
//! Units: degrees for lon/lat (lon first in every pair), metres for ENU.

use crate::klv::timeline::TelemetryState;

/// WGS84 semi-major axis and flattening.
const A: f64 = 6_378_137.0;
const F: f64 = 1.0 / 298.257_223_563;

/// Local tangent plane around (lon0, lat0): east/north metres from the meridian and
/// prime-vertical radii of curvature at lat0 (sub-centimetre over a few km).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalEnu {
    pub lon0: f64,
    pub lat0: f64,
    m_per_deg_lon: f64,
    m_per_deg_lat: f64,
}

impl LocalEnu {
    pub fn new(lon0: f64, lat0: f64) -> Self {
        let e2 = F * (2.0 - F);
        let s = lat0.to_radians().sin();
        let w = (1.0 - e2 * s * s).sqrt();
        let n = A / w; // prime vertical
        let m = A * (1.0 - e2) / (w * w * w); // meridian
        LocalEnu {
            lon0,
            lat0,
            m_per_deg_lon: n * lat0.to_radians().cos() * std::f64::consts::PI / 180.0,
            m_per_deg_lat: m * std::f64::consts::PI / 180.0,
        }
    }

    pub fn to_enu(&self, lon: f64, lat: f64) -> (f64, f64) {
        ((lon - self.lon0) * self.m_per_deg_lon, (lat - self.lat0) * self.m_per_deg_lat)
    }

    pub fn to_lonlat(&self, e: f64, n: f64) -> (f64, f64) {
        (self.lon0 + e / self.m_per_deg_lon, self.lat0 + n / self.m_per_deg_lat)
    }
}

/// 3×3 projective transform, row-major, h[8] = 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Homography(pub [f64; 9]);

impl Homography {
    /// The homography mapping the four `src` points onto `dst` (None if degenerate).
    pub fn from_4(src: [(f64, f64); 4], dst: [(f64, f64); 4]) -> Option<Self> {
        // 8 equations in h0..h7 (h8 = 1), solved by Gaussian elimination with pivoting
        let mut m = [[0f64; 9]; 8];
        for i in 0..4 {
            let ((x, y), (u, v)) = (src[i], dst[i]);
            m[2 * i] = [x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y, u];
            m[2 * i + 1] = [0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y, v];
        }
        for c in 0..8 {
            let p = (c..8).max_by(|&a, &b| m[a][c].abs().total_cmp(&m[b][c].abs()))?;
            if m[p][c].abs() < 1e-12 {
                return None;
            }
            m.swap(c, p);
            for r in 0..8 {
                if r != c {
                    let f = m[r][c] / m[c][c];
                    for k in c..9 {
                        m[r][k] -= f * m[c][k];
                    }
                }
            }
        }
        let mut h = [0f64; 9];
        for i in 0..8 {
            h[i] = m[i][8] / m[i][i];
        }
        h[8] = 1.0;
        h.iter().all(|v| v.is_finite()).then_some(Homography(h))
    }

    pub fn apply(&self, x: f64, y: f64) -> Option<(f64, f64)> {
        let h = &self.0;
        let w = h[6] * x + h[7] * y + h[8];
        if w.abs() < 1e-12 {
            return None;
        }
        Some(((h[0] * x + h[1] * y + h[2]) / w, (h[3] * x + h[4] * y + h[5]) / w))
    }

    pub fn inverse(&self) -> Option<Self> {
        let h = &self.0;
        let det = h[0] * (h[4] * h[8] - h[5] * h[7]) - h[1] * (h[3] * h[8] - h[5] * h[6])
            + h[2] * (h[3] * h[7] - h[4] * h[6]);
        if det.abs() < 1e-18 {
            return None;
        }
        let inv = [
            (h[4] * h[8] - h[5] * h[7]) / det,
            (h[2] * h[7] - h[1] * h[8]) / det,
            (h[1] * h[5] - h[2] * h[4]) / det,
            (h[5] * h[6] - h[3] * h[8]) / det,
            (h[0] * h[8] - h[2] * h[6]) / det,
            (h[2] * h[3] - h[0] * h[5]) / det,
            (h[3] * h[7] - h[4] * h[6]) / det,
            (h[1] * h[6] - h[0] * h[7]) / det,
            (h[0] * h[4] - h[1] * h[3]) / det,
        ];
        let s = inv[8];
        (s.abs() > 1e-18).then(|| Homography(inv.map(|v| v / s)))
    }
}

/// Frame pixels ↔ ground for one frame, from the KLV corners.
#[derive(Debug, Clone, Copy)]
pub struct FrameGeo {
    pub enu: LocalEnu,
    px_to_enu: Homography,
    enu_to_px: Homography,
}

impl FrameGeo {
    /// `corners`: (lat, lon) of frame corners 1–4 (top-left, top-right, bottom-right,
    /// bottom-left), as [`TelemetryState::corners`] returns them.
    pub fn from_corners(corners: [(f64, f64); 4], width: f64, height: f64) -> Option<Self> {
        let lat0 = corners.iter().map(|c| c.0).sum::<f64>() / 4.0;
        let lon0 = corners.iter().map(|c| c.1).sum::<f64>() / 4.0;
        let enu = LocalEnu::new(lon0, lat0);
        let ground = corners.map(|(lat, lon)| enu.to_enu(lon, lat));
        let px = [(0.0, 0.0), (width, 0.0), (width, height), (0.0, height)];
        let px_to_enu = Homography::from_4(px, ground)?;
        Some(FrameGeo { enu, px_to_enu, enu_to_px: px_to_enu.inverse()? })
    }

    pub fn from_telemetry(t: &TelemetryState, width: f64, height: f64) -> Option<Self> {
        Self::from_corners(t.corners()?, width, height)
    }

    /// Frame pixel → (lon, lat).
    pub fn pixel_to_lonlat(&self, x: f64, y: f64) -> Option<(f64, f64)> {
        let (e, n) = self.px_to_enu.apply(x, y)?;
        Some(self.enu.to_lonlat(e, n))
    }

    /// (lon, lat) → frame pixel (may lie outside the frame).
    pub fn lonlat_to_pixel(&self, lon: f64, lat: f64) -> Option<(f64, f64)> {
        let (e, n) = self.enu.to_enu(lon, lat);
        self.enu_to_px.apply(e, n)
    }
}

/// Where the chip centre came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CentreSource {
    KlvFrameCentre,
    SensorPose,
    Configured,
}

/// Chip centre (lon, lat) for a frame: KLV frame centre, else the sensor line of sight
/// on flat ground, else `fallback`.
pub fn chip_centre(t: Option<&TelemetryState>, fallback: Option<(f64, f64)>) -> Option<((f64, f64), CentreSource)> {
    if let Some(t) = t {
        if let Some(fc) = t.frame_centre() {
            return Some(((fc.lon_deg, fc.lat_deg), CentreSource::KlvFrameCentre));
        }
        if let Some(p) = sensor_ground_point(t) {
            return Some((p, CentreSource::SensorPose));
        }
    }
    fallback.map(|p| (p, CentreSource::Configured))
}

/// Sensor line of sight to flat ground. Azimuth = platform heading + sensor relative
/// azimuth; depression = −(platform pitch + sensor relative elevation); roll is ignored
/// (it rotates the image about the line of sight, not the line itself, when the sensor
/// compensates). Ground height: 0 m (MSL) — a coarse fallback for the chip only.
pub fn sensor_ground_point(t: &TelemetryState) -> Option<(f64, f64)> {
    let pos = t.sensor_position()?;
    let alt = pos.msl_m.or(pos.hae_m)?;
    let (heading, pitch, _) = t.platform_attitude().unwrap_or((t.f64(5)?, 0.0, 0.0));
    let az = (heading + t.f64(18).unwrap_or(0.0)).to_radians();
    let depression = -(pitch + t.f64(19)?);
    if !(1.0..=90.0).contains(&depression) || alt <= 0.0 {
        return None;
    }
    let dist = alt / depression.to_radians().tan();
    let enu = LocalEnu::new(pos.lon_deg, pos.lat_deg);
    Some(enu.to_lonlat(dist * az.sin(), dist * az.cos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn homography_round_trips_and_maps_corners() {
        let src = [(0.0, 0.0), (640.0, 0.0), (640.0, 360.0), (0.0, 360.0)];
        let dst = [(-50.0, 40.0), (60.0, 45.0), (80.0, -70.0), (-70.0, -60.0)];
        let h = Homography::from_4(src, dst).unwrap();
        for (s, d) in src.iter().zip(&dst) {
            let (u, v) = h.apply(s.0, s.1).unwrap();
            assert!((u - d.0).abs() < 1e-9 && (v - d.1).abs() < 1e-9);
        }
        let inv = h.inverse().unwrap();
        let (u, v) = h.apply(123.0, 77.0).unwrap();
        let (x, y) = inv.apply(u, v).unwrap();
        assert!((x - 123.0).abs() < 1e-7 && (y - 77.0).abs() < 1e-7);
        assert!(Homography::from_4(src, [(0.0, 0.0); 4]).is_none());
    }

    #[test]
    fn enu_scale_matches_known_degree_lengths() {
        // local degree lengths on WGS84 from the standard series
        // 111132.954 − 559.822·cos2φ + 1.175·cos4φ (latitude) and
        // 111412.84·cosφ − 93.5·cos3φ + 0.118·cos5φ (longitude): at 45° these give
        // 111,131.78 m and 78,847.1 m
        let e = LocalEnu::new(10.0, 45.0);
        let (de, _) = e.to_enu(10.001, 45.0);
        let (_, dn) = e.to_enu(10.0, 45.001);
        assert!((de * 1000.0 - 78_847.1).abs() < 0.5, "{de}");
        assert!((dn * 1000.0 - 111_131.78).abs() < 0.5, "{dn}");
    }

    #[test]
    fn frame_geo_maps_centre_and_back() {
        // a north-up nadir frame 200 m × 112.5 m around (11.5, 48.1)
        let enu = LocalEnu::new(11.5, 48.1);
        let c = |e: f64, n: f64| {
            let (lon, lat) = enu.to_lonlat(e, n);
            (lat, lon)
        };
        let corners = [c(-100.0, 56.25), c(100.0, 56.25), c(100.0, -56.25), c(-100.0, -56.25)];
        let g = FrameGeo::from_corners(corners, 640.0, 360.0).unwrap();
        let (lon, lat) = g.pixel_to_lonlat(320.0, 180.0).unwrap();
        assert!((lon - 11.5).abs() < 1e-9 && (lat - 48.1).abs() < 1e-9);
        let (x, y) = g.lonlat_to_pixel(lon, lat).unwrap();
        assert!((x - 320.0).abs() < 1e-6 && (y - 180.0).abs() < 1e-6);
        // 50 m east = 160 px right
        let (lon2, lat2) = enu.to_lonlat(50.0, 0.0);
        let (x2, _) = g.lonlat_to_pixel(lon2, lat2).unwrap();
        assert!((x2 - 480.0).abs() < 1e-6);
    }
}
