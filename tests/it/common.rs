use std::collections::BTreeMap;
use std::path::PathBuf;

use tch::{Kind, Tensor};

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(rel)
}

pub fn load(rel: &str) -> BTreeMap<String, Tensor> {
    smgeo::model::weights::read_safetensors(&fixture(rel)).expect("fixture loads")
}

/// |got − want| ≤ atol + rtol·|want| elementwise (floats), exact for ints.
/// Returns the worst excess ratio for the report.
pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, atol: f64, rtol: f64) -> f64 {
    let got = got.to_device(tch::Device::Cpu);
    assert_eq!(got.numel(), want.numel(), "{name}: {:?} vs {:?}", got.size(), want.size());
    let got = got.reshape(want.size());
    if !want.is_floating_point() {
        assert!(got.to_kind(Kind::Int64).equal(&want.to_kind(Kind::Int64)), "{name}: integer tensors differ");
        return 0.0;
    }
    let g = got.to_kind(Kind::Double);
    let w = want.to_kind(Kind::Double);
    let diff = (&g - &w).abs();
    let bound = w.abs() * rtol + atol;
    let ratio = (&diff / &bound).max().double_value(&[]);
    assert!(
        ratio <= 1.0,
        "{name}: max |diff| {:.3e} exceeds tolerance (ratio {ratio:.2})",
        diff.max().double_value(&[])
    );
    ratio
}

/// libtorch's default generator is one per process: tests that seed it, draw from it or
/// build models (random init) hold this lock so that a seeded run stays reproducible
/// while other tests of this binary run in parallel.
pub fn torch_rng() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
