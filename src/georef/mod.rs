//! Satellite mosaics with GDAL: open/tile mosaics, cut georeferenced chips around a
//! WGS84 position, and map chip pixels ↔ CRS ↔ WGS84.
//!
//! Data flow in the live pipeline: a shareable [`MosaicSpec`] (paths + options, `Send + Sync`)
//! is opened once per worker thread into a [`MosaicReader`] (`Send`, not `Sync`: it owns
//! GDAL handles), which cuts [`Chip`]s (RGB u8 HWC + chip→CRS [`GeoTransform`]); the model's
//! [`PixelBox`] in that chip becomes a [`GeoResult`] in WGS84 via [`pixel_box_to_wgs84`].
//!
//! Units: positions are [`LonLat`] (WGS84 degrees, lon first); GSD is metres per pixel;
//! geotransforms use GDAL's pixel-corner convention (see [`types`]).

pub mod bench;
pub mod chip;
#[cfg(test)]
mod chip_tests;
pub mod cli;
pub mod error;
pub(crate) mod gdalutil;
pub mod mosaic;
pub mod resample;
#[cfg(test)]
pub(crate) mod testutil;
pub mod transform;
pub mod types;
pub mod writer;

pub use bench::{bench_chip, BenchChipOptions};
pub use chip::{ChipGrid, ChipRequest, CoveragePolicy};
pub use cli::MosaicCmd;
pub use error::{GeorefError, Result};
pub use gdalutil::Resampling;
pub use mosaic::{MosaicReader, MosaicSpec};
pub use transform::{pixel_box_to_wgs84, wgs84_to_pixel_box, CrsTransform};
pub use types::{Chip, Crs, GeoResult, GeoTransform, LonLat, PixelBox};
pub use writer::{build_mosaic, write_chip, BuildOptions, Compression};
