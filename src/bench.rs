//! `smgeo bench model`: forward latency of both presets at CVOGL sizes (query
//! 256×256, satellite 1024×1024, batch 1), full and with cached satellite features
//! (with `--batch N`: N queries against one cached chip),
//! plus per-stage times of the full forward (`stages_ms`: the time from the previous point
//! until each patch embed, stage output, patch merge, fusion (`query_vec`) and head, in
//! execution order: query branch, satellite branch, fusion, head), and parameter and
//! analytic FLOP counts (one multiply-add = 2 FLOPs).

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
    /// Inference precision (auto: bf16 on CUDA, f32 on CPU).
    #[arg(long, value_enum, default_value_t = model::Precision::Auto)]
    pub precision: model::Precision,
    /// In a reduced precision, the patch embeds and this many first stages keep float32.
    #[arg(long, default_value_t = model::DEFAULT_F32_STAGES)]
    pub f32_stages: usize,
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

fn time_ms(dev: Device, runs: usize, warmup: usize, mut f: impl FnMut() -> Result<()>) -> Result<Value> {
    for _ in 0..warmup {
        f()?;
    }
    model::synchronize(dev);
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        model::synchronize(dev);
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
        let (mut vs, m) = build(&cfg, dev)?;
        m.set_precision_with(&mut vs, a.precision.kind(dev), a.f32_stages)?;
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
        // Per-stage times of the full forward (each point synchronises the device).
        let mut per_point: Vec<(String, Vec<f64>)> = Vec::new();
        for _ in 0..a.runs.max(1) {
            let mut tr = Trace::timing(dev);
            tch::no_grad(|| m.forward_t(&q, &s, false, &mut tr))?;
            for (k, (name, ms)) in tr.times.into_iter().enumerate() {
                match per_point.get_mut(k) {
                    Some(p) => p.1.push(ms),
                    None => per_point.push((name, vec![ms])),
                }
            }
        }
        let stages: Vec<Value> =
            per_point.into_iter().map(|(name, v)| json!({"until": name, "median_ms": stats(v)["median"]})).collect();
        let (total, experts) = flops(&cfg, a.query, a.sat);
        results.push(json!({
            "model": label,
            "preset": cfg.preset.to_string(),
            "params": model::count_params(&vs),
            "full_forward_ms": full,
            "cached_reference_forward_ms": cached,
            "stages_ms": stages,
            "gflop_per_forward": (total * a.batch as f64) / 1e9,
            "gflop_in_experts": (experts * a.batch as f64) / 1e9,
        }));
    }
    Ok(json!({
        "bench": "model",
        "device": crate::device::describe(dev),
        "threads": tch::get_num_threads(),
        "batch": a.batch,
        "precision": model::Precision::name_of(a.precision.kind(dev)),
        "f32_stages": reduced_f32_stages(a.precision.kind(dev), a.f32_stages),
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
            if i < cfg.merges() {
                total += 2.0 * (n / 4.0) * 4.0 * c * 2.0 * c;
                h = (h + 1) / 2;
                w = (w + 1) / 2;
            }
        }
    }
    let st = cfg.output_stride();
    let (hf, wf) = ((s_hw.0 / st) as f64, (s_hw.1 / st) as f64);
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
    /// Compute precision (overrides the config's).
    #[arg(long, value_enum)]
    pub precision: Option<model::Precision>,
    /// Prompts on each chip: a step encodes `batch` chips once each and trains all
    /// their prompts, as `smgeo train` does on data with several prompts per chip (up to
    /// the config's `max_queries_per_chip`; the synthetic benchmark has 16).
    #[arg(long, default_value_t = 1)]
    pub queries_per_chip: usize,
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
/// The batch is `batch` random chips with `queries_per_chip` random queries each, one
/// target box per query, and goes through the same preprocessing (`collate_groups`) and
/// step (`train_step`: forward, targets, loss,
/// backward, clipping, AdamW) as `smgeo train`; JPEG decoding and augmentation are not
/// included (they run per sample and are reported by `smgeo train` in its samples/s).
pub fn bench_train(a: &BenchTrainArgs) -> anyhow::Result<Value> {
    use crate::offline::dataset::{collate_groups, Sample};
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
    if let Some(p) = a.precision {
        cfg.precision = p;
    }
    cfg.validate()?;
    if let Some(t) = a.threads.or(cfg.threads) {
        tch::set_num_threads(t);
    }
    let dev = crate::device::select(&cfg.device)?;
    let mcfg = cfg.model_config()?;
    tch::manual_seed(cfg.seed as i64);
    let (vs, mut m) = build(&mcfg, dev)?;
    m.set_compute_kind(Some(cfg.precision.train_kind(dev)))?;
    let mut opt = AdamW::new(&vs);
    let qpc = a.queries_per_chip.max(1);
    let sc = |n: u32| ((n as f64 * mcfg.input_scale).round() as u32).max(32);
    let (qs, ss) = (sc(256), sc(1024));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut noise = |w: u32, h: u32| {
        let v: Vec<u8> = (0..w * h * 3).map(|_| rng.gen()).collect();
        image::RgbImage::from_raw(w, h, v).expect("buffer of w·h·3 bytes")
    };
    let groups: Vec<Vec<Sample>> = (0..cfg.batch)
        .map(|g| {
            let sat = noise(ss, ss);
            (0..qpc)
                .map(|k| {
                    let i = g * qpc + k;
                    let (x, y) = (ss as f64 * (0.1 + 0.05 * (k % 12) as f64), ss as f64 * 0.4);
                    let side = ss as f64 * 0.06 * (1 + i % 3) as f64;
                    Sample {
                        id: i as i64,
                        query: noise(qs, qs),
                        sat: sat.clone(),
                        click: (qs as f64 / 2.0, qs as f64 / 2.0),
                        bbox: [x, y, x + side, y + side * 0.7],
                        category: "bench".into(),
                    }
                })
                .collect()
        })
        .collect();
    let group_refs: Vec<&[Sample]> = groups.iter().map(|g| g.as_slice()).collect();
    let (rss_peak_before, _) = rss_bytes();
    let mut collate_ms = Vec::new();
    let mut step_ms = Vec::new();
    let mut losses = Vec::new();
    for k in 0..a.warmup + a.steps.max(1) {
        let t = Instant::now();
        let batch = collate_groups(&group_refs, dev)?;
        model::synchronize(dev);
        let tc = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let st = train_step(&m, &mut opt, &batch, &cfg, mcfg.balance_entropy, lr_at(&cfg, 1.0))?;
        model::synchronize(dev);
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
        "precision": model::Precision::name_of(m.compute_kind()),
        "params": model::count_params(&vs),
        "batch": cfg.batch,
        "queries_per_chip": qpc,
        "query_hw": [qs, qs],
        "sat_hw": [ss, ss],
        "input_scale": mcfg.input_scale,
        "step_ms": step_ms,
        "collate_ms": collate_ms,
        "samples_per_s": (cfg.batch * qpc) as f64 * 1e3 / per_batch_ms,
        "chips_per_s": cfg.batch as f64 * 1e3 / per_batch_ms,
        "peak_rss_bytes": rss_peak,
        "peak_rss_bytes_before_training": rss_peak_before,
        "rss_bytes_after": rss_now,
        "losses": losses,
        "note": "random images; samples = prompts (batch × queries_per_chip); excludes JPEG decoding and augmentation; peak RSS is host memory of the whole process",
    }))
}

#[derive(clap::Args, Debug)]
pub struct BenchPrecisionArgs {
    /// Weights: a checkpoint folder (weights.safetensors + model.json) or a file.
    #[arg(long)]
    pub weights: std::path::PathBuf,
    #[command(flatten)]
    pub model: crate::weights_cli::ModelChoice,
    /// CVOGL-format dataset root (real or `smgeo synth cvogl`).
    #[arg(long)]
    pub data: std::path::PathBuf,
    #[arg(long, default_value = "CVOGL_DroneAerial")]
    pub dataset: String,
    #[arg(long, default_value = "test")]
    pub split: String,
    /// At most this many samples (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// The reduced precision compared with float32.
    #[arg(long, value_enum, default_value_t = model::Precision::Bf16)]
    pub precision: model::Precision,
    /// The patch embeds and this many first stages keep float32 in the reduced precision.
    #[arg(long, default_value_t = model::DEFAULT_F32_STAGES)]
    pub f32_stages: usize,
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub threads: Option<i32>,
}

/// Float32 stages of a model in `kind` (none when `kind` is float32 itself).
fn reduced_f32_stages(kind: Kind, f32_stages: usize) -> usize {
    if kind == Kind::Float {
        0
    } else {
        f32_stages
    }
}

/// `smgeo bench precision`: the same weights in float32 and in a reduced precision on
/// a dataset split — how often the argmax cell (the decoded location) is the same, how
/// far the heatmap logits and boxes move, the IoU between the two predicted boxes,
/// MoE routing agreement, pixel-IoU acc@0.5 of each against the truth, and the forward
/// time of each.
pub fn bench_precision(a: &BenchPrecisionArgs) -> anyhow::Result<Value> {
    use crate::offline::dataset::{collate, Dataset};
    use crate::offline::metrics::{box_iou, pixel_iou};
    if let Some(t) = a.threads {
        tch::set_num_threads(t);
    }
    let dev = crate::device::select(&a.device)?;
    let (wpath, cfg) = crate::offline::cli::weights_and_config(&a.weights, &a.model)?;
    let low_kind = a.precision.kind(dev);
    let (_v32, m32) = crate::weights_cli::load_for_inference(&cfg, &wpath, dev, model::Precision::F32)?;
    let (_vlo, mlo) = crate::weights_cli::load_for_inference_with(&cfg, &wpath, dev, a.precision, a.f32_stages)?;
    let mut ds = Dataset::open(&a.data, &a.dataset, &a.split, false)?;
    ds.scale = cfg.input_scale;
    let n = if a.limit > 0 { a.limit.min(ds.len()) } else { ds.len() };
    let hw = ds.sat_hw_scaled();
    let (mut same_cell, mut count, mut skipped) = (0usize, 0usize, Vec::new());
    let (mut hit32, mut hitlo) = (0usize, 0usize);
    let (mut max_dh, mut sum_dh, mut cells_dh) = (0f64, 0f64, 0f64);
    let mut box_ious = Vec::new();
    let (mut route_same, mut route_n) = (0i64, 0i64);
    let (mut ms32, mut mslo) = (Vec::new(), Vec::new());
    // float32 top-2 heatmap margin per sample, and whether the cell held
    let mut margins: Vec<(f64, bool)> = Vec::new();
    let mut i = 0;
    while i < n {
        let samples = ds.next_batch(&mut i, n, a.batch, &mut skipped);
        if samples.is_empty() {
            continue;
        }
        let b = collate(&samples, dev)?;
        let sat_hw = (b.sat.size()[2], b.sat.size()[3]);
        let fwd = |m: &model::Smgeo, ms: &mut Vec<f64>| -> Result<model::Outputs> {
            model::synchronize(dev);
            let t = Instant::now();
            let o = tch::no_grad(|| m.forward_t(&b.query, &b.sat, false, &mut Trace::off()))?;
            model::synchronize(dev);
            ms.push(t.elapsed().as_secs_f64() * 1e3 / samples.len() as f64);
            Ok(o)
        };
        let o32 = fwd(&m32, &mut ms32)?;
        let olo = fwd(&mlo, &mut mslo)?;
        let d = (&o32.heatmap - &olo.heatmap).abs();
        max_dh = max_dh.max(d.max().double_value(&[]));
        sum_dh += d.sum(Kind::Double).double_value(&[]);
        cells_dh += d.numel() as f64;
        for (c32, clo) in o32.moe_calls.iter().zip(&olo.moe_calls) {
            let (x, _) = c32.topk_idx.sort(-1, false);
            let (y, _) = clo.topk_idx.sort(-1, false);
            route_same += x.eq_tensor(&y).all_dim(-1, false).sum(Kind::Int64).int64_value(&[]);
            route_n += x.size()[0];
        }
        let d32 = model::decode(&o32.heatmap, &o32.bbox, sat_hw);
        let dlo = model::decode(&olo.heatmap, &olo.bbox, sat_hw);
        let (top2, _) = o32.heatmap.flatten(1, -1).topk(2, -1, true, true);
        let top2: Vec<f32> = Vec::try_from(top2.to_device(Device::Cpu).flatten(0, -1))?;
        for (k, ((s, p), q)) in samples.iter().zip(&d32).zip(&dlo).enumerate() {
            count += 1;
            same_cell += usize::from(p.index == q.index);
            margins.push(((top2[2 * k] - top2[2 * k + 1]) as f64, p.index == q.index));
            let (bp, bq) = (p.box_xyxy.map(|v| v as f64), q.box_xyxy.map(|v| v as f64));
            box_ious.push(box_iou(&bp, &bq));
            hit32 += usize::from(pixel_iou(&bp, &s.bbox, hw) >= 0.5);
            hitlo += usize::from(pixel_iou(&bq, &s.bbox, hw) >= 0.5);
        }
    }
    anyhow::ensure!(count > 0, "no sample of {} {} could be evaluated", a.dataset, a.split);
    let mean_iou = box_ious.iter().sum::<f64>() / count as f64;
    // Agreement among samples whose float32 peak stands clear of the runner-up by more
    // than twice the largest logit change: where a flip would mean more than rounding.
    let clear: Vec<bool> = margins.iter().filter(|(m, _)| *m > 2.0 * max_dh).map(|(_, s)| *s).collect();
    let mut ms: Vec<f64> = margins.iter().map(|(m, _)| *m).collect();
    ms.sort_by(f64::total_cmp);
    let min_iou = box_ious.iter().cloned().fold(1.0, f64::min);
    Ok(json!({
        "bench": "precision",
        "device": crate::device::describe(dev),
        "threads": tch::get_num_threads(),
        "weights": wpath.display().to_string(),
        "preset": cfg.preset.to_string(),
        "precision": model::Precision::name_of(low_kind),
        "f32_stages": reduced_f32_stages(low_kind, a.f32_stages),
        "samples": count,
        "skipped": skipped.len(),
        "same_argmax_cell": same_cell as f64 / count as f64,
        "f32_top2_margin": {"p10": ms[ms.len() / 10], "median": ms[ms.len() / 2]},
        "clear_peak_samples": clear.len(),
        "same_argmax_cell_clear_peaks": if clear.is_empty() { None } else {
            Some(clear.iter().filter(|s| **s).count() as f64 / clear.len() as f64)
        },
        "heatmap_logit_abs_diff": {"max": max_dh, "mean": sum_dh / cells_dh.max(1.0)},
        "box_iou_f32_vs_reduced": {"mean": mean_iou, "min": min_iou},
        "moe_routing_agreement": if route_n > 0 { Some(route_same as f64 / route_n as f64) } else { None },
        "acc_at_0_5": {"f32": hit32 as f64 / count as f64, "reduced": hitlo as f64 / count as f64},
        "ms_per_sample": {"f32": stats(ms32), "reduced": stats(mslo)},
    }))
}
