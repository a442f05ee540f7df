//! One stream's worker logic, shared by `smgeo run` (MQTT prompts, live source) and
//! `smgeo replay` (prompts from a file, a recording): a prompt + the frame it names + the
//! telemetry at that frame → chip centre → [`Localiser`] → a `smgeo.target.v1` feature.
//!
//! Tracking (`mode: "track"`): the clicked ground point (the click through the KLV image
//! corners of the prompt's frame) is re-projected into each later frame through the
//! telemetry camera model (the plane homography of the KLV image corners, [`FrameGeo`])
//! and localised again at `track.interval_ms` (without corners the click keeps its pixel); the satellite features
//! of the chip come from the cache while the drone stays over it. A track ends when its
//! point leaves the frame, after `track.max_s`, or when a new prompt reuses its id.

use std::collections::VecDeque;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::geometry::{chip_centre, CentreSource, FrameGeo, LocalEnu};
use super::localiser::{Localisation, Localiser};
use crate::georef::LonLat as GeoLonLat;
use crate::ingest::Frame;
use crate::klv::timeline::{TelemetryState, Timeline};
use crate::publish::message::{
    new_uuid_v4, utc_now, ChipInfo, LonLat, ModelInfo, TargetProperties, TargetTelemetry, TARGET_SCHEMA_ID,
};
use crate::publish::{Prompt, PromptMode, Target};

/// Tracking settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackConfig {
    /// Re-localise a tracked prompt at most this often (frame time).
    pub interval_ms: u64,
    /// End a track after this long (frame time).
    pub max_s: f64,
    /// Tracks per stream at most; the oldest ends when a new one starts.
    pub max_tracks: usize,
    /// Tracks due on the same frame share its chip and go through the model together,
    /// at most this many per call (1 = one call per track).
    pub max_batch: usize,
}

impl Default for TrackConfig {
    fn default() -> Self {
        TrackConfig { interval_ms: 1000, max_s: 60.0, max_tracks: 8, max_batch: 8 }
    }
}

/// Why a prompt produced no target.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("no frame for pts {pts_ns} ns (held frames {held})")]
    NoFrame { pts_ns: u64, held: String },
    #[error("no chip centre: no KLV frame centre or sensor pose near this frame and no configured area")]
    NoCentre,
    #[error("{0}")]
    Localise(#[from] super::localiser::LocaliseError),
    #[error("track {id} ended: {reason}")]
    TrackEnded { id: String, reason: String },
    /// A failure shared by every prompt of a batched call (e.g. no chip), as text.
    #[error("{0}")]
    Shared(String),
}

/// One result with its context.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub target: Target,
    pub localisation: Localisation,
    pub click: (f64, f64),
    pub centre_source: CentreSource,
    pub frame_seq: u64,
}

#[derive(Debug, Clone)]
struct Track {
    prompt: Prompt,
    /// The clicked point on the ground (the model's first result without KLV corners).
    ground: (f64, f64),
    /// Frame time the track has run, ns (summed over updates: robust to PTS jumps).
    age_ns: u64,
    last_pts: u64,
}

/// Rolling latency window for status percentiles.
#[derive(Debug, Default, Clone)]
pub struct LatencyWindow {
    v: VecDeque<f64>,
}

impl LatencyWindow {
    pub fn push(&mut self, ms: f64) {
        if self.v.len() == 256 {
            self.v.pop_front();
        }
        self.v.push_back(ms);
    }

    /// (p50, p95) of the window, nearest-rank; zeros when empty.
    pub fn percentiles(&self) -> (f64, f64) {
        if self.v.is_empty() {
            return (0.0, 0.0);
        }
        let mut s: Vec<f64> = self.v.iter().copied().collect();
        s.sort_by(f64::total_cmp);
        let rank = |p: f64| s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
        (rank(0.5), rank(0.95))
    }
}

/// Nanoseconds → MPEG 90 kHz ticks (the timeline's PTS unit), without overflow.
pub fn ns_to_ticks(ns: u64) -> u64 {
    ns / 100_000 * 9 + (ns % 100_000) * 9 / 100_000
}

/// Telemetry state for a frame: by PTS when the KLV carries PTS (within half a second),
/// else the latest sample (asynchronous KLV without PTS).
pub fn telemetry_at(timeline: &Timeline, pts_ns: u64) -> Option<TelemetryState> {
    let ticks = ns_to_ticks(pts_ns);
    timeline.nearest_pts(ticks, 45_000).or_else(|| timeline.latest()).map(|s| s.state.clone())
}

/// Geodesic-enough distance (local tangent plane) between two WGS84 points, metres.
pub fn ground_distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let enu = LocalEnu::new(a.0, a.1);
    let (e, n) = enu.to_enu(b.0, b.1);
    e.hypot(n)
}

/// The per-stream worker state.
pub struct Engine {
    pub stream: String,
    localiser: Localiser,
    model: ModelInfo,
    fallback_centre: Option<(f64, f64)>,
    track_cfg: TrackConfig,
    tracks: Vec<Track>,
    pub latency: LatencyWindow,
    pub errors: u64,
    pub last_error: Option<String>,
    pub targets: u64,
}

impl Engine {
    pub fn new(
        stream: &str,
        localiser: Localiser,
        model: ModelInfo,
        fallback_centre: Option<(f64, f64)>,
        track_cfg: TrackConfig,
    ) -> Self {
        Engine {
            stream: stream.to_string(),
            localiser,
            model,
            fallback_centre,
            track_cfg,
            tracks: Vec::new(),
            latency: LatencyWindow::default(),
            errors: 0,
            last_error: None,
            targets: 0,
        }
    }

    pub fn localiser(&self) -> &Localiser {
        &self.localiser
    }

    pub fn active_tracks(&self) -> usize {
        self.tracks.len()
    }

    /// Record an error for status.
    pub fn note_error(&mut self, e: &str) {
        self.errors += 1;
        self.last_error = Some(e.to_string());
    }

    /// Localise `prompt` on `frame` (the frame it names), starting a track for
    /// `mode: track`. `received`: when the prompt arrived (latency origin).
    pub fn handle_prompt(
        &mut self,
        prompt: &Prompt,
        frame: &Frame,
        telemetry: Option<&TelemetryState>,
        received: Instant,
    ) -> Result<Outcome, PromptError> {
        self.tracks.retain(|t| t.prompt.id != prompt.id);
        let out = self.localise(prompt, (prompt.x, prompt.y), frame, telemetry, received)?;
        if prompt.mode == PromptMode::Track {
            if self.tracks.len() >= self.track_cfg.max_tracks.max(1) {
                self.tracks.remove(0);
            }
            // Follow the clicked ground point (the click through the KLV image corners at
            // the prompt's frame); the model's result only when there are no corners.
            let c = out.target.geometry.coordinates;
            let ground = telemetry
                .and_then(|s| FrameGeo::from_telemetry(s, frame.width as f64, frame.height as f64))
                .and_then(|g| g.pixel_to_lonlat(prompt.x, prompt.y))
                .unwrap_or((c.lon, c.lat));
            self.tracks.push(Track { prompt: prompt.clone(), ground, age_ns: 0, last_pts: frame.pts_ns });
        }
        Ok(out)
    }

    /// Earliest frame PTS at which a track is due (for replay pacing).
    pub fn next_track_due(&self) -> Option<u64> {
        self.tracks.iter().map(|t| t.last_pts + self.track_cfg.interval_ms * 1_000_000).min()
    }

    /// Re-localise every track due at `frame`. Ended tracks come back as errors.
    pub fn update_tracks(
        &mut self,
        frame: &Frame,
        telemetry: Option<&TelemetryState>,
    ) -> Vec<Result<Outcome, PromptError>> {
        let interval = self.track_cfg.interval_ms * 1_000_000;
        let max_ns = (self.track_cfg.max_s * 1e9) as u64;
        // A quarter interval of slack: a frame just before the due time counts (replay
        // asks for the frame nearest to it).
        let due: Vec<usize> = (0..self.tracks.len())
            // A PTS that went backwards (stream restart, discontinuity) makes a track due too.
            .filter(|&i| {
                let last = self.tracks[i].last_pts;
                frame.pts_ns < last || frame.pts_ns + interval / 4 >= last + interval
            })
            .collect();
        let mut results: Vec<Option<Result<Outcome, PromptError>>> = (0..due.len()).map(|_| None).collect();
        let mut ended = Vec::new();
        // (position in `due`, track index, click in this frame, track age)
        let mut todo: Vec<(usize, usize, (f64, f64), u64)> = Vec::new();
        for (k, &i) in due.iter().enumerate() {
            let t = &self.tracks[i];
            let end = |reason: String| PromptError::TrackEnded { id: t.prompt.id.clone(), reason };
            let elapsed = frame.pts_ns.saturating_sub(t.last_pts) + t.age_ns;
            if elapsed > max_ns {
                ended.push(i);
                results[k] = Some(Err(end(format!("reached track.max_s = {} s", self.track_cfg.max_s))));
                continue;
            }
            let geo = telemetry.and_then(|s| FrameGeo::from_telemetry(s, frame.width as f64, frame.height as f64));
            // Without KLV image corners there is no camera model: the click stays on its
            // pixel (a steady camera, e.g. a fixed mast or a hovering drone).
            let click = match &geo {
                Some(g) => g.lonlat_to_pixel(t.ground.0, t.ground.1),
                None => Some((t.prompt.x, t.prompt.y)),
            };
            let Some(click) =
                click.filter(|c| c.0 >= 0.0 && c.1 >= 0.0 && c.0 < frame.width as f64 && c.1 < frame.height as f64)
            else {
                ended.push(i);
                results[k] = Some(Err(end("the object left the view".to_string())));
                continue;
            };
            todo.push((k, i, click, elapsed));
        }
        // The tracks due on this frame share its chip: one model call per batch.
        for chunk in todo.chunks(self.track_cfg.max_batch.max(1)) {
            let prompts: Vec<Prompt> = chunk.iter().map(|c| self.tracks[c.1].prompt.clone()).collect();
            let clicks: Vec<(f64, f64)> = chunk.iter().map(|c| c.2).collect();
            let outs = self.localise_many(&prompts, &clicks, frame, telemetry, Instant::now());
            for (c, r) in chunk.iter().zip(outs) {
                self.tracks[c.1].age_ns = c.3;
                self.tracks[c.1].last_pts = frame.pts_ns;
                results[c.0] = Some(r);
            }
        }
        // `ended` is in increasing order (it follows `due`): remove from the back.
        for i in ended.into_iter().rev() {
            self.tracks.remove(i);
        }
        results.into_iter().flatten().collect()
    }

    fn localise(
        &mut self,
        prompt: &Prompt,
        click: (f64, f64),
        frame: &Frame,
        telemetry: Option<&TelemetryState>,
        received: Instant,
    ) -> Result<Outcome, PromptError> {
        let mut v = self.localise_many(std::slice::from_ref(prompt), &[click], frame, telemetry, received);
        v.pop().unwrap_or_else(|| Err(PromptError::Shared("no result for the prompt".into())))
    }

    /// Prompts with their clicks on one frame: one chip (from the frame's telemetry), one
    /// batched model call. A failure of the whole call is reported on every prompt.
    fn localise_many(
        &mut self,
        prompts: &[Prompt],
        clicks: &[(f64, f64)],
        frame: &Frame,
        telemetry: Option<&TelemetryState>,
        received: Instant,
    ) -> Vec<Result<Outcome, PromptError>> {
        let Some((centre, source)) = chip_centre(telemetry, self.fallback_centre) else {
            return prompts.iter().map(|_| Err(PromptError::NoCentre)).collect();
        };
        let ground = GeoLonLat { lon: centre.0, lat: centre.1 };
        // Where telemetry alone puts each click (through the frame's KLV corners).
        let geo = telemetry.and_then(|s| FrameGeo::from_telemetry(s, frame.width as f64, frame.height as f64));
        let tel_clicks: Vec<Option<GeoLonLat>> = clicks
            .iter()
            .map(|c| {
                geo.as_ref()
                    .and_then(|g| g.pixel_to_lonlat(c.0, c.1))
                    .filter(|p| p.0.is_finite() && p.1.is_finite())
                    .map(|p| GeoLonLat { lon: p.0, lat: p.1 })
            })
            .collect();
        let locs = match self.localiser.localise_many(
            &frame.data,
            frame.width,
            frame.height,
            3 * frame.width as usize,
            clicks,
            ground,
            &tel_clicks,
        ) {
            Ok(v) => v,
            Err(e) => {
                let text = e.to_string();
                let mut first = Some(PromptError::Localise(e));
                return prompts
                    .iter()
                    .map(|_| Err(first.take().unwrap_or_else(|| PromptError::Shared(text.clone()))))
                    .collect();
            }
        };
        prompts
            .iter()
            .zip(clicks)
            .zip(locs)
            .zip(tel_clicks)
            .map(|(((p, &click), loc), tc)| Ok(self.outcome(p, click, tc, frame, telemetry, source, loc?, received)))
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn outcome(
        &mut self,
        prompt: &Prompt,
        click: (f64, f64),
        tel_click: Option<GeoLonLat>,
        frame: &Frame,
        telemetry: Option<&TelemetryState>,
        source: CentreSource,
        loc: Localisation,
        received: Instant,
    ) -> Outcome {
        let fc = telemetry.and_then(|t| t.frame_centre());
        let result = (loc.center.lon, loc.center.lat);
        let sigma = self.localiser.config().prior_sigma_m;
        let tel = fc.map(|f| TargetTelemetry {
            frame_center: LonLat { lon: f.lon_deg, lat: f.lat_deg },
            distance_m: ground_distance_m((f.lon_deg, f.lat_deg), result),
            click: tel_click.map(|c| LonLat { lon: c.lon, lat: c.lat }),
            click_distance_m: tel_click.map(|c| ground_distance_m((c.lon, c.lat), result)),
            prior_sigma_m: tel_click.and((sigma > 0.0).then_some(sigma)),
        });
        let ll = |p: GeoLonLat| LonLat { lon: p.lon, lat: p.lat };
        let latency_ms = received.elapsed().as_secs_f64() * 1e3;
        let props = TargetProperties {
            schema: TARGET_SCHEMA_ID.to_string(),
            id: new_uuid_v4(),
            prompt_id: prompt.id.clone(),
            stream: self.stream.clone(),
            pts_ns: frame.pts_ns,
            utc: utc_now(),
            score: loc.score.clamp(0.0, 1.0),
            box_px: loc.box_px,
            footprint: loc.footprint.map(ll),
            chip: ChipInfo {
                crs: loc.chip_crs.clone(),
                geotransform: loc.chip_geotransform,
                sources: loc.chip_sources.clone(),
            },
            model: self.model.clone(),
            latency_ms,
            telemetry: tel,
        };
        self.latency.push(latency_ms);
        self.targets += 1;
        Outcome {
            target: Target::new(ll(loc.center), props),
            localisation: loc,
            click,
            centre_source: source,
            frame_seq: frame.seq,
        }
    }
}
