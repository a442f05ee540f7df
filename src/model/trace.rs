//! Optional capture of named intermediate tensors (the names of the golden files),
//! for `smgeo weights forward` and the parity tests. Off by default: a disabled trace
//! never evaluates the closures, so the hot path pays nothing.

use std::collections::BTreeMap;
use tch::Tensor;

#[derive(Debug, Default)]
pub struct Trace {
    enabled: bool,
    pub tensors: BTreeMap<String, Tensor>,
}

impl Trace {
    pub fn off() -> Self {
        Trace::default()
    }

    pub fn on() -> Self {
        Trace { enabled: true, tensors: BTreeMap::new() }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Store `f()` under `name` (detached) when enabled.
    pub fn put(&mut self, name: &str, f: impl FnOnce() -> Tensor) {
        if self.enabled {
            self.tensors.insert(name.to_string(), f().detach());
        }
    }
}
