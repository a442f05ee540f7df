//! `smgeo synth flight`: a rendered drone flight over a synthetic scene
//! ([`super::scene`]), written as H.264 + MISB ST 0601 KLV in MPEG-TS, with prompts
//! (clicks on objects) and their ground truth in WGS84.
//!
//! Output folder:
//! - `flight.ts`: frame k has PTS k·10⁹/fps ns; one ST 0601 packet per frame at the same
//!   PTS (asynchronous KLV, see [`crate::ingest::encode`]).
//! - `flight.json` ([`FlightInfo`]): the resolved [`FlightSpec`], the scene config, the
//!   drone appearance and every frame's [`Camera`]: everything needed to re-render the
//!   identical frames and KLV ([`stream_flight_udp`] does that instead of storing frames).
//! - `prompts.jsonl`: `{"id","x","y","pts_ns","mode":"once"}`, x/y in video pixels,
//!   `pts_ns` = k·10⁹/fps, the writer's PTS of the frame. Decoders see every PTS (video
//!   and KLV alike) shifted by one constant (GStreamer `mpegtsmux` + `tsdemux`: +125 ms),
//!   so join prompts by PTS relative to the first frame, or by KLV tag 2
//!   (`epoch_us + pts_ns / 1000`).
//! - `truth.jsonl`: `{"prompt_id","object_id","category","lon","lat","polygon","frame"}`;
//!   lon/lat = footprint centroid, polygon = closed counter-clockwise outer ring, WGS84.
//!
//! KLV per frame (values from the frame's camera; world → WGS84 through the scene CRS):
//! 2 precision time stamp (µs, `epoch_us` + k·10⁶/fps), 3 mission id, 5/6/7 platform
//! heading = camera heading, pitch 0, roll 0; 13/14/15 sensor lat/lon/MSL altitude
//! (ground + camera height); 16/17 HFOV/VFOV; 18 sensor relative azimuth 0; 19 relative
//! elevation = −pitch (degrees below the horizon, negative down); 20 relative roll = camera
//! roll (0..360); 21 slant range to the frame centre; 23/24/25 frame centre = ground point
//! of the image-centre ray, at ground elevation; 82–89 full corner points 1–4 = ground points
//! of image corners (0,0), (W,0), (W,H), (0,H), i.e. upper-left, upper-right, lower-right,
//! lower-left, the order of [`crate::klv::timeline::TelemetryState::corners`] (omitted when
//! a corner ray misses the ground); 65 version 17; 1 checksum. Quantisation (ST 0601):
//! lat/lon ≈ 5 mm, heading 0.0055°, MSL heights 0.3 m.
//!
//! Rendering: [`super::camera::render_perspective_on`] (flat world, 2×2 rays per pixel);
//! each run of `fps` consecutive frames (one second) shares one ground canvas
//! ([`super::camera::ground_canvas`] over the group's cameras, ≤ 3072 px a side), which
//! makes a frame several times cheaper than a standalone [`super::camera::render_perspective`].
//! Groups render on worker threads, in order, into the encoder. Frames are not stored:
//! they are a deterministic function of `flight.json` (world seed, appearance, cameras,
//! grouping), and [`stream_flight_udp`] re-renders them.
//!
//! Prompt choice: the flight is cut into `n_prompts` equal time slots; for each, frames
//! are searched from the slot centre outwards (slot first, then the rest of the flight) for
//! an unused frame showing an unused object with its whole footprint ≥ 4 px inside the
//! image, ≥ 12 px across its projected box and its larger side ≥ 0.1 of the frame's
//! shorter side (as large as the synthetic CVOGL queries' targets), within 5× the altitude, and whose interior
//! point ([`super::geom::interior_point`]) is not under a tree; only when no frame has one,
//! partly visible objects qualify (visible part ≥ 12 px across, click ≥ 16 px from the
//! border). Among the candidates of a frame: categories used least so far first, then the
//! seed's choice. Click = projection of the interior point. The renderer is flat-world, so
//! the footprint is exactly where the object is drawn. Fewer prompts than asked are written
//! (with a warning) when the flight shows fewer usable objects.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::Instant;

use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::camera::{ground_canvas, render_perspective_on, Camera};
use super::flight::{self, FlightConfig};
use super::geom::{bbox_of, bbox_overlaps, centroid, interior_point, point_in_rings, ring_area, P2};
use super::render::Appearance;
use super::scene::{write_json, SceneConfig, SceneGeo, SceneInfo};
use super::world::{Material, World};
use super::{Result, SynthError};
use crate::georef::LonLat;
use crate::ingest::{stream_ts_udp_via, write_ts, EncodeStats, RgbFrame, StreamControl};
use crate::klv::st0601::{encode_packet, tag};
use crate::klv::tags::{Tag, TagValue};

pub const FLIGHT_SCHEMA: &str = "smgeo.synth.flight.v1";
pub const FLIGHT_JSON: &str = "flight.json";
pub const FLIGHT_TS: &str = "flight.ts";
pub const PROMPTS_JSONL: &str = "prompts.jsonl";
pub const TRUTH_JSONL: &str = "truth.jsonl";
/// ST 0601 version written in tag 65.
pub const KLV_VERSION: u64 = 17;
/// Default tag-2 time of frame 0: 2026-06-01T10:00:00Z.
pub const DEFAULT_EPOCH_US: u64 = 1_780_308_000_000_000;

/// Trajectory type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FlightKind {
    /// Straight pass at constant heading and altitude.
    Straight,
    /// Clockwise orbit keeping a ground point at the image centre.
    Orbit,
}

/// A flight to render. `None` placements are chosen from `seed` by [`FlightSpec::resolve`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlightSpec {
    pub kind: FlightKind,
    pub duration_s: f64,
    /// Altitude above ground, speed, fps (an integer), pitch, HFOV, frame size.
    pub camera: FlightConfig,
    /// Straight: first camera position (world m) and heading (degrees from north).
    pub start_m: Option<P2>,
    pub heading_deg: Option<f64>,
    /// Orbit: ground point at the image centre (world m) and first bearing from it.
    pub orbit_centre_m: Option<P2>,
    pub start_bearing_deg: Option<f64>,
    pub seed: u64,
    pub n_prompts: usize,
    /// Tag-2 time of frame 0, µs since 1970.
    pub epoch_us: u64,
    /// Errors of the telemetry the KLV reports (default: none, KLV = the true camera).
    #[serde(default)]
    pub telemetry_error: TelemetryError,
}

/// How far the KLV telemetry is from the true camera, as on a real small drone: the
/// KLV's sensor position, attitude, frame centre and corners are those of a camera
/// displaced by a per-flight bias (GNSS position, barometric altitude, compass heading,
/// gimbal pitch/roll boresight; each drawn once from N(0, σ²)) plus per-frame attitude
/// jitter (IMU noise, KLV-to-frame timing). The video is rendered from the true camera.
/// All zero (the default): the KLV is exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryError {
    /// Horizontal position bias σ per axis, m.
    pub position_sigma_m: f64,
    /// Altitude bias σ, m.
    pub altitude_sigma_m: f64,
    /// Heading bias σ, degrees.
    pub heading_sigma_deg: f64,
    /// Pitch and roll bias σ, degrees.
    pub attitude_sigma_deg: f64,
    /// Per-frame attitude noise σ (heading, pitch, roll), degrees.
    pub jitter_deg: f64,
}

impl TelemetryError {
    fn validate(&self) -> Result<()> {
        let v = [
            self.position_sigma_m,
            self.altitude_sigma_m,
            self.heading_sigma_deg,
            self.attitude_sigma_deg,
            self.jitter_deg,
        ];
        if v.iter().any(|x| !(x.is_finite() && (0.0..=1000.0).contains(x)))
            || self.attitude_sigma_deg > 10.0
            || self.jitter_deg > 10.0
        {
            return Err(SynthError::InvalidConfig {
                field: "telemetry_error",
                value: format!("{self:?}"),
                why: "σ values must be finite, 0..=1000; attitude and jitter at most 10°",
            });
        }
        Ok(())
    }

    pub fn is_zero(&self) -> bool {
        *self == TelemetryError::default()
    }

    /// The cameras the KLV describes for the true `cams` (deterministic in `seed`).
    pub fn apply(&self, cams: &[Camera], seed: u64) -> Vec<Camera> {
        if self.is_zero() {
            return cams.to_vec();
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7E1E_0E44_0000);
        // Box–Muller standard normal.
        let mut normal = move || {
            let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
            let u2: f64 = rng.gen_range(0.0..1.0);
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        };
        let (bx, by) = (normal() * self.position_sigma_m, normal() * self.position_sigma_m);
        let bz = normal() * self.altitude_sigma_m;
        let bh = normal() * self.heading_sigma_deg;
        let (bp, br) = (normal() * self.attitude_sigma_deg, normal() * self.attitude_sigma_deg);
        cams.iter()
            .map(|c| {
                let mut k = c.clone();
                k.x += bx;
                k.y += by;
                k.z = (c.z + bz).max(1.0);
                k.heading_deg = c.heading_deg + bh + normal() * self.jitter_deg;
                k.pitch_deg = (c.pitch_deg + bp + normal() * self.jitter_deg).clamp(1.0, 90.0);
                k.roll_deg = c.roll_deg + br + normal() * self.jitter_deg;
                k
            })
            .collect()
    }
}

impl Default for FlightSpec {
    fn default() -> Self {
        FlightSpec {
            kind: FlightKind::Straight,
            duration_s: 60.0,
            camera: FlightConfig { fps: 15.0, width: 960, height: 540, ..FlightConfig::default() },
            start_m: None,
            heading_deg: None,
            orbit_centre_m: None,
            start_bearing_deg: None,
            seed: 1,
            n_prompts: 6,
            epoch_us: DEFAULT_EPOCH_US,
            telemetry_error: TelemetryError::default(),
        }
    }
}

impl FlightSpec {
    /// Frame rate as the integer the encoder needs.
    pub fn fps(&self) -> Result<u32> {
        let f = self.camera.fps;
        if !(f.fract() == 0.0 && (1.0..=60.0).contains(&f)) {
            return Err(SynthError::InvalidConfig {
                field: "fps",
                value: f.to_string(),
                why: "need an integer 1 ..= 60",
            });
        }
        Ok(f as u32)
    }

    /// Range checks.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, value: String, why| Err(SynthError::InvalidConfig { field, value, why });
        self.fps()?;
        let c = &self.camera;
        if !(16..=3840).contains(&c.width) || !(16..=2160).contains(&c.height) || c.width % 2 == 1 || c.height % 2 == 1
        {
            return bad("width/height", format!("{}x{}", c.width, c.height), "even sizes 16..=3840 x 16..=2160");
        }
        if !(5.0..=3000.0).contains(&c.altitude_m) {
            return bad("altitude_m", c.altitude_m.to_string(), "need 5 ≤ altitude ≤ 3000 m");
        }
        if !(20.0..=90.0).contains(&c.pitch_deg) {
            return bad("pitch_deg", c.pitch_deg.to_string(), "need 20 ≤ pitch ≤ 90 (degrees below the horizon)");
        }
        if !(5.0..=120.0).contains(&c.hfov_deg) {
            return bad("hfov_deg", c.hfov_deg.to_string(), "need 5 ≤ hfov ≤ 120");
        }
        if !(0.0..=100.0).contains(&c.speed_mps) {
            return bad("speed_mps", c.speed_mps.to_string(), "need 0 ≤ speed ≤ 100 m/s");
        }
        if !(0.0..=3600.0).contains(&self.duration_s) {
            return bad("duration_s", self.duration_s.to_string(), "need 0 ≤ duration ≤ 3600 s");
        }
        if self.n_prompts > 1000 {
            return bad("n_prompts", self.n_prompts.to_string(), "at most 1000");
        }
        let finite = |p: Option<P2>| p.is_none_or(|p| p.0.is_finite() && p.1.is_finite());
        let finite1 = |a: Option<f64>| a.is_none_or(f64::is_finite);
        if !(finite(self.start_m)
            && finite(self.orbit_centre_m)
            && finite1(self.heading_deg)
            && finite1(self.start_bearing_deg))
        {
            return bad("placement", "non-finite".into(), "start, centre, heading and bearing must be finite");
        }
        self.telemetry_error.validate()
    }

    /// Fill the placement left open: straight passes get a random heading and a start such
    /// that mid-flight the image centre is over a busy spot (see `busy_spot`) and the camera stays in the
    /// scene (with room for the view where the extent allows); orbits get a random bearing
    /// and a busy spot as centre, kept away from the scene border.
    pub fn resolve(&self, world: &World) -> Result<FlightSpec> {
        self.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0xF1_1647_0000);
        let c = &self.camera;
        let (ex, ey) = world.extent_m;
        let reach = view_reach(c)?;
        let target = busy_spot(world, &mut rng, reach / 2.0);
        let mut out = self.clone();
        match self.kind {
            FlightKind::Straight => {
                let h = self.heading_deg.unwrap_or_else(|| rng.gen_range(0.0..360.0));
                out.heading_deg = Some(h);
                if self.start_m.is_none() {
                    let (s, co) = h.to_radians().sin_cos();
                    let len = c.speed_mps * self.duration_s;
                    let (dx, dy) = (len * s, len * co);
                    let m = reach.min((ex - dx.abs()) / 2.0).min((ey - dy.abs()) / 2.0);
                    if m < 0.0 {
                        return Err(SynthError::Invalid(format!(
                            "a {len:.0} m pass at heading {h:.1}° does not fit the {ex:.0}x{ey:.0} m scene; \
                             shorten the flight or slow down"
                        )));
                    }
                    let ahead = c.altitude_m / c.pitch_deg.to_radians().tan();
                    let mid = (target.0 - ahead * s, target.1 - ahead * co);
                    let x = (mid.0 - dx / 2.0).clamp(m + (-dx).max(0.0), ex - m - dx.max(0.0));
                    let y = (mid.1 - dy / 2.0).clamp(m + (-dy).max(0.0), ey - m - dy.max(0.0));
                    out.start_m = Some((x, y));
                }
            }
            FlightKind::Orbit => {
                out.start_bearing_deg = Some(self.start_bearing_deg.unwrap_or_else(|| rng.gen_range(0.0..360.0)));
                if self.orbit_centre_m.is_none() {
                    let radius = c.altitude_m / c.pitch_deg.to_radians().tan();
                    let m = (radius + reach).min(ex / 2.0).min(ey / 2.0);
                    out.orbit_centre_m = Some((target.0.clamp(m, ex - m), target.1.clamp(m, ey - m)));
                }
            }
        }
        Ok(out)
    }

    /// The cameras the KLV describes: [`FlightSpec::cameras`] with `telemetry_error`.
    pub fn telemetry_cameras(&self, cams: &[Camera]) -> Vec<Camera> {
        self.telemetry_error.apply(cams, self.seed)
    }

    /// Every frame's camera (the spec must be resolved).
    pub fn cameras(&self) -> Result<Vec<Camera>> {
        let open = || SynthError::Invalid("flight placement not resolved (call FlightSpec::resolve)".into());
        match self.kind {
            FlightKind::Straight => flight::straight(
                self.start_m.ok_or_else(open)?,
                self.heading_deg.ok_or_else(open)?,
                self.duration_s,
                &self.camera,
            ),
            FlightKind::Orbit => flight::orbit(
                self.orbit_centre_m.ok_or_else(open)?,
                self.start_bearing_deg.ok_or_else(open)?,
                self.duration_s,
                &self.camera,
            ),
        }
    }
}

/// Centroid of the object with the most objects of ≥ 6 m within `radius` among 16 drawn
/// at random (flights aim at busy places, so prompts find targets); the scene centre when
/// the world has no objects.
fn busy_spot(world: &World, rng: &mut ChaCha8Rng, radius: f64) -> P2 {
    let (ex, ey) = world.extent_m;
    if world.objects.is_empty() {
        return (ex / 2.0, ey / 2.0);
    }
    let big: Vec<P2> = world
        .objects
        .iter()
        .filter(|o| (o.bbox[2] - o.bbox[0]).max(o.bbox[3] - o.bbox[1]) >= 6.0)
        .map(|o| centroid(&o.footprint))
        .collect();
    let mut best = (0usize, (ex / 2.0, ey / 2.0));
    for i in 0..16 {
        let c = centroid(&world.objects[rng.gen_range(0..world.objects.len())].footprint);
        let n = big.iter().filter(|p| (p.0 - c.0).hypot(p.1 - c.1) <= radius).count();
        if i == 0 || n > best.0 {
            best = (n, c);
        }
    }
    best.1
}

/// Largest horizontal distance (m) from the camera to ground it sees, capped at the
/// renderer's haze range (8 × altitude).
fn view_reach(c: &FlightConfig) -> Result<f64> {
    let cam = Camera::new([0.0, 0.0, c.altitude_m], 0.0, c.pitch_deg, 0.0, c.hfov_deg, c.width, c.height)?;
    let (w, h) = (c.width as f64, c.height as f64);
    let cap = 8.0 * c.altitude_m;
    let mut r: f64 = 0.0;
    for k in 0..=16 {
        let t = k as f64 / 16.0;
        for (px, py) in [(t * w, 0.0), (t * w, h), (0.0, t * h), (w, t * h)] {
            r = r.max(cam.unproject_ground(px, py).map_or(cap, |g| g.0.hypot(g.1).min(cap)));
        }
    }
    Ok(r)
}

/// Contents of `flight.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlightInfo {
    pub schema: String,
    /// The resolved spec.
    pub spec: FlightSpec,
    /// The scene's config (regenerates the world and the georeferencing).
    pub scene: SceneConfig,
    /// The scene folder as given when the flight was made (informational).
    pub scene_dir: PathBuf,
    pub fps: u32,
    pub frames: usize,
    pub size_px: (u32, u32),
    /// Drone look; frame k uses `noise_seed + k` (fresh sensor noise per frame).
    pub drone_appearance: Appearance,
    pub video: String,
    pub prompts: String,
    pub truth: String,
    /// Frame k's camera (world metres, degrees).
    pub cameras: Vec<Camera>,
}

impl FlightInfo {
    /// Read `dir/flight.json`.
    pub fn load(dir: &Path) -> Result<FlightInfo> {
        let path = dir.join(FLIGHT_JSON);
        let text = std::fs::read_to_string(&path).map_err(|source| SynthError::Io { path: path.clone(), source })?;
        let f: FlightInfo = serde_json::from_str(&text).map_err(|source| SynthError::Json { path, source })?;
        if f.schema != FLIGHT_SCHEMA {
            return Err(SynthError::Invalid(format!(
                "{}: schema {:?}, expected {FLIGHT_SCHEMA}",
                dir.display(),
                f.schema
            )));
        }
        f.scene.validate()?;
        f.spec.validate()?;
        if f.cameras.len() != f.frames || f.fps != f.spec.fps()? {
            return Err(SynthError::Invalid(format!("{}: frame count or fps inconsistent", dir.display())));
        }
        Ok(f)
    }

    /// Tag-2 time of frame k (µs).
    pub fn frame_time_us(&self, k: usize) -> u64 {
        self.spec.epoch_us + k as u64 * 1_000_000 / u64::from(self.fps)
    }
}

/// PTS of frame k in ns, as [`crate::ingest::write_ts`] stamps it.
pub fn frame_pts_ns(k: usize, fps: u32) -> u64 {
    k as u64 * 1_000_000_000 / u64::from(fps.max(1))
}

/// The drone appearance of a flight seed.
pub fn drone_appearance(seed: u64) -> Appearance {
    Appearance::drone(&mut ChaCha8Rng::seed_from_u64(seed ^ 0xD120_4E00_0000))
}

/// Largest side (px) of a ground canvas shared by a group of frames.
pub const GROUP_CANVAS_MAX_SIDE: usize = 3072;

/// Frame groups sharing one ground canvas: consecutive runs of `fps` frames (one second).
pub fn frame_groups(n_frames: usize, fps: u32) -> Vec<std::ops::Range<usize>> {
    let g = (fps as usize).max(1);
    (0..n_frames).step_by(g).map(|a| a..(a + g).min(n_frames)).collect()
}

/// Render the frames `range` of a flight from one shared ground canvas; frame k gets the
/// appearance with `noise_seed + k` (fresh sensor noise per frame). `emit(k, image)`
/// returns false to stop early.
pub fn render_group(
    world: &World,
    app: &Appearance,
    cams: &[Camera],
    range: std::ops::Range<usize>,
    mut emit: impl FnMut(usize, RgbImage) -> bool,
) {
    let canvas = ground_canvas(world, app, &cams[range.clone()], GROUP_CANVAS_MAX_SIDE);
    for k in range {
        let app = Appearance { noise_seed: app.noise_seed.wrapping_add(k as u32), ..app.clone() };
        if !emit(k, render_perspective_on(canvas.as_ref(), &app, &cams[k])) {
            return;
        }
    }
}

/// Render frame `k` exactly as the flight writer does (renders its whole group's canvas).
pub fn render_frame(world: &World, app: &Appearance, cams: &[Camera], fps: u32, k: usize) -> Option<RgbImage> {
    let range = frame_groups(cams.len(), fps).into_iter().find(|r| r.contains(&k))?;
    let mut out = None;
    render_group(world, app, cams, range, |i, img| {
        if i == k {
            out = Some(img);
            return false;
        }
        true
    });
    out
}

/// Frames in order from the render workers (worker t renders groups g ≡ t mod threads and
/// may run one group ahead). Dropping it stops the workers.
pub struct OrderedFrames {
    rx: Vec<Receiver<RgbFrame>>,
    group: usize,
    next: usize,
    n: usize,
}

impl Iterator for OrderedFrames {
    type Item = RgbFrame;
    fn next(&mut self) -> Option<RgbFrame> {
        if self.next >= self.n {
            return None;
        }
        let f = self.rx[(self.next / self.group) % self.rx.len()].recv().ok()?;
        self.next += 1;
        Some(f)
    }
}

/// Run `consume` on the flight's frames rendered by `threads` workers (groups of `fps`
/// frames share a ground canvas, see [`render_group`]); also returns the mean render time
/// per frame (ms of one thread, canvas included).
pub fn with_rendered_frames<R>(
    world: &World,
    app: &Appearance,
    cams: &[Camera],
    fps: u32,
    threads: usize,
    consume: impl FnOnce(OrderedFrames) -> R,
) -> (R, f64) {
    let groups = frame_groups(cams.len(), fps);
    let g = (fps as usize).max(1);
    let threads = threads.clamp(1, groups.len().max(1));
    let render_ns = AtomicU64::new(0);
    let rendered = AtomicU64::new(0);
    let r = std::thread::scope(|s| {
        let mut rx = Vec::with_capacity(threads);
        for t in 0..threads {
            let (tx, r) = sync_channel::<RgbFrame>(g + 1);
            rx.push(r);
            let (render_ns, rendered, groups) = (&render_ns, &rendered, &groups);
            s.spawn(move || {
                for range in groups.iter().skip(t).step_by(threads) {
                    let mut t0 = Instant::now();
                    let mut open = true;
                    render_group(world, app, cams, range.clone(), |_, img| {
                        render_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        rendered.fetch_add(1, Ordering::Relaxed);
                        let frame = RgbFrame { width: img.width(), height: img.height(), data: img.into_raw() };
                        open = tx.send(frame).is_ok();
                        t0 = Instant::now();
                        open
                    });
                    if !open {
                        break;
                    }
                }
            });
        }
        consume(OrderedFrames { rx, group: g, next: 0, n: cams.len() })
    });
    let n = rendered.load(Ordering::Relaxed).max(1);
    (r, render_ns.load(Ordering::Relaxed) as f64 / n as f64 / 1e6)
}

/// Ground geometry of one frame in world metres.
struct FrameGround {
    centre: P2,
    corners: Option<[P2; 4]>,
}

fn frame_ground(cam: &Camera) -> Result<FrameGround> {
    let why = SynthError::InvalidCamera { field: "pitch_deg (image centre above the horizon)", value: cam.pitch_deg };
    let centre = cam.unproject_ground(cam.width as f64 / 2.0, cam.height as f64 / 2.0).ok_or(why)?;
    Ok(FrameGround { centre, corners: cam.footprint() })
}

/// The ST 0601 packet of every frame, as `(pts_ns, bytes)` for the encoder (module docs
/// list the tags).
pub fn klv_packets(
    cams: &[Camera],
    geo: &SceneGeo,
    ground_msl_m: f64,
    epoch_us: u64,
    fps: u32,
) -> Result<Vec<(u64, Vec<u8>)>> {
    // One batched transform: sensor, centre, 4 corners per frame.
    let mut pts = Vec::with_capacity(cams.len() * 6);
    let mut grounds = Vec::with_capacity(cams.len());
    for c in cams {
        let g = frame_ground(c)?;
        pts.push((c.x, c.y));
        pts.push(g.centre);
        pts.extend(g.corners.unwrap_or([g.centre; 4]));
        grounds.push(g);
    }
    let ll = geo.world_to_lonlat_many(&pts)?;
    let mut out = Vec::with_capacity(cams.len());
    for (k, (c, g)) in cams.iter().zip(&grounds).enumerate() {
        let l = &ll[6 * k..6 * k + 6];
        let time_us = epoch_us + k as u64 * 1_000_000 / u64::from(fps.max(1));
        let corners = g.corners.map(|_| [l[2], l[3], l[4], l[5]]);
        let tags = frame_tags(c, time_us, l[0], l[1], g.centre, corners, ground_msl_m);
        out.push((frame_pts_ns(k, fps), encode_packet(&tags)?));
    }
    Ok(out)
}

fn frame_tags(
    c: &Camera,
    time_us: u64,
    sensor: LonLat,
    centre: LonLat,
    centre_w: P2,
    corners: Option<[LonLat; 4]>,
    ground_msl_m: f64,
) -> Vec<Tag> {
    let f = TagValue::Float;
    let vfov = 2.0 * ((c.hfov_deg.to_radians() / 2.0).tan() * c.height as f64 / c.width as f64).atan().to_degrees();
    let slant = ((centre_w.0 - c.x).powi(2) + (centre_w.1 - c.y).powi(2) + c.z * c.z).sqrt();
    let mut t = vec![
        Tag::new(tag::PRECISION_TIME_STAMP, TagValue::UInt(time_us)),
        Tag::new(3, TagValue::Text("SMGEO SYNTH".into())),
        Tag::new(tag::PLATFORM_HEADING, f(c.heading_deg.rem_euclid(360.0))),
        Tag::new(tag::PLATFORM_PITCH, f(0.0)),
        Tag::new(tag::PLATFORM_ROLL, f(0.0)),
        Tag::new(tag::SENSOR_LATITUDE, f(sensor.lat)),
        Tag::new(tag::SENSOR_LONGITUDE, f(sensor.lon)),
        Tag::new(tag::SENSOR_TRUE_ALTITUDE, f(ground_msl_m + c.z)),
        Tag::new(tag::SENSOR_HFOV, f(c.hfov_deg)),
        Tag::new(tag::SENSOR_VFOV, f(vfov)),
        Tag::new(tag::SENSOR_REL_AZIMUTH, f(0.0)),
        Tag::new(tag::SENSOR_REL_ELEVATION, f(-c.pitch_deg)),
        Tag::new(tag::SENSOR_REL_ROLL, f(c.roll_deg.rem_euclid(360.0))),
        Tag::new(tag::SLANT_RANGE, f(slant)),
        Tag::new(tag::FRAME_CENTER_LATITUDE, f(centre.lat)),
        Tag::new(tag::FRAME_CENTER_LONGITUDE, f(centre.lon)),
        Tag::new(tag::FRAME_CENTER_ELEVATION, f(ground_msl_m)),
    ];
    if let Some(cs) = corners {
        for (i, p) in cs.iter().enumerate() {
            t.push(Tag::new(82 + 2 * i as u32, f(p.lat)));
            t.push(Tag::new(83 + 2 * i as u32, f(p.lon)));
        }
    }
    t.push(Tag::new(tag::UAS_LS_VERSION, TagValue::UInt(KLV_VERSION)));
    t
}

/// One line of `prompts.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptLine {
    pub id: String,
    pub x: f64,
    pub y: f64,
    pub pts_ns: u64,
    pub mode: String,
}

/// One line of `truth.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TruthLine {
    pub prompt_id: String,
    pub object_id: u64,
    pub category: String,
    pub lon: f64,
    pub lat: f64,
    /// Closed, counter-clockwise outer ring, `[lon, lat]`.
    pub polygon: Vec<[f64; 2]>,
    pub frame: usize,
}

/// A chosen prompt: frame, object (index into `world.objects`), click in frame pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptPick {
    pub frame: usize,
    pub object: usize,
    pub click: P2,
}

/// Smallest prompt target: its outline's larger side in the frame, as a fraction of the
/// frame's shorter side (the synthetic CVOGL queries' `min_query_frac` default).
const MIN_TARGET_FRAC: f64 = 0.1;

/// Objects clearly visible in `cam` (see module docs), with their clicks. `whole`: the
/// whole footprint inside the image (4 px margin); otherwise the part inside the image must
/// be ≥ 12 px across and the click ≥ 16 px from the border (fallback for sparse views).
pub fn visible_targets(world: &World, cam: &Camera, whole: bool) -> Vec<(usize, P2)> {
    let (w, h) = (cam.width as f64, cam.height as f64);
    let max_range = 5.0 * cam.z;
    let mut ground = Vec::new();
    for k in 0..=8 {
        let t = k as f64 / 8.0;
        for (px, py) in [(t * w, 0.0), (t * w, h), (0.0, t * h), (w, t * h)] {
            if let Some(g) = cam.unproject_ground(px, py) {
                let (dx, dy) = (g.0 - cam.x, g.1 - cam.y);
                let s = (max_range / dx.hypot(dy).max(1e-9)).min(1.0);
                ground.push((cam.x + s * dx, cam.y + s * dy));
            }
        }
    }
    let Some(gb) = bbox_of(ground.iter()) else { return Vec::new() };
    let mut out = Vec::new();
    'objects: for (idx, o) in world.objects.iter().enumerate() {
        if !bbox_overlaps(&o.bbox, &gb) || o.footprint.is_empty() {
            continue;
        }
        let mut proj = Vec::new();
        for p in o.footprint.iter().flatten() {
            if (p.0 - cam.x).hypot(p.1 - cam.y) > max_range {
                continue 'objects;
            }
            match cam.project([p.0, p.1, 0.0]) {
                Some(q) if !whole || cam.in_image(q, 4.0) => proj.push(q),
                _ => continue 'objects,
            }
        }
        let Some(b) = bbox_of(proj.iter()) else { continue };
        let b = [b[0].max(0.0), b[1].max(0.0), b[2].min(w), b[3].min(h)];
        // At least 12 px across, and as large as the synthetic CVOGL queries' targets:
        // 0.1 of the frame's shorter side (the side of the square query crop).
        if (b[2] - b[0]).min(b[3] - b[1]) < 12.0 || (b[2] - b[0]).max(b[3] - b[1]) < MIN_TARGET_FRAC * w.min(h) {
            continue;
        }
        let ip = interior_point(&o.footprint);
        let Some(click) = cam.project([ip.0, ip.1, 0.0]) else { continue };
        if !cam.in_image(click, if whole { 8.0 } else { 16.0 }) {
            continue;
        }
        if o.category != "tree_cluster" {
            let under_tree = world.shapes_in(&[ip.0, ip.1, ip.0, ip.1]).iter().any(|&i| {
                let s = &world.shapes[i as usize];
                matches!(s.material, Material::Tree) && point_in_rings(&s.rings, ip)
            });
            if under_tree {
                continue;
            }
        }
        out.push((idx, click));
    }
    out
}

/// Choose up to `n` prompts at distinct frames (see module docs).
pub fn pick_prompts(world: &World, cams: &[Camera], n: usize, seed: u64) -> Vec<PromptPick> {
    let nf = cams.len();
    if n == 0 || nf == 0 {
        return Vec::new();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9B0_3B75);
    let (mut used_frames, mut used_objects) = (HashSet::new(), HashSet::new());
    let mut cat_use: BTreeMap<&str, usize> = BTreeMap::new();
    let mut seen: BTreeMap<(bool, usize), Vec<(usize, P2)>> = BTreeMap::new();
    let mut out = Vec::new();
    for i in 0..n {
        // Slot i covers frames [lo, hi); search from its centre outwards.
        let (lo, hi) = (i * nf / n, ((i + 1) * nf / n).max(i * nf / n + 1).min(nf));
        let mid = (lo + hi) / 2;
        // Frames of the slot first, then (when the slot shows nothing usable) the others.
        let mut order: Vec<usize> = (0..nf).collect();
        order.sort_by_key(|&k| (!(lo..hi).contains(&k), (k as i64 - mid as i64).abs()));
        // Wholly visible objects anywhere first; partly visible ones only when none is left.
        for (whole, k) in order.iter().map(|&k| (true, k)).chain(order.iter().map(|&k| (false, k))) {
            if used_frames.contains(&k) {
                continue;
            }
            let visible = seen.entry((whole, k)).or_insert_with(|| visible_targets(world, &cams[k], whole));
            let cands: Vec<(usize, P2)> = visible.iter().filter(|(o, _)| !used_objects.contains(o)).copied().collect();
            let Some(least) =
                cands.iter().map(|(o, _)| cat_use.get(world.objects[*o].category.as_str()).copied().unwrap_or(0)).min()
            else {
                continue;
            };
            let best: Vec<&(usize, P2)> = cands
                .iter()
                .filter(|(o, _)| cat_use.get(world.objects[*o].category.as_str()).copied().unwrap_or(0) == least)
                .collect();
            let &(obj, click) = best[rng.gen_range(0..best.len())];
            used_frames.insert(k);
            used_objects.insert(obj);
            *cat_use.entry(world.objects[obj].category.as_str()).or_insert(0) += 1;
            out.push(PromptPick { frame: k, object: obj, click });
            break;
        }
    }
    out
}

/// Prompt and truth lines of the picks (WGS84 through `geo`).
pub fn prompt_lines(
    world: &World,
    picks: &[PromptPick],
    geo: &SceneGeo,
    fps: u32,
) -> Result<Vec<(PromptLine, TruthLine)>> {
    let mut out = Vec::with_capacity(picks.len());
    for (i, p) in picks.iter().enumerate() {
        let o = &world.objects[p.object];
        let id = format!("p{}", i + 1);
        let mut ring = o.footprint[0].clone();
        if ring_area(&ring) < 0.0 {
            ring.reverse();
        }
        let c = centroid(&o.footprint);
        let mut pts = vec![c];
        pts.extend(ring.iter().copied());
        let ll = geo.world_to_lonlat_many(&pts)?;
        let mut polygon: Vec<[f64; 2]> = ll[1..].iter().map(|q| [q.lon, q.lat]).collect();
        polygon.push(polygon[0]);
        out.push((
            PromptLine {
                id: id.clone(),
                x: p.click.0,
                y: p.click.1,
                pts_ns: frame_pts_ns(p.frame, fps),
                mode: "once".into(),
            },
            TruthLine {
                prompt_id: id,
                object_id: o.id,
                category: o.category.clone(),
                lon: ll[0].lon,
                lat: ll[0].lat,
                polygon,
                frame: p.frame,
            },
        ));
    }
    Ok(out)
}

fn write_jsonl<T: Serialize>(path: &Path, rows: impl IntoIterator<Item = T>) -> Result<()> {
    let io = |source| SynthError::Io { path: path.to_path_buf(), source };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    for r in rows {
        let line = serde_json::to_string(&r).map_err(|source| SynthError::Json { path: path.to_path_buf(), source })?;
        writeln!(f, "{line}").map_err(io)?;
    }
    f.flush().map_err(io)
}

/// Read a JSON-lines file.
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|source| SynthError::Io { path: path.to_path_buf(), source })?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|source| SynthError::Json { path: path.to_path_buf(), source }))
        .collect()
}

/// KLV of a written flight checked against its cameras (see [`verify_flight`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KlvCheck {
    /// KLV units found in the TS / decoded with a valid checksum / rejected.
    pub units: usize,
    pub decoded: usize,
    pub rejected: usize,
    /// Frames whose packet was found by its tag-2 time.
    pub frames_matched: usize,
    /// Largest distances (m, world frame) between KLV positions and the camera geometry.
    pub max_centre_err_m: f64,
    pub max_corner_err_m: f64,
    pub max_sensor_err_m: f64,
    pub max_altitude_err_m: f64,
    /// Largest |KLV PTS step − frame period| in 90 kHz ticks.
    pub max_pts_step_err_ticks: u64,
}

/// Demultiplex `dir/flight.ts`, decode every ST 0601 packet (checksum verified) into a
/// [`crate::klv::timeline::Timeline`], and compare each frame's frame centre, corners and
/// sensor position (mapped to world metres through the scene CRS) with its camera.
pub fn verify_flight(dir: &Path) -> Result<KlvCheck> {
    use crate::klv::timeline::Timeline;
    let info = FlightInfo::load(dir)?;
    let geo = SceneGeo::new(&info.scene)?;
    let path = dir.join(&info.video);
    let bytes = std::fs::read(&path).map_err(|source| SynthError::Io { path, source })?;
    let (units, _) = crate::klv::ts::demux_all(&bytes);
    let mut tl = Timeline::new(units.len().max(1));
    let mut rejected = 0;
    for u in &units {
        if tl.insert_unit(u).is_err() {
            rejected += 1;
        }
    }
    let mut chk = KlvCheck {
        units: units.len(),
        decoded: units.len() - rejected,
        rejected,
        frames_matched: 0,
        max_centre_err_m: 0.0,
        max_corner_err_m: 0.0,
        max_sensor_err_m: 0.0,
        max_altitude_err_m: 0.0,
        max_pts_step_err_ticks: 0,
    };
    let dist = |a: P2, b: P2| (a.0 - b.0).hypot(a.1 - b.1);
    let mut pts = Vec::new();
    // The KLV describes the telemetry cameras (the true ones unless `telemetry_error`).
    let tel_cams = info.spec.telemetry_cameras(&info.cameras);
    for (k, cam) in tel_cams.iter().enumerate() {
        let Some(s) = tl.nearest_time(info.frame_time_us(k), 0) else { continue };
        let st = &s.state;
        let (Some(fc), Some(sp)) = (st.frame_centre(), st.sensor_position()) else { continue };
        chk.frames_matched += 1;
        pts.push((k, s.pts));
        let g = frame_ground(cam)?;
        let mut ll = vec![LonLat::new(fc.lon_deg, fc.lat_deg), LonLat::new(sp.lon_deg, sp.lat_deg)];
        if let Some(cs) = st.corners() {
            ll.extend(cs.iter().map(|&(lat, lon)| LonLat::new(lon, lat)));
        }
        let w = geo.lonlat_to_world_many(&ll)?;
        chk.max_centre_err_m = chk.max_centre_err_m.max(dist(w[0], g.centre));
        chk.max_sensor_err_m = chk.max_sensor_err_m.max(dist(w[1], (cam.x, cam.y)));
        let alt = sp.msl_m.map_or(f64::INFINITY, |m| (m - info.scene.ground_msl_m - cam.z).abs());
        chk.max_altitude_err_m = chk.max_altitude_err_m.max(alt);
        match (g.corners, w.len()) {
            (Some(gc), 6) => {
                for (a, b) in w[2..].iter().zip(gc) {
                    chk.max_corner_err_m = chk.max_corner_err_m.max(dist(*a, b));
                }
            }
            (None, 2) => {}
            _ => chk.max_corner_err_m = f64::INFINITY,
        }
    }
    for pair in pts.windows(2) {
        let ((k0, p0), (k1, p1)) = (pair[0], pair[1]);
        let want = (frame_pts_ns(k1, info.fps) - frame_pts_ns(k0, info.fps)) * 9 / 100_000;
        let err = match (p0, p1) {
            (Some(a), Some(b)) => (b.wrapping_sub(a) as i64 - want as i64).unsigned_abs(),
            _ => u64::MAX,
        };
        chk.max_pts_step_err_ticks = chk.max_pts_step_err_ticks.max(err);
    }
    Ok(chk)
}

/// What [`build_flight`] did.
#[derive(Clone, Debug, Serialize)]
pub struct FlightSummary {
    pub out_dir: PathBuf,
    pub kind: FlightKind,
    pub frames: usize,
    pub fps: u32,
    pub size_px: (u32, u32),
    pub duration_s: f64,
    pub render_threads: usize,
    /// Mean render time of one frame on one thread.
    pub render_ms_per_frame: f64,
    /// Wall time of render + encode (parallel), and of the whole build.
    pub video_s: f64,
    pub total_s: f64,
    pub encode: EncodeStats,
    pub prompts: usize,
    pub klv_check: KlvCheck,
}

/// Render the flight `spec` over the scene in `scene_dir` into `out_dir` (created):
/// `flight.ts`, `flight.json`, `prompts.jsonl`, `truth.jsonl`. `threads`: render workers
/// (default: available cores, at most 4).
pub fn build_flight(
    scene_dir: &Path,
    spec: &FlightSpec,
    out_dir: &Path,
    threads: Option<usize>,
) -> Result<FlightSummary> {
    let t0 = Instant::now();
    let scene = SceneInfo::load(scene_dir)?;
    let geo = scene.geo()?;
    let world = scene.world();
    let spec = spec.resolve(&world)?;
    let fps = spec.fps()?;
    let cams = spec.cameras()?;
    std::fs::create_dir_all(out_dir).map_err(|source| SynthError::Io { path: out_dir.to_path_buf(), source })?;
    let app = drone_appearance(spec.seed);
    let info = FlightInfo {
        schema: FLIGHT_SCHEMA.into(),
        spec: spec.clone(),
        scene: scene.config.clone(),
        scene_dir: scene_dir.to_path_buf(),
        fps,
        frames: cams.len(),
        size_px: (spec.camera.width, spec.camera.height),
        drone_appearance: app.clone(),
        video: FLIGHT_TS.into(),
        prompts: PROMPTS_JSONL.into(),
        truth: TRUTH_JSONL.into(),
        cameras: cams.clone(),
    };
    write_json(&out_dir.join(FLIGHT_JSON), &info)?;

    let picks = pick_prompts(&world, &cams, spec.n_prompts, spec.seed);
    if picks.len() < spec.n_prompts {
        tracing::warn!(
            wanted = spec.n_prompts,
            found = picks.len(),
            "fewer clearly visible objects than prompts asked for"
        );
    }
    let lines = prompt_lines(&world, &picks, &geo, fps)?;
    write_jsonl(&out_dir.join(PROMPTS_JSONL), lines.iter().map(|l| &l.0))?;
    write_jsonl(&out_dir.join(TRUTH_JSONL), lines.iter().map(|l| &l.1))?;

    let klv = klv_packets(&spec.telemetry_cameras(&cams), &geo, scene.config.ground_msl_m, spec.epoch_us, fps)?;
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4))
        .clamp(1, 16);
    let tv = Instant::now();
    let ts_path = out_dir.join(FLIGHT_TS);
    let (stats, render_ms) =
        with_rendered_frames(&world, &app, &cams, fps, threads, |frames| write_ts(&ts_path, frames, fps, Some(klv)));
    let encode = stats?;
    let video_s = tv.elapsed().as_secs_f64();
    let klv_check = verify_flight(out_dir)?;
    Ok(FlightSummary {
        out_dir: out_dir.to_path_buf(),
        kind: spec.kind,
        frames: cams.len(),
        fps,
        size_px: info.size_px,
        duration_s: spec.duration_s,
        render_threads: threads,
        render_ms_per_frame: render_ms,
        video_s,
        total_s: t0.elapsed().as_secs_f64(),
        encode,
        prompts: lines.len(),
        klv_check,
    })
}

/// Send a written flight as MPEG-TS over UDP (H.264 + the same KLV), re-rendering the
/// frames from `flight.json` (deterministic; nothing is decoded). Rendering runs on
/// several threads ahead of the encoder; `realtime` paces at the flight's fps (if
/// rendering is slower than real time, frames go out as soon as they are ready).
pub fn stream_flight_udp(
    dir: &Path,
    host: &str,
    port: u16,
    multicast_iface: Option<&str>,
    realtime: bool,
    ctl: Option<&StreamControl>,
    threads: Option<usize>,
) -> Result<EncodeStats> {
    let info = FlightInfo::load(dir)?;
    let geo = SceneGeo::new(&info.scene)?;
    let world = World::generate(info.scene.seed, info.scene.extent_m);
    let klv = klv_packets(
        &info.spec.telemetry_cameras(&info.cameras),
        &geo,
        info.scene.ground_msl_m,
        info.spec.epoch_us,
        info.fps,
    )?;
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4))
        .clamp(1, 16);
    let (r, _) = with_rendered_frames(&world, &info.drone_appearance, &info.cameras, info.fps, threads, |frames| {
        stream_ts_udp_via(host, port, multicast_iface, frames, info.fps, Some(klv), realtime, ctl)
    });
    Ok(r?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::georef::Compression;
    use crate::ingest::{Source, SourceConfig, SourceKind, SourceState};
    use crate::synth::scene::build_scene;
    use std::time::Duration;

    fn scene(dir: &Path) -> SceneInfo {
        let cfg = SceneConfig {
            // A world whose 600 m square has buildings under the test flights (with some
            // seeds the flights cross only fields and parks, and no prompt can be placed).
            seed: 22,
            extent_m: (600.0, 600.0),
            gsd_m: 2.0,
            compression: Compression::Deflate,
            ..Default::default()
        };
        build_scene(&cfg, dir).unwrap()
    }

    fn spec(kind: FlightKind) -> FlightSpec {
        FlightSpec {
            kind,
            duration_s: 2.0,
            camera: FlightConfig { fps: 5.0, width: 320, height: 180, altitude_m: 80.0, ..FlightConfig::default() },
            n_prompts: 3,
            seed: 4,
            ..FlightSpec::default()
        }
    }

    fn frames_of(path: &Path) -> Vec<std::sync::Arc<crate::ingest::Frame>> {
        let mut cfg = SourceConfig::new(SourceKind::File { path: path.to_path_buf() });
        cfg.sync = false;
        cfg.ring_capacity = 64;
        let src = Source::start(cfg).unwrap();
        let end = src.wait_state(Duration::from_secs(30), |s| matches!(s, SourceState::Eos | SourceState::Failed(_)));
        assert_eq!(end, Some(SourceState::Eos));
        let f = src.frames().snapshot();
        src.stop();
        f
    }

    #[test]
    fn flight_ts_klv_prompts_and_truth_are_consistent() {
        let sd = tempfile::tempdir().unwrap();
        let fd = tempfile::tempdir().unwrap();
        let sc = scene(sd.path());
        let sum = build_flight(sd.path(), &spec(FlightKind::Straight), fd.path(), Some(2)).unwrap();
        assert_eq!(sum.frames, 11);
        assert_eq!((sum.encode.frames, sum.encode.klv_units), (11, 11));

        // Every KLV packet decodes with a valid checksum; positions match the cameras.
        let k = &sum.klv_check;
        assert_eq!((k.units, k.decoded, k.rejected, k.frames_matched), (11, 11, 0, 11), "{k:?}");
        assert!(k.max_centre_err_m < 0.1, "{k:?}");
        assert!(k.max_corner_err_m < 0.1 && k.max_sensor_err_m < 0.1, "{k:?}");
        assert!(k.max_altitude_err_m <= 0.16, "{k:?}");
        assert!(k.max_pts_step_err_ticks <= 2, "{k:?}");

        // The video decodes to the rendered frames.
        let info = FlightInfo::load(fd.path()).unwrap();
        let world = sc.world();
        let frames = frames_of(&fd.path().join(FLIGHT_TS));
        assert_eq!(frames.len(), 11);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!((f.width, f.height), (320, 180));
            // Decoded PTS = writer PTS + one constant offset (the muxer's PCR lead).
            let rel = f.pts_ns - frames[0].pts_ns;
            assert!(rel.abs_diff(frame_pts_ns(i, 5)) < 1_000_000, "frame {i}: {rel} ns after frame 0");
            if i % 5 == 0 {
                let want = render_frame(&world, &info.drone_appearance, &info.cameras, 5, i).unwrap();
                let mad: f64 = f.data.iter().zip(want.as_raw()).map(|(a, b)| a.abs_diff(*b) as f64).sum::<f64>()
                    / f.data.len() as f64;
                assert!(mad < 12.0, "frame {i}: mean abs diff {mad}");
            }
        }

        // Prompts: inside the frame, at distinct frames, on their object.
        let prompts: Vec<PromptLine> = read_jsonl(&fd.path().join(PROMPTS_JSONL)).unwrap();
        let truth: Vec<TruthLine> = read_jsonl(&fd.path().join(TRUTH_JSONL)).unwrap();
        assert_eq!(prompts.len(), 3, "{prompts:?}");
        assert_eq!(truth.len(), 3);
        let geo = sc.geo().unwrap();
        let frames: HashSet<usize> = truth.iter().map(|t| t.frame).collect();
        assert_eq!(frames.len(), 3, "distinct frames");
        for (p, t) in prompts.iter().zip(&truth) {
            assert_eq!(p.id, t.prompt_id);
            assert_eq!(p.mode, "once");
            assert_eq!(p.pts_ns, frame_pts_ns(t.frame, 5));
            assert!(p.x > 0.0 && p.y > 0.0 && p.x < 320.0 && p.y < 180.0, "{p:?}");
            let cam = &info.cameras[t.frame];
            // Closed, counter-clockwise ring.
            assert!(t.polygon.len() >= 4 && t.polygon.first() == t.polygon.last(), "{t:?}");
            let ring: Vec<P2> = t.polygon.iter().map(|q| (q[0], q[1])).collect();
            assert!(ring_area(&ring) > 0.0);
            // Back through WGS84 → world → the frame: the click lies inside.
            let ll: Vec<LonLat> = t.polygon.iter().map(|q| LonLat::new(q[0], q[1])).collect();
            let px: Vec<P2> = geo
                .lonlat_to_world_many(&ll)
                .unwrap()
                .into_iter()
                .map(|w| cam.project([w.0, w.1, 0.0]).unwrap())
                .collect();
            assert!(point_in_rings(&[px], (p.x, p.y)), "click {p:?} outside its object {t:?}");
            let o = world.objects.iter().find(|o| o.id == t.object_id).unwrap();
            assert_eq!(o.category, t.category);
            let c = geo.lonlat_to_world(LonLat::new(t.lon, t.lat)).unwrap();
            let want = centroid(&o.footprint);
            assert!((c.0 - want.0).hypot(c.1 - want.1) < 1e-6);
        }
    }

    #[test]
    fn orbit_keeps_centre_and_klv_frame_centre_matches() {
        let sd = tempfile::tempdir().unwrap();
        let fd = tempfile::tempdir().unwrap();
        let sc = scene(sd.path());
        let world = sc.world();
        let s = spec(FlightKind::Orbit).resolve(&world).unwrap();
        let c = s.orbit_centre_m.unwrap();
        assert!((0.0..=600.0).contains(&c.0) && (0.0..=600.0).contains(&c.1));
        let cams = s.cameras().unwrap();
        let packets = klv_packets(&cams, &sc.geo().unwrap(), 0.0, DEFAULT_EPOCH_US, 5).unwrap();
        for (k, (pts, bytes)) in packets.iter().enumerate() {
            assert_eq!(*pts, frame_pts_ns(k, 5));
            let p = crate::klv::st0601::decode_packet(bytes).unwrap();
            assert_eq!(p.timestamp_us(), Some(DEFAULT_EPOCH_US + k as u64 * 200_000));
            let lat = p.get(tag::FRAME_CENTER_LATITUDE).unwrap().value.as_f64().unwrap();
            let lon = p.get(tag::FRAME_CENTER_LONGITUDE).unwrap().value.as_f64().unwrap();
            let w = sc.lonlat_to_world(LonLat::new(lon, lat)).unwrap();
            assert!((w.0 - c.0).hypot(w.1 - c.1) < 0.05, "frame {k}: {w:?} vs {c:?}");
            let el = p.get(tag::SENSOR_REL_ELEVATION).unwrap().value.as_f64().unwrap();
            assert!((el + 60.0).abs() < 1e-6, "{el}");
            // Corner 1 is the upper-left image corner.
            let ul = (p.get(82).unwrap().value.as_f64().unwrap(), p.get(83).unwrap().value.as_f64().unwrap());
            let w = sc.lonlat_to_world(LonLat::new(ul.1, ul.0)).unwrap();
            let want = cams[k].unproject_ground(0.0, 0.0).unwrap();
            assert!((w.0 - want.0).hypot(w.1 - want.1) < 0.05, "frame {k}: {w:?} vs {want:?}");
        }
        // Written and streamed over UDP: the receiver gets frames and valid KLV.
        build_flight(sd.path(), &spec(FlightKind::Orbit), fd.path(), Some(2)).unwrap();
        let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cfg = SourceConfig::new(SourceKind::UdpTs { address: "127.0.0.1".into(), port, multicast_iface: None });
        cfg.codec = crate::ingest::Codec::H264;
        cfg.sync = false;
        cfg.ring_capacity = 64;
        cfg.klv_capacity = 64;
        let src = Source::start(cfg).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let st = stream_flight_udp(fd.path(), "127.0.0.1", port, None, true, None, Some(2)).unwrap();
        assert_eq!((st.frames, st.klv_units), (11, 11));
        std::thread::sleep(Duration::from_millis(1500));
        let got = src.frames().snapshot();
        let klv: Vec<_> = src.klv().try_iter().collect();
        src.stop();
        assert!(got.len() >= 5, "received {} frames", got.len());
        assert!(!klv.is_empty());
        for u in &klv {
            crate::klv::st0601::decode_packet(&u.data).unwrap();
        }
    }

    #[test]
    fn telemetry_error_biases_the_klv_cameras_deterministically() {
        let cams =
            flight::straight((0.0, 0.0), 30.0, 2.0, &FlightConfig { fps: 5.0, ..FlightConfig::default() }).unwrap();
        assert_eq!(TelemetryError::default().apply(&cams, 3), cams, "no error: the true cameras");
        let e = TelemetryError {
            position_sigma_m: 3.0,
            altitude_sigma_m: 5.0,
            heading_sigma_deg: 2.0,
            attitude_sigma_deg: 0.5,
            jitter_deg: 0.0,
        };
        let a = e.apply(&cams, 3);
        assert_eq!(a, e.apply(&cams, 3), "deterministic in the seed");
        assert_ne!(a, e.apply(&cams, 4), "another seed, another draw");
        // Biases only (no jitter): the same offset on every frame, and not zero.
        let d0 = (a[0].x - cams[0].x, a[0].y - cams[0].y, a[0].z - cams[0].z, a[0].heading_deg - cams[0].heading_deg);
        assert!(d0.0 != 0.0 && d0.1 != 0.0 && d0.2 != 0.0 && d0.3 != 0.0);
        for (k, c) in a.iter().zip(&cams) {
            let d = (k.x - c.x, k.y - c.y, k.z - c.z, k.heading_deg - c.heading_deg);
            assert!((d.0 - d0.0).abs() < 1e-9 && (d.1 - d0.1).abs() < 1e-9 && (d.3 - d0.3).abs() < 1e-9);
            assert_eq!((k.hfov_deg, k.width, k.height), (c.hfov_deg, c.width, c.height));
        }
        // Jitter varies frame to frame.
        let j = TelemetryError { jitter_deg: 0.3, ..TelemetryError::default() }.apply(&cams, 3);
        let dh: Vec<f64> = j.iter().zip(&cams).map(|(k, c)| k.heading_deg - c.heading_deg).collect();
        assert!(dh.windows(2).any(|w| w[0] != w[1]));
        assert!(TelemetryError { attitude_sigma_deg: 20.0, ..e }.validate().is_err());
        assert!(TelemetryError { position_sigma_m: f64::NAN, ..e }.validate().is_err());
    }

    #[test]
    fn spec_validation_and_placement() {
        let world = World::generate(3, (400.0, 400.0));
        let bad = |s: FlightSpec| s.validate().is_err();
        let base = spec(FlightKind::Straight);
        assert!(bad(FlightSpec { camera: FlightConfig { fps: 7.5, ..base.camera.clone() }, ..base.clone() }));
        assert!(bad(FlightSpec { camera: FlightConfig { width: 321, ..base.camera.clone() }, ..base.clone() }));
        assert!(bad(FlightSpec { camera: FlightConfig { pitch_deg: 5.0, ..base.camera.clone() }, ..base.clone() }));
        assert!(bad(FlightSpec { start_m: Some((f64::NAN, 0.0)), ..base.clone() }));
        // A pass longer than the scene is refused with a message.
        let long = FlightSpec { duration_s: 100.0, ..base.clone() };
        assert!(matches!(long.resolve(&world), Err(SynthError::Invalid(_))));
        // Unresolved specs cannot make cameras; resolved straight passes stay inside.
        assert!(base.cameras().is_err());
        let r = base.resolve(&world).unwrap();
        assert_eq!(r, base.resolve(&world).unwrap(), "deterministic");
        for c in r.cameras().unwrap() {
            assert!((0.0..=400.0).contains(&c.x) && (0.0..=400.0).contains(&c.y), "{c:?}");
        }
        // Given placements are kept.
        let fixed = FlightSpec { start_m: Some((10.0, 20.0)), heading_deg: Some(45.0), ..base };
        let r = fixed.resolve(&world).unwrap();
        assert_eq!((r.start_m, r.heading_deg), (Some((10.0, 20.0)), Some(45.0)));
    }
}
