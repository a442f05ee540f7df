//! Synthetic CVOGL (DroneAerial) samples: a drone query image with a click on a target
//! object and a satellite chip with the target's box and polygon (SMGEO_SPEC §3, §7).
//!
//! Per sample: pick a category uniformly among those present, then an object of it; place a
//! drone camera (altitude, heading, pitch, hfov from [`SampleConfig`]) so that the target's
//! interior point lands on a random query pixel away from the border and the whole footprint
//! is visible; click = projection of that interior point (the polygon centroid when it lies
//! inside the polygon, e.g. not for courtyards); pick a chip origin with the target fully
//! inside, preferring positions with ≥ `min_same_category` other objects of its category
//! fully inside; render both views with independently drawn appearances.
//!
//! Pixel conventions: query and chip pixels are continuous (pixel i covers [i, i+1], y down).
//! `bbox` = [x1, y1, x2, y2] of the footprint's outer ring in chip pixels; `polygon` = the
//! 4 corners of the footprint's minimum-area rectangle when that rectangle's axis-aligned box
//! equals `bbox` (rectangular footprints), otherwise the corners of `bbox` itself; corners
//! start at the top-most and go clockwise on screen, as in the CVOGL example record.

use super::camera::{render_perspective, Camera};
use super::geom::{bbox_of, interior_point, min_area_rect, P2};
use super::render::{ortho_world_to_pixel, render_ortho, Appearance};
use super::world::{Object, World};
use super::{Result, SynthError};
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Sampling ranges; defaults follow the CVOGL DroneAerial sizes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleConfig {
    /// Query (width, height) px; DroneAerial is 256×256.
    pub query_size: (u32, u32),
    /// Satellite chip side in px (CVOGL: 1024).
    pub chip_px: u32,
    /// Chip ground sampling distance range, m/px.
    pub gsd_m: (f64, f64),
    pub altitude_m: (f64, f64),
    /// Degrees below the horizon (90 = nadir).
    pub pitch_deg: (f64, f64),
    pub hfov_deg: (f64, f64),
    /// Minimum distance of the click from the query border, as a fraction of the size.
    pub click_margin_frac: f64,
    /// Minimum distance of the target box from the chip border, px.
    pub chip_margin_px: f64,
    /// Wanted number of *other* same-category objects inside the chip.
    pub min_same_category: usize,
    /// Smallest target: objects whose larger footprint side is shorter (m) are never
    /// targets (still drawn, and still distractors). 0 = every object; the default 10 leaves
    /// out cars, pools and the smallest houses: a few pixels at CVOGL's ground resolution.
    pub min_target_m: f64,
    /// Smallest target in the query: the drone camera is drawn again until the target's
    /// outline spans at least this fraction of the query's shorter side (0.1 of 256 px =
    /// 26 px, 13 px at the small models' input_scale 0.5), as an operator clicks what the
    /// video shows; a draw that never reaches it falls back to the largest nadir view that
    /// holds the target. 0 = no minimum.
    pub min_query_frac: f64,
    /// Camera heading range, degrees clockwise from north ((0, 360) = any; (0, 0) =
    /// north-up, as the satellite chip). Narrow ranges make easier data (curricula).
    pub heading_deg: (f64, f64),
    /// Render the query with the chip's appearance (season, light, colour) instead of an
    /// independently drawn drone appearance. An easy setting for curricula and ablations;
    /// the benchmark keeps the views different.
    pub same_appearance: bool,
    /// Prompts per satellite chip (1 to 16): each chip gets this many records, each with
    /// its own drone view and click, on different objects inside the chip — objects of the
    /// first target's category first, so the chip alone cannot tell which one is meant. The
    /// records share one satellite image file (as CVOGL records may); a trainer encodes it
    /// once for all of them.
    pub queries_per_chip: usize,
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig {
            query_size: (256, 256),
            chip_px: 1024,
            gsd_m: (0.3, 0.6),
            altitude_m: (80.0, 250.0),
            pitch_deg: (45.0, 90.0),
            hfov_deg: (50.0, 80.0),
            click_margin_frac: 0.15,
            chip_margin_px: 24.0,
            min_same_category: 2,
            min_target_m: 10.0,
            min_query_frac: 0.1,
            heading_deg: (0.0, 360.0),
            same_appearance: false,
            queries_per_chip: 1,
        }
    }
}

impl SampleConfig {
    /// Check ranges; returns the first problem found.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, value: String, why| Err(SynthError::InvalidConfig { field, value, why });
        let range_ok = |r: (f64, f64), lo: f64, hi: f64| r.0 <= r.1 && r.0 >= lo && r.1 <= hi;
        if self.query_size.0 < 16 || self.query_size.1 < 16 {
            return bad("query_size", format!("{:?}", self.query_size), "both sides must be ≥ 16 px");
        }
        if self.chip_px < 32 {
            return bad("chip_px", self.chip_px.to_string(), "must be ≥ 32 px");
        }
        if !range_ok(self.gsd_m, 0.01, 100.0) {
            return bad("gsd_m", format!("{:?}", self.gsd_m), "need 0.01 ≤ lo ≤ hi ≤ 100");
        }
        if !range_ok(self.altitude_m, 1.0, 10_000.0) {
            return bad("altitude_m", format!("{:?}", self.altitude_m), "need 1 ≤ lo ≤ hi ≤ 10000");
        }
        if !range_ok(self.pitch_deg, 20.0, 90.0) {
            return bad("pitch_deg", format!("{:?}", self.pitch_deg), "need 20 ≤ lo ≤ hi ≤ 90");
        }
        if !range_ok(self.hfov_deg, 5.0, 120.0) {
            return bad("hfov_deg", format!("{:?}", self.hfov_deg), "need 5 ≤ lo ≤ hi ≤ 120");
        }
        if !(1..=16).contains(&self.queries_per_chip) {
            return bad("queries_per_chip", self.queries_per_chip.to_string(), "need 1 ≤ k ≤ 16");
        }
        if !(0.0..=0.5).contains(&self.min_query_frac) {
            return bad("min_query_frac", self.min_query_frac.to_string(), "need 0 ≤ f ≤ 0.5");
        }
        if !(0.0..0.45).contains(&self.click_margin_frac) {
            return bad("click_margin_frac", self.click_margin_frac.to_string(), "need 0 ≤ m < 0.45");
        }
        if !range_ok(self.heading_deg, 0.0, 360.0) {
            return bad("heading_deg", format!("{:?}", self.heading_deg), "need 0 ≤ lo ≤ hi ≤ 360");
        }
        if !(0.0..self.chip_px as f64 / 4.0).contains(&self.chip_margin_px) {
            return bad("chip_margin_px", self.chip_margin_px.to_string(), "need 0 ≤ m < chip_px / 4");
        }
        let (chip_m, view_m) = self.max_target_m();
        if !(self.min_target_m >= 0.0 && self.min_target_m < chip_m.min(view_m)) {
            return bad("min_target_m", self.min_target_m.to_string(), "need 0 ≤ m < the largest target that fits");
        }
        Ok(())
    }

    /// Largest target extent (m) that fits the smallest chip and the widest nadir view.
    fn max_target_m(&self) -> (f64, f64) {
        let chip = self.chip_px as f64 * self.gsd_m.0 - 2.0 * self.chip_margin_px * self.gsd_m.0;
        let view = 2.0
            * self.altitude_m.1
            * (self.hfov_deg.1.to_radians() / 2.0).tan()
            * (1.0 - 2.0 * self.click_margin_frac)
            * 0.8;
        (chip, view)
    }
}

/// One synthetic CVOGL record with its images and georeferencing.
#[derive(Clone, Debug)]
pub struct SynthSample {
    /// Drone query, `query_size`.
    pub query: RgbImage,
    /// Satellite chip, `chip_px`².
    pub sat: RgbImage,
    /// Click (x, y) in query pixels.
    pub click: (f64, f64),
    /// Target box [x1, y1, x2, y2] in chip pixels.
    pub bbox: [f64; 4],
    /// Target rectangle corners (x, y)×4 in chip pixels; its bbox equals `bbox`.
    pub polygon: [f64; 8],
    pub category: String,
    pub object_id: u64,
    /// Other objects of `category` lying fully inside the chip.
    pub same_category_in_chip: usize,
    /// Larger side of the target's outline in the query, px (its projected footprint; 0
    /// when part of it is outside the image).
    pub target_query_px: f64,
    /// North-west corner of the chip (m, world frame).
    pub chip_origin_m: (f64, f64),
    pub gsd_m: f64,
    pub camera: Camera,
    pub sat_appearance: Appearance,
    pub drone_appearance: Appearance,
}

/// How a sample's two views relate: what makes it easy or hard, for breaking results
/// down (`smgeo synth cvogl` writes one per record to `synth_views_<split>.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewRecord {
    /// CVOGL record id.
    pub id: i64,
    pub object_id: u64,
    pub category: String,
    /// Other objects of the category fully inside the chip.
    pub same_category_in_chip: usize,
    /// Chip ground sampling distance, m/px.
    pub chip_gsd_m: f64,
    /// Drone camera height above ground (m), heading (° from north), pitch (° below the
    /// horizon), horizontal field of view (°).
    pub altitude_m: f64,
    pub heading_deg: f64,
    pub pitch_deg: f64,
    pub hfov_deg: f64,
    /// Larger side of the target in the query and in the chip, px of the written images.
    pub target_query_px: f64,
    pub target_chip_px: f64,
    /// `target_chip_px / target_query_px`: how much larger the chip draws the target than
    /// the query does (0 when the query size is unknown).
    pub chip_over_query: f64,
}

impl SynthSample {
    /// This sample's [`ViewRecord`] under record id `id`.
    pub fn view_record(&self, id: i64) -> ViewRecord {
        let chip_px = (self.bbox[2] - self.bbox[0]).max(self.bbox[3] - self.bbox[1]);
        ViewRecord {
            id,
            object_id: self.object_id,
            category: self.category.clone(),
            same_category_in_chip: self.same_category_in_chip,
            chip_gsd_m: self.gsd_m,
            altitude_m: self.camera.z,
            heading_deg: self.camera.heading_deg,
            pitch_deg: self.camera.pitch_deg,
            hfov_deg: self.camera.hfov_deg,
            target_query_px: self.target_query_px,
            target_chip_px: chip_px,
            chip_over_query: if self.target_query_px > 0.0 { chip_px / self.target_query_px } else { 0.0 },
        }
    }
}

/// Targets that fit the config, grouped by category (sorted by name).
fn eligible(world: &World, cfg: &SampleConfig) -> Vec<(String, Vec<usize>)> {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (k, o) in world.objects.iter().enumerate() {
        if !is_target(o, cfg) {
            continue;
        }
        match groups.iter_mut().find(|g| g.0 == o.category) {
            Some(g) => g.1.push(k),
            None => groups.push((o.category.clone(), vec![k])),
        }
    }
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    groups
}

/// Whether `o` may be a target: at least `min_target_m`, and smaller than the smallest
/// chip and the widest view can frame.
fn is_target(o: &Object, cfg: &SampleConfig) -> bool {
    let (chip, view) = cfg.max_target_m();
    let ext = (o.bbox[2] - o.bbox[0]).max(o.bbox[3] - o.bbox[1]);
    ext < chip.min(view) && ext >= cfg.min_target_m
}

/// Draw one sample. Fails only on an invalid config or a world without eligible targets.
pub fn make_sample(world: &World, rng: &mut impl Rng, cfg: &SampleConfig) -> Result<SynthSample> {
    let mut g = make_chip_samples(world, rng, cfg, 1)?;
    Ok(g.swap_remove(0))
}

/// Draw one chip with `cfg.queries_per_chip` prompts on it (see [`SampleConfig`]); the
/// first sample is the one [`make_sample`] draws from the same generator state.
pub fn make_group(world: &World, rng: &mut impl Rng, cfg: &SampleConfig) -> Result<Vec<SynthSample>> {
    make_chip_samples(world, rng, cfg, cfg.queries_per_chip)
}

fn make_chip_samples(world: &World, rng: &mut impl Rng, cfg: &SampleConfig, k: usize) -> Result<Vec<SynthSample>> {
    cfg.validate()?;
    let groups = eligible(world, cfg);
    if groups.is_empty() {
        let (chip_m, view_m) = cfg.max_target_m();
        return Err(SynthError::NoTarget { seed: world.seed, chip_m, view_m });
    }
    let g = &groups[rng.gen_range(0..groups.len())];
    let obj = &world.objects[g.1[rng.gen_range(0..g.1.len())]];
    let (camera, click) = view_of(obj, rng, cfg)?;
    let gsd = rng.gen_range(cfg.gsd_m.0..=cfg.gsd_m.1);
    let (origin, same) = place_chip(world, obj, gsd, rng, cfg);
    let sat_appearance = Appearance::satellite(rng);
    let drone_appearance = if cfg.same_appearance { sat_appearance.clone() } else { Appearance::drone(rng) };
    let sat = render_ortho(world, &sat_appearance, origin.0, origin.1, gsd, cfg.chip_px, cfg.chip_px);
    let chip = Chip { origin, gsd, sat, appearance: sat_appearance };
    let mut out = Vec::with_capacity(k);
    out.push(chip.sample(world, obj, camera, click, drone_appearance, same));
    if k > 1 {
        // Further prompts: other eligible objects fully inside the chip (with the margin),
        // the first target's category first; the first target again (another view) when
        // the chip holds no other.
        let span = cfg.chip_px as f64 * gsd;
        let mg = cfg.chip_margin_px * gsd;
        let chip_box = [origin.0, origin.1 - span, origin.0 + span, origin.1];
        let inner = [chip_box[0] + mg, chip_box[1] + mg, chip_box[2] - mg, chip_box[3] - mg];
        let candidates: Vec<&Object> = world.objects_inside(&inner).filter(|o| is_target(o, cfg)).collect();
        let mut used = vec![obj.id];
        for _ in 1..k {
            let free: Vec<&Object> = candidates.iter().copied().filter(|o| !used.contains(&o.id)).collect();
            let same_cat: Vec<&Object> = free.iter().copied().filter(|o| o.category == obj.category).collect();
            let pool = if !same_cat.is_empty() { same_cat } else { free };
            let o = if pool.is_empty() { obj } else { pool[rng.gen_range(0..pool.len())] };
            used.push(o.id);
            let (camera, click) = view_of(o, rng, cfg)?;
            let drone = if cfg.same_appearance { chip.appearance.clone() } else { Appearance::drone(rng) };
            let n_same = world.objects_inside(&chip_box).filter(|p| p.category == o.category && p.id != o.id).count();
            out.push(chip.sample(world, o, camera, click, drone, n_same));
        }
    }
    Ok(out)
}

/// A drone camera on `obj` and the click: the projection of its interior point.
fn view_of(obj: &Object, rng: &mut impl Rng, cfg: &SampleConfig) -> Result<(Camera, (f64, f64))> {
    let label = interior_point(&obj.footprint);
    let camera = place_camera(obj, label, rng, cfg)?;
    let click = camera
        .project([label.0, label.1, 0.0])
        .unwrap_or((cfg.query_size.0 as f64 / 2.0, cfg.query_size.1 as f64 / 2.0));
    Ok((camera, click))
}

/// A rendered satellite chip and its georeferencing.
struct Chip {
    origin: (f64, f64),
    gsd: f64,
    sat: RgbImage,
    appearance: Appearance,
}

impl Chip {
    /// The sample of a prompt on `obj` seen from `camera`.
    fn sample(
        &self,
        world: &World,
        obj: &Object,
        camera: Camera,
        click: (f64, f64),
        drone_appearance: Appearance,
        same: usize,
    ) -> SynthSample {
        let to_px = |p: &P2| ortho_world_to_pixel(self.origin.0, self.origin.1, self.gsd, p.0, p.1);
        let ring_px: Vec<P2> = obj.footprint[0].iter().map(to_px).collect();
        let b = bbox_of(ring_px.iter()).unwrap_or([0.0; 4]);
        let in_query: Option<Vec<P2>> = obj.footprint[0].iter().map(|p| camera.project([p.0, p.1, 0.0])).collect();
        let target_query_px =
            in_query.as_ref().and_then(|q| bbox_of(q.iter())).map_or(0.0, |q| (q[2] - q[0]).max(q[3] - q[1]));
        SynthSample {
            query: render_perspective(world, &drone_appearance, &camera),
            sat: self.sat.clone(),
            click,
            bbox: b,
            polygon: rect_polygon(&ring_px, b),
            category: obj.category.clone(),
            object_id: obj.id,
            same_category_in_chip: same,
            target_query_px,
            chip_origin_m: self.origin,
            gsd_m: self.gsd,
            camera,
            sat_appearance: self.appearance.clone(),
            drone_appearance,
        }
    }
}

fn draw_heading(rng: &mut impl Rng, cfg: &SampleConfig) -> f64 {
    let (h0, h1) = cfg.heading_deg;
    if h0 < h1 {
        rng.gen_range(h0..h1)
    } else {
        h0
    }
}

/// Random drone pose with the target's interior point on a random pixel and the whole outer
/// ring inside the image; falls back to a nadir view from the highest altitude.
fn place_camera(obj: &Object, label: P2, rng: &mut impl Rng, cfg: &SampleConfig) -> Result<Camera> {
    let (w, h) = cfg.query_size;
    let m = cfg.click_margin_frac;
    let min_px = cfg.min_query_frac * w.min(h) as f64;
    // The target's outline in the image: all inside, and its extent (px) when it is.
    let extent = |cam: &Camera| -> Option<f64> {
        let mut b = [f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY];
        for p in &obj.footprint[0] {
            let q = cam.project([p.0, p.1, 0.0]).filter(|q| cam.in_image(*q, 2.0))?;
            b = [b[0].min(q.0), b[1].min(q.1), b[2].max(q.0), b[3].max(q.1)];
        }
        Some((b[2] - b[0]).max(b[3] - b[1]))
    };
    for _ in 0..64 {
        let alt = rng.gen_range(cfg.altitude_m.0..=cfg.altitude_m.1);
        let heading = draw_heading(rng, cfg);
        let pitch = rng.gen_range(cfg.pitch_deg.0..=cfg.pitch_deg.1);
        let hfov = rng.gen_range(cfg.hfov_deg.0..=cfg.hfov_deg.1);
        let px = (rng.gen_range(m..=1.0 - m) * w as f64, rng.gen_range(m..=1.0 - m) * h as f64);
        let Some(cam) = Camera::looking_at(label, px, alt, heading, pitch, hfov, w, h)? else { continue };
        if extent(&cam).is_some_and(|e| e >= min_px) {
            return Ok(cam);
        }
    }
    // Fallback: nadir, centred, from the lowest altitude (narrowest view) upward; the
    // first that holds the whole target is the largest view of it.
    let c = (w as f64 / 2.0, h as f64 / 2.0);
    let heading = draw_heading(rng, cfg);
    for k in 0..=8 {
        let t = k as f64 / 8.0;
        let alt = cfg.altitude_m.0 + t * (cfg.altitude_m.1 - cfg.altitude_m.0);
        let hfov = cfg.hfov_deg.0 + t * (cfg.hfov_deg.1 - cfg.hfov_deg.0);
        if let Some(cam) = Camera::looking_at(label, c, alt, heading, 90.0, hfov, w, h)? {
            if extent(&cam).is_some() || k == 8 {
                return Ok(cam);
            }
        }
    }
    Err(SynthError::InvalidCamera { field: "pitch_deg", value: 90.0 })
}

/// Chip north-west corner with the target inside (margin), keeping the chip inside the world
/// where possible. Tries up to 16 positions, every other one framing the target together with
/// a random same-category neighbour that fits with it; keeps the first position with at least
/// `min_same_category` neighbours inside (else the best). Returns (origin, neighbours inside).
fn place_chip(world: &World, obj: &Object, gsd: f64, rng: &mut impl Rng, cfg: &SampleConfig) -> ((f64, f64), usize) {
    let span = cfg.chip_px as f64 * gsd;
    let mg = cfg.chip_margin_px * gsd;
    let union = |a: &[f64; 4], b: &[f64; 4]| [a[0].min(b[0]), a[1].min(b[1]), a[2].max(b[2]), a[3].max(b[3])];
    let fits = |u: &[f64; 4]| u[2] - u[0] <= span - 2.0 * mg && u[3] - u[1] <= span - 2.0 * mg;
    let neighbours: Vec<&Object> = world
        .objects
        .iter()
        .filter(|p| p.category == obj.category && p.id != obj.id && fits(&union(&obj.bbox, &p.bbox)))
        .collect();
    let mut best = ((obj.bbox[0] - mg, obj.bbox[3] + mg), 0usize, false);
    for k in 0..16 {
        let b = match (k % 2, neighbours.len()) {
            (1, n) if n > 0 => union(&obj.bbox, &neighbours[rng.gen_range(0..n)].bbox),
            _ => obj.bbox,
        };
        let o = chip_origin(b, span, mg, world.extent_m, rng);
        let chip = [o.0, o.1 - span, o.0 + span, o.1];
        let n = world.objects_inside(&chip).filter(|p| p.category == obj.category && p.id != obj.id).count();
        if !best.2 || n > best.1 {
            best = (o, n, true);
        }
        if n >= cfg.min_same_category {
            break;
        }
    }
    (best.0, best.1)
}

/// Random chip origin (north-west corner) holding box `b` with margin `mg`, inside the world
/// extent when that is possible: x0 ∈ [b.max_x + mg − span, b.min_x − mg],
/// y0 ∈ [b.max_y + mg, b.min_y − mg + span].
fn chip_origin(b: [f64; 4], span: f64, mg: f64, extent: (f64, f64), rng: &mut impl Rng) -> (f64, f64) {
    let clamp_range = |lo: f64, hi: f64, wlo: f64, whi: f64| {
        let (l2, h2) = (lo.max(wlo), hi.min(whi));
        if l2 <= h2 {
            (l2, h2)
        } else {
            (lo, hi.max(lo))
        }
    };
    let (xl, xh) = clamp_range(b[2] + mg - span, b[0] - mg, 0.0, extent.0 - span);
    let (yl, yh) = clamp_range(b[3] + mg, b[1] - mg + span, span, extent.1);
    (rng.gen_range(xl..=xh), rng.gen_range(yl..=yh))
}

/// Polygon field: the min-area rectangle when its bbox equals `b`, else `b`'s corners;
/// ordered from the top-most corner, clockwise on screen (y down).
fn rect_polygon(ring_px: &[P2], b: [f64; 4]) -> [f64; 8] {
    let r = min_area_rect(ring_px);
    let rb = bbox_of(r.iter()).unwrap_or(b);
    // 0.05 px absorbs rounding in hand-made rectangles such as the CVOGL example.
    let same = rb.iter().zip(b.iter()).all(|(a, c)| (a - c).abs() < 0.05);
    let mut pts: Vec<P2> =
        if same && r.len() == 4 { r } else { vec![(b[0], b[1]), (b[2], b[1]), (b[2], b[3]), (b[0], b[3])] };
    // Clockwise on screen (y down) = positive shoelace sum in pixel coordinates.
    if super::geom::ring_area(&pts) < 0.0 {
        pts.reverse();
    }
    let start = (0..4).min_by(|&i, &j| pts[i].1.total_cmp(&pts[j].1).then(pts[i].0.total_cmp(&pts[j].0))).unwrap_or(0);
    let mut out = [0.0; 8];
    for k in 0..4 {
        let p = pts[(start + k) % 4];
        out[2 * k] = p.0;
        out[2 * k + 1] = p.1;
    }
    out
}

/// Deterministic stream of `n` samples: sample i uses ChaCha8 seeded with `seed`, stream i,
/// so any sample can be regenerated alone. Validates `cfg` and the world up front.
pub fn generate_split<'a>(
    world: &'a World,
    seed: u64,
    n: usize,
    cfg: &'a SampleConfig,
) -> Result<impl Iterator<Item = Result<SynthSample>> + 'a> {
    cfg.validate()?;
    if eligible(world, cfg).is_empty() {
        let (chip_m, view_m) = cfg.max_target_m();
        return Err(SynthError::NoTarget { seed: world.seed, chip_m, view_m });
    }
    Ok((0..n).map(move |i| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(i as u64);
        make_sample(world, &mut rng, cfg)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::geom::{dist_to_boundary, point_in_rings};
    use std::hash::{Hash, Hasher};

    fn small_cfg() -> SampleConfig {
        SampleConfig {
            query_size: (64, 64),
            chip_px: 256,
            gsd_m: (0.5, 0.8),
            chip_margin_px: 8.0,
            ..Default::default()
        }
    }

    fn digest(s: &SynthSample) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        s.query.as_raw().hash(&mut h);
        s.sat.as_raw().hash(&mut h);
        s.object_id.hash(&mut h);
        s.click.0.to_bits().hash(&mut h);
        h.finish()
    }

    #[test]
    fn split_is_deterministic() {
        let w = World::generate(5, (700.0, 700.0));
        let cfg = small_cfg();
        let a: Vec<u64> = generate_split(&w, 9, 3, &cfg).unwrap().map(|s| digest(&s.unwrap())).collect();
        let b: Vec<u64> = generate_split(&w, 9, 3, &cfg).unwrap().map(|s| digest(&s.unwrap())).collect();
        let c: Vec<u64> = generate_split(&w, 10, 3, &cfg).unwrap().map(|s| digest(&s.unwrap())).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a[0], a[1]);
    }

    #[test]
    fn click_box_and_polygon_are_consistent() {
        let w = World::generate(21, (900.0, 900.0));
        let cfg = small_cfg();
        let mut with_same = 0;
        let n = 16;
        for s in generate_split(&w, 1, n, &cfg).unwrap() {
            let s = s.unwrap();
            let obj = w.objects.iter().find(|o| o.id == s.object_id).unwrap();
            assert_eq!(obj.category, s.category);
            // Click inside the query and on the target on the ground.
            assert!(s.camera.in_image(s.click, 0.0), "{:?}", s.click);
            let g = s.camera.unproject_ground(s.click.0, s.click.1).unwrap();
            assert!(point_in_rings(&obj.footprint, g) || dist_to_boundary(&obj.footprint, g) < 1e-6, "{g:?}");
            // Box inside the chip, and equal to the bbox of the polygon field.
            let c = cfg.chip_px as f64;
            assert!(s.bbox[0] >= 0.0 && s.bbox[1] >= 0.0 && s.bbox[2] <= c && s.bbox[3] <= c, "{:?}", s.bbox);
            assert!(s.bbox[0] < s.bbox[2] && s.bbox[1] < s.bbox[3]);
            let xs = [s.polygon[0], s.polygon[2], s.polygon[4], s.polygon[6]];
            let ys = [s.polygon[1], s.polygon[3], s.polygon[5], s.polygon[7]];
            let pb = [
                xs.iter().cloned().fold(f64::MAX, f64::min),
                ys.iter().cloned().fold(f64::MAX, f64::min),
                xs.iter().cloned().fold(f64::MIN, f64::max),
                ys.iter().cloned().fold(f64::MIN, f64::max),
            ];
            for k in 0..4 {
                assert!((pb[k] - s.bbox[k]).abs() < 0.05, "{pb:?} vs {:?}", s.bbox);
            }
            // Georeferencing: the box maps back onto the object's bbox in metres.
            assert!((s.chip_origin_m.0 + s.bbox[0] * s.gsd_m - obj.bbox[0]).abs() < 1e-6);
            assert!((s.chip_origin_m.1 - s.bbox[1] * s.gsd_m - obj.bbox[3]).abs() < 1e-6);
            // Whenever another object of the category fits in one chip with the target, the
            // chip holds at least one.
            let room = (c - 2.0 * cfg.chip_margin_px) * s.gsd_m;
            let possible = w.objects.iter().any(|p| {
                let u = [
                    p.bbox[0].min(obj.bbox[0]),
                    p.bbox[1].min(obj.bbox[1]),
                    p.bbox[2].max(obj.bbox[2]),
                    p.bbox[3].max(obj.bbox[3]),
                ];
                p.id != obj.id && p.category == obj.category && u[2] - u[0] <= room && u[3] - u[1] <= room
            });
            assert!(!possible || s.same_category_in_chip >= 1, "{} {}", s.category, s.object_id);
            with_same += possible as usize;
        }
        assert!(with_same * 2 >= n, "only {with_same} of {n} targets have a neighbour of their category");
    }

    #[test]
    fn click_and_box_land_on_the_rendered_target() {
        use crate::synth::world::{Layer, Material, Shape};
        // One red 20 m square in an otherwise empty 300 m world: both views must show red at
        // the click (query) and at the box centre (chip), whatever the appearances.
        let fp = crate::synth::geom::rect((150.0, 140.0), 20.0, 20.0, 0.0);
        let paint = Material::Paint { rgb: [230, 20, 20] };
        let shapes = vec![Shape { rings: vec![fp.clone()], material: paint, layer: Layer::Object, bbox: [0.0; 4] }];
        let obj = Object { id: 7, category: "target".into(), footprint: vec![fp], height_m: 0.0, bbox: [0.0; 4] };
        let w = World::from_parts(0, (300.0, 300.0), shapes, vec![obj]);
        let cfg = SampleConfig { altitude_m: (80.0, 120.0), hfov_deg: (50.0, 60.0), ..small_cfg() };
        for s in generate_split(&w, 3, 6, &cfg).unwrap() {
            let s = s.unwrap();
            let red = |p: [u8; 3]| p[0] as i32 > p[1] as i32 + 40 && p[0] as i32 > p[2] as i32 + 40;
            let q = s.query.get_pixel(s.click.0 as u32, s.click.1 as u32).0;
            assert!(red(q), "query at click {:?}: {q:?}", s.click);
            let (cx, cy) = ((s.bbox[0] + s.bbox[2]) / 2.0, (s.bbox[1] + s.bbox[3]) / 2.0);
            let p = s.sat.get_pixel(cx as u32, cy as u32).0;
            assert!(red(p), "chip at box centre: {p:?}");
            let outside = s.sat.get_pixel((s.bbox[2] + 6.0) as u32, cy as u32).0;
            assert!(!red(outside), "chip right of the box: {outside:?}");
        }
    }

    #[test]
    fn polygon_order_matches_cvogl_example() {
        // Corners of the CVOGL example record (SMGEO_SPEC §7), fed in another order.
        let ring = vec![(355.29, 657.03), (258.56, 424.96), (495.99, 325.97), (592.76, 558.05)];
        let b = [258.56, 325.97, 592.76, 657.03];
        let p = rect_polygon(&ring, b);
        let want = [495.99, 325.97, 592.76, 558.05, 355.29, 657.03, 258.56, 424.96];
        for k in 0..8 {
            assert!((p[k] - want[k]).abs() < 0.05, "{p:?}");
        }
    }

    #[test]
    fn heading_range_and_shared_appearance_are_honoured() {
        let w = World::generate(21, (900.0, 900.0));
        let cfg = SampleConfig { heading_deg: (30.0, 60.0), ..small_cfg() };
        for s in generate_split(&w, 4, 6, &cfg).unwrap() {
            let s = s.unwrap();
            assert!((30.0..60.0).contains(&s.camera.heading_deg), "{}", s.camera.heading_deg);
            assert_ne!(s.drone_appearance, s.sat_appearance);
        }
        let cfg = SampleConfig { heading_deg: (0.0, 0.0), same_appearance: true, ..small_cfg() };
        for s in generate_split(&w, 4, 6, &cfg).unwrap() {
            let s = s.unwrap();
            assert_eq!(s.camera.heading_deg, 0.0);
            assert_eq!(s.drone_appearance, s.sat_appearance);
        }
        let bad = SampleConfig { heading_deg: (10.0, 400.0), ..small_cfg() };
        assert!(matches!(bad.validate(), Err(SynthError::InvalidConfig { field: "heading_deg", .. })));
    }

    #[test]
    fn min_target_size_leaves_small_objects_out() {
        let w = World::generate(21, (900.0, 900.0));
        let ext = |o: &Object| (o.bbox[2] - o.bbox[0]).max(o.bbox[3] - o.bbox[1]);
        let cfg = small_cfg();
        assert_eq!(cfg.min_target_m, 10.0);
        let small = |s: &SynthSample| ext(w.objects.iter().find(|o| o.id == s.object_id).unwrap()) < 10.0;
        let samples: Vec<_> = generate_split(&w, 5, 30, &cfg).unwrap().into_iter().map(|s| s.unwrap()).collect();
        assert!(samples.iter().all(|s| !small(s)));
        assert!(samples.iter().all(|s| s.category != "car"));
        // Without the limit, small objects are targets too (cars, pools).
        let every = SampleConfig { min_target_m: 0.0, ..small_cfg() };
        let all: Vec<_> = generate_split(&w, 5, 30, &every).unwrap().into_iter().map(|s| s.unwrap()).collect();
        assert!(all.iter().any(small));
        let bad = SampleConfig { min_target_m: -1.0, ..small_cfg() };
        assert!(matches!(bad.validate(), Err(SynthError::InvalidConfig { field: "min_target_m", .. })));
    }

    #[test]
    fn targets_are_large_enough_in_the_query() {
        let w = World::generate(21, (900.0, 900.0));
        // The target's outline extent in the query, px.
        let extent = |s: &SynthSample| {
            let obj = w.objects.iter().find(|o| o.id == s.object_id).unwrap();
            let q: Vec<(f64, f64)> =
                obj.footprint[0].iter().map(|p| s.camera.project([p.0, p.1, 0.0]).unwrap()).collect();
            let dx = q.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max)
                - q.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
            let dy = q.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max)
                - q.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
            dx.max(dy)
        };
        // A 64 px query: at least 0.15 × 64 = 9.6 px, unless the nadir fallback was needed.
        let cfg = SampleConfig { min_query_frac: 0.15, ..small_cfg() };
        let samples: Vec<_> = generate_split(&w, 5, 40, &cfg).unwrap().into_iter().map(|s| s.unwrap()).collect();
        let fallback = |s: &SynthSample| s.camera.pitch_deg == 90.0;
        assert!(samples.iter().filter(|s| !fallback(s)).all(|s| extent(s) >= 9.6));
        assert!(samples.iter().filter(|s| !fallback(s)).count() >= 30, "the fallback should be rare");
        // The view record carries the same extent, and the chip's over it.
        for (i, s) in samples.iter().enumerate() {
            let v = s.view_record(i as i64);
            assert!((v.target_query_px - extent(s)).abs() < 1e-9, "{} vs {}", v.target_query_px, extent(s));
            let chip = (s.bbox[2] - s.bbox[0]).max(s.bbox[3] - s.bbox[1]);
            assert_eq!((v.id, v.target_chip_px), (i as i64, chip));
            assert!((v.chip_over_query * v.target_query_px - chip).abs() < 1e-9);
            assert_eq!((v.altitude_m, v.pitch_deg, v.chip_gsd_m), (s.camera.z, s.camera.pitch_deg, s.gsd_m));
        }
        // Without the minimum, some targets are smaller (high, wide, oblique views).
        let free = SampleConfig { min_query_frac: 0.0, ..small_cfg() };
        let all: Vec<_> = generate_split(&w, 5, 40, &free).unwrap().into_iter().map(|s| s.unwrap()).collect();
        assert!(all.iter().any(|s| extent(s) < 9.6));
        let bad = SampleConfig { min_query_frac: 0.6, ..small_cfg() };
        assert!(matches!(bad.validate(), Err(SynthError::InvalidConfig { field: "min_query_frac", .. })));
    }

    #[test]
    fn instances_of_a_category_differ_in_colour() {
        // Roof colours are drawn per building, so a chip's same-category neighbours can be
        // told apart by colour (as in real imagery), not only by shape and surroundings.
        let w = World::generate(5, (1500.0, 1500.0));
        let roof_colours = |cat: &str| {
            let mut colours = std::collections::HashSet::new();
            for o in w.objects.iter().filter(|o| o.category == cat) {
                let c = interior_point(&o.footprint);
                for sh in &w.shapes {
                    if let crate::synth::world::Material::Roof { rgb, .. } = &sh.material {
                        if point_in_rings(&sh.rings, c) {
                            colours.insert(*rgb);
                        }
                    }
                }
            }
            colours.len()
        };
        for cat in ["building_residential", "building_apartment", "building_retail", "building_industrial"] {
            assert!(roof_colours(cat) >= 4, "{cat}: {} roof colours", roof_colours(cat));
        }
    }

    #[test]
    fn neighbouring_courts_and_tanks_differ_in_colour() {
        // Court surfaces and tank tops are drawn per object: in a row of courts or a tank
        // farm, neighbours mostly differ, so a prompt can tell them apart by colour.
        use crate::synth::world::{Layer, Material};
        let w = World::generate(5, (1500.0, 1500.0));
        let top_colour = |o: &Object| {
            let c = interior_point(&o.footprint);
            w.shapes.iter().rev().find_map(|sh| match &sh.material {
                Material::Paint { rgb } if sh.layer == Layer::Object && point_in_rings(&sh.rings, c) => Some(*rgb),
                _ => None,
            })
        };
        for cat in ["sports_court", "storage_tank"] {
            let objs: Vec<&Object> = w.objects.iter().filter(|o| o.category == cat).collect();
            let centre = |o: &Object| ((o.bbox[0] + o.bbox[2]) / 2.0, (o.bbox[1] + o.bbox[3]) / 2.0);
            let (mut pairs, mut differ) = (0, 0);
            for (i, a) in objs.iter().enumerate() {
                for b in &objs[i + 1..] {
                    let (pa, pb) = (centre(a), centre(b));
                    let size = (a.bbox[2] - a.bbox[0]).max(a.bbox[3] - a.bbox[1]);
                    if (pa.0 - pb.0).hypot(pa.1 - pb.1) < size + 10.0 {
                        pairs += 1;
                        let (ca, cb) = (top_colour(a).expect("painted top"), top_colour(b).expect("painted top"));
                        differ += usize::from(ca != cb);
                    }
                }
            }
            assert!(pairs >= 10, "{cat}: only {pairs} neighbour pairs in this world");
            assert!(differ * 10 >= pairs * 6, "{cat}: {differ} of {pairs} neighbour pairs differ in colour");
        }
    }

    #[test]
    fn a_chip_with_several_prompts_puts_them_on_different_objects_of_the_category() {
        let w = World::generate(21, (900.0, 900.0));
        let cfg = SampleConfig { queries_per_chip: 4, ..small_cfg() };
        let (mut same_cat, mut total, mut distinct) = (0, 0, 0);
        for seed in 0..4u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let g = make_group(&w, &mut rng, &cfg).unwrap();
            // The first prompt is what make_sample draws from the same state.
            let one = make_sample(&w, &mut ChaCha8Rng::seed_from_u64(seed), &SampleConfig { ..small_cfg() }).unwrap();
            assert_eq!(digest(&g[0]), digest(&one));
            assert_eq!(g.len(), 4);
            let mut ids: Vec<u64> = g.iter().map(|s| s.object_id).collect();
            ids.sort();
            ids.dedup();
            // distinct objects as long as the chip holds enough eligible ones
            let (span, mg) = (cfg.chip_px as f64 * g[0].gsd_m, cfg.chip_margin_px * g[0].gsd_m);
            let o = g[0].chip_origin_m;
            let inner = [o.0 + mg, o.1 - span + mg, o.0 + span - mg, o.1 - mg];
            let available = eligible(&w, &cfg)
                .iter()
                .flat_map(|c| c.1.iter())
                .filter(|&&i| {
                    let b = w.objects[i].bbox;
                    b[0] >= inner[0] && b[1] >= inner[1] && b[2] <= inner[2] && b[3] <= inner[3]
                })
                .count();
            assert_eq!(ids.len(), available.min(4), "seed {seed}: {available} eligible objects in the chip");
            distinct += ids.len();
            // another category only once the first target's category is used up in the chip
            let same_inside: Vec<u64> = eligible(&w, &cfg)
                .iter()
                .filter(|c| c.0 == g[0].category)
                .flat_map(|c| c.1.iter())
                .map(|&i| &w.objects[i])
                .filter(|ob| {
                    ob.bbox[0] >= inner[0] && ob.bbox[1] >= inner[1] && ob.bbox[2] <= inner[2] && ob.bbox[3] <= inner[3]
                })
                .map(|ob| ob.id)
                .collect();
            for j in 1..g.len() {
                if g[j].category != g[0].category {
                    let before: Vec<u64> = g[..j].iter().map(|s| s.object_id).collect();
                    assert!(
                        same_inside.iter().all(|id| before.contains(id)),
                        "seed {seed}: prompt {j} left its category early"
                    );
                }
            }
            for s in &g {
                assert!(s.sat == g[0].sat && s.chip_origin_m == g[0].chip_origin_m && s.gsd_m == g[0].gsd_m);
                let obj = w.objects.iter().find(|o| o.id == s.object_id).unwrap();
                // the click lies on the object on the ground, the box frames it in the chip
                let p = s.camera.unproject_ground(s.click.0, s.click.1).unwrap();
                assert!(point_in_rings(&obj.footprint, p) || dist_to_boundary(&obj.footprint, p) < 1e-6);
                assert!((s.chip_origin_m.0 + s.bbox[0] * s.gsd_m - obj.bbox[0]).abs() < 1e-6);
                let m = cfg.chip_margin_px - 1e-6;
                let c = cfg.chip_px as f64;
                assert!(s.bbox[0] >= m && s.bbox[1] >= m && s.bbox[2] <= c - m && s.bbox[3] <= c - m, "{:?}", s.bbox);
                assert!((obj.bbox[2] - obj.bbox[0]).max(obj.bbox[3] - obj.bbox[1]) >= cfg.min_target_m);
                same_cat += usize::from(s.category == g[0].category);
                total += 1;
            }
        }
        assert!(distinct >= 12, "only {distinct} distinct targets in 16 prompts");
        assert!(same_cat > total / 2, "{same_cat} of {total} prompts in the first target's category");
        let bad = SampleConfig { queries_per_chip: 0, ..small_cfg() };
        assert!(matches!(bad.validate(), Err(SynthError::InvalidConfig { field: "queries_per_chip", .. })));
    }

    #[test]
    fn bad_config_is_rejected() {
        let w = World::generate(1, (300.0, 300.0));
        let cfg = SampleConfig { gsd_m: (0.6, 0.3), ..Default::default() };
        assert!(matches!(generate_split(&w, 0, 1, &cfg), Err(SynthError::InvalidConfig { field: "gsd_m", .. })));
    }
}
