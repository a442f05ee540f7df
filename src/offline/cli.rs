//! `smgeo train` and `smgeo eval` arguments and entry points.

use std::path::PathBuf;

use super::dataset::Dataset;
use super::eval::{evaluate, write_report, EvalOptions};
use super::train::{train, TrainArgs as Args, TrainConfig};
use crate::weights_cli::ModelChoice;

#[derive(clap::Args, Debug)]
pub struct TrainCmd {
    /// Training configuration (TOML), e.g. config/train.toml.
    #[arg(long, default_value = "config/train.toml")]
    pub config: PathBuf,
    /// Data directory holding `<dataset>/` (or the dataset directory itself).
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value = "CVOGL_DroneAerial")]
    pub dataset: String,
    /// Output directory for checkpoints (`last/`, `best/`).
    #[arg(long, default_value = "runs/train")]
    pub out: PathBuf,
    /// Continue from `<out>/last` if present.
    #[arg(long)]
    pub resume: bool,
    /// Override the config's step limit (0 = none).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Override the config's device.
    #[arg(long)]
    pub device: Option<String>,
    /// Override the config's model preset (keeps the config's other model overrides).
    #[arg(long, value_enum)]
    pub model_preset: Option<crate::model::Preset>,
    /// Override the config's training-time budget in minutes.
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Override the config's epochs (the length of the learning-rate schedule): with a
    /// larger time budget, more epochs let the schedule use it.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Override the config's training precision (auto: bf16 on CUDA and on CPUs with
    /// AVX512-BF16, f32 elsewhere).
    #[arg(long, value_enum)]
    pub precision: Option<crate::model::Precision>,
    /// Synthetic data: after the first epoch, train on new samples drawn from the
    /// dataset's training world (config `fresh_samples`).
    #[arg(long)]
    pub fresh_samples: bool,
    /// Threads reading and augmenting (or rendering) batches ahead (config
    /// `loader_threads`; 0 = half the cores).
    #[arg(long)]
    pub loader_threads: Option<usize>,
    /// No progress bar (logs only).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(clap::Args, Debug)]
pub struct EvalCmd {
    /// Weights (safetensors); a training `best/` or `last/` directory also works.
    /// Not needed with --baseline.
    #[arg(long, required_unless_present = "baseline")]
    pub weights: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelChoice,
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value = "CVOGL_DroneAerial")]
    pub dataset: String,
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Report directory (metrics.json, report.md, charts, examples).
    #[arg(long, default_value = "runs/eval")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    #[arg(long, default_value_t = 8)]
    pub examples: usize,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Inference precision (auto: bf16 on CUDA, f32 on CPU).
    #[arg(long, value_enum, default_value_t = crate::model::Precision::Auto)]
    pub precision: crate::model::Precision,
    /// Evaluate the trivial baseline (train-split mean box at the image centre) instead
    /// of a model.
    #[arg(long)]
    pub baseline: bool,
}

pub fn run_train(c: &TrainCmd) -> anyhow::Result<()> {
    let mut config = TrainConfig::from_file(&c.config)?;
    if let Some(m) = c.max_steps {
        config.max_steps = m;
    }
    if let Some(d) = &c.device {
        config.device = d.clone();
    }
    if let Some(p) = c.model_preset {
        config.preset = p;
    }
    if c.fresh_samples {
        config.fresh_samples = true;
    }
    if let Some(n) = c.loader_threads {
        config.loader_threads = n;
    }
    if let Some(m) = c.max_minutes {
        config.max_minutes = m;
    }
    if let Some(e) = c.epochs {
        config.epochs = e;
    }
    if let Some(p) = c.precision {
        config.precision = p;
    }
    let a = Args {
        config,
        data: c.data.clone(),
        dataset: c.dataset.clone(),
        out: c.out.clone(),
        resume: c.resume,
        progress: !c.quiet,
    };
    let s = train(&a)?;
    println!("{}", serde_json::to_string_pretty(&s)?);
    Ok(())
}

/// Resolve `--weights` (file or checkpoint dir with model.json) and the model config.
pub fn weights_and_config(
    w: &std::path::Path,
    choice: &ModelChoice,
) -> anyhow::Result<(PathBuf, crate::model::ModelConfig)> {
    if w.is_dir() {
        let cfg = match &choice.config {
            Some(p) => crate::model::ModelConfig::from_file(p)?,
            None => crate::model::ModelConfig::from_file(&w.join("model.json"))?,
        };
        return Ok((w.join("weights.safetensors"), cfg));
    }
    Ok((w.to_path_buf(), choice.resolve()?))
}

pub fn run_eval(c: &EvalCmd) -> anyhow::Result<()> {
    if c.baseline {
        let train = Dataset::open(&c.data, &c.dataset, "train", false)?;
        let test = Dataset::open(&c.data, &c.dataset, &c.split, false)?;
        let s = super::eval::centre_baseline(&train, &test, c.limit);
        let report = write_report(&c.out, &format!("{} {} — centre baseline", c.dataset, c.split), &s, &[])?;
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"report": report, "overall": s.summary.overall}))?
        );
        return Ok(());
    }
    let dev = crate::device::select(&c.device)?;
    let weights = c.weights.as_ref().ok_or_else(|| anyhow::anyhow!("--weights is required (or --baseline)"))?;
    let (wpath, cfg) = weights_and_config(weights, &c.model)?;
    let (_vs, m) = crate::weights_cli::load_for_inference(&cfg, &wpath, dev, c.precision)?;
    let mut ds = Dataset::open(&c.data, &c.dataset, &c.split, false)?;
    ds.scale = cfg.input_scale;
    let opts = EvalOptions { batch: c.batch, limit: c.limit, device: dev, examples: c.examples };
    let (summary, preds) = evaluate(&m, &ds, &opts)?;
    let title = format!(
        "{} {} — {} ({} preset, {})",
        c.dataset,
        c.split,
        wpath.display(),
        cfg.preset,
        crate::model::Precision::name_of(m.kind())
    );
    let report = write_report(&c.out, &title, &summary, &preds)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "report": report, "overall": summary.summary.overall, "prompt_split": summary.prompt_split,
            "precision": crate::model::Precision::name_of(m.kind()),
            "skipped": summary.skipped.len(),
            "load_skipped_records": ds.report.skipped.len(),
        }))?
    );
    Ok(())
}
