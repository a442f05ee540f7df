//! Error type of the `georef` stage: every variant names the file, CRS or window involved.

use std::path::PathBuf;

/// Errors of mosaic opening, chip cutting and coordinate transforms.
#[derive(Debug, thiserror::Error)]
pub enum GeorefError {
    /// GDAL could not open the file (missing, truncated, corrupt, unknown format).
    #[error("cannot open raster {path}: {msg}")]
    Open { path: PathBuf, msg: String },
    /// The raster has no geotransform or no CRS.
    #[error("raster {path} has no georeferencing: {what}")]
    NoGeoreference { path: PathBuf, what: String },
    /// A CRS definition GDAL/PROJ does not understand.
    #[error("unknown or unsupported CRS {crs:?}: {msg}")]
    UnknownCrs { crs: String, msg: String },
    /// A coordinate transformation failed (e.g. point outside the projection's domain).
    #[error("coordinate transform {from} -> {to} failed: {msg}")]
    Transform { from: String, to: String, msg: String },
    /// A directory given as a mosaic holds no raster files.
    #[error("no raster files (*.tif, *.tiff, *.vrt) in directory {0}")]
    EmptyDirectory(PathBuf),
    /// No sources at all were given.
    #[error("mosaic has no source files")]
    NoSources,
    /// Sources of one mosaic must share one CRS (reproject them with `mosaic build --t-srs`).
    #[error("mosaic sources have different CRSs: {first} is {first_crs}, {other} is {other_crs}")]
    MixedCrs { first: PathBuf, first_crs: String, other: PathBuf, other_crs: String },
    /// GSD must be finite and strictly positive (metres per pixel).
    #[error("invalid ground sample distance {0} m/px: must be finite and > 0")]
    InvalidGsd(f64),
    /// Chip size must be at least 1×1 and at most 16384×16384 pixels.
    #[error("invalid chip size {width}x{height} px (allowed 1..=16384 per side)")]
    InvalidSize { width: usize, height: usize },
    /// The requested chip does not touch the mosaic at all.
    #[error(
        "chip around lon {lon:.7}, lat {lat:.7} is wholly outside mosaic {mosaic}, \
         which covers lon {west:.7}..{east:.7}, lat {south:.7}..{north:.7}"
    )]
    OutsideCoverage { lon: f64, lat: f64, mosaic: String, west: f64, south: f64, east: f64, north: f64 },
    /// The chip is partly outside and the policy refuses such chips.
    #[error(
        "chip around lon {lon:.7}, lat {lat:.7} is only {coverage:.4} covered by mosaic {mosaic} \
         (required {required:.4})"
    )]
    PartialCoverage { lon: f64, lat: f64, mosaic: String, coverage: f64, required: f64 },
    /// Reading pixels from a window failed.
    #[error("reading window x={x} y={y} {width}x{height} of {path} failed: {msg}")]
    Read { path: String, x: i64, y: i64, width: usize, height: usize, msg: String },
    /// Writing an output raster failed.
    #[error("writing {path} failed: {msg}")]
    Write { path: PathBuf, msg: String },
    /// A GDAL call outside the cases above failed.
    #[error("GDAL {op} failed: {msg}")]
    Gdal { op: String, msg: String },
    /// A geotransform that cannot be inverted.
    #[error("geotransform {0:?} is not invertible")]
    DegenerateTransform([f64; 6]),
    /// An argument out of range (message says which and why).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// File-system error with the path involved.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Result alias of the `georef` module.
pub type Result<T> = std::result::Result<T, GeorefError>;

impl GeorefError {
    /// Wrap a GDAL error from operation `op`.
    pub(crate) fn gdal(op: impl Into<String>, e: impl std::fmt::Display) -> Self {
        GeorefError::Gdal { op: op.into(), msg: e.to_string() }
    }
}
