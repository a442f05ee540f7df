//! `smgeo run --config config/live.toml`: the live pipeline. Per stream: a GStreamer
//! source (frame ring + KLV), a KLV thread feeding the telemetry timeline, an MQTT
//! publisher (prompts in, targets/status out), and a worker thread that owns the model
//! stage ([`Engine`]). Inference never runs on a GStreamer or tokio thread; frames the
//! worker does not ask for are evicted from the ring (counted), never queued.
//!
//! Shutdown (SIGINT/SIGTERM, or `--duration-s`): workers stop, sources stop, each
//! publisher drains its queue (bounded wait) and publishes `offline`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::config::{LiveConfig, StreamSection};
use super::engine::telemetry_at;
use super::replay::{build_engine, spawn_klv_drain, start_model_service};
use crate::ingest::{Source, SourceState};
use crate::klv::timeline::Timeline;
use crate::model::service::ModelClient;
use crate::publish::message::ModelInfo;
use crate::publish::message::{LatencyMs, PipelineStatus, SourceState as StatusSource};
use crate::publish::{Prompt, Publisher, PublisherConfig, PublisherHandle, SpoolConfig};

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    #[arg(long, default_value = "config/live.toml")]
    pub config: PathBuf,
    /// Stop after this many seconds (default: until SIGINT/SIGTERM).
    #[arg(long)]
    pub duration_s: Option<f64>,
}

/// What one stream did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamReport {
    pub stream: String,
    pub prompts: u64,
    pub targets: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub frames: u64,
    pub frames_evicted: u64,
    pub klv_packets: u64,
    pub source_reconnects: u64,
    pub latency_ms_p50: f64,
    pub latency_ms_p95: f64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub published: u64,
    pub acked: u64,
    pub broker_reconnects: u64,
}

fn status_source(s: &SourceState) -> StatusSource {
    match s {
        SourceState::Connecting => StatusSource::Connecting,
        SourceState::Playing => StatusSource::Playing,
        SourceState::Stalled | SourceState::Reconnecting { .. } => StatusSource::Reconnecting,
        SourceState::Eos | SourceState::Failed(_) => StatusSource::Ended,
    }
}

/// Publisher settings of one stream from the config.
pub fn publisher_config(cfg: &LiveConfig, stream: &str) -> PublisherConfig {
    let m = &cfg.mqtt;
    let mut p = PublisherConfig::new(&m.host, m.port, stream);
    p.username = m.username.clone();
    p.password = cfg.mqtt_password();
    p.topic_prefix = m.topic_prefix.as_ref().map(|t| t.replace("{stream}", stream));
    p.keep_alive = Duration::from_secs(m.keep_alive_s.max(1));
    p.spool = SpoolConfig { dir: m.spool_dir.as_ref().map(|d| d.join(stream)), ..SpoolConfig::default() };
    p
}

/// One stream's worker loop (runs on its own thread; its model calls go to the shared
/// model service, which failed to start when `model` is an error).
pub fn stream_worker(
    cfg: &LiveConfig,
    s: &StreamSection,
    model: std::result::Result<(ModelClient, ModelInfo), String>,
    publisher: &PublisherHandle,
    prompts: &mut tokio::sync::mpsc::Receiver<Prompt>,
    stop: &AtomicBool,
) -> anyhow::Result<StreamReport> {
    let fallback = s.fallback_centre.map(|c| (c[0], c[1]));
    let built = model.map_err(|e| anyhow::anyhow!(e)).and_then(|m| build_engine(cfg, &s.id, fallback, m));
    let mut engine = match built {
        Ok(e) => e,
        Err(e) => {
            let msg = format!("stream {}: model stage failed to start: {e:#}", s.id);
            let _ = publisher.publish_error(None, &msg);
            return Err(anyhow::anyhow!(msg));
        }
    };
    let source = Source::start(s.source_config())?;
    let ring = source.frames().clone();
    let timeline = Arc::new(Mutex::new(Timeline::new(10_000)));
    let (klv_thread, klv_count) = spawn_klv_drain(source.klv().clone(), timeline.clone());
    let tol = s.frame_tolerance_ms * 1_000_000;
    let mut report = StreamReport { stream: s.id.clone(), ..Default::default() };
    let mut last_status = Instant::now() - Duration::from_secs(10);
    let mut last_track_seq = None;
    let fail = |engine: &mut super::engine::Engine, id: Option<String>, e: String| {
        engine.note_error(&e);
        tracing::warn!(stream = %engine.stream, prompt_id = ?id, error = %e, "prompt failed");
        if let Err(pe) = publisher.publish_error(id, &e) {
            tracing::warn!(error = %pe, "could not publish the error");
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let mut busy = false;
        match prompts.try_recv() {
            Ok(p) => {
                busy = true;
                report.prompts += 1;
                let received = Instant::now();
                let frame = match p.pts_ns {
                    Some(t) => ring.wait_for_pts(t, Duration::from_nanos(tol)).filter(|f| f.pts_ns.abs_diff(t) <= tol),
                    None => ring.latest(),
                };
                match frame {
                    None => {
                        let held = ring.snapshot();
                        let range = match (held.first(), held.last()) {
                            (Some(a), Some(b)) => format!("{}..={} ns", a.pts_ns, b.pts_ns),
                            _ => "none".into(),
                        };
                        let why = match p.pts_ns {
                            Some(t) => {
                                format!("no frame within {} ms of pts {t} ns (held: {range})", s.frame_tolerance_ms)
                            }
                            None => "no frame received yet".into(),
                        };
                        fail(&mut engine, Some(p.id.clone()), why);
                    }
                    Some(f) => {
                        let tel = telemetry_at(&timeline.lock().unwrap_or_else(|e| e.into_inner()), f.pts_ns);
                        match engine.handle_prompt(&p, &f, tel.as_ref(), received) {
                            Ok(o) => {
                                if let Err(e) = publisher.publish_target(&o.target) {
                                    fail(&mut engine, Some(p.id.clone()), format!("queueing the target: {e}"));
                                }
                            }
                            Err(e) => fail(&mut engine, Some(p.id.clone()), e.to_string()),
                        }
                    }
                }
            }
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {}
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                tracing::warn!(stream = %s.id, "prompt channel closed; stopping the worker");
                break;
            }
        }
        if engine.active_tracks() > 0 {
            if let Some(f) = ring.latest().filter(|f| Some(f.seq) != last_track_seq) {
                last_track_seq = Some(f.seq);
                let tel = telemetry_at(&timeline.lock().unwrap_or_else(|e| e.into_inner()), f.pts_ns);
                for r in engine.update_tracks(&f, tel.as_ref()) {
                    busy = true;
                    match r {
                        Ok(o) => {
                            if let Err(e) = publisher.publish_target(&o.target) {
                                let id = Some(o.target.properties.prompt_id.clone());
                                fail(&mut engine, id, format!("queueing the target: {e}"));
                            }
                        }
                        Err(super::engine::PromptError::TrackEnded { id, reason }) => {
                            let _ = publisher.publish_error(Some(id.clone()), &format!("track ended: {reason}"));
                        }
                        Err(e) => fail(&mut engine, None, e.to_string()),
                    }
                }
            }
        }
        if last_status.elapsed() >= Duration::from_secs(1) {
            last_status = Instant::now();
            let st = source.stats();
            let (p50, p95) = engine.latency.percentiles();
            publisher.update_status(PipelineStatus {
                source: status_source(&st.state),
                fps: st.fps,
                latency_ms: LatencyMs { p50, p95 },
                queue_depth: prompts.len() as u64,
                dropped_frames: st.dropped,
                errors: engine.errors + st.errors,
                last_error: engine.last_error.clone().or(st.last_error),
            });
        }
        if !busy {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let st = source.stats();
    source.stop();
    let _ = klv_thread.join();
    let (p50, p95) = engine.latency.percentiles();
    let (hits, misses, _) = engine.localiser().cache_stats();
    let c = publisher.counters();
    report.targets = engine.targets;
    report.errors = engine.errors;
    report.last_error = engine.last_error.clone();
    report.frames = st.frames;
    report.frames_evicted = st.dropped;
    report.klv_packets = klv_count.load(Ordering::Relaxed);
    report.source_reconnects = st.reconnects;
    report.latency_ms_p50 = p50;
    report.latency_ms_p95 = p95;
    report.cache_hits = hits;
    report.cache_misses = misses;
    report.published = c.published;
    report.acked = c.acked;
    report.broker_reconnects = c.reconnects;
    Ok(report)
}

/// Run every stream of the config until a signal, `duration_s`, or `stop` is set.
pub fn run_with_stop(
    cfg: &LiveConfig,
    duration_s: Option<f64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<StreamReport>> {
    if cfg.streams.is_empty() {
        anyhow::bail!("the config has no [[streams]]");
    }
    crate::ingest::init()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    {
        let stop = stop.clone();
        rt.spawn(async move {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "no SIGTERM handler");
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("signal received: draining and stopping");
            stop.store(true, Ordering::SeqCst);
        });
    }
    if let Some(d) = duration_s {
        let stop = stop.clone();
        rt.spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(d.max(0.0))).await;
            stop.store(true, Ordering::SeqCst);
        });
    }
    let mut pubs = Vec::new();
    for s in &cfg.streams {
        let _g = rt.enter();
        let mut p = Publisher::start(publisher_config(cfg, &s.id))?;
        let rx = p.take_prompts().ok_or_else(|| anyhow::anyhow!("prompt receiver already taken"))?;
        pubs.push((Arc::new(p), rx));
    }
    // One model for every stream (loaded once; streams' queries batch together).
    let service = start_model_service(cfg).map_err(|e| format!("{e:#}"));
    let model = || service.as_ref().map(|(s, info)| (s.client(), info.clone())).map_err(|e| e.clone());
    let reports: Vec<anyhow::Result<StreamReport>> = std::thread::scope(|scope| {
        let handles: Vec<_> = cfg
            .streams
            .iter()
            .zip(pubs.iter_mut())
            .map(|(s, (p, rx))| {
                let p = p.clone();
                let stop = &*stop;
                let m = model();
                std::thread::Builder::new()
                    .name(format!("worker-{}", s.id))
                    .spawn_scoped(scope, move || stream_worker(cfg, s, m, &p, rx, stop))
                    .expect("spawning a worker")
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("worker panicked")))).collect()
    });
    if let Ok((s, _)) = &service {
        tracing::info!(counts = ?s.client().counts(), "model service");
    }
    let mut out = Vec::new();
    for ((p, _), r) in pubs.into_iter().zip(reports) {
        match Arc::try_unwrap(p) {
            Ok(p) => match rt.block_on(p.shutdown(Duration::from_secs(5))) {
                Ok(rep) => tracing::info!(?rep, "publisher stopped"),
                Err(e) => tracing::warn!(error = %e, "publisher shutdown"),
            },
            Err(_) => tracing::warn!("publisher still shared at shutdown"),
        }
        match r {
            Ok(rep) => out.push(rep),
            Err(e) => tracing::error!(error = %format!("{e:#}"), "stream worker failed"),
        }
    }
    Ok(out)
}

pub fn run(a: &RunArgs) -> anyhow::Result<Vec<StreamReport>> {
    let cfg = LiveConfig::from_file(&a.config)?;
    run_with_stop(&cfg, a.duration_s, Arc::new(AtomicBool::new(false)))
}
