//! `smgeo bench ingest`: decode throughput of H.264 MPEG-TS → RGB frames.
//!
//! Generates a test `.ts` with [`super::write_ts`] (moving pattern, default 1080p30,
//! 4 s), then decodes it as fast as possible (`sync=false`) through `file.pipeline`
//! at the native size and at each smaller output size (scaled before the RGB
//! conversion). A consumer thread takes frames from the ring as they arrive.
//! Reported per run: fps, × real time, appsink→consumer latency p50/p95 (ms, from
//! the callback's copy to the consumer's wake-up), frames received, consumed, and
//! evicted unread.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::encode::{no_klv, write_ts, RgbFrame};
use super::pipeline::{Codec, SourceConfig, SourceKind};
use super::source::{Source, SourceState};
use super::{IngestError, Result};

/// Parameters of `smgeo bench ingest`.
#[derive(Debug, Clone)]
pub struct IngestBenchOptions {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub seconds: u32,
    /// Extra runs with these output sizes (width, height).
    pub scaled: Vec<(u32, u32)>,
    /// Where to write the test stream (default: the system temp dir).
    pub dir: Option<PathBuf>,
}

impl Default for IngestBenchOptions {
    fn default() -> Self {
        IngestBenchOptions { width: 1920, height: 1080, fps: 30, seconds: 4, scaled: vec![(1280, 720)], dir: None }
    }
}

/// A smooth moving pattern (diagonal gradients drifting with `t`).
pub fn test_pattern(width: u32, height: u32, t: u32) -> RgbFrame {
    let (w, h) = (width as usize, height as usize);
    let mut data = vec![0u8; w * h * 3];
    for (y, row) in data.chunks_exact_mut(w * 3).enumerate() {
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let (x, y, t) = (x as u32, y as u32, t * 4);
            px[0] = (x + t) as u8;
            px[1] = (y + 2 * t) as u8;
            px[2] = ((x + y) / 2) as u8;
        }
    }
    RgbFrame { width, height, data }
}

/// Run the benchmark; JSON result for `smgeo bench ingest`.
pub fn bench_ingest(opts: &IngestBenchOptions) -> Result<Value> {
    let dir = opts.dir.clone().unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("smgeo_bench_ingest_{}.ts", std::process::id()));
    let n = opts.fps * opts.seconds;
    let (w, h) = (opts.width, opts.height);
    let t = Instant::now();
    let enc = write_ts(&path, (0..n).map(|i| test_pattern(w, h, i)), opts.fps, no_klv());
    let encode_s = t.elapsed().as_secs_f64();
    let enc = enc?;
    let mut runs = Vec::new();
    for size in std::iter::once(None).chain(opts.scaled.iter().copied().map(Some)) {
        runs.push(decode_run(&path, size, opts.fps));
    }
    let _ = std::fs::remove_file(&path);
    let runs = runs.into_iter().collect::<Result<Vec<_>>>()?;
    Ok(json!({
        "bench": "ingest",
        "input": {"width": w, "height": h, "fps": opts.fps, "frames": enc.frames, "codec": "h264"},
        "encode": {"seconds": encode_s, "fps": enc.frames as f64 / encode_s},
        "decode": runs,
    }))
}

fn decode_run(path: &std::path::Path, size: Option<(u32, u32)>, fps: u32) -> Result<Value> {
    let mut cfg = SourceConfig::new(SourceKind::File { path: path.to_path_buf() });
    cfg.codec = Codec::H264;
    cfg.sync = false;
    cfg.output_size = size;
    cfg.ring_capacity = 4;
    let t = Instant::now();
    let src = Source::start(cfg)?;
    let ring = src.frames().clone();
    let mut last = None;
    let mut lat_ms = Vec::new();
    let mut out_size = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(f) = ring.wait_newer(last, Duration::from_millis(200)) {
            lat_ms.push(f.arrived.elapsed().as_secs_f64() * 1e3);
            last = Some(f.seq);
            out_size = (f.width, f.height);
            continue;
        }
        match src.state() {
            SourceState::Eos => break,
            SourceState::Failed(m) => return Err(IngestError::Input { what: "bench decode".into(), message: m }),
            _ if Instant::now() > deadline => {
                return Err(IngestError::Timeout { name: "file.pipeline".into(), what: "EOS".into(), seconds: 300.0 })
            }
            _ => {}
        }
    }
    // The last frames may land between the wait and the EOS check.
    let secs = t.elapsed().as_secs_f64();
    let c = src.stats();
    src.stop();
    lat_ms.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| lat_ms.get(((lat_ms.len().max(1) - 1) as f64 * p).round() as usize).copied();
    let dec_fps = c.frames as f64 / secs;
    Ok(json!({
        "output": format!("{}x{}", out_size.0, out_size.1),
        "seconds": secs,
        "frames": c.frames,
        "consumed": lat_ms.len(),
        "evicted_unread": c.frames.saturating_sub(lat_ms.len() as u64),
        "fps": dec_fps,
        "x_realtime": dec_fps / f64::from(fps.max(1)),
        "latency_ms": {"p50": q(0.5), "p95": q(0.95)},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_small_runs_and_reports() {
        let opts =
            IngestBenchOptions { width: 160, height: 120, fps: 30, seconds: 1, scaled: vec![(80, 60)], dir: None };
        let v = bench_ingest(&opts).expect("bench");
        let runs = v["decode"].as_array().expect("runs");
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0]["frames"], 30);
        assert_eq!(runs[0]["output"], "160x120");
        assert_eq!(runs[1]["output"], "80x60");
        assert!(runs[1]["fps"].as_f64().is_some_and(|f| f > 0.0));
    }
}
