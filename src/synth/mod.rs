//! Procedural synthetic data: one [`world::World`] (roads, river and bridges, roundabouts,
//! buildings, courts, pools, tanks, trees, cars) serving three generators:
//! synthetic CVOGL-style samples ([`cvogl`]), georeferenced satellite mosaics
//! ([`render::render_ortho`]) and rendered drone views ([`camera::render_perspective`]).
//!
//! Frame: local metric, x east, y north, metres, origin at the world's south-west corner;
//! images are north-up with (x0, y0) the north-west corner of pixel (0, 0).
//! File formats (.pth records, GeoTIFF, H.264) are written elsewhere; this module returns
//! `image::RgbImage`s and plain numbers. Record fields follow SMGEO_SPEC §7 (CVOGL) and the
//! click convention of §3 (query-pixel x, y).

pub mod camera;
pub mod cli;
pub mod cvogl;
pub mod flight;
pub mod fresh;
pub mod geom;
mod layout;
mod leisure;
pub mod raster;
pub mod render;
#[cfg(feature = "geo")]
pub mod scene;
#[cfg(all(feature = "geo", feature = "gst"))]
pub mod video;
pub mod world;

pub use camera::{render_perspective, Camera};
pub use cvogl::{generate_split, make_group, make_sample, SampleConfig, SynthSample};
pub use flight::FlightConfig;
pub use render::{ortho_geotransform, ortho_pixel_to_world, ortho_world_to_pixel, render_ortho, Appearance};
pub use world::{Object, World};

/// Errors of the synthetic-data module.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("invalid camera parameter `{field}` = {value}")]
    InvalidCamera { field: &'static str, value: f64 },
    #[error("invalid sample config `{field}` = {value}: {why}")]
    InvalidConfig { field: &'static str, value: String, why: &'static str },
    #[error("world (seed {seed}) has no target object that fits a {chip_m:.0} m chip and a {view_m:.0} m drone view")]
    NoTarget { seed: u64, chip_m: f64, view_m: f64 },
    #[error("{0}")]
    Invalid(String),
    #[error("I/O on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("JSON in {path}: {source}")]
    Json {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("KLV: {0}")]
    Klv(#[from] crate::klv::KlvError),
    #[cfg(feature = "geo")]
    #[error("georeferencing: {0}")]
    Georef(#[from] crate::georef::GeorefError),
    #[cfg(feature = "gst")]
    #[error("video: {0}")]
    Ingest(#[from] crate::ingest::IngestError),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, SynthError>;
