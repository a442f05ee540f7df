//! Crate-level error: one variant per stage, each carrying its stage's error.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error("{0}")]
    Usage(String),
    #[error("image {path}: {msg}")]
    Image { path: String, msg: String },
    #[error("{0}")]
    Io(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

pub type Result<T> = std::result::Result<T, Error>;
