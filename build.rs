//! Link-time set-up for libtorch:
//! - an rpath to the libtorch lib dir (torch-sys gives none), canonicalized because
//!   glibc does not resolve symlinks for `$ORIGIN`;
//! CUDA is not linked here: the lean CPU libtorch ships `libtorch_cuda.so` without its
//! CUDA dependencies, so a hard link would break CPU machines. `device.rs` dlopens it
//! at start-up instead, which works on both (see ENVIRONMENT.md, CUDA trap).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let lib = PathBuf::from(&lib);
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}
