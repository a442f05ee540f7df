//! Offline data and evaluation: CVOGL annotation files and localisation metrics.
//!
//! - [`value`]: [`PyValue`], plain Python data (`None`, bool, int, float, str, bytes,
//!   list, tuple, dict).
//! - [`pickle`]: a small, bounded pickle VM that reads such data from untrusted bytes;
//!   [`pickle_write`]: the protocol-2 pickler that writes it.
//! - [`pth`]: PyTorch `.pth` containers around that pickle: the zip form written by
//!   `torch.save` (default since PyTorch 1.6) and the legacy bare-pickle form; files we
//!   write use the zip form that `torch.load(weights_only=True)` reads (the zip
//!   handling itself is in the private `zipfile` module).
//! - [`cvogl`]: the CVOGL record type (spec §7), split loading with validation, writing.
//! - [`metrics`]: pixel IoU (DetGeo's definition, spec §8.2), the release code's
//!   cell-local IoU (spec §8.1, labelled as such), acc@0.25 / acc@0.5 / mIoU and
//!   breakdowns by category and box size; [`accumulate`]: the accumulator and its
//!   serialisable summary (re-exported by `metrics`).
//!
//! All inputs read here (files, maps) are treated as untrusted: malformed data is an
//! error, never a panic, and allocation and recursion are bounded.
//!
//! References: `SMGEO_SPEC.md` §5.2 (decode), §6.1 (targets), §7 (CVOGL format),
//! §8 (evaluation).

use std::path::PathBuf;

pub mod accumulate;
pub mod augment;
pub mod cli;
pub mod cvogl;
pub mod dataset;
pub mod eval;
pub mod metrics;
pub mod pickle;
pub mod pickle_write;
pub mod plot;
pub mod pth;
pub mod train;
pub mod value;
mod zipfile;

pub use cvogl::{CvoglRecord, CvoglSplit, DatasetGeometry, LoadOptions, LoadReport};
pub use metrics::{EvalAccumulator, EvalSample, EvalSummary};
pub use value::PyValue;

/// Errors of the offline module.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// An I/O operation on a file failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An error while decoding a specific file.
    #[error("{}: {source}", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<OfflineError>,
    },
    /// The bytes are not a PyTorch file in a form we read.
    #[error("not a readable PyTorch .pth file: {reason}")]
    NotPth { reason: String },
    /// A structural problem in the zip container.
    #[error("zip container, entry {entry:?}: {reason}")]
    Zip { entry: String, reason: String },
    /// A structural problem in the legacy (pre-zip) container.
    #[error("legacy torch.save stream: {reason}")]
    Legacy { reason: String },
    /// Malformed pickle data.
    #[error("pickle at byte {offset}: {reason}")]
    Pickle { offset: usize, reason: String },
    /// A pickle opcode outside the supported, side-effect-free subset.
    #[error("pickle at byte {offset}: unsupported opcode 0x{opcode:02x} ({name})")]
    UnsupportedOpcode { offset: usize, opcode: u8, name: &'static str },
    /// A pickle global that is not on the allow list.
    #[error("pickle at byte {offset}: global {module}.{name} is not allowed (only plain data is read)")]
    UnsupportedGlobal { offset: usize, module: String, name: String },
    /// A resource limit was exceeded while decoding.
    #[error("limit exceeded: {what} > {limit}")]
    Limit { what: &'static str, limit: usize },
    /// A value cannot be written as a pickle.
    #[error("cannot pickle value: {reason}")]
    Unpicklable { reason: String },
    /// A CVOGL record is malformed or fails validation.
    #[error("record {index} (id {id:?}): {reason}")]
    Record { index: usize, id: Option<i64>, reason: String },
    /// A CVOGL record on its own (not yet placed in a file) is malformed or invalid.
    #[error("CVOGL record (id {id:?}): {reason}")]
    InvalidRecord { id: Option<i64>, reason: String },
    /// The split file was not found in any of the accepted locations.
    #[error("CVOGL split file not found; tried {tried:?}")]
    SplitNotFound { tried: Vec<PathBuf> },
    /// A dataset, split or file name is not acceptable.
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName { what: &'static str, name: String, reason: &'static str },
    /// The dataset has no known image geometry and none was given.
    #[error("unknown dataset {name:?}: expected CVOGL_DroneAerial or CVOGL_SVI, or pass a geometry")]
    UnknownDataset { name: String },
    /// A slice given to a metric function has the wrong length.
    #[error("{what}: expected {expected} values, got {got}")]
    Shape { what: &'static str, expected: usize, got: usize },
    /// A dataset sample (its images) could not be used.
    #[error("sample {id}: {msg}")]
    Sample { id: i64, msg: String },
    /// Invalid configuration or an output that could not be written.
    #[error("configuration: {0}")]
    Config(String),
    /// A checkpoint is missing data or does not match the model.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The model stage failed (bad input, weights).
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// libtorch failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A metric input is not finite or otherwise unusable.
    #[error("{what}: {reason}")]
    BadInput { what: &'static str, reason: String },
}

/// Result alias of the offline module.
pub type Result<T> = std::result::Result<T, OfflineError>;

impl OfflineError {
    /// Attach the file path to an error raised while decoding that file.
    pub(crate) fn in_file(self, path: &std::path::Path) -> Self {
        OfflineError::InFile { path: path.to_path_buf(), source: Box::new(self) }
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Helpers shared by the module's tests.
    use std::path::{Path, PathBuf};

    /// A fresh directory under the system temp dir, removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("smgeo-offline-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Path of a fixture file of this module.
    pub fn fixture(name: &str) -> PathBuf {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/offline")).join(name)
    }
}
