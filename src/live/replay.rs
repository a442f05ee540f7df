//! `smgeo replay FLIGHT.ts --prompts P.jsonl [--truth T.jsonl]`: a recording through the
//! live code path (GStreamer file source → frame ring + KLV timeline → [`Engine`]), as fast
//! as the model allows. The frame ring's hold paces the decoder to the next prompt (or
//! track update), so no prompt misses its frame however slow the model is, and memory
//! stays at the ring's size. With truth, a geo-error report: distance from each result to
//! the true object centroid (median, p90, max) and the hit rate (result inside the
//! object's footprint).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::config::LiveConfig;
use super::engine::{ground_distance_m, telemetry_at, Engine, Outcome};
use super::localiser::Localiser;
use crate::ingest::{Source, SourceConfig, SourceKind, SourceState};
use crate::klv::timeline::Timeline;
use crate::model::service::{ModelClient, ModelService};
use crate::publish::message::ModelInfo;
use crate::publish::{Prompt, Target};

#[derive(clap::Args, Debug, Clone)]
pub struct ReplayArgs {
    /// Recorded flight (MPEG-TS with KLV, or MP4).
    pub flight: PathBuf,
    /// Prompts, one JSON object per line (the MQTT prompt format; `pts_ns` names the frame).
    #[arg(long)]
    pub prompts: PathBuf,
    /// Ground truth per prompt (JSON lines: prompt_id, lon, lat, polygon).
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// Live configuration (model, mosaic, localiser, track); its streams are ignored.
    #[arg(long, default_value = "config/live.toml")]
    pub config: PathBuf,
    /// Output folder: targets.jsonl, report.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Stream id written into the targets.
    #[arg(long, default_value = "replay")]
    pub stream: String,
    /// Chip centre `LON,LAT` when the recording has no usable KLV.
    #[arg(long, value_parser = crate::predict::parse_xy)]
    pub fallback_centre: Option<(f64, f64)>,
}

/// One truth record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Truth {
    pub prompt_id: String,
    #[serde(default)]
    pub object_id: Option<u64>,
    #[serde(default)]
    pub category: Option<String>,
    pub lon: f64,
    pub lat: f64,
    /// Closed `[lon, lat]` ring of the object's footprint.
    pub polygon: Vec<[f64; 2]>,
}

/// Read JSON lines (blank lines and `#` comments skipped); errors name the line.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    let f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        out.push(serde_json::from_str(t).map_err(|e| anyhow::anyhow!("{} line {}: {e}", path.display(), i + 1))?);
    }
    Ok(out)
}

/// Prompts of a file, each checked with the MQTT parser.
pub fn read_prompts(path: &Path) -> anyhow::Result<Vec<Prompt>> {
    let raw: Vec<serde_json::Value> = read_jsonl(path)?;
    raw.iter()
        .enumerate()
        .map(|(i, v)| {
            Prompt::parse(v.to_string().as_bytes())
                .map_err(|e| anyhow::anyhow!("{} prompt {}: {e}", path.display(), i + 1))
        })
        .collect()
}

/// Ray casting point-in-polygon on lon/lat (fine at object scale).
pub fn point_in_ring(p: (f64, f64), ring: &[[f64; 2]]) -> bool {
    let mut inside = false;
    let n = ring.len();
    if n < 3 {
        return false;
    }
    let mut j = n - 1;
    for i in 0..n {
        let (xi, yi, xj, yj) = (ring[i][0], ring[i][1], ring[j][0], ring[j][1]);
        if (yi > p.1) != (yj > p.1) && p.0 < (xj - xi) * (p.1 - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Geo-error summary over the prompts that have truth.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GeoErrorReport {
    pub prompts: usize,
    pub with_result: usize,
    pub median_m: Option<f64>,
    pub p90_m: Option<f64>,
    pub max_m: Option<f64>,
    pub mean_m: Option<f64>,
    /// Results inside the true footprint / prompts with truth.
    pub hit_rate: Option<f64>,
    pub within_5m: Option<f64>,
    /// The same against telemetry alone: the click through the KLV frame corners
    /// (`properties.telemetry.click`), over the results that carry one.
    pub telemetry_click: Option<TelemetryClickErrors>,
}

/// Geo error of the telemetry-only click positions, metres.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TelemetryClickErrors {
    pub n: usize,
    pub median_m: f64,
    pub p90_m: f64,
    pub max_m: f64,
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Errors of first results (`once` prompts and the first result of a track) against truth.
pub fn geo_errors(results: &[(String, Target)], truth: &[Truth]) -> (GeoErrorReport, Vec<serde_json::Value>) {
    let mut errs = Vec::new();
    let mut tel_errs = Vec::new();
    let mut hits = 0usize;
    let mut rows = Vec::new();
    for t in truth {
        let Some((_, tg)) = results.iter().find(|(id, _)| id == &t.prompt_id) else {
            rows.push(serde_json::json!({"prompt_id": t.prompt_id, "result": null}));
            continue;
        };
        let c = tg.geometry.coordinates;
        let e = ground_distance_m((t.lon, t.lat), (c.lon, c.lat));
        let hit = point_in_ring((c.lon, c.lat), &t.polygon);
        hits += hit as usize;
        errs.push(e);
        let tel = tg.properties.telemetry.as_ref().and_then(|x| x.click);
        let tel_e = tel.map(|k| ground_distance_m((t.lon, t.lat), (k.lon, k.lat)));
        tel_errs.extend(tel_e);
        rows.push(serde_json::json!({
            "prompt_id": t.prompt_id, "category": t.category, "error_m": e, "hit": hit,
            "score": tg.properties.score, "result": [c.lon, c.lat], "truth": [t.lon, t.lat],
            "telemetry_click_error_m": tel_e,
        }));
    }
    let n = truth.len();
    let mut s = errs.clone();
    s.sort_by(f64::total_cmp);
    let rep = GeoErrorReport {
        prompts: n,
        with_result: s.len(),
        median_m: (!s.is_empty()).then(|| pct(&s, 0.5)),
        p90_m: (!s.is_empty()).then(|| pct(&s, 0.9)),
        max_m: s.last().copied(),
        mean_m: (!s.is_empty()).then(|| s.iter().sum::<f64>() / s.len() as f64),
        hit_rate: (n > 0).then(|| hits as f64 / n as f64),
        within_5m: (n > 0).then(|| s.iter().filter(|e| **e <= 5.0).count() as f64 / n as f64),
        telemetry_click: (!tel_errs.is_empty()).then(|| {
            tel_errs.sort_by(f64::total_cmp);
            TelemetryClickErrors {
                n: tel_errs.len(),
                median_m: pct(&tel_errs, 0.5),
                p90_m: pct(&tel_errs, 0.9),
                max_m: tel_errs[tel_errs.len() - 1],
            }
        }),
    };
    (rep, rows)
}

/// What a replay did.
#[derive(Debug, Clone, Serialize)]
pub struct ReplaySummary {
    pub flight: String,
    pub prompts: usize,
    pub targets: usize,
    pub errors: Vec<serde_json::Value>,
    pub frames_decoded: u64,
    pub klv_packets: u64,
    pub wall_s: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p95: f64,
    /// Mean per-step times over all results, ms.
    pub mean_step_ms: serde_json::Value,
    pub cache: serde_json::Value,
    /// Model service counters: model calls (`batches`), queries, chip encodings, the
    /// largest batch, failures.
    pub model_service: crate::model::service::ServiceCounts,
    /// Per-result latency (prompt handling to result) with and without cached chip
    /// features, and the share of it spent outside the model (query prep, chip read,
    /// georeferencing, bookkeeping).
    pub bench: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geo_error: Option<GeoErrorReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_prompt: Vec<serde_json::Value>,
}

/// SHA-256 (hex) of a file, for `model.weights_sha256`.
pub fn file_sha256(path: &Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The model service of a live config: weights loaded once, in the configured precision
/// and batching, on the configured device; shared by every stream's engine.
pub fn start_model_service(cfg: &LiveConfig) -> anyhow::Result<(ModelService, ModelInfo)> {
    let dev = crate::device::select(&cfg.device)?;
    if let Some(t) = cfg.threads {
        tch::set_num_threads(t);
    }
    let (mcfg, weights) = cfg.model.resolve().map_err(|e| anyhow::anyhow!("model: {e}"))?;
    let service = Localiser::start_service(&mcfg, &weights, &cfg.localiser, dev)?;
    let c = service.client();
    tracing::info!(
        device = %crate::device::describe(dev),
        precision = crate::model::Precision::name_of(c.kind()),
        batch_max = cfg.localiser.batch_max,
        batch_wait_ms = cfg.localiser.batch_wait_ms,
        "model service started"
    );
    let preset = format!("{:?}", mcfg.preset).to_lowercase();
    Ok((service, ModelInfo { preset, weights_sha256: file_sha256(&weights)? }))
}

/// Mosaic + a client of `model` (see [`start_model_service`]), as an [`Engine`] for `stream`.
pub fn build_engine(
    cfg: &LiveConfig,
    stream: &str,
    fallback: Option<(f64, f64)>,
    model: (ModelClient, ModelInfo),
) -> anyhow::Result<Engine> {
    let spec = crate::georef::MosaicSpec::from_path(&cfg.mosaic);
    let (client, info) = model;
    let loc = Localiser::with_model(client, &spec, cfg.localiser.clone())?;
    loc.warm_up()?;
    Ok(Engine::new(stream, loc, info, fallback, cfg.track.clone()))
}

/// Drain a source's KLV into a shared timeline on a thread; returns the packet counter.
pub fn spawn_klv_drain(
    rx: crossbeam_channel::Receiver<crate::ingest::KlvUnit>,
    timeline: Arc<Mutex<Timeline>>,
) -> (std::thread::JoinHandle<()>, Arc<std::sync::atomic::AtomicU64>) {
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = count.clone();
    let h = std::thread::Builder::new()
        .name("klv-drain".into())
        .spawn(move || {
            let mut bad = 0u64;
            for unit in rx.iter() {
                match crate::klv::st0601::decode_packet(&unit.data) {
                    Ok(p) => {
                        let ticks = unit.pts_ns.map(super::engine::ns_to_ticks);
                        timeline.lock().unwrap_or_else(|e| e.into_inner()).insert(ticks, &p);
                        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => {
                        bad += 1;
                        if bad <= 5 || bad.is_power_of_two() {
                            tracing::warn!(error = %e, rejected = bad, "KLV packet rejected");
                        }
                    }
                }
            }
        })
        .expect("spawning the KLV thread");
    (h, count)
}

/// Run a replay; returns the summary (also written to `out/report.json`).
pub fn run(a: &ReplayArgs) -> anyhow::Result<ReplaySummary> {
    let cfg = LiveConfig::from_file(&a.config)?;
    let mut prompts = read_prompts(&a.prompts)?;
    prompts.sort_by_key(|p| p.pts_ns.unwrap_or(0));
    let truth: Vec<Truth> = match &a.truth {
        Some(p) => read_jsonl(p)?,
        None => Vec::new(),
    };
    let (service, info) = start_model_service(&cfg)?;
    let mut engine = build_engine(&cfg, &a.stream, a.fallback_centre, (service.client(), info))?;
    let mut targets_out = match &a.out {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| anyhow::anyhow!("creating {}: {e}", d.display()))?;
            let p = d.join("targets.jsonl");
            Some(std::fs::File::create(&p).map_err(|e| anyhow::anyhow!("creating {}: {e}", p.display()))?)
        }
        None => None,
    };
    let t0 = Instant::now();
    let mut sc = SourceConfig::new(SourceKind::File { path: a.flight.clone() });
    sc.ring_capacity = 4;
    sc.appsink_max_buffers = 2;
    // The hold blocks the decoder on purpose: no stall detection, no reconnects.
    sc.stall_timeout_ms = 3_600_000;
    sc.max_reconnects = Some(0);
    sc.hold_from_start = true;
    let source = Source::start(sc)?;
    let ring = source.frames().clone();
    let timeline = Arc::new(Mutex::new(Timeline::new(100_000)));
    let (klv_thread, klv_count) = spawn_klv_drain(source.klv().clone(), timeline.clone());
    let tol = 500_000_000u64;
    // Prompt times count from the recording's first frame: the demuxer's output PTS
    // carries the transport stream's start offset (PCR lead), the first frame shows it.
    let base = {
        let t = Instant::now();
        loop {
            if let Some(w) = ring.waiting_pts() {
                break w;
            }
            let st = source.state();
            if matches!(st, SourceState::Eos | SourceState::Failed(_)) || t.elapsed() > Duration::from_secs(60) {
                ring.hold(None);
                source.stop();
                anyhow::bail!("{}: no video frame ({st:?})", a.flight.display());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    tracing::debug!(base_ns = base, "replay: first frame PTS");
    let mut next = 0usize;
    let mut results: Vec<(String, Target)> = Vec::new();
    let mut errors = Vec::new();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut record =
        |o: Result<Outcome, super::engine::PromptError>, id: &str, errors: &mut Vec<serde_json::Value>| match o {
            Ok(o) => {
                if let Some(f) = targets_out.as_mut() {
                    let _ = serde_json::to_writer(&mut *f, &o.target).map(|_| writeln!(f));
                }
                if !results.iter().any(|(p, _)| p == id) {
                    results.push((id.to_string(), o.target.clone()));
                }
                outcomes.push(o);
            }
            Err(e) => {
                tracing::warn!(prompt_id = id, error = %e, "prompt failed");
                errors.push(serde_json::json!({"prompt_id": id, "error": e.to_string()}));
            }
        };
    loop {
        let due_prompt = prompts.get(next).map(|p| p.pts_ns.unwrap_or(0) + base);
        let due = match (due_prompt, engine.next_track_due()) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => break,
        };
        ring.hold(Some(due + tol / 10));
        let ended = |s: &SourceState| matches!(s, SourceState::Eos | SourceState::Failed(_));
        let frame = loop {
            let f = ring.wait_for_pts(due, Duration::from_millis(200));
            if f.as_ref().is_some_and(|f| f.pts_ns >= due) || ended(&source.state()) {
                break f;
            }
            // The next frame waits at the hold beyond `due`: let it in when it is within
            // the tolerance (then the nearer of the two is taken), else take what we have.
            if let Some(w) = ring.waiting_pts() {
                if w <= due + tol && ring.hold_value() != Some(w) {
                    ring.hold(Some(w));
                    continue;
                }
                break f;
            }
        };
        let Some(frame) = frame.filter(|f| f.pts_ns.abs_diff(due) <= tol) else {
            // The recording ended before this time: every remaining prompt fails.
            for p in &prompts[next..] {
                errors.push(
                    serde_json::json!({"prompt_id": p.id, "error": "the recording ended before the prompt's pts"}),
                );
            }
            break;
        };
        // KLV of this frame may trail it in the multiplex by a packet or two.
        let deadline = Instant::now() + Duration::from_millis(300);
        let tel = loop {
            let tl = timeline.lock().unwrap_or_else(|e| e.into_inner());
            let ticks = super::engine::ns_to_ticks(frame.pts_ns);
            let have = tl.nearest_pts(ticks, 45_000).is_some();
            if have || Instant::now() > deadline || ended(&source.state()) {
                break telemetry_at(&tl, frame.pts_ns);
            }
            drop(tl);
            std::thread::sleep(Duration::from_millis(5));
        };
        tracing::debug!(due, frame_pts = frame.pts_ns, "replay: frame for the next event");
        // Every prompt due by now takes this frame (the nearest to its time).
        while let Some(p) =
            prompts.get(next).filter(|p| p.pts_ns.unwrap_or(0) + base <= due.max(frame.pts_ns) + tol / 10)
        {
            let o = engine.handle_prompt(p, &frame, tel.as_ref(), Instant::now());
            record(o, &p.id.clone(), &mut errors);
            next += 1;
        }
        for o in engine.update_tracks(&frame, tel.as_ref()) {
            let id = match &o {
                Ok(x) => x.target.properties.prompt_id.clone(),
                Err(super::engine::PromptError::TrackEnded { id, .. }) => id.clone(),
                Err(_) => String::new(),
            };
            record(o, &id, &mut errors);
        }
    }
    ring.hold(None);
    let frames = ring.counters().received;
    source.stop();
    let _ = klv_thread.join();
    let (p50, p95) = engine.latency.percentiles();
    let n = outcomes.len().max(1) as f64;
    let mean = |f: &dyn Fn(&Outcome) -> f64| outcomes.iter().map(f).sum::<f64>() / n;
    let mean_step_ms = serde_json::json!({
        "query_prep": mean(&|o| o.localisation.times.query_prep_ms),
        "chip": mean(&|o| o.localisation.times.chip_ms),
        "reference": mean(&|o| o.localisation.times.reference_ms),
        "query_fusion_head": mean(&|o| o.localisation.times.query_ms),
        "georef": mean(&|o| o.localisation.times.georef_ms),
        "total": mean(&|o| o.localisation.times.total_ms),
    });
    let (hits, misses, held) = engine.localiser().cache_stats();
    let split = |cached: bool| {
        let mut v: Vec<f64> = outcomes
            .iter()
            .filter(|o| o.localisation.cached == cached)
            .map(|o| o.target.properties.latency_ms)
            .collect();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return serde_json::json!({"n": 0});
        }
        serde_json::json!({"n": v.len(), "p50": pct(&v, 0.5), "p95": pct(&v, 0.95), "max": v[v.len() - 1]})
    };
    let model_ms: f64 =
        outcomes.iter().map(|o| o.localisation.times.reference_ms + o.localisation.times.query_ms).sum();
    let total_ms: f64 = outcomes.iter().map(|o| o.target.properties.latency_ms).sum();
    let bench = serde_json::json!({
        "latency_ms_uncached": split(false),
        "latency_ms_cached": split(true),
        "model_ms_total": model_ms,
        "outside_model_ms_total": total_ms - model_ms,
        "outside_model_fraction_of_model": if model_ms > 0.0 { (total_ms - model_ms) / model_ms } else { 0.0 },
        "frames_decoded": frames,
        "device": crate::device::describe(engine.localiser().device()),
    });
    let (geo, rows) = if truth.is_empty() {
        (None, Vec::new())
    } else {
        let (g, r) = geo_errors(&results, &truth);
        (Some(g), r)
    };
    let summary = ReplaySummary {
        flight: a.flight.display().to_string(),
        prompts: prompts.len(),
        targets: outcomes.len(),
        errors,
        frames_decoded: frames,
        klv_packets: klv_count.load(std::sync::atomic::Ordering::Relaxed),
        wall_s: t0.elapsed().as_secs_f64(),
        latency_ms_p50: p50,
        latency_ms_p95: p95,
        mean_step_ms,
        cache: serde_json::json!({"hits": hits, "misses": misses, "held": held}),
        model_service: engine.localiser().model().counts(),
        bench,
        geo_error: geo,
        per_prompt: rows,
    };
    if let Some(d) = &a.out {
        let p = d.join("report.json");
        std::fs::write(&p, serde_json::to_vec_pretty(&summary)?)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", p.display()))?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_in_ring_and_percentiles() {
        let sq = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]];
        assert!(point_in_ring((0.5, 0.5), &sq));
        assert!(!point_in_ring((1.5, 0.5), &sq));
        assert!(!point_in_ring((0.5, -0.1), &sq));
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        assert_eq!(pct(&v, 0.5), 5.0);
        assert_eq!(pct(&v, 0.9), 9.0);
        assert_eq!(pct(&v, 1.0), 10.0);
    }
}
