//! The publisher's event-loop task: drives `EventLoop::poll()`, reconnects with capped
//! jittered exponential backoff, re-subscribes and re-announces status on every
//! connect, feeds targets from the spool into a bounded in-flight window and releases
//! them on PUBACK, and turns incoming prompts into typed values or error messages.
//!
//! Packet-id bookkeeping: rumqttc assigns packet ids when it writes a publish and reports
//! `Outgoing::Publish(pkid)` in request order, so each QoS 1 request we make is queued
//! in `sent` and matched to its pkid on that event; a collision (`AwaitAck`) parks the
//! request until rumqttc re-emits it. The session is clean, so after a disconnect all
//! of this is reset and unacknowledged targets are re-sent from the spool's front.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, Incoming, Outgoing, QoS};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::message::{self, ErrorMessage, OnlineState, Prompt, Topics};
use super::mqtt::{PublisherConfig, Shared, ShutdownReport};
use super::PublishError;

/// What a QoS 1 publish we made was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Target(u64),
    Status,
    Offline,
}

/// Capped exponential backoff with ±20 % jitter.
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max, next: initial }
    }
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
    /// The delay to wait now; doubles the following one up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(rand::thread_rng().gen_range(0.8..=1.2))
    }
}

pub(crate) struct Session {
    client: AsyncClient,
    eventloop: EventLoop,
    topics: Topics,
    stream: String,
    shared: Arc<Shared>,
    prompt_tx: mpsc::Sender<Prompt>,
    backoff: Backoff,
    window_max: usize,
    connected: bool,
    ever_connected: bool,
    sent: VecDeque<Kind>,
    collided: Option<Kind>,
    by_pkid: HashMap<u16, Kind>,
    next_seq: u64,
    window: usize,
    offline_acked: bool,
}

impl Session {
    pub fn new(
        cfg: &PublisherConfig,
        topics: Topics,
        client: AsyncClient,
        mut eventloop: EventLoop,
        shared: Arc<Shared>,
        prompt_tx: mpsc::Sender<Prompt>,
    ) -> Self {
        let mut net = eventloop.network_options();
        net.set_connection_timeout(cfg.connect_timeout_s.max(1));
        eventloop.set_network_options(net);
        Session {
            client,
            eventloop,
            topics,
            stream: cfg.stream.clone(),
            shared,
            prompt_tx,
            backoff: Backoff::new(cfg.backoff_initial, cfg.backoff_max),
            window_max: cfg.max_inflight as usize,
            connected: false,
            ever_connected: false,
            sent: VecDeque::new(),
            collided: None,
            by_pkid: HashMap::new(),
            next_seq: 0,
            window: 0,
            offline_acked: false,
        }
    }

    /// Serve until asked to stop; then drain, announce `offline` and disconnect.
    pub async fn run(mut self, mut stop: oneshot::Receiver<Duration>) -> ShutdownReport {
        let drain_for = loop {
            self.pump();
            tokio::select! {
                r = &mut stop => break r.unwrap_or(Duration::ZERO),
                ev = self.eventloop.poll() => {
                    if !self.on_poll(ev) {
                        let delay = self.backoff.next_delay();
                        tracing::debug!(retry_ms = delay.as_millis() as u64, "MQTT reconnect backoff");
                        tokio::select! {
                            r = &mut stop => break r.unwrap_or(Duration::ZERO),
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
                _ = self.shared.wake.notified() => {}
            }
        };
        self.shutdown(drain_for).await
    }

    async fn shutdown(mut self, drain_for: Duration) -> ShutdownReport {
        let deadline = Instant::now() + drain_for;
        while !self.shared.spool().is_empty() && Instant::now() < deadline {
            self.pump();
            self.poll_until(deadline).await;
        }
        if self.connected {
            self.publish_status(OnlineState::Offline);
            // Give the offline status at least a short grace period past the deadline.
            let until = deadline.max(Instant::now() + Duration::from_millis(500));
            while self.connected && !self.offline_acked && Instant::now() < until {
                self.poll_until(until).await;
            }
            let _ = self.client.try_disconnect();
            let until = Instant::now() + Duration::from_millis(500);
            while self.connected && Instant::now() < until {
                self.poll_until(until).await;
            }
        }
        let mut spool = self.shared.spool();
        if let Err(e) = spool.persist_mem() {
            tracing::error!(error = %e, "could not persist unsent targets at shutdown");
        }
        self.shared.connected.store(false, Ordering::Release);
        ShutdownReport { remaining: spool.len(), offline_published: self.offline_acked }
    }

    /// One poll bounded by `until`; on a connection error wait a backoff step (also bounded).
    async fn poll_until(&mut self, until: Instant) {
        tokio::select! {
            ev = self.eventloop.poll() => {
                if !self.on_poll(ev) {
                    let wake = (Instant::now() + self.backoff.next_delay()).min(until);
                    tokio::time::sleep_until(wake).await;
                }
            }
            _ = tokio::time::sleep_until(until) => {}
        }
    }

    /// Handle one poll result; `false` when the connection failed (caller backs off).
    fn on_poll(&mut self, ev: std::result::Result<Event, ConnectionError>) -> bool {
        match ev {
            Ok(Event::Incoming(p)) => self.on_incoming(p),
            Ok(Event::Outgoing(o)) => self.on_outgoing(o),
            Err(e) => {
                if self.connected {
                    tracing::warn!(error = %e, "MQTT connection lost");
                } else {
                    tracing::debug!(error = %e, "MQTT connect failed");
                }
                self.on_disconnect();
                return false;
            }
        }
        true
    }

    fn on_disconnect(&mut self) {
        if self.connected {
            tracing::info!("MQTT disconnected");
        }
        self.connected = false;
        self.shared.connected.store(false, Ordering::Release);
        // Clean session: we re-send from the spool ourselves, in order.
        self.eventloop.pending.clear();
        self.eventloop.state.events.clear();
        self.sent.clear();
        self.collided = None;
        self.by_pkid.clear();
        self.window = 0;
        self.next_seq = 0;
    }

    fn on_connected(&mut self) {
        self.on_disconnect();
        self.connected = true;
        self.shared.connected.store(true, Ordering::Release);
        if self.ever_connected {
            self.shared.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.ever_connected = true;
        self.backoff.reset();
        tracing::info!(prompts = %self.topics.prompts(), "MQTT connected");
        if let Err(e) = self.client.try_subscribe(self.topics.prompts(), QoS::AtLeastOnce) {
            tracing::error!(error = %e, "subscribing to prompts failed");
        }
        self.publish_status(OnlineState::Online);
    }

    fn on_incoming(&mut self, p: Incoming) {
        match p {
            Incoming::ConnAck(_) => self.on_connected(),
            Incoming::PubAck(ack) => self.on_puback(ack.pkid),
            Incoming::Publish(p) if p.topic == self.topics.prompts() => self.on_prompt(&p.payload),
            Incoming::SubAck(s) => tracing::debug!(?s.return_codes, "subscribed"),
            _ => {}
        }
    }

    fn on_outgoing(&mut self, o: Outgoing) {
        match o {
            Outgoing::Publish(0) => {}
            Outgoing::Publish(pkid) => {
                if let Some(kind) = self.collided.take().or_else(|| self.sent.pop_front()) {
                    self.by_pkid.insert(pkid, kind);
                }
            }
            Outgoing::AwaitAck(_) => self.collided = self.sent.pop_front(),
            Outgoing::Disconnect => self.on_disconnect(),
            _ => {}
        }
    }

    fn on_puback(&mut self, pkid: u16) {
        match self.by_pkid.remove(&pkid) {
            Some(Kind::Target(seq)) => {
                self.window = self.window.saturating_sub(1);
                self.shared.counters.acked.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = self.shared.spool().ack(seq) {
                    tracing::error!(error = %e, seq, "spool ack failed");
                }
            }
            Some(Kind::Offline) => self.offline_acked = true,
            Some(Kind::Status) | None => {}
        }
    }

    /// Hand spool records to the client while the in-flight window has room.
    fn pump(&mut self) {
        if !self.connected {
            return;
        }
        if self.shared.status_dirty.swap(false, Ordering::AcqRel) {
            self.publish_status(OnlineState::Online);
        }
        let room = self.window_max.saturating_sub(self.window);
        if room == 0 {
            return;
        }
        let batch = match self.shared.spool().peek_from(self.next_seq, room) {
            Ok(b) => b,
            Err(e) => return tracing::error!(error = %e, "reading the spool failed"),
        };
        let topic = self.topics.targets();
        for (seq, payload) in batch {
            if self.client.try_publish(&topic, QoS::AtLeastOnce, false, payload).is_err() {
                break; // request channel full; the next wake-up retries from next_seq
            }
            self.sent.push_back(Kind::Target(seq));
            self.next_seq = seq + 1;
            self.window += 1;
            self.shared.counters.published.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn publish_status(&mut self, state: OnlineState) {
        let msg = self.shared.status(state, &self.stream);
        let kind = if state == OnlineState::Offline { Kind::Offline } else { Kind::Status };
        self.publish_qos1(kind, "status", &msg, true);
    }

    fn publish_qos1<T: serde::Serialize>(&mut self, kind: Kind, what: &'static str, msg: &T, retain: bool) {
        let topic = self.topics.status();
        let sent = message::to_json(what, msg).and_then(|bytes| {
            self.client
                .try_publish(&topic, QoS::AtLeastOnce, retain, bytes)
                .map_err(|e| PublishError::Client { topic: topic.clone(), reason: e.to_string() })
        });
        match sent {
            Ok(()) => self.sent.push_back(kind),
            Err(e) => tracing::error!(error = %e, what, "status publish failed"),
        }
    }

    fn on_prompt(&mut self, payload: &[u8]) {
        let c = &self.shared.counters;
        let rejected = match Prompt::parse(payload) {
            Ok(prompt) => {
                let id = prompt.id.clone();
                match self.prompt_tx.try_send(prompt) {
                    Ok(()) => {
                        c.prompts.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(prompt_id = %id, "prompt received");
                        None
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        Some((Some(id), "prompt queue full, try again later".to_string()))
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        Some((Some(id), "prompt consumer has stopped".to_string()))
                    }
                }
            }
            Err(PublishError::BadPrompt { id, reason }) => Some((id, reason)),
            Err(e) => Some((None, e.to_string())),
        };
        if let Some((id, reason)) = rejected {
            c.bad_prompts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(prompt_id = ?id, %reason, "prompt rejected");
            let msg = ErrorMessage::new(&self.stream, id, reason);
            // Not retained: the retained message on the status topic stays the status.
            self.publish_qos1(Kind::Status, "error", &msg, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let d: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        let bases = [100u128, 200, 400, 800, 1000, 1000];
        for (got, base) in d.iter().zip(bases) {
            assert!(*got >= base * 8 / 10 && *got <= base * 12 / 10, "{d:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }
}
