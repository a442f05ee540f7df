//! `smgeo bench model`: forward latency of both presets at CVOGL sizes (query
//! 256×256, satellite 1024×1024, batch 1), full and with cached satellite features
//! (with `--batch N`: N queries against one cached chip),
//! plus parameter and analytic FLOP counts (one multiply-add = 2 FLOPs).

use std::time::Instant;

use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::model::{self, ModelConfig, Preset, Trace};
use crate::weights_cli::build;
use crate::Result;

#[derive(clap::Args, Debug)]
pub struct BenchModelArgs {
    /// Presets to measure.
    #[arg(long, value_enum, default_values_t = [Preset::Paper, Preset::Release])]
    pub preset: Vec<Preset>,
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Intra-op threads (default: libtorch's choice, normally the core count).
    #[arg(long)]
    pub threads: Option<i32>,
    #[arg(long, default_value_t = 1)]
    pub batch: i64,
    #[arg(long, default_value = "256x256", value_parser = parse_hw)]
    pub query: (i64, i64),
    #[arg(long, default_value = "1024x1024", value_parser = parse_hw)]
    pub sat: (i64, i64),
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Model config files to measure instead of the presets (variants, ablations).
    #[arg(long)]
    pub config: Vec<std::path::PathBuf>,
}

fn parse_hw(s: &str) -> std::result::Result<(i64, i64), String> {
    let (w, h) = s.split_once('x').ok_or("expected WxH")?;
    Ok((h.parse().map_err(|_| "bad H")?, w.parse().map_err(|_| "bad W")?))
}

/// Median, min, max, p90 of a sample of milliseconds.
pub fn stats(mut v: Vec<f64>) -> Value {
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    json!({"median": q(0.5), "min": v[0], "max": v[v.len() - 1], "p90": q(0.9), "n": v.len()})
}

fn sync(d: Device) {
    if let Device::Cuda(i) = d {
        tch::Cuda::synchronize(i as i64);
    }
}

fn time_ms(dev: Device, runs: usize, warmup: usize, mut f: impl FnMut() -> Result<()>) -> Result<Value> {
    for _ in 0..warmup {
        f()?;
    }
    sync(dev);
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        sync(dev);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(stats(ms))
}

pub fn bench_model(a: &BenchModelArgs) -> Result<Value> {
    if let Some(t) = a.threads {
        tch::set_num_threads(t);
    }
    let dev = crate::device::select(&a.device)?;
    let mut results = Vec::new();
    let mut cfgs: Vec<(String, ModelConfig)> = Vec::new();
    if a.config.is_empty() {
        cfgs.extend(a.preset.iter().map(|&p| (p.to_string(), ModelConfig::preset(p))));
    }
    for c in &a.config {
        cfgs.push((c.display().to_string(), ModelConfig::from_file(c)?));
    }
    for (label, cfg) in cfgs {
        tch::manual_seed(0);
        let (vs, m) = build(&cfg, dev)?;
        let q = Tensor::randn([a.batch, 4, a.query.0, a.query.1], (Kind::Float, dev));
        let s = Tensor::randn([a.batch, 3, a.sat.0, a.sat.1], (Kind::Float, dev));
        let full = time_ms(dev, a.runs, a.warmup, || {
            tch::no_grad(|| m.forward_t(&q, &s, false, &mut Trace::off())).map(|_| ()).map_err(Into::into)
        })?;
        // Cached path: `batch` queries against one chip's features (prompts and tracks on
        // the same chip go through the model together).
        let rf = tch::no_grad(|| m.encode_reference(&s.narrow(0, 0, 1), false, &mut Trace::off()))?;
        let cached = time_ms(dev, a.runs, a.warmup, || {
            tch::no_grad(|| {
                let qf = m.encode_query(&q, false, &mut Trace::off())?;
                m.localise(qf, &rf, false, &mut Trace::off())
            })
            .map(|_| ())
            .map_err(Into::into)
        })?;
        let (total, experts) = flops(&cfg, a.query, a.sat);
        results.push(json!({
            "model": label,
            "preset": cfg.preset.to_string(),
            "params": model::count_params(&vs),
            "full_forward_ms": full,
            "cached_reference_forward_ms": cached,
            "gflop_per_forward": (total * a.batch as f64) / 1e9,
            "gflop_in_experts": (experts * a.batch as f64) / 1e9,
        }));
    }
    Ok(json!({
        "bench": "model",
        "device": crate::device::describe(dev),
        "threads": tch::get_num_threads(),
        "batch": a.batch,
        "query_hw": [a.query.0, a.query.1],
        "sat_hw": [a.sat.0, a.sat.1],
        "warmup": a.warmup,
        "results": results,
    }))
}

/// Analytic FLOPs of one forward (batch 1) as executed by this implementation (only
/// the selected experts are counted). Returns (total, expert part).
pub fn flops(cfg: &ModelConfig, q_hw: (i64, i64), s_hw: (i64, i64)) -> (f64, f64) {
    let mut total = 0.0;
    let mut experts = 0.0;
    for (hw, cin) in [(q_hw, cfg.query_in_chans), (s_hw, cfg.sat_in_chans)] {
        let (mut h, mut w) = (hw.0 / cfg.patch_size, hw.1 / cfg.patch_size);
        total += 2.0 * (h * w * cfg.embed_dim * cin * cfg.patch_size * cfg.patch_size) as f64;
        for i in 0..4 {
            let c = cfg.stage_dim(i) as f64;
            let n = (h * w) as f64;
            for j in 0..cfg.depths[i] as usize {
                let g = crate::model::swin::WindowGeom::new(h, w, cfg.window_size, false);
                let np = (g.hp * g.wp) as f64;
                let win = (g.wh * g.ww) as f64;
                total += 2.0 * np * c * 3.0 * c + 4.0 * np * win * c + 2.0 * np * c * c;
                let moe = cfg.is_moe(i, j);
                if !moe || cfg.moe_beside_dense {
                    total += 4.0 * n * c * c * cfg.ffn_ratio;
                }
                if moe {
                    let e = 4.0 * n * c * c * cfg.expert_hidden_ratio * cfg.top_k as f64;
                    experts += e;
                    total += e + 2.0 * n * c * cfg.num_experts as f64;
                }
            }
            if i < 3 {
                total += 2.0 * (n / 4.0) * 4.0 * c * 2.0 * c;
                h = (h + 1) / 2;
                w = (w + 1) / 2;
            }
        }
    }
    let (hf, wf) = ((s_hw.0 / 32) as f64, (s_hw.1 / 32) as f64);
    let (c3, f) = (cfg.stage_dim(3) as f64, cfg.head_feat_channels as f64);
    total += 2.0 * hf * wf * 9.0 * (c3 * f + f * f) + 2.0 * hf * wf * f * 5.0;
    (total, experts)
}

#[derive(clap::Args, Debug)]
pub struct BenchTrainArgs {
    /// Training configuration whose model, optimiser and loss are measured.
    #[arg(long, default_value = "config/train.toml")]
    pub config: std::path::PathBuf,
    /// Batch size (overrides the config's).
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Timed steps after warm-up.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Intra-op threads (default: the config's, else libtorch's choice).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Device (overrides the config's).
    #[arg(long)]
    pub device: Option<String>,
    /// Model preset (overrides the config's).
    #[arg(long, value_enum)]
    pub model_preset: Option<Preset>,
}

/// Peak and current resident set size of this process (bytes), from /proc.
fn rss_bytes() -> (Option<u64>, Option<u64>) {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else { return (None, None) };
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// `smgeo bench train`: optimisation steps of a training configuration on CVOGL-sized
/// inputs (DroneAerial: query 256², satellite 1024², times the model's `input_scale`).
/// The batch is made of random images with one target box each and goes through the
/// same preprocessing (`collate`) and step (`train_step`: forward, targets, loss,
/// backward, clipping, AdamW) as `smgeo train`; JPEG decoding and augmentation are not
/// included (they run per sample and are reported by `smgeo train` in its samples/s).
pub fn bench_train(a: &BenchTrainArgs) -> anyhow::Result<Value> {
    use crate::offline::dataset::{collate, Sample};
    use crate::offline::train::{lr_at, train_step, AdamW, TrainConfig};
    use rand::{Rng, SeedableRng};
    let mut cfg = TrainConfig::from_file(&a.config)?;
    cfg.batch = a.batch.max(1);
    if let Some(d) = &a.device {
        cfg.device = d.clone();
    }
    if let Some(p) = a.model_preset {
        cfg.preset = p;
    }
    cfg.validate()?;
    if let Some(t) = a.threads.or(cfg.threads) {
        tch::set_num_threads(t);
    }
    let dev = crate::device::select(&cfg.device)?;
    let mcfg = cfg.model_config()?;
    tch::manual_seed(cfg.seed as i64);
    let (vs, m) = build(&mcfg, dev)?;
    let mut opt = AdamW::new(&vs);
    let sc = |n: u32| ((n as f64 * mcfg.input_scale).round() as u32).max(32);
    let (qs, ss) = (sc(256), sc(1024));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut noise = |w: u32, h: u32| {
        let v: Vec<u8> = (0..w * h * 3).map(|_| rng.gen()).collect();
        image::RgbImage::from_raw(w, h, v).expect("buffer of w·h·3 bytes")
    };
    let samples: Vec<Sample> = (0..cfg.batch)
        .map(|i| {
            let (x, y, side) = (ss as f64 * 0.3, ss as f64 * 0.4, ss as f64 * 0.06 * (1 + i % 3) as f64);
            Sample {
                id: i as i64,
                query: noise(qs, qs),
                sat: noise(ss, ss),
                click: (qs as f64 / 2.0, qs as f64 / 2.0),
                bbox: [x, y, x + side, y + side * 0.7],
                category: "bench".into(),
            }
        })
        .collect();
    let (rss_peak_before, _) = rss_bytes();
    let mut collate_ms = Vec::new();
    let mut step_ms = Vec::new();
    let mut losses = Vec::new();
    for k in 0..a.warmup + a.steps.max(1) {
        let t = Instant::now();
        let batch = collate(&samples, dev)?;
        sync(dev);
        let tc = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let st = train_step(&m, &mut opt, &batch, &cfg, mcfg.balance_entropy, lr_at(&cfg, 1.0))?;
        sync(dev);
        let ts = t.elapsed().as_secs_f64() * 1e3;
        losses.push(st.total);
        if k >= a.warmup {
            collate_ms.push(tc);
            step_ms.push(ts);
        }
    }
    let (rss_peak, rss_now) = rss_bytes();
    let (step_ms, collate_ms) = (stats(step_ms), stats(collate_ms));
    let per_batch_ms =
        step_ms["median"].as_f64().unwrap_or(f64::NAN) + collate_ms["median"].as_f64().unwrap_or(f64::NAN);
    Ok(json!({
        "bench": "train",
        "config": a.config.display().to_string(),
        "device": crate::device::describe(dev),
        "threads": tch::get_num_threads(),
        "preset": mcfg.preset.to_string(),
        "params": model::count_params(&vs),
        "batch": cfg.batch,
        "query_hw": [qs, qs],
        "sat_hw": [ss, ss],
        "input_scale": mcfg.input_scale,
        "step_ms": step_ms,
        "collate_ms": collate_ms,
        "samples_per_s": cfg.batch as f64 * 1e3 / per_batch_ms,
        "peak_rss_bytes": rss_peak,
        "peak_rss_bytes_before_training": rss_peak_before,
        "rss_bytes_after": rss_now,
        "losses": losses,
        "note": "random images; excludes JPEG decoding and augmentation; peak RSS is host memory of the whole process",
    }))
}
