//! The live pipeline: prompts in, WGS84 targets out. Frames and KLV from `ingest`,
//! the telemetry timeline from `klv`, chips from `georef`, the model, MQTT `publish`.
//!
//! - [`geometry`]: frame ↔ ground from KLV corners; chip centre selection.
//! - [`localiser`]: frame + click + ground position → box in a chip → WGS84, with the
//!   satellite-feature cache.
//! - [`engine`]: one stream's prompt handling and tracking, shared by run and replay.
//! - [`config`]: `config/live.toml`.
//! - [`replay`]: `smgeo replay` on a recording, with the geo-error report.
//! - [`run`]: `smgeo run`, several streams, MQTT in and out.

pub mod geometry;

#[cfg(all(feature = "geo", feature = "gst"))]
pub mod config;
#[cfg(all(feature = "geo", feature = "gst"))]
pub mod engine;
#[cfg(feature = "geo")]
pub mod localiser;
#[cfg(all(feature = "geo", feature = "gst"))]
pub mod replay;
#[cfg(all(feature = "geo", feature = "gst"))]
pub mod run;

#[cfg(all(feature = "geo", feature = "gst"))]
pub mod demo;
#[cfg(all(test, feature = "geo", feature = "gst"))]
mod tests;
