//! Payload types of the MQTT interface, one versioned schema each.
//!
//! Outbound: [`Target`] (`smgeo.target.v1`, a GeoJSON Feature per RFC 7946 with
//! coordinates `[lon, lat]` in WGS84 degrees), [`StatusMessage`] (`smgeo.status.v1`),
//! [`ErrorMessage`] (`smgeo.error.v1`, sent on the status topic, not retained) and
//! [`TelemetryMessage`] (`smgeo.telemetry.v1`). Inbound: [`Prompt`] from
//! `{"id", "x", "y", "pts_ns"?, "mode"}` with x/y in video-frame pixels, validated
//! strictly by [`Prompt::parse`]. Times: `pts_ns` in nanoseconds of the stream clock,
//! `utc` as RFC 3339 with milliseconds and `Z`. The JSON Schemas live in `schemas/`.

use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::{PublishError, Result};

pub const TARGET_SCHEMA_ID: &str = "smgeo.target.v1";
pub const STATUS_SCHEMA_ID: &str = "smgeo.status.v1";
pub const ERROR_SCHEMA_ID: &str = "smgeo.error.v1";
pub const TELEMETRY_SCHEMA_ID: &str = "smgeo.telemetry.v1";

/// Largest prompt payload accepted, bytes.
pub const MAX_PROMPT_BYTES: usize = 4096;
/// Longest prompt id accepted, characters.
pub const MAX_PROMPT_ID_CHARS: usize = 128;

/// A WGS84 position, serialised as the GeoJSON array `[lon, lat]` (degrees).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "[f64; 2]", into = "[f64; 2]")]
pub struct LonLat {
    pub lon: f64,
    pub lat: f64,
}

impl From<[f64; 2]> for LonLat {
    fn from(a: [f64; 2]) -> Self {
        LonLat { lon: a[0], lat: a[1] }
    }
}

impl From<LonLat> for [f64; 2] {
    fn from(p: LonLat) -> Self {
        [p.lon, p.lat]
    }
}

/// Current UTC time as RFC 3339 with millisecond precision, e.g. `2026-11-28T04:00:00.123Z`.
pub fn utc_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A random UUID version 4 in its canonical lowercase text form (RFC 9562).
pub fn new_uuid_v4() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // variant 10
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Topic names derived from one prefix (default `smgeo/<stream>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub prefix: String,
}

impl Topics {
    /// Topics under `prefix`; rejects empty prefixes, wildcards and a trailing `/`.
    pub fn new(prefix: &str) -> Result<Self> {
        let bad = prefix.is_empty() || prefix.ends_with('/') || prefix.contains(['+', '#', '\0']);
        if bad {
            return Err(PublishError::Config {
                field: "topic_prefix",
                reason: format!("{prefix:?} must be non-empty, without + # NUL or trailing /"),
            });
        }
        Ok(Topics { prefix: prefix.to_string() })
    }
    /// The default prefix `smgeo/<stream>`.
    pub fn for_stream(stream: &str) -> Result<Self> {
        Self::new(&format!("smgeo/{stream}"))
    }
    pub fn targets(&self) -> String {
        format!("{}/targets", self.prefix)
    }
    pub fn prompts(&self) -> String {
        format!("{}/prompts", self.prefix)
    }
    pub fn status(&self) -> String {
        format!("{}/status", self.prefix)
    }
    pub fn telemetry(&self) -> String {
        format!("{}/telemetry", self.prefix)
    }
}

/// GeoJSON object type tag `"Feature"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeatureType {
    Feature,
}

/// GeoJSON geometry type tag `"Point"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PointType {
    Point,
}

/// GeoJSON Point geometry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointGeometry {
    #[serde(rename = "type")]
    pub kind: PointType,
    pub coordinates: LonLat,
}

/// The satellite chip the box was found in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChipInfo {
    /// CRS of the chip as WKT, PROJ string or `EPSG:<code>`.
    pub crs: String,
    /// GDAL geotransform: x0, pixel width, row rotation, y0, column rotation, pixel height.
    pub geotransform: [f64; 6],
    /// Mosaic source files the chip was cut from.
    pub sources: Vec<String>,
}

/// Which model produced the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub preset: String,
    /// Lowercase hex SHA-256 of the weights file.
    pub weights_sha256: String,
}

/// KLV telemetry context of a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetTelemetry {
    /// Frame centre from KLV tags 23/24.
    pub frame_center: LonLat,
    /// Geodesic distance from the frame centre to the target, metres.
    pub distance_m: f64,
    /// The click on the ground by telemetry alone: through the frame's KLV corner
    /// coordinates (tags 82–89), when the packet has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub click: Option<LonLat>,
    /// Geodesic distance from `click` to the target, metres: how far the image match moved
    /// the result from where telemetry puts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub click_distance_m: Option<f64>,
    /// Present when the result was decoded with the telemetry prior of this σ (metres,
    /// the localiser's `prior_sigma_m`) around `click`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_sigma_m: Option<f64>,
}

/// Properties of a `smgeo.target.v1` feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetProperties {
    /// Always [`TARGET_SCHEMA_ID`].
    pub schema: String,
    /// Unique message id; subscribers de-duplicate on it (QoS 1 may redeliver).
    pub id: String,
    pub prompt_id: String,
    pub stream: String,
    /// Presentation time of the frame, ns.
    pub pts_ns: u64,
    /// RFC 3339 time the result was produced.
    pub utc: String,
    /// Model confidence in [0, 1].
    pub score: f64,
    /// Box in chip pixels `[x1, y1, x2, y2]`, x right, y down.
    pub box_px: [f64; 4],
    /// The box corners in WGS84, closed ring of 5 `[lon, lat]` points.
    pub footprint: [LonLat; 5],
    pub chip: ChipInfo,
    pub model: ModelInfo,
    /// Prompt (or frame) arrival to result, milliseconds.
    pub latency_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<TargetTelemetry>,
}

/// A `smgeo.target.v1` GeoJSON Feature: a Point at the box centre.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[serde(rename = "type")]
    pub kind: FeatureType,
    pub geometry: PointGeometry,
    pub properties: TargetProperties,
}

impl Target {
    /// A feature at `center`; `properties.schema` is forced to [`TARGET_SCHEMA_ID`].
    pub fn new(center: LonLat, mut properties: TargetProperties) -> Self {
        properties.schema = TARGET_SCHEMA_ID.to_string();
        Target {
            kind: FeatureType::Feature,
            geometry: PointGeometry { kind: PointType::Point, coordinates: center },
            properties,
        }
    }
    /// The de-duplication id.
    pub fn id(&self) -> &str {
        &self.properties.id
    }
    /// JSON bytes of the feature.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|source| PublishError::Serialize { what: "target", source })
    }
}

/// How long a prompt stays active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptMode {
    /// Localise once, on the frame at `pts_ns` (or the latest).
    Once,
    /// Keep re-localising on later frames.
    Track,
}

/// A validated operator prompt (click) in video-frame pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prompt {
    pub id: String,
    /// Click x in frame pixels (≥ 0; the worker checks the upper bound against the frame).
    pub x: f64,
    /// Click y in frame pixels (≥ 0).
    pub y: f64,
    /// Frame presentation time, ns; `None` means the latest frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pts_ns: Option<u64>,
    pub mode: PromptMode,
}

impl Prompt {
    /// Strict parse: an object with exactly the fields `id` (non-empty string),
    /// `x`, `y` (finite numbers ≥ 0), optional `pts_ns` (non-negative integer) and
    /// `mode` (`"once"` or `"track"`). The error carries the id when it could be read.
    pub fn parse(bytes: &[u8]) -> Result<Prompt> {
        let bad = |id: Option<String>, reason: String| PublishError::BadPrompt { id, reason };
        if bytes.len() > MAX_PROMPT_BYTES {
            let reason = format!("payload of {} bytes exceeds {MAX_PROMPT_BYTES}", bytes.len());
            return Err(bad(None, reason));
        }
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(None, format!("not JSON: {e}")))?;
        let obj =
            value.as_object().ok_or_else(|| bad(None, format!("expected a JSON object, got {}", json_kind(&value))))?;
        let id = match obj.get("id") {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            Some(serde_json::Value::String(_)) => return Err(bad(None, "field id is empty".into())),
            Some(v) => return Err(bad(None, format!("field id: expected string, got {}", json_kind(v)))),
            None => return Err(bad(None, "missing field id".into())),
        };
        if id.chars().count() > MAX_PROMPT_ID_CHARS {
            return Err(bad(None, format!("field id longer than {MAX_PROMPT_ID_CHARS} characters")));
        }
        Self::check_fields(obj, &id).map_err(|r| bad(Some(id.clone()), r))
    }

    fn check_fields(obj: &serde_json::Map<String, serde_json::Value>, id: &str) -> std::result::Result<Prompt, String> {
        const KNOWN: [&str; 5] = ["id", "x", "y", "pts_ns", "mode"];
        if let Some(k) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(format!("unknown field {k:?}"));
        }
        let coord = |name: &str| -> std::result::Result<f64, String> {
            let v = obj.get(name).ok_or_else(|| format!("missing field {name}"))?;
            let x = v.as_f64().ok_or_else(|| format!("field {name}: expected number, got {}", json_kind(v)))?;
            if !x.is_finite() || x < 0.0 {
                return Err(format!("field {name}: expected a finite number >= 0, got {x}"));
            }
            Ok(x)
        };
        let (x, y) = (coord("x")?, coord("y")?);
        let pts_ns = match obj.get("pts_ns") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                Some(v.as_u64().ok_or_else(|| format!("field pts_ns: expected a non-negative integer, got {v}"))?)
            }
        };
        let mode = match obj.get("mode") {
            Some(serde_json::Value::String(s)) if s == "once" => PromptMode::Once,
            Some(serde_json::Value::String(s)) if s == "track" => PromptMode::Track,
            Some(v) => return Err(format!("field mode: expected \"once\" or \"track\", got {v}")),
            None => return Err("missing field mode".into()),
        };
        Ok(Prompt { id: id.to_string(), x, y, pts_ns, mode })
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Whether the pipeline is up (`offline` is also the Last Will).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnlineState {
    Online,
    Offline,
}

/// State of the video source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    #[default]
    Unknown,
    Connecting,
    Playing,
    Reconnecting,
    Ended,
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyMs {
    pub p50: f64,
    pub p95: f64,
}

/// Outbound spool state (targets waiting for the broker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolStatus {
    /// Targets not yet acknowledged by the broker.
    pub pending: u64,
    /// Targets written to disk so far.
    pub spooled: u64,
    /// Targets dropped because the disk cap was reached.
    pub dropped: u64,
}

/// Pipeline figures the live stage reports; the publisher adds the MQTT ones.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PipelineStatus {
    pub source: SourceState,
    pub fps: f64,
    pub latency_ms: LatencyMs,
    pub queue_depth: u64,
    pub dropped_frames: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// A `smgeo.status.v1` message (retained on the status topic).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusMessage {
    pub schema: String,
    pub state: OnlineState,
    pub stream: String,
    pub source: SourceState,
    pub fps: f64,
    pub latency_ms: LatencyMs,
    pub queue_depth: u64,
    pub dropped_frames: u64,
    pub broker_reconnects: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub spool: SpoolStatus,
    pub utc: String,
}

impl StatusMessage {
    /// Status from the pipeline's figures and the publisher's own.
    pub fn new(state: OnlineState, stream: &str, p: &PipelineStatus, reconnects: u64, spool: SpoolStatus) -> Self {
        StatusMessage {
            schema: STATUS_SCHEMA_ID.to_string(),
            state,
            stream: stream.to_string(),
            source: p.source,
            fps: p.fps,
            latency_ms: p.latency_ms,
            queue_depth: p.queue_depth,
            dropped_frames: p.dropped_frames,
            broker_reconnects: reconnects,
            errors: p.errors,
            last_error: p.last_error.clone(),
            spool,
            utc: utc_now(),
        }
    }
}

/// A `smgeo.error.v1` message, published (not retained) on the status topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorMessage {
    pub schema: String,
    pub stream: String,
    /// The prompt's id when it could be read.
    pub prompt_id: Option<String>,
    pub reason: String,
    pub utc: String,
}

impl ErrorMessage {
    pub fn new(stream: &str, prompt_id: Option<String>, reason: String) -> Self {
        ErrorMessage {
            schema: ERROR_SCHEMA_ID.to_string(),
            stream: stream.to_string(),
            prompt_id,
            reason,
            utc: utc_now(),
        }
    }
}

/// Platform position from KLV (tags 13, 14, 15).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformPosition {
    pub lon: f64,
    pub lat: f64,
    /// Height above the WGS84 ellipsoid (or MSL as KLV gives it), metres.
    pub alt_m: Option<f64>,
}

/// A `smgeo.telemetry.v1` message (QoS 0, optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryMessage {
    pub schema: String,
    pub stream: String,
    pub pts_ns: u64,
    pub utc: String,
    pub platform: Option<PlatformPosition>,
    pub frame_center: Option<LonLat>,
}

impl TelemetryMessage {
    pub fn new(stream: &str, pts_ns: u64, platform: Option<PlatformPosition>, frame_center: Option<LonLat>) -> Self {
        TelemetryMessage {
            schema: TELEMETRY_SCHEMA_ID.to_string(),
            stream: stream.to_string(),
            pts_ns,
            utc: utc_now(),
            platform,
            frame_center,
        }
    }
}

/// Serialise any outbound message, naming it in the error.
pub fn to_json<T: Serialize>(what: &'static str, msg: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(msg).map_err(|source| PublishError::Serialize { what, source })
}

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
