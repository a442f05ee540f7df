//! GStreamer video ingest: a source (MPEG-TS over UDP, RTSP, a file, or a test
//! pattern) decoded to RGB frames in a bounded ring, plus the raw KLV buffers of the
//! stream with their PTS on a bounded channel.
//!
//! Data flow (see `pipelines/*.pipeline`, launch text with `{placeholders}`):
//! ```text
//! source ─ demux ─┬─ queue vq ─ decode ─ videoscale ─ [WxH] ─ videoconvert ─ RGB ─ appsink "video" ─ FrameRing
//!                 └─ queue kq ─ appsink "klv" (meta/x-klv) ─ bounded channel of KlvUnit
//! ```
//! * [`pipeline`]: source kinds and their parameters, launch-text templates, pipeline
//!   construction and dynamic pad linking.
//! * [`frames`]: [`Frame`] (tightly packed RGB, PTS in ns) and [`FrameRing`].
//! * [`source`]: [`Source::start`] → [`SourceHandle`] (bus thread, state, stall
//!   detection, reconnect with exponential backoff, stats).
//! * [`encode`]: H.264 + KLV in MPEG-TS to a file or UDP, for tests, benchmarks and
//!   the synthetic flight generator.
//! * [`mod@bench`]: `smgeo bench ingest`.
//!
//! KLV is not decoded here (see `crate::klv`); units carry the buffer PTS in ns, the
//! same time base as [`Frame::pts_ns`]. References: GStreamer 1.22 element docs
//! (tsdemux, mpegtsmux, appsink), MISB ST 1402 (KLV carriage in MPEG-2 TS).

pub mod bench;
pub mod encode;
pub mod frames;
pub mod pipeline;
pub mod rtsp_serve;
pub mod source;
#[cfg(test)]
mod tests;

pub use bench::{bench_ingest, IngestBenchOptions};
pub use encode::{
    no_klv, stream_file_udp, stream_ts_udp, stream_ts_udp_via, write_ts, EncodeStats, RgbFrame, StreamControl,
};
pub use frames::{Frame, FrameRing, RingCounters};
pub use pipeline::{Codec, SourceConfig, SourceKind};
pub use rtsp_serve::{RtspMedia, RtspServer};
pub use source::{KlvUnit, Source, SourceHandle, SourceState, SourceStats};

/// Errors of the ingest stage, with the pipeline / element they come from.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("GStreamer initialisation failed: {0}")]
    Init(String),
    #[error("pipeline template {name}: {message}")]
    Template { name: String, message: String },
    #[error("pipeline {name}: cannot parse launch text: {message}")]
    Parse { name: String, message: String },
    #[error("pipeline {name}: element {element}: {message}")]
    Element { name: String, element: String, message: String },
    #[error("pipeline {name}: state change to {state} failed")]
    State { name: String, state: String },
    #[error("pipeline {name}: error from {element}: {message}")]
    Bus { name: String, element: String, message: String },
    #[error("pipeline {name}: timed out after {seconds:.1} s waiting for {what}")]
    Timeout { name: String, what: String, seconds: f64 },
    #[error("bad input for {what}: {message}")]
    Input { what: String, message: String },
    #[error("reading pipeline file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("source thread: {0}")]
    Thread(String),
}

pub type Result<T> = std::result::Result<T, IngestError>;

/// `gst::init` once, mapped into [`IngestError`].
pub fn init() -> Result<()> {
    gstreamer::init().map_err(|e| IngestError::Init(e.to_string()))
}
