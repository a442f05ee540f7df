//! MQTT output stage: versioned JSON payloads, a disk-backed outbound spool, and a
//! publisher that owns reconnection, resubscription and status announcements.
//!
//! Data flow: the live worker hands [`message::Target`] values to
//! [`mqtt::PublisherHandle::publish_target`]; they are serialised, appended to the
//! [`spool::Spool`] (memory first, spilled to append-only segment files beyond a bound)
//! and removed from it only after the broker's PUBACK (QoS 1). Prompts arriving on
//! `<prefix>/prompts` are validated ([`message::Prompt::parse`]) and forwarded on a
//! bounded channel; bad prompts produce a `smgeo.error.v1` message on `<prefix>/status`.
//!
//! Topics (prefix default `smgeo/<stream>`, see [`message::Topics`]):
//! `targets` (out, QoS 1), `prompts` (in, QoS 1), `status` (out, retained, QoS 1, Last
//! Will `offline`), `telemetry` (out, QoS 0). Every payload has a JSON Schema
//! (draft 2020-12) under `schemas/` in the repository, embedded in [`schema`].
//!
//! Runtime: [`mqtt::Publisher::start`] must be called inside a tokio runtime (it spawns
//! one task, `session.rs`). Tests start a real `mosquitto` (must be on `PATH`) on a free
//! loopback port, see `testutil.rs`.
//!
//! References: MQTT 3.1.1 (OASIS), RFC 7946 (GeoJSON, `[lon, lat]` in WGS84),
//! RFC 3339 (timestamps), JSON Schema draft 2020-12.

pub mod broker;
pub mod message;
pub mod mqtt;
pub mod schema;
mod session;
pub mod spool;

#[cfg(test)]
mod mqtt_tests;
#[cfg(test)]
pub(crate) mod testutil;

pub use message::{ErrorMessage, Prompt, PromptMode, StatusMessage, Target, TelemetryMessage, Topics};

pub use mqtt::{Counters, Publisher, PublisherConfig, PublisherHandle, ShutdownReport};
pub use spool::{Spool, SpoolConfig, SpoolStats};

use std::path::PathBuf;

/// Errors of the publish stage. Each variant names what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A spool file or directory operation failed.
    #[error("spool I/O on {path}: {source}")]
    SpoolIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A record does not fit the spool's limits.
    #[error("spool record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge { len: usize, max: usize },
    /// Invalid spool or publisher configuration.
    #[error("invalid publish config: {field}: {reason}")]
    Config { field: &'static str, reason: String },
    /// A prompt payload failed validation.
    #[error("bad prompt{}: {reason}", id.as_deref().map(|i| format!(" {i:?}")).unwrap_or_default())]
    BadPrompt { id: Option<String>, reason: String },
    /// Serialising an outbound payload failed.
    #[error("serialising {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// `Publisher::start` was called outside a tokio runtime.
    #[error("Publisher::start needs a tokio runtime (call it inside one): {0}")]
    NoRuntime(String),
    /// The publisher task has stopped (shut down or crashed).
    #[error("publisher task is not running")]
    Stopped,
    /// The MQTT client rejected a request (invalid topic or closed channel).
    #[error("MQTT client request on {topic}: {reason}")]
    Client { topic: String, reason: String },
}

/// Result alias of the publish stage.
pub type Result<T> = std::result::Result<T, PublishError>;
