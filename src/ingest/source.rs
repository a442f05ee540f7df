//! A running source: the pipeline, its bus thread, and what consumers see.
//!
//! [`Source::start`] spawns one thread that builds the pipeline from its template,
//! sets it PLAYING and polls the bus (50 ms ticks). Frames go from the `video`
//! appsink callback straight into the [`FrameRing`]; KLV buffers from the `klv`
//! appsink into a bounded channel of [`KlvUnit`] (oldest dropped when full).
//!
//! Source loss:
//! * UDP: no frame for `stall_timeout` → `Stalled`; the pipeline is kept, since
//!   udpsrc picks the stream up again when packets return (→ `Playing`).
//! * RTSP, or an error or EOS on the bus of any network source (a server that goes
//!   away ends the session with EOS): the pipeline is torn down and rebuilt after an
//!   exponential backoff (`Reconnecting { attempt }`).
//! * Files and finite test patterns end in `Eos`; an error there is `Failed`.
//!
//! [`SourceHandle::stop`] (or drop) sets the pipeline to NULL and joins the thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::frames::{frame_from_sample, FrameRing};
use super::pipeline::{self, SourceConfig, SourceKind};
use super::{IngestError, Result};

/// One raw KLV buffer from the demuxer (undecoded; local sets / UAS packets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KlvUnit {
    /// Buffer PTS in ns, same time base as [`super::Frame::pts_ns`]. `None` when the
    /// KLV PES header has no PTS (as in `tests/fixtures/klv/h264_klv.ts`): join by
    /// the ST 0601 tag-2 timestamp or by arrival order then.
    pub pts_ns: Option<u64>,
    pub data: Bytes,
}

/// Connection state of a source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum SourceState {
    Connecting,
    Playing,
    Stalled,
    Reconnecting { attempt: u32 },
    Eos,
    Failed(String),
}

/// A snapshot for status messages.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceStats {
    pub state: SourceState,
    /// Frames received in the last second.
    pub fps: f64,
    pub frames: u64,
    /// Frames evicted from the ring unread.
    pub dropped: u64,
    pub klv_units: u64,
    pub klv_dropped: u64,
    /// Pipeline rebuilds since start.
    pub reconnects: u64,
    /// Errors seen (bus errors, bad samples).
    pub errors: u64,
    pub last_error: Option<String>,
}

/// State shared between the bus thread, the appsink callbacks and the handle.
struct Shared {
    state: Mutex<SourceState>,
    changed: Condvar,
    epoch: Instant,
    /// ns since `epoch` of the last frame (0 = none yet in this pipeline).
    last_frame_ns: AtomicU64,
    klv_units: AtomicU64,
    klv_dropped: AtomicU64,
    reconnects: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn set_state(&self, s: SourceState) {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if *g != s {
            tracing::info!(from = ?*g, to = ?s, "ingest: source state");
            *g = s;
            self.changed.notify_all();
        }
    }
    fn state(&self) -> SourceState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn error(&self, msg: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%msg, "ingest: error");
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg);
    }
    fn since_frame(&self) -> Option<Duration> {
        let t = self.last_frame_ns.load(Ordering::Relaxed);
        (t != 0).then(|| self.epoch.elapsed().saturating_sub(Duration::from_nanos(t)))
    }
}

/// Entry point: `Source::start(config)`.
pub struct Source;

impl Source {
    /// Check the launch text, then run the source on its own thread.
    pub fn start(cfg: SourceConfig) -> Result<SourceHandle> {
        // Fail early on a bad template; later rebuilds report on the bus thread.
        let text = pipeline::launch_text(&cfg)?;
        pipeline::parse(cfg.kind.template_name(), &text)?;
        let ring = Arc::new(FrameRing::new(cfg.ring_capacity));
        if cfg.hold_from_start {
            ring.hold(Some(0));
        }
        let (klv_tx, klv_rx) = crossbeam_channel::bounded(cfg.klv_capacity.max(1));
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(SourceState::Connecting),
            changed: Condvar::new(),
            epoch: Instant::now(),
            last_frame_ns: AtomicU64::new(0),
            klv_units: AtomicU64::new(0),
            klv_dropped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
        });
        let runner =
            Runner { cfg, ring: ring.clone(), klv_tx, klv_drain: klv_rx.clone(), shared: shared.clone(), stop_rx };
        let thread = std::thread::Builder::new()
            .name("ingest-source".into())
            .spawn(move || runner.run())
            .map_err(|e| IngestError::Thread(e.to_string()))?;
        Ok(SourceHandle { ring, klv_rx, shared, stop_tx, thread: Some(thread) })
    }
}

/// Consumer side of a running source. Dropping it stops the source.
pub struct SourceHandle {
    ring: Arc<FrameRing>,
    klv_rx: Receiver<KlvUnit>,
    shared: Arc<Shared>,
    stop_tx: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl SourceHandle {
    pub fn frames(&self) -> &Arc<FrameRing> {
        &self.ring
    }
    /// Raw KLV buffers in arrival order.
    pub fn klv(&self) -> &Receiver<KlvUnit> {
        &self.klv_rx
    }
    pub fn state(&self) -> SourceState {
        self.shared.state()
    }
    /// Wait up to `timeout` for a state matching `pred`; returns it, or `None`.
    pub fn wait_state(&self, timeout: Duration, pred: impl Fn(&SourceState) -> bool) -> Option<SourceState> {
        let g = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let (g, _) =
            self.shared.changed.wait_timeout_while(g, timeout, |s| !pred(s)).unwrap_or_else(|p| p.into_inner());
        pred(&g).then(|| g.clone())
    }
    pub fn stats(&self) -> SourceStats {
        let c = self.ring.counters();
        let s = &self.shared;
        SourceStats {
            state: s.state(),
            fps: self.ring.fps(),
            frames: c.received,
            dropped: c.dropped,
            klv_units: s.klv_units.load(Ordering::Relaxed),
            klv_dropped: s.klv_dropped.load(Ordering::Relaxed),
            reconnects: s.reconnects.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            last_error: s.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
    /// Set the pipeline to NULL and join the source thread.
    pub fn stop(mut self) {
        self.shutdown();
    }
    fn shutdown(&mut self) {
        let _ = self.stop_tx.try_send(());
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("ingest: source thread panicked");
            }
        }
    }
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How one pipeline run ended.
enum Outcome {
    Stop,
    Eos,
    Error(String),
}

struct Runner {
    cfg: SourceConfig,
    ring: Arc<FrameRing>,
    klv_tx: Sender<KlvUnit>,
    /// Receiver clone used to drop the oldest unit when the channel is full.
    klv_drain: Receiver<KlvUnit>,
    shared: Arc<Shared>,
    stop_rx: Receiver<()>,
}

const TICK: Duration = Duration::from_millis(50);

impl Runner {
    fn run(self) {
        let mut attempt = 0u32;
        loop {
            let outcome = match self.build() {
                Ok(p) => {
                    let out = self.watch(&p, &mut attempt);
                    if p.set_state(gst::State::Null).is_err() {
                        self.shared.error("set NULL failed".into());
                    }
                    out
                }
                Err(e) => Outcome::Error(e.to_string()),
            };
            match outcome {
                Outcome::Stop => return,
                Outcome::Eos => return self.shared.set_state(SourceState::Eos),
                Outcome::Error(msg) => {
                    self.shared.error(msg.clone());
                    let may_retry = self.cfg.kind.is_network() && self.cfg.max_reconnects.is_none_or(|m| attempt < m);
                    if !may_retry {
                        return self.shared.set_state(SourceState::Failed(msg));
                    }
                    attempt += 1;
                    self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    self.shared.set_state(SourceState::Reconnecting { attempt });
                    if self.stop_rx.recv_timeout(self.cfg.backoff(attempt)).is_ok() {
                        return;
                    }
                }
            }
        }
    }

    fn build(&self) -> Result<gst::Pipeline> {
        let name = self.cfg.kind.template_name();
        let text = pipeline::launch_text(&self.cfg)?;
        let p = pipeline::parse(name, &text)?;
        pipeline::link_dynamic_pads(&p);
        let sink = |el: &str| -> Result<Option<gst_app::AppSink>> {
            let Some(e) = p.by_name(el) else { return Ok(None) };
            e.downcast::<gst_app::AppSink>().map(Some).map_err(|_| IngestError::Element {
                name: name.into(),
                element: el.into(),
                message: "is not an appsink".into(),
            })
        };
        let video = sink("video")?.ok_or_else(|| IngestError::Element {
            name: name.into(),
            element: "video".into(),
            message: "launch text has no appsink named video".into(),
        })?;
        self.attach_video(&video);
        if let Some(klv) = sink("klv")? {
            self.attach_klv(&klv);
        }
        self.shared.last_frame_ns.store(0, Ordering::Relaxed);
        if p.set_state(gst::State::Playing).is_err() {
            // The element that refused says why on the bus.
            let err = p
                .bus()
                .and_then(|b| b.timed_pop_filtered(gst::ClockTime::from_mseconds(100), &[gst::MessageType::Error]))
                .map(|m| bus_error(name, &m))
                .unwrap_or_else(|| IngestError::State { name: name.into(), state: "PLAYING".into() });
            let _ = p.set_state(gst::State::Null);
            return Err(err);
        }
        Ok(p)
    }

    fn attach_video(&self, sink: &gst_app::AppSink) {
        let ring = self.ring.clone();
        let shared = self.shared.clone();
        let cb = gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                match frame_from_sample(&sample) {
                    Ok(frame) => {
                        let pts = frame.pts_ns;
                        let seq = ring.push(frame);
                        let t = shared.epoch.elapsed().as_nanos().max(1) as u64;
                        shared.last_frame_ns.store(t, Ordering::Relaxed);
                        tracing::trace!(seq, pts_ns = pts, "ingest: frame");
                        Ok(gst::FlowSuccess::Ok)
                    }
                    Err(msg) => {
                        gst::element_error!(sink, gst::StreamError::Format, ("bad frame: {}", msg));
                        Err(gst::FlowError::Error)
                    }
                }
            })
            .build();
        sink.set_callbacks(cb);
    }

    fn attach_klv(&self, sink: &gst_app::AppSink) {
        let tx = self.klv_tx.clone();
        let drain = self.klv_drain.clone();
        let shared = self.shared.clone();
        let cb = gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let Some(buffer) = sample.buffer() else { return Ok(gst::FlowSuccess::Ok) };
                let Ok(map) = buffer.map_readable() else {
                    shared.error("KLV buffer not readable".into());
                    return Ok(gst::FlowSuccess::Ok);
                };
                let pts_ns = buffer.pts().map(|t| t.nseconds());
                let mut unit = KlvUnit { pts_ns, data: Bytes::copy_from_slice(map.as_slice()) };
                shared.klv_units.fetch_add(1, Ordering::Relaxed);
                // Latest wins: on a full channel drop the oldest unit, then retry once.
                while let Err(TrySendError::Full(u)) = tx.try_send(unit) {
                    shared.klv_dropped.fetch_add(1, Ordering::Relaxed);
                    if drain.try_recv().is_err() {
                        break;
                    }
                    unit = u;
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build();
        sink.set_callbacks(cb);
    }

    /// Poll the bus until stop, EOS, an error, or (non-UDP) a stall.
    fn watch(&self, p: &gst::Pipeline, attempt: &mut u32) -> Outcome {
        let name = self.cfg.kind.template_name();
        let Some(bus) = p.bus() else { return Outcome::Error(format!("{name}: no bus")) };
        let started = Instant::now();
        let keep_on_stall = matches!(self.cfg.kind, SourceKind::UdpTs { .. });
        let stall = self.cfg.stall_timeout();
        loop {
            if self.stop_rx.try_recv().is_ok() {
                return Outcome::Stop;
            }
            if let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(TICK.as_nanos() as u64)) {
                match msg.view() {
                    // A network source has no end: an RTSP server that goes away sends
                    // EOS (TEARDOWN or closed connection), which is loss, not the end.
                    gst::MessageView::Eos(_) if self.cfg.kind.is_network() => {
                        return Outcome::Error(format!(
                            "{name}: end of stream from the network source (server went away)"
                        ))
                    }
                    gst::MessageView::Eos(_) => return Outcome::Eos,
                    gst::MessageView::Error(_) => return Outcome::Error(bus_error(name, &msg).to_string()),
                    gst::MessageView::Warning(w) => {
                        tracing::warn!(pipeline = name, warning = %w.error(), "ingest: bus warning")
                    }
                    _ => {}
                }
            }
            let since = self.shared.since_frame();
            match (self.shared.state(), since) {
                (SourceState::Playing, Some(d)) if d > stall => {
                    if !keep_on_stall {
                        return Outcome::Error(format!("{name}: no frame for {d:?}"));
                    }
                    self.shared.set_state(SourceState::Stalled);
                }
                (s, Some(d)) if d <= stall && s != SourceState::Playing => {
                    *attempt = 0;
                    self.shared.set_state(SourceState::Playing);
                }
                (SourceState::Reconnecting { .. } | SourceState::Connecting, None)
                    if !keep_on_stall && self.cfg.kind.is_network() && started.elapsed() > stall =>
                {
                    return Outcome::Error(format!("{name}: no frame within {stall:?} of start"));
                }
                _ => {}
            }
        }
    }
}

/// An error message from the bus as an [`IngestError::Bus`] (element path, text, debug).
fn bus_error(name: &str, msg: &gst::Message) -> IngestError {
    let element = msg.src().map(|s| s.path_string().to_string()).unwrap_or_else(|| "?".into());
    let message = match msg.view() {
        gst::MessageView::Error(e) => {
            let dbg = e.debug().map(|d| d.to_string()).unwrap_or_default();
            format!("{} ({dbg})", e.error())
        }
        _ => format!("{:?}", msg.type_()),
    };
    IngestError::Bus { name: name.into(), element, message }
}
