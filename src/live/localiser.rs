//! The model stage of the live pipeline: one video frame + click + a ground position →
//! the clicked object's box in a satellite chip, in WGS84.
//!
//! - **Query**: a square crop of the frame (side = the frame's shorter side) around the
//!   click, clamped to the frame, resized in one pass to the model's query input; the click
//!   moves with it. The synthetic CVOGL queries the demo model learns from are square
//!   perspective views, and so are CVOGL's DroneAerial ones.
//! - **Reference**: a chip of `chip_px` × `chip_px` pixels at `chip_gsd_m` around the
//!   ground position, read from the mosaic *directly at the model's input size* (GDAL
//!   resamples once: `chip_px · input_scale` pixels at `chip_gsd_m / input_scale`). The
//!   centre is snapped to a grid of `snap_frac · chip span` so that nearby frames share one
//!   chip, whose satellite features are computed once and kept in an LRU cache
//!   (bounded by count and bytes). A tracked object then costs the query branch only.
//! - **Result**: the decoded box (chip input pixels) → mosaic CRS → WGS84 centre and
//!   footprint ring, with per-step timings.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use image::{imageops, ImageBuffer, Rgb};
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::georef::{
    pixel_box_to_wgs84, ChipGrid, ChipRequest, CoveragePolicy, Crs, CrsTransform, GeoTransform, LonLat, MosaicReader,
    MosaicSpec, PixelBox, Resampling,
};
use crate::model::service::{BatchPolicy, ModelClient, ModelService};
use crate::model::{preprocess, ModelConfig, RefFeatures};

/// Errors of the model stage; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum LocaliseError {
    #[error("invalid localiser setting {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("click ({x:.1}, {y:.1}) lies outside the {w}×{h} frame")]
    ClickOutside { x: f64, y: f64, w: u32, h: u32 },
    #[error("frame buffer: {0}")]
    Frame(String),
    #[error("no satellite chip at lon {lon:.6}, lat {lat:.6}: {reason}")]
    Chip { lon: f64, lat: f64, reason: String },
    #[error("model: {0}")]
    Model(#[from] crate::model::ModelError),
    #[error("georeferencing the result: {0}")]
    Georef(#[from] crate::georef::GeorefError),
    #[error("weights {path}: {reason}")]
    Weights { path: String, reason: String },
}

pub type Result<T> = std::result::Result<T, LocaliseError>;

/// Chip and cache settings (TOML `[localiser]` of the live config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocaliserConfig {
    /// Chip side in pixels at `chip_gsd_m` (CVOGL: 1024). The model sees it scaled by its
    /// `input_scale`.
    pub chip_px: u32,
    /// Chip ground sampling distance, m/px (what the model was trained on).
    pub chip_gsd_m: f64,
    /// Query side before the model's `input_scale` (CVOGL DroneAerial: 256).
    pub query_px: u32,
    /// Chip centres snap to a grid of this fraction of the chip span (0 = no snapping).
    pub snap_frac: f64,
    /// Refuse chips with less mosaic coverage than this (0..=1).
    pub min_coverage: f64,
    /// Cached satellite-feature sets (chips), at most.
    pub cache_chips: usize,
    /// Cached satellite features, at most this many MiB.
    pub cache_mib: usize,
    /// Inference precision: auto (bf16 on CUDA, float32 on CPU), f32, bf16 or f16.
    pub precision: crate::model::Precision,
    /// Most queries the model service runs in one call, across streams and chips.
    pub batch_max: usize,
    /// Longest the first query of a batch waits for more, ms (0: never waits; a batch is
    /// what queued while the previous call ran).
    pub batch_wait_ms: f64,
    /// Telemetry prior, metres (0 = off): where KLV puts the click on the ground (the
    /// click through the frame's corner coordinates), the heatmap's argmax is taken over
    /// logit − d²/2σ², d the distance of each cell centre from that point. The image match
    /// then chooses among the objects telemetry allows — σ is the telemetry's error, a
    /// few tens of metres for small drones — instead of anywhere in the chip. Prompts
    /// without KLV corners are decoded without it.
    pub prior_sigma_m: f64,
}

impl Default for LocaliserConfig {
    fn default() -> Self {
        LocaliserConfig {
            chip_px: 1024,
            chip_gsd_m: 0.45,
            query_px: 256,
            snap_frac: 0.25,
            min_coverage: 0.5,
            cache_chips: 16,
            cache_mib: 512,
            precision: crate::model::Precision::Auto,
            batch_max: 8,
            batch_wait_ms: 0.0,
            prior_sigma_m: 0.0,
        }
    }
}

impl LocaliserConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: &str| Err(LocaliseError::Config { field, reason: reason.into() });
        if !(32..=8192).contains(&self.chip_px) {
            return bad("chip_px", "must be in 32..=8192");
        }
        if !(self.chip_gsd_m.is_finite() && self.chip_gsd_m > 0.0 && self.chip_gsd_m < 1000.0) {
            return bad("chip_gsd_m", "must be a positive number of metres per pixel");
        }
        if !(16..=4096).contains(&self.query_px) {
            return bad("query_px", "must be in 16..=4096");
        }
        if !(0.0..=1.0).contains(&self.snap_frac) {
            return bad("snap_frac", "must be in 0..=1");
        }
        if !(0.0..=1.0).contains(&self.min_coverage) {
            return bad("min_coverage", "must be in 0..=1");
        }
        if self.cache_chips == 0 {
            return bad("cache_chips", "must be at least 1");
        }
        if !(1..=1024).contains(&self.batch_max) {
            return bad("batch_max", "must be in 1..=1024");
        }
        if !(self.batch_wait_ms.is_finite() && (0.0..=1000.0).contains(&self.batch_wait_ms)) {
            return bad("batch_wait_ms", "must be in 0..=1000 ms");
        }
        if !(self.prior_sigma_m.is_finite() && (0.0..=1e5).contains(&self.prior_sigma_m)) {
            return bad("prior_sigma_m", "must be in 0..=100000 m (0 = no telemetry prior)");
        }
        Ok(())
    }
}

/// Wall-clock time of each step of one localisation, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StepTimes {
    /// Crop, resize, normalise, click channel (the model service uploads it).
    pub query_prep_ms: f64,
    /// Mosaic read (0 on a cache hit).
    pub chip_ms: f64,
    /// Satellite branch (0 on a cache hit).
    pub reference_ms: f64,
    /// Query branch, fusion, head, decode.
    pub query_ms: f64,
    /// Box → WGS84.
    pub georef_ms: f64,
    pub total_ms: f64,
}

/// One localisation.
#[derive(Debug, Clone, Serialize)]
pub struct Localisation {
    /// Box (x1, y1, x2, y2) in chip pixels (the chip as the model saw it).
    pub box_px: [f64; 4],
    pub score: f64,
    /// The heatmap cell (row, column) the box was decoded from.
    pub cell: (i64, i64),
    pub center: LonLat,
    /// Closed ring of the box on the ground.
    pub footprint: [LonLat; 5],
    pub width_m: f64,
    pub height_m: f64,
    /// Chip CRS label, geotransform of the model-size chip, mosaic files.
    pub chip_crs: String,
    pub chip_geotransform: [f64; 6],
    pub chip_sources: Vec<String>,
    pub chip_size: (usize, usize),
    /// Whether the satellite features came from the cache.
    pub cached: bool,
    /// The square crop of the frame used as query (x0, y0, side), frame pixels.
    pub query_crop: (u32, u32, u32),
    pub times: StepTimes,
}

struct CachedChip {
    key: (i64, i64),
    feats: RefFeatures,
    gt: GeoTransform,
    crs: Crs,
    sources: Vec<String>,
    size: (usize, usize),
    bytes: usize,
}

/// Model + mosaic + feature cache. Not `Send` (GDAL handles): build it on the thread
/// that uses it.
pub struct Localiser {
    model: ModelClient,
    cfg: LocaliserConfig,
    mosaic: MosaicReader,
    to_crs: CrsTransform,
    /// Model input sides: query square, satellite square.
    query_in: i64,
    sat_in: i64,
    cache: VecDeque<Arc<CachedChip>>,
    hits: u64,
    misses: u64,
}

/// Round `x` to the nearest positive multiple of `m`.
/// The decoded box in chip pixels; a degenerate (zero-size) box still has a centre, so
/// it is widened to one pixel.
fn widen_degenerate(b: [f32; 4]) -> PixelBox {
    let pb = PixelBox { x1: b[0] as f64, y1: b[1] as f64, x2: b[2] as f64, y2: b[3] as f64 };
    if pb.x2 - pb.x1 < 1e-3 || pb.y2 - pb.y1 < 1e-3 {
        let (mx, my) = pb.center();
        PixelBox { x1: mx - 0.5, y1: my - 0.5, x2: mx + 0.5, y2: my + 0.5 }
    } else {
        pb
    }
}

fn to_multiple(x: f64, m: i64) -> i64 {
    ((x / m as f64).round() as i64).max(1) * m
}

impl Localiser {
    /// Load weights (strict) into a model of `model_cfg`, open the mosaic.
    pub fn new(
        model_cfg: &ModelConfig,
        weights_path: &Path,
        mosaic: &MosaicSpec,
        cfg: LocaliserConfig,
        dev: Device,
    ) -> Result<Self> {
        cfg.validate()?;
        let service = Self::start_service(model_cfg, weights_path, &cfg, dev)?;
        Self::with_model(service.client(), mosaic, cfg)
    }

    /// Load the weights and start a model service with `cfg`'s precision and batching;
    /// share its clients between the localisers of several streams.
    pub fn start_service(
        model_cfg: &ModelConfig,
        weights_path: &Path,
        cfg: &LocaliserConfig,
        dev: Device,
    ) -> Result<ModelService> {
        cfg.validate()?;
        let err = |e: String| LocaliseError::Weights { path: weights_path.display().to_string(), reason: e };
        let (vs, model) = crate::weights_cli::load_for_inference(model_cfg, weights_path, dev, cfg.precision)
            .map_err(|e| err(e.to_string()))?;
        let policy = BatchPolicy { max_batch: cfg.batch_max, max_wait_ms: cfg.batch_wait_ms };
        Ok(ModelService::start(vs, model, policy)?)
    }

    /// A localiser that runs its model calls on a (possibly shared) model service.
    pub fn with_model(model: ModelClient, mosaic: &MosaicSpec, cfg: LocaliserConfig) -> Result<Self> {
        cfg.validate()?;
        let model_cfg = model.config().clone();
        let mosaic = mosaic.open()?;
        let to_crs = CrsTransform::new(mosaic.crs())?;
        let m = model_cfg.input_multiple();
        let s = model_cfg.input_scale;
        let query_in = to_multiple(cfg.query_px as f64 * s, m);
        let sat_in = to_multiple(cfg.chip_px as f64 * s, m);
        Ok(Localiser { model, cfg, mosaic, to_crs, query_in, sat_in, cache: VecDeque::new(), hits: 0, misses: 0 })
    }

    pub fn config(&self) -> &LocaliserConfig {
        &self.cfg
    }

    pub fn model_config(&self) -> &ModelConfig {
        self.model.config()
    }

    pub fn device(&self) -> Device {
        self.model.device()
    }

    /// The model service this localiser uses (counters: batches, largest batch, …).
    pub fn model(&self) -> &ModelClient {
        &self.model
    }

    pub fn mosaic(&self) -> &MosaicReader {
        &self.mosaic
    }

    /// (hits, misses, held chips) of the feature cache.
    pub fn cache_stats(&self) -> (u64, u64, usize) {
        (self.hits, self.misses, self.cache.len())
    }

    /// Model input sides (query, satellite), pixels.
    pub fn input_sides(&self) -> (i64, i64) {
        (self.query_in, self.sat_in)
    }

    /// Run the model once on blank inputs (allocations, kernels, CUDA context).
    pub fn warm_up(&self) -> Result<()> {
        let dev = self.model.device();
        let q = tch::Tensor::zeros([1, 4, self.query_in, self.query_in], (tch::Kind::Float, dev));
        let r = tch::Tensor::zeros([1, 3, self.sat_in, self.sat_in], (tch::Kind::Float, dev));
        let feats = self.model.encode_reference(&r)?;
        self.model.localise(&q, &feats)?;
        Ok(())
    }

    /// Localise the object under `click` (frame pixels) of an RGB frame (`stride` bytes
    /// per row), in a chip around `ground` (WGS84).
    pub fn localise(
        &mut self,
        rgb: &[u8],
        width: u32,
        height: u32,
        stride: usize,
        click: (f64, f64),
        ground: LonLat,
    ) -> Result<Localisation> {
        let mut v = self.localise_many(rgb, width, height, stride, &[click], ground, &[])?;
        v.pop().unwrap_or_else(|| Err(LocaliseError::Frame("no result for the click".into())))
    }

    /// Several clicks on one frame, one chip around `ground`: the queries go through the
    /// model as one batch against the chip's features (read or computed once). A click
    /// outside the frame fails alone; a chip that cannot be had fails the call. Each
    /// result's `query_ms` is the batched model call's time. `priors[i]`: where telemetry
    /// puts click i on the ground (missing or None: no prior), used when `prior_sigma_m`
    /// > 0.
    #[allow(clippy::too_many_arguments)]
    pub fn localise_many(
        &mut self,
        rgb: &[u8],
        width: u32,
        height: u32,
        stride: usize,
        clicks: &[(f64, f64)],
        ground: LonLat,
        priors: &[Option<LonLat>],
    ) -> Result<Vec<Result<Localisation>>> {
        let t0 = Instant::now();
        let prepared: Vec<Result<(tch::Tensor, (u32, u32, u32))>> = clicks
            .iter()
            .map(|&(cx, cy)| {
                if !(cx.is_finite() && cy.is_finite())
                    || cx < 0.0
                    || cy < 0.0
                    || cx >= width as f64
                    || cy >= height as f64
                {
                    return Err(LocaliseError::ClickOutside { x: cx, y: cy, w: width, h: height });
                }
                self.prepare_query(rgb, width, height, stride, (cx, cy))
            })
            .collect();
        let t_query = Instant::now();
        let queries: Vec<tch::Tensor> = prepared.iter().flatten().map(|p| p.0.shallow_clone()).collect();
        if queries.is_empty() {
            // Every click failed on its own: those errors, without reading a chip.
            return Ok(prepared.into_iter().map(|p| p.and(Err(LocaliseError::Frame("no query".into())))).collect());
        }
        let (chip, cached, chip_ms, ref_ms) = self.reference(ground)?;
        let t_ref = Instant::now();
        // Telemetry priors of the clicks that have a query, in the same order.
        let wanted: Vec<Option<LonLat>> = prepared
            .iter()
            .enumerate()
            .filter(|(_, p)| p.is_ok())
            .map(|(i, _)| priors.get(i).copied().flatten())
            .collect();
        let log_prior = self.log_prior(&chip, &wanted)?;
        let dets = self.model.localise_with_prior(&tch::Tensor::cat(&queries, 0), &chip.feats, log_prior.as_ref())?;
        let t_model = Instant::now();
        let ms = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64() * 1e3;
        let mut times = StepTimes {
            query_prep_ms: ms(t0, t_query),
            chip_ms,
            reference_ms: ref_ms,
            query_ms: ms(t_ref, t_model),
            georef_ms: 0.0,
            total_ms: 0.0,
        };
        // One detection per prepared query, in click order.
        let mut dets = dets.into_iter();
        Ok(prepared
            .into_iter()
            .map(|p| {
                let (_, crop) = p?;
                let det = dets.next().ok_or_else(|| LocaliseError::Frame("no detection for the click".into()))?;
                let t_g = Instant::now();
                let pb = widen_degenerate(det.box_xyxy);
                let g = pixel_box_to_wgs84(&pb, &chip.gt, &chip.crs)?;
                times.georef_ms = ms(t_g, Instant::now());
                times.total_ms = ms(t0, Instant::now());
                Ok(Localisation {
                    box_px: [pb.x1, pb.y1, pb.x2, pb.y2],
                    score: det.score as f64,
                    cell: det.cell,
                    center: g.center,
                    footprint: g.ring,
                    width_m: g.width_m,
                    height_m: g.height_m,
                    chip_crs: chip.crs.label(),
                    chip_geotransform: chip.gt.0,
                    chip_sources: chip.sources.clone(),
                    chip_size: chip.size,
                    cached,
                    query_crop: crop,
                    times,
                })
            })
            .collect())
    }

    /// The log-prior maps (n, 1, Hf, Wf) of `priors` on `chip`'s heatmap grid, or None
    /// when the prior is off or no click has one. Cell centres are compared in the chip's
    /// pixels, `chip_gsd_m · chip_px / sat_in` metres each.
    fn log_prior(&self, chip: &CachedChip, priors: &[Option<LonLat>]) -> Result<Option<tch::Tensor>> {
        let sigma = self.cfg.prior_sigma_m;
        if sigma <= 0.0 || priors.iter().all(Option::is_none) {
            return Ok(None);
        }
        let t = chip.feats.tokens.size();
        let (hf, wf) = (t[1], t[2]);
        let (ih, iw) = chip.feats.img_hw;
        let (sy, sx) = (ih as f64 / hf as f64, iw as f64 / wf as f64);
        let m_per_px = self.cfg.chip_gsd_m * self.cfg.chip_px as f64 / self.sat_in as f64;
        let inv = chip.gt.invert()?;
        // One CRS transform for all the prior points, then chip pixels.
        let given: Vec<LonLat> = priors.iter().flatten().copied().collect();
        let mut pixels = self.to_crs.from_lonlat(&given)?.into_iter().map(|xy| inv.apply(xy.0, xy.1));
        let mut data = Vec::with_capacity(priors.len() * (hf * wf) as usize);
        for p in priors {
            let centre = p.and_then(|_| pixels.next());
            for y in 0..hf {
                for x in 0..wf {
                    data.push(match centre {
                        Some((c, r)) => {
                            let dx = ((x as f64 + 0.5) * sx - c) * m_per_px;
                            let dy = ((y as f64 + 0.5) * sy - r) * m_per_px;
                            (-(dx * dx + dy * dy) / (2.0 * sigma * sigma)) as f32
                        }
                        None => 0.0,
                    });
                }
            }
        }
        Ok(Some(tch::Tensor::from_slice(&data).view([priors.len() as i64, 1, hf, wf])))
    }

    /// Square crop around the click → (1, 4, q, q) input on the device.
    fn prepare_query(
        &self,
        rgb: &[u8],
        width: u32,
        height: u32,
        stride: usize,
        click: (f64, f64),
    ) -> Result<(tch::Tensor, (u32, u32, u32))> {
        let need = stride * (height as usize - 1) + 3 * width as usize;
        if stride < 3 * width as usize || rgb.len() < need {
            return Err(LocaliseError::Frame(format!(
                "{} bytes for {width}×{height} RGB with stride {stride} (need {need})",
                rgb.len()
            )));
        }
        let side = width.min(height);
        let x0 = (click.0 - side as f64 / 2.0).round().clamp(0.0, (width - side) as f64) as u32;
        let y0 = (click.1 - side as f64 / 2.0).round().clamp(0.0, (height - side) as f64) as u32;
        let q = self.query_in as u32;
        // Borrow the frame (no copy) when rows are packed; else pack the crop's rows once.
        let resized = if stride == 3 * width as usize {
            let view: ImageBuffer<Rgb<u8>, &[u8]> = ImageBuffer::from_raw(width, height, &rgb[..need])
                .ok_or_else(|| LocaliseError::Frame("frame buffer size mismatch".into()))?;
            imageops::resize(&*imageops::crop_imm(&view, x0, y0, side, side), q, q, imageops::FilterType::Triangle)
        } else {
            let mut packed = Vec::with_capacity(side as usize * side as usize * 3);
            for y in y0..y0 + side {
                let r = y as usize * stride + 3 * x0 as usize;
                packed.extend_from_slice(&rgb[r..r + 3 * side as usize]);
            }
            let img: ImageBuffer<Rgb<u8>, Vec<u8>> = ImageBuffer::from_raw(side, side, packed)
                .ok_or_else(|| LocaliseError::Frame("crop buffer size mismatch".into()))?;
            imageops::resize(&img, q, q, imageops::FilterType::Triangle)
        };
        let k = q as f64 / side as f64;
        let qc = (
            ((click.0 - x0 as f64) * k).clamp(0.0, q as f64 - 1.0),
            ((click.1 - y0 as f64) * k).clamp(0.0, q as f64 - 1.0),
        );
        let t = preprocess::to_input(resized.as_raw(), q as i64, q as i64, 3 * q as usize, Some(qc))?;
        Ok((t.unsqueeze(0), (x0, y0, side)))
    }

    /// Cached or fresh satellite features of the chip around `ground`:
    /// (chip, from cache, chip ms, reference ms).
    fn reference(&mut self, ground: LonLat) -> Result<(Arc<CachedChip>, bool, f64, f64)> {
        let chip_err = |reason: String| LocaliseError::Chip { lon: ground.lon, lat: ground.lat, reason };
        let xy = self.to_crs.from_lonlat(&[ground]).map_err(|e| chip_err(e.to_string()))?[0];
        let span = self.cfg.chip_px as f64 * self.cfg.chip_gsd_m;
        let step = self.cfg.snap_frac * span;
        let (key, centre_xy) = if step > 0.0 {
            let k = ((xy.0 / step).round() as i64, (xy.1 / step).round() as i64);
            (k, (k.0 as f64 * step, k.1 as f64 * step))
        } else {
            // No snapping: a key per centimetre.
            (((xy.0 * 100.0).round() as i64, (xy.1 * 100.0).round() as i64), xy)
        };
        if let Some(i) = self.cache.iter().position(|c| c.key == key) {
            let c = self.cache.remove(i).expect("index from position");
            self.cache.push_front(c.clone());
            self.hits += 1;
            return Ok((c, true, 0.0, 0.0));
        }
        self.misses += 1;
        let t0 = Instant::now();
        let centre = self.to_crs.to_lonlat(&[centre_xy]).map_err(|e| chip_err(e.to_string()))?[0];
        let side = self.sat_in as usize;
        let req = ChipRequest {
            center: centre,
            gsd_m: Some(span / side as f64),
            width: side,
            height: side,
            grid: ChipGrid::Mosaic,
            coverage: CoveragePolicy::Fill { value: 0, min_coverage: self.cfg.min_coverage },
            resampling: Resampling::Bilinear,
        };
        let chip = self.mosaic.chip(&req).map_err(|e| chip_err(e.to_string()))?;
        let t1 = Instant::now();
        let input = preprocess::to_input(&chip.pixels, chip.width as i64, chip.height as i64, 3 * chip.width, None)?
            .unsqueeze(0);
        let feats = self.model.encode_reference(&input)?;
        let bytes = feats.tokens.numel() * feats.tokens.kind().elt_size_in_bytes()
            + feats.moe_calls.iter().map(|c| (c.logits.numel() + c.probs.numel()) * 4).sum::<usize>();
        let entry = Arc::new(CachedChip {
            key,
            feats,
            gt: chip.geotransform,
            crs: chip.crs.clone(),
            sources: self.mosaic.files().iter().map(|p| p.display().to_string()).collect(),
            size: (chip.width, chip.height),
            bytes,
        });
        let ms = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64() * 1e3;
        let (chip_ms, ref_ms) = (ms(t0, t1), ms(t1, Instant::now()));
        self.cache.push_front(entry.clone());
        let cap_bytes = self.cfg.cache_mib << 20;
        while self.cache.len() > self.cfg.cache_chips
            || (self.cache.len() > 1 && self.cache.iter().map(|c| c.bytes).sum::<usize>() > cap_bytes)
        {
            self.cache.pop_back();
        }
        Ok((entry, false, chip_ms, ref_ms))
    }

    /// Forget every cached chip (e.g. after the mosaic changed on disk).
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }
}
