//! smgeo: promptable cross-view object geo-localisation (SMGeo) for live drone video.
//!
//! Data flow (folder = stage): `model` (tch SMGeo), `georef` (GDAL mosaics, chips,
//! pixel ↔ WGS84), `klv` (MISB ST 0601), `ingest` (GStreamer), `offline` (CVOGL train /
//! eval), `publish` (MQTT), `live` (runtime). See DESIGN in the README.

pub mod bench;
pub mod cli;
pub mod device;
pub mod error;
#[cfg(feature = "geo")]
pub mod georef;
#[cfg(feature = "gst")]
pub mod ingest;
pub mod klv;
pub mod live;
pub mod model;
pub mod offline;
pub mod predict;
pub mod publish;
pub mod synth;
pub mod weights_cli;

pub use error::{Error, Result};
