//! The live pipeline: prompts in, WGS84 targets out. Frames and KLV from `ingest`,
//! the telemetry timeline from `klv`, chips from `georef`, the model, MQTT `publish`.
//!
//! - [`geometry`]: frame ↔ ground from KLV corners; chip centre selection.

pub mod geometry;
