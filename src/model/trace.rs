//! Optional capture of named intermediate tensors (the names of the golden files),
//! for `smgeo weights forward` and the parity tests, or of the time spent up to each
//! named point (`smgeo bench model`'s per-stage times). Off by default: a disabled trace
//! never evaluates the closures, so the hot path pays nothing.

use std::collections::BTreeMap;
use std::time::Instant;

use tch::{Device, Tensor};

#[derive(Debug, Default)]
pub struct Trace {
    enabled: bool,
    pub tensors: BTreeMap<String, Tensor>,
    /// Timing mode: the device to synchronise and the last mark.
    timer: Option<(Device, Instant)>,
    /// (point, milliseconds since the previous point) in execution order.
    pub times: Vec<(String, f64)>,
}

impl Trace {
    pub fn off() -> Self {
        Trace::default()
    }

    pub fn on() -> Self {
        Trace { enabled: true, ..Default::default() }
    }

    /// Record the time between consecutive `inter.*` points (stage outputs, patch embeds,
    /// fusion, head), synchronising `dev` at each, from now on. Tensors are not kept and
    /// the model takes its fast path (fused attention), so the sum is a real forward plus
    /// the synchronisations.
    pub fn timing(dev: Device) -> Self {
        Trace { timer: Some((dev, Instant::now())), ..Default::default() }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Store `f()` under `name` (detached) when enabled; in timing mode, mark the time.
    pub fn put(&mut self, name: &str, f: impl FnOnce() -> Tensor) {
        if self.enabled {
            self.tensors.insert(name.to_string(), f().detach());
        }
        if let Some((dev, last)) = &mut self.timer {
            if let Some(point) = name.strip_prefix("inter.") {
                super::synchronize(*dev);
                let now = Instant::now();
                self.times.push((point.to_string(), now.duration_since(*last).as_secs_f64() * 1e3));
                *last = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_marks_inter_points_only_and_keeps_no_tensors() {
        let mut t = Trace::timing(Device::Cpu);
        let mut called = false;
        t.put("inter.sat_stage0_out", || {
            called = true;
            Tensor::zeros([1], (tch::Kind::Float, Device::Cpu))
        });
        t.put("moe.sat_s1b0.x", || Tensor::zeros([1], (tch::Kind::Float, Device::Cpu)));
        std::thread::sleep(std::time::Duration::from_millis(5));
        t.put("inter.head_feat", || Tensor::zeros([1], (tch::Kind::Float, Device::Cpu)));
        assert!(!called && t.tensors.is_empty());
        let names: Vec<&str> = t.times.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["sat_stage0_out", "head_feat"]);
        assert!(t.times[1].1 >= 5.0, "{:?}", t.times);
        assert!(!Trace::off().enabled() && Trace::off().times.is_empty());
    }
}
