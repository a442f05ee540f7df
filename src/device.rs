//! Device selection: CUDA when libtorch can use it, else CPU, and say which.
//!
//! The binary does not link `libtorch_cuda.so` (the lean CPU libtorch ships it without
//! its CUDA libraries, see build.rs); on a GPU machine, where `LD_LIBRARY_PATH` points
//! at a full torch/lib, we `dlopen` it so libtorch registers its CUDA backend.

use tch::Device;

/// Try to load libtorch's CUDA backend once. Returns whether it loaded.
pub fn load_cuda_backend() -> bool {
    use std::sync::OnceLock;
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        let name = c"libtorch_cuda.so";
        // SAFETY: dlopen with a valid NUL-terminated name; the handle is kept for the
        // process lifetime (libtorch registers global state from it).
        let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        !h.is_null()
    })
}

/// Which device to run on, from a user choice (`auto`, `cpu`, `cuda`, `cuda:N`).
pub fn select(choice: &str) -> crate::Result<Device> {
    let cuda = || load_cuda_backend() && tch::Cuda::is_available();
    let dev = match choice {
        "auto" => {
            if cuda() {
                Device::Cuda(0)
            } else {
                Device::Cpu
            }
        }
        "cpu" => Device::Cpu,
        c if c == "cuda" || c.starts_with("cuda:") => {
            let n: usize = c
                .strip_prefix("cuda:")
                .map(|s| s.parse())
                .transpose()
                .map_err(|_| crate::Error::Usage(format!("device {c:?}: expected cuda:N")))?
                .unwrap_or(0);
            if !cuda() {
                return Err(crate::Error::Usage(format!("device {c}: CUDA is not available on this machine")));
            }
            Device::Cuda(n)
        }
        o => return Err(crate::Error::Usage(format!("device {o:?}: expected auto, cpu, cuda or cuda:N"))),
    };
    Ok(dev)
}

/// Human-readable description, e.g. `cpu (2 threads)` or `cuda:0 (NVIDIA H100)`.
pub fn describe(d: Device) -> String {
    match d {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(n) => format!("cuda:{n} ({} CUDA devices)", tch::Cuda::device_count()),
        o => format!("{o:?}"),
    }
}
