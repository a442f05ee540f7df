//! The MQTT publisher: configuration, start-up, and the handle the pipeline uses.
//!
//! [`Publisher::start`] spawns one tokio task (see `session.rs`) that owns the rumqttc
//! `AsyncClient` + `EventLoop`, the reconnect backoff and the delivery bookkeeping. It
//! must be called from inside a tokio runtime (multi-threaded recommended); the
//! publisher does not create one. [`PublisherHandle::publish_target`] is synchronous and
//! may be called from any thread: it appends to the shared [`Spool`] and wakes the task.
//!
//! Guarantees: targets are published QoS 1 in spool order and leave the spool only on
//! PUBACK, so a broker outage delays but does not lose them (up to the spool's disk
//! cap); after a reconnect unacknowledged targets are re-sent from the oldest, which may
//! duplicate (same `id`). Status is retained (`online` on every connect, Last Will
//! `offline`); prompts are re-subscribed on every connect.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rumqttc::{LastWill, MqttOptions, QoS};
use tokio::sync::{mpsc, oneshot, Notify};

use super::message::{
    self, OnlineState, PipelineStatus, Prompt, SpoolStatus, StatusMessage, Target, TelemetryMessage, Topics,
};
use super::session::Session;
use super::spool::{Spool, SpoolConfig};
use super::{PublishError, Result};

/// TLS settings (cargo feature `tls`, rumqttc `use-rustls`). PEM bytes.
#[cfg(feature = "tls")]
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub ca_pem: Vec<u8>,
    /// Client certificate and key, PEM, for mutual TLS.
    pub client_auth: Option<(Vec<u8>, Vec<u8>)>,
}

/// Publisher settings.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    /// Stream id, used in payloads and in the default prefix `smgeo/<stream>`.
    pub stream: String,
    /// Topic prefix; `None` → `smgeo/<stream>`.
    pub topic_prefix: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// MQTT keep-alive; the broker declares us gone (Last Will) after 1.5× this.
    pub keep_alive: Duration,
    /// First reconnect delay; doubles per failure up to `backoff_max`, ±20 % jitter.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Targets handed to the client but not yet acknowledged (≤ spool memory capacity).
    pub max_inflight: u16,
    /// Capacity of the prompt channel; a prompt arriving when it is full is rejected.
    pub prompt_queue: usize,
    /// TCP connect + CONNACK timeout, seconds.
    pub connect_timeout_s: u64,
    pub spool: SpoolConfig,
    #[cfg(feature = "tls")]
    pub tls: Option<TlsConfig>,
}

impl PublisherConfig {
    /// Defaults for a broker at `host:port` publishing stream `stream`.
    pub fn new(host: &str, port: u16, stream: &str) -> Self {
        PublisherConfig {
            host: host.to_string(),
            port,
            client_id: format!("smgeo-{stream}-{}", &message::new_uuid_v4()[..8]),
            stream: stream.to_string(),
            topic_prefix: None,
            username: None,
            password: None,
            keep_alive: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            max_inflight: 64,
            prompt_queue: 64,
            connect_timeout_s: 5,
            spool: SpoolConfig::default(),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The topic set this configuration publishes under.
    pub fn topics(&self) -> Result<Topics> {
        match &self.topic_prefix {
            Some(p) => Topics::new(p),
            None => Topics::for_stream(&self.stream),
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |field, reason: &str| Err(PublishError::Config { field, reason: reason.to_string() });
        if self.stream.is_empty() || self.stream.contains(['/', '+', '#']) {
            return bad("stream", "must be non-empty without / + #");
        }
        if self.keep_alive < Duration::from_secs(1) {
            return bad("keep_alive", "must be at least 1 s (MQTT keep-alive has 1 s resolution)");
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            return bad("backoff", "need 0 < backoff_initial <= backoff_max");
        }
        if self.max_inflight == 0 || self.max_inflight as usize > self.spool.mem_capacity {
            return bad("max_inflight", "must be in 1..=spool.mem_capacity");
        }
        if self.prompt_queue == 0 {
            return bad("prompt_queue", "must be at least 1");
        }
        Ok(())
    }

    pub(crate) fn mqtt_options(&self, topics: &Topics, will: Vec<u8>) -> MqttOptions {
        let mut o = MqttOptions::new(&self.client_id, &self.host, self.port);
        o.set_keep_alive(self.keep_alive);
        // A clean session: our spool, not the broker's session, is the record of what is
        // still owed, so rumqttc's own retransmission queue is discarded on reconnect.
        o.set_clean_session(true);
        // rumqttc reuses packet ids 1..inflight; keep headroom for status/error publishes.
        o.set_inflight(self.max_inflight.saturating_add(16));
        o.set_request_channel_capacity(self.max_inflight as usize + 64);
        o.set_last_will(LastWill::new(topics.status(), will, QoS::AtLeastOnce, true));
        if let (Some(u), Some(p)) = (&self.username, &self.password) {
            o.set_credentials(u, p);
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            o.set_transport(rumqttc::Transport::tls(tls.ca_pem.clone(), tls.client_auth.clone(), None));
        }
        o
    }
}

/// Snapshot of the publisher's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Target publishes handed to the client (re-sends included).
    pub published: u64,
    /// Targets acknowledged by the broker.
    pub acked: u64,
    /// Targets written to the disk spool.
    pub spooled: u64,
    /// Targets lost to the spool cap.
    pub dropped: u64,
    /// Successful connects after the first.
    pub reconnects: u64,
    /// Prompts forwarded / rejected.
    pub prompts: u64,
    pub bad_prompts: u64,
    /// Targets waiting for an acknowledgement.
    pub pending: u64,
}

/// What `shutdown` achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Targets still unacknowledged (persisted to the spool directory when there is one).
    pub remaining: u64,
    /// Whether the retained `offline` status was acknowledged by the broker.
    pub offline_published: bool,
}

#[derive(Default)]
pub(crate) struct AtomicCounters {
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub reconnects: AtomicU64,
    pub prompts: AtomicU64,
    pub bad_prompts: AtomicU64,
}

/// State shared by the handle and the session task.
pub(crate) struct Shared {
    pub spool: Mutex<Spool>,
    pub wake: Notify,
    pub status_dirty: AtomicBool,
    pub connected: AtomicBool,
    pub pipeline: Mutex<PipelineStatus>,
    pub counters: AtomicCounters,
}

impl Shared {
    /// The spool, even if a thread panicked while holding the lock (its data stays consistent
    /// per call: every method leaves it valid or returns an error).
    pub fn spool(&self) -> MutexGuard<'_, Spool> {
        self.spool.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(&self, state: OnlineState, stream: &str) -> StatusMessage {
        let pipeline = self.pipeline.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (pending, st) = {
            let s = self.spool();
            (s.len(), s.stats())
        };
        let spool = SpoolStatus { pending, spooled: st.spooled, dropped: st.dropped };
        let reconnects = self.counters.reconnects.load(Ordering::Relaxed);
        StatusMessage::new(state, stream, &pipeline, reconnects, spool)
    }
}

/// Entry point.
pub struct Publisher;

impl Publisher {
    /// Open the spool, spawn the session task on the current tokio runtime, and return at
    /// once (the first connect happens in the background). Errors: bad config, spool I/O,
    /// or no current tokio runtime.
    pub fn start(cfg: PublisherConfig) -> Result<PublisherHandle> {
        cfg.validate()?;
        let rt = tokio::runtime::Handle::try_current().map_err(|e| PublishError::NoRuntime(e.to_string()))?;
        let topics = cfg.topics()?;
        let spool = Spool::open(cfg.spool.clone())?;
        let shared = Arc::new(Shared {
            spool: Mutex::new(spool),
            wake: Notify::new(),
            status_dirty: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            pipeline: Mutex::new(PipelineStatus::default()),
            counters: AtomicCounters::default(),
        });
        let will = message::to_json("status", &shared.status(OnlineState::Offline, &cfg.stream))?;
        let (client, eventloop) =
            rumqttc::AsyncClient::new(cfg.mqtt_options(&topics, will), cfg.max_inflight as usize + 64);
        let (prompt_tx, prompt_rx) = mpsc::channel(cfg.prompt_queue);
        let (stop_tx, stop_rx) = oneshot::channel();
        let session = Session::new(&cfg, topics.clone(), client.clone(), eventloop, shared.clone(), prompt_tx);
        let task = rt.spawn(session.run(stop_rx));
        Ok(PublisherHandle {
            shared,
            client,
            topics,
            stream: cfg.stream.clone(),
            task: Some(task),
            stop: Some(stop_tx),
            prompts: Some(prompt_rx),
        })
    }
}

/// Handle to a running publisher. Dropping it without [`shutdown`](Self::shutdown) aborts
/// the task (the broker then publishes the Last Will).
pub struct PublisherHandle {
    shared: Arc<Shared>,
    client: rumqttc::AsyncClient,
    topics: Topics,
    stream: String,
    task: Option<tokio::task::JoinHandle<ShutdownReport>>,
    stop: Option<oneshot::Sender<Duration>>,
    prompts: Option<mpsc::Receiver<Prompt>>,
}

impl PublisherHandle {
    /// Queue a target for QoS 1 delivery; returns its spool sequence number.
    pub fn publish_target(&self, target: &Target) -> Result<u64> {
        if self.task.as_ref().is_none_or(|t| t.is_finished()) {
            return Err(PublishError::Stopped);
        }
        let bytes = target.to_json()?;
        let seq = self.shared.spool().push(bytes)?;
        tracing::debug!(id = target.id(), pts_ns = target.properties.pts_ns, seq, "target queued");
        self.shared.wake.notify_one();
        Ok(seq)
    }

    /// Publish telemetry at QoS 0 (dropped while disconnected: it is only useful live).
    pub fn publish_telemetry(&self, msg: &TelemetryMessage) -> Result<()> {
        if !self.is_connected() {
            return Ok(());
        }
        let topic = self.topics.telemetry();
        let bytes = message::to_json("telemetry", msg)?;
        self.client
            .try_publish(&topic, QoS::AtMostOnce, false, bytes)
            .map_err(|e| PublishError::Client { topic, reason: e.to_string() })
    }

    /// A `smgeo.error.v1` message on the status topic (QoS 1, not retained) for a prompt
    /// that could not be served. Best effort: dropped (and logged) while disconnected.
    pub fn publish_error(&self, prompt_id: Option<String>, reason: &str) -> Result<()> {
        let msg = message::ErrorMessage::new(&self.stream, prompt_id, reason.to_string());
        let topic = self.topics.status();
        let bytes = message::to_json("error", &msg)?;
        self.client
            .try_publish(&topic, QoS::AtLeastOnce, false, bytes)
            .map_err(|e| PublishError::Client { topic, reason: e.to_string() })
    }

    /// Replace the pipeline figures and re-publish the retained status.
    pub fn update_status(&self, status: PipelineStatus) {
        *self.shared.pipeline.lock().unwrap_or_else(|e| e.into_inner()) = status;
        self.shared.status_dirty.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }

    /// The receiver of validated prompts (once; later calls return `None`).
    pub fn take_prompts(&mut self) -> Option<mpsc::Receiver<Prompt>> {
        self.prompts.take()
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    pub fn counters(&self) -> Counters {
        let c = &self.shared.counters;
        let (pending, st) = {
            let s = self.shared.spool();
            (s.len(), s.stats())
        };
        Counters {
            published: c.published.load(Ordering::Relaxed),
            acked: c.acked.load(Ordering::Relaxed),
            spooled: st.spooled,
            dropped: st.dropped,
            reconnects: c.reconnects.load(Ordering::Relaxed),
            prompts: c.prompts.load(Ordering::Relaxed),
            bad_prompts: c.bad_prompts.load(Ordering::Relaxed),
            pending,
        }
    }

    /// Drain the spool for at most `timeout`, publish the retained `offline` status,
    /// disconnect. Unacknowledged targets are persisted when the spool has a directory.
    pub async fn shutdown(mut self, timeout: Duration) -> Result<ShutdownReport> {
        let (Some(stop), Some(task)) = (self.stop.take(), self.task.take()) else {
            return Err(PublishError::Stopped);
        };
        if stop.send(timeout).is_err() {
            return Err(PublishError::Stopped);
        }
        task.await.map_err(|_| PublishError::Stopped)
    }

    /// Kill the session without a DISCONNECT, as a crash would (the broker then sends
    /// the Last Will). Memory-only spool contents are lost.
    pub fn abort(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for PublisherHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
