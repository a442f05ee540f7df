//! `smgeo train`: CVOGL training (MODEL.md): paper loss, AdamW (no decay on norms,
//! biases, bias tables), linear warm-up then cosine to `min_lr` (per step), gradient
//! clipping, deterministic augmentation and data order, checkpoints with exact resume,
//! best-on-validation (acc@0.5) selection.
//!
//! Exact resume: every source of randomness is derived from (seed, epoch, index): the
//! shuffle and the augmentation use ChaCha streams keyed that way, libtorch's generator
//! (drop path, gate noise) is re-seeded before every step with (seed, global step).
//! A checkpoint stores weights, AdamW moments, the step and the best metric, so a
//! resumed run continues with bit-identical parameters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Kind, Tensor};

use super::augment::AugmentConfig;
use super::dataset::{augment_group, collate_groups, Dataset, Sample};
use super::eval::{evaluate, EvalOptions};
use super::{OfflineError, Result};
use crate::model::{loss, weights, ModelConfig, Preset, Smgeo, Trace};
use crate::synth::fresh::FreshSampler;
use std::sync::Arc;

/// Form of the optional matching loss (see [`TrainConfig::match_loss_kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchLossKind {
    Focal,
    Softmax,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Model preset; `model_config` (a file) overrides it.
    pub preset: Preset,
    pub model_config: Option<PathBuf>,
    /// Inline overrides of model fields (same names as a model config file).
    pub model: Option<toml::Table>,
    pub epochs: usize,
    /// Satellite chips per step. Records that share a satellite image (several prompts on
    /// one chip, e.g. `synth cvogl` with `queries_per_chip` > 1) train in the same step,
    /// the chip encoded once for all of them; records with their own image are one chip
    /// each, so this is then the number of samples.
    pub batch: usize,
    /// At most this many prompts of one chip per step (a chip with more is split across
    /// steps); 0 = no limit.
    pub max_queries_per_chip: usize,
    /// Base learning rate for batch 8; scaled by batch/8.
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_epochs: f64,
    pub weight_decay: f64,
    pub clip_grad_norm: f64,
    /// λ₁ focal, λ₂ L1, λ₃ MoE balance.
    pub lambdas: (f64, f64, f64),
    /// Weight of the matching loss (`loss::match_loss`: focal loss on the fusion's
    /// similarity map; models with a fusion only). 0 = MODEL.md's loss alone.
    pub match_loss: f64,
    /// Form of the matching loss: `focal` (per cell, as the heatmap) or `softmax`
    /// (`loss::match_loss_softmax`: the prompted cell against all cells of its chip).
    pub match_loss_kind: MatchLossKind,
    pub seed: u64,
    pub augment: bool,
    pub augmentation: AugmentConfig,
    /// `scratch`, or a safetensors file to start from (e.g. `smgeo weights import
    /// --from swin` output; missing keys keep their initialisation).
    pub init: String,
    /// From scratch only: start the query patch embed as a copy of the satellite one,
    /// click channel zero (`Smgeo::tie_query_embed_to_sat`) — the state ImageNet
    /// initialisation gives both embeds — instead of two independent draws.
    pub tie_embeds: bool,
    /// Stop after this many optimiser steps in total (tiny runs, CI); 0 = no limit.
    pub max_steps: usize,
    /// Stop after this many minutes of training wall time in this run (a CPU budget
    /// for comparisons); 0 = no limit. Validation time is not counted.
    pub max_minutes: f64,
    /// Use only the first this many training / validation samples (0 = all); the
    /// training subset is the same every epoch.
    pub limit_train: usize,
    pub limit_val: usize,
    /// Save `last/` every this many steps (and at every epoch end); 0 = epoch ends only.
    pub checkpoint_every: usize,
    /// Skip samples whose images are missing or wrong (counted) instead of stopping.
    pub skip_bad_samples: bool,
    pub threads: Option<i32>,
    pub device: String,
    /// Threads that read and augment the next batches while the current one trains
    /// (0 = auto: half the cores, 1 to 8). The data are identical whatever the number.
    pub loader_threads: usize,
    /// Synthetic data only (a dataset written by `smgeo synth cvogl`, whose
    /// `manifest.json` names its world): epochs after the first train on new samples
    /// drawn from the training world — epoch e, sample i is the world's sample e·N + i
    /// (N = records in the split) — instead of repeating the files. Deterministic and
    /// resumable like the files; validation stays on the written split.
    pub fresh_samples: bool,
    /// Compute precision (mixed precision: float32 master weights, gradients and
    /// optimiser state; the encoder and head tower compute in this kind). auto: bf16 on
    /// CUDA and on CPUs with AVX512-BF16, f32 elsewhere (`Precision::train_kind`). f16 is
    /// refused (it needs loss scaling; bf16 has float32's range).
    pub precision: crate::model::Precision,
    /// Exponential moving average of the weights (0 = off): after every step the average
    /// moves toward the weights by 1 − d, d = min(ema_decay, (1 + step) / (10 + step)).
    /// Validation, best selection and `best/` use the average; `last/` keeps the raw
    /// weights (and the average in `ema.safetensors`) for an exact resume.
    pub ema_decay: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            preset: Preset::Paper,
            model_config: None,
            model: None,
            epochs: 25,
            batch: 8,
            max_queries_per_chip: 8,
            lr: 1e-4,
            min_lr: 1e-5,
            warmup_epochs: 2.0,
            weight_decay: 1e-4,
            clip_grad_norm: 1.0,
            lambdas: (1.0, 1.0, 0.01),
            match_loss: 0.0,
            match_loss_kind: MatchLossKind::Focal,
            seed: 42,
            augment: true,
            augmentation: AugmentConfig::default(),
            init: "scratch".into(),
            tie_embeds: false,
            max_steps: 0,
            max_minutes: 0.0,
            limit_train: 0,
            limit_val: 0,
            checkpoint_every: 0,
            skip_bad_samples: true,
            threads: None,
            device: "auto".into(),
            loader_threads: 0,
            fresh_samples: false,
            precision: crate::model::Precision::Auto,
            ema_decay: 0.0,
        }
    }
}

impl TrainConfig {
    pub fn from_file(p: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(p).map_err(|e| OfflineError::Io { path: p.into(), source: e })?;
        let c: TrainConfig =
            toml::from_str(&text).map_err(|e| OfflineError::Config(format!("{}: {e}", p.display())))?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(OfflineError::Config(m.to_string()));
        if self.batch == 0 || self.epochs == 0 {
            return bad("batch and epochs must be > 0");
        }
        if !(self.lr > 0.0 && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad("need lr > 0 and 0 ≤ min_lr ≤ lr");
        }
        if self.weight_decay < 0.0 || self.clip_grad_norm < 0.0 || self.warmup_epochs < 0.0 || self.match_loss < 0.0 {
            return bad("weight_decay, clip_grad_norm, warmup_epochs and match_loss must be ≥ 0");
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad("need 0 ≤ ema_decay < 1 (0 = no weight average)");
        }
        if self.precision == crate::model::Precision::F16 {
            return bad("precision = \"f16\" is not supported for training (it needs loss scaling); use bf16");
        }
        Ok(())
    }

    pub fn model_config(&self) -> Result<ModelConfig> {
        let mut v = match &self.model_config {
            Some(p) => {
                serde_json::to_value(ModelConfig::from_file(p)?).map_err(|e| OfflineError::Config(e.to_string()))?
            }
            None => serde_json::json!({ "preset": self.preset }),
        };
        if let (Some(over), Some(obj)) = (&self.model, v.as_object_mut()) {
            for (k, val) in over {
                obj.insert(k.clone(), serde_json::to_value(val).map_err(|e| OfflineError::Config(e.to_string()))?);
            }
        }
        Ok(ModelConfig::from_value(v)?)
    }
}

/// Learning rate at a (fractional) epoch: linear warm-up from 0, then cosine to min.
pub fn lr_at(cfg: &TrainConfig, epoch_f: f64) -> f64 {
    let base = cfg.lr * cfg.batch as f64 / 8.0;
    let min = cfg.min_lr.min(base);
    if epoch_f < cfg.warmup_epochs {
        return base * (epoch_f + 1e-3).min(cfg.warmup_epochs) / cfg.warmup_epochs;
    }
    let span = (cfg.epochs as f64 - cfg.warmup_epochs).max(1e-9);
    let t = ((epoch_f - cfg.warmup_epochs) / span).clamp(0.0, 1.0);
    min + (base - min) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

/// No decay on norms, biases, bias tables and 1-D parameters.
pub fn decays(name: &str, t: &Tensor) -> bool {
    !(t.dim() <= 1 || name.contains("norm") || name.ends_with("bias_table") || name.ends_with(".bias"))
}

/// AdamW with decoupled weight decay, state kept per parameter name.
///
/// Gradients come from [`AdamW::gradients`] (autograd to the parameters, nothing
/// accumulated in `.grad`): a parameter the loss does not reach in a step (an expert no
/// cell selected) has no gradient and is left alone — moments, weight decay and its own
/// step count untouched — as PyTorch's AdamW after `zero_grad(set_to_none=True)`.
pub struct AdamW {
    params: Vec<(String, Tensor, bool)>,
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
    /// Updates applied to each parameter (its bias-correction step).
    t: BTreeMap<String, i64>,
    pub step: i64,
    betas: (f64, f64),
    eps: f64,
}

impl AdamW {
    pub fn new(vs: &VarStore) -> Self {
        let mut params: Vec<(String, Tensor, bool)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(k, t)| {
                let d = decays(&k, &t);
                (k, t, d)
            })
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let m = params.iter().map(|(k, t, _)| (k.clone(), t.zeros_like())).collect();
        let v = params.iter().map(|(k, t, _)| (k.clone(), t.zeros_like())).collect();
        let t = params.iter().map(|(k, _, _)| (k.clone(), 0)).collect();
        AdamW { params, m, v, t, step: 0, betas: (0.9, 0.999), eps: 1e-8 }
    }

    /// d loss / d parameter, in parameter order; undefined where the loss does not
    /// depend on the parameter in this step.
    pub fn gradients(&self, loss: &Tensor) -> Result<Vec<Tensor>> {
        let inputs: Vec<&Tensor> = self.params.iter().map(|(_, p, _)| p).collect();
        Tensor::f_run_backward(&[loss], &inputs, false, false)
            .map_err(|e| OfflineError::Config(format!("backward pass failed: {e}")))
    }

    /// Clip the global norm of `grads` to `max` (0 = off); returns the norm before.
    pub fn clip_grad_norm(grads: &mut [Tensor], max: f64) -> f64 {
        let norms: Vec<Tensor> = grads.iter().filter(|g| g.defined()).map(|g| g.norm().square()).collect();
        if norms.is_empty() {
            return 0.0;
        }
        let total = Tensor::stack(&norms, 0).sum(Kind::Float).sqrt().double_value(&[]);
        if max > 0.0 && total > max {
            let s = max / (total + 1e-6);
            for g in grads.iter_mut().filter(|g| g.defined()) {
                let _ = g.g_mul_scalar_(s);
            }
        }
        total
    }

    pub fn step(&mut self, grads: &[Tensor], lr: f64, wd: f64) {
        assert_eq!(grads.len(), self.params.len(), "one gradient per parameter");
        self.step += 1;
        let (b1, b2) = self.betas;
        tch::no_grad(|| {
            for ((k, p, decay), g) in self.params.iter_mut().zip(grads) {
                if !g.defined() {
                    continue;
                }
                let t = self.t.get_mut(k).expect("state for every param");
                *t += 1;
                let bc1 = 1.0 - b1.powi(*t as i32);
                let bc2 = 1.0 - b2.powi(*t as i32);
                let m = self.m.get_mut(k).expect("state for every param");
                let _ = m.g_mul_scalar_(b1).g_add_(&(g * (1.0 - b1)));
                let v = self.v.get_mut(k).expect("state for every param");
                let _ = v.g_mul_scalar_(b2).g_add_(&(g.square() * (1.0 - b2)));
                if *decay && wd > 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * wd);
                }
                let upd = (&*m / bc1) / ((&*v / bc2).sqrt() + self.eps) * lr;
                let _ = p.g_sub_(&upd);
            }
        });
    }

    pub fn state(&self) -> BTreeMap<String, Tensor> {
        let mut s = BTreeMap::new();
        for (k, t) in &self.m {
            s.insert(format!("m.{k}"), t.shallow_clone());
        }
        for (k, t) in &self.v {
            s.insert(format!("v.{k}"), t.shallow_clone());
        }
        for (k, n) in &self.t {
            s.insert(format!("t.{k}"), Tensor::from(*n));
        }
        s
    }

    /// Restore moments and per-parameter steps; checkpoints written before per-parameter
    /// steps existed (no `t.*` keys) use the global `step` for every parameter.
    pub fn load_state(&mut self, st: &BTreeMap<String, Tensor>, step: i64) -> Result<()> {
        for (pre, map) in [("m.", &mut self.m), ("v.", &mut self.v)] {
            for (k, t) in map.iter_mut() {
                let src = st
                    .get(&format!("{pre}{k}"))
                    .ok_or_else(|| OfflineError::Checkpoint(format!("optimiser state lacks {pre}{k}")))?;
                if src.size() != t.size() {
                    return Err(OfflineError::Checkpoint(format!(
                        "optimiser state {pre}{k} has shape {:?}",
                        src.size()
                    )));
                }
                tch::no_grad(|| t.copy_(&src.to_device(t.device())));
            }
        }
        for (k, n) in self.t.iter_mut() {
            *n = match st.get(&format!("t.{k}")) {
                Some(x) if x.numel() == 1 => x.int64_value(&[]),
                Some(x) => {
                    return Err(OfflineError::Checkpoint(format!("optimiser state t.{k} has shape {:?}", x.size())))
                }
                None => step,
            };
        }
        self.step = step;
        Ok(())
    }
}

/// Progress saved next to the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    pub epoch: usize,
    /// Batches of `epoch` already done.
    pub batch_in_epoch: usize,
    pub global_step: i64,
    pub best_val_acc50: f64,
    /// Validation mIoU of the best checkpoint: breaks ties on acc@0.5 (early in training
    /// acc@0.5 is often 0 for every epoch while the boxes still improve).
    #[serde(default)]
    pub best_val_miou: f64,
    pub best_epoch: Option<usize>,
    pub data_hash_train: String,
    pub data_hash_val: Option<String>,
    pub train_config: TrainConfig,
    pub model_config: ModelConfig,
    pub history: Vec<serde_json::Value>,
    /// Loss sum and step count of the unfinished `epoch` (its mean survives a resume).
    #[serde(default)]
    pub epoch_loss: (f64, usize),
    /// Heatmap (focal) and box (L1) loss sums of the unfinished `epoch`, unweighted.
    #[serde(default)]
    pub epoch_parts: (f64, f64),
}

#[derive(Debug)]
pub struct TrainArgs {
    pub config: TrainConfig,
    pub data: PathBuf,
    pub dataset: String,
    pub out: PathBuf,
    pub resume: bool,
    pub progress: bool,
}

/// Moving average of the trainable weights ([`TrainConfig::ema_decay`]), by name.
struct Ema {
    decay: f64,
    avg: BTreeMap<String, Tensor>,
    /// The averaged variables themselves (handles on the store's tensors), in `avg`'s order.
    weights: Vec<Tensor>,
}

impl Ema {
    /// Starts the average at the current weights.
    fn new(vs: &VarStore, decay: f64) -> Self {
        let trainable: BTreeMap<String, Tensor> =
            weights::state_dict(vs).into_iter().filter(|(_, t)| t.requires_grad()).collect();
        let avg = trainable.iter().map(|(k, t)| (k.clone(), t.detach().copy())).collect();
        Ema { decay, avg, weights: trainable.into_values().collect() }
    }

    /// One update after optimiser step `step` (0-based).
    fn update(&mut self, step: i64) {
        let d = self.decay.min((1.0 + step as f64) / (10.0 + step as f64));
        tch::no_grad(|| {
            for (a, w) in self.avg.values_mut().zip(&self.weights) {
                let _ = a.lerp_(w, 1.0 - d);
            }
        });
    }

    /// Exchanges the weights with the average (twice = unchanged).
    fn swap(&mut self) {
        tch::no_grad(|| {
            for (a, w) in self.avg.values_mut().zip(&mut self.weights) {
                let tmp = w.detach().copy();
                w.copy_(a);
                a.copy_(&tmp);
            }
        });
    }

    /// Loads a saved average; every averaged weight must be there with its shape.
    fn load(&mut self, path: &Path) -> Result<()> {
        let saved = weights::read_safetensors(path)?;
        for (k, a) in &mut self.avg {
            let t = saved.get(k).filter(|t| t.size() == a.size()).ok_or_else(|| {
                OfflineError::Checkpoint(format!("{}: no average for {k} of its shape", path.display()))
            })?;
            tch::no_grad(|| a.copy_(t));
        }
        Ok(())
    }
}

fn ckpt_err(e: impl std::fmt::Display) -> OfflineError {
    OfflineError::Checkpoint(e.to_string())
}

fn save_dir(dir: &Path, vs: &VarStore, opt: Option<&AdamW>, state: &TrainState) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| OfflineError::Io { path: dir.into(), source: e })?;
    let meta: BTreeMap<String, String> =
        [("config".to_string(), serde_json::to_string(&state.model_config).map_err(ckpt_err)?)].into();
    weights::write_safetensors(&weights::state_dict(vs), &meta, &dir.join("weights.safetensors"))?;
    if let Some(o) = opt {
        weights::write_safetensors(&o.state(), &BTreeMap::new(), &dir.join("optim.safetensors"))?;
    }
    let model_json = serde_json::to_string_pretty(&state.model_config).map_err(ckpt_err)?;
    std::fs::write(dir.join("model.json"), model_json).map_err(|e| OfflineError::Io { path: dir.into(), source: e })?;
    let st = serde_json::to_string_pretty(state).map_err(ckpt_err)?;
    std::fs::write(dir.join("state.json"), st).map_err(|e| OfflineError::Io { path: dir.into(), source: e })
}

/// `last/`: raw weights, optimiser state and, with a weight average, `ema.safetensors`.
fn save_last(dir: &Path, vs: &VarStore, opt: &AdamW, ema: Option<&Ema>, state: &TrainState) -> Result<()> {
    save_dir(dir, vs, Some(opt), state)?;
    if let Some(e) = ema {
        weights::write_safetensors(&e.avg, &BTreeMap::new(), &dir.join("ema.safetensors"))?;
    }
    Ok(())
}

/// Summary printed at the end of a run.
#[derive(Debug, Serialize)]
pub struct TrainSummary {
    pub steps: i64,
    pub epochs_done: usize,
    pub best_val_acc50: f64,
    pub best_epoch: Option<usize>,
    /// Training samples (prompts) per second of training time.
    pub samples_per_s: f64,
    /// Satellite chips per second (equal to samples/s when every sample has its own chip).
    pub chips_per_s: f64,
    pub train_minutes: f64,
    pub wall_minutes: f64,
    pub skipped_samples: usize,
    pub out: PathBuf,
    pub first_loss: f64,
    pub last_loss: f64,
}

/// Loaded (and augmented) samples of one batch, chip by chip; errors are per sample.
type LoadedBatch = Vec<Vec<Result<Sample>>>;

/// Reads the batches of one epoch ahead of the training loop on background threads
/// (bounded: at most two batches wait), in the epoch's order. Sample `i` of epoch `e`
/// is augmented with a generator keyed by (seed, e, i) alone, so what a batch holds does
/// not depend on the number of threads or on timing. Dropping it stops the threads.
struct Prefetch {
    rx: crossbeam_channel::Receiver<LoadedBatch>,
    _thread: std::thread::JoinHandle<()>,
}

impl Prefetch {
    /// `batches`: per step, the record indices of each chip (groups of
    /// [`Dataset::chip_groups`]) with the group's index in the epoch's group list;
    /// `group_stride`: the number of groups in the whole split (fresh chip numbering).
    fn start(
        ds: Dataset,
        fresh: Option<Arc<FreshSampler>>,
        batches: Vec<Vec<(usize, Vec<usize>)>>,
        cfg: &TrainConfig,
        epoch: usize,
        group_stride: usize,
        threads: usize,
    ) -> Self {
        let (tx, rx) = crossbeam_channel::bounded::<LoadedBatch>(2);
        let (aug, seed, augment_on, max_q) =
            (cfg.augmentation.clone(), cfg.seed, cfg.augment, cfg.max_queries_per_chip);
        let load_group = move |ds: &Dataset, (gi, idx): &(usize, Vec<usize>)| -> Vec<Result<Sample>> {
            let loaded = match &fresh {
                Some(f) if epoch > 0 => match fresh_group(f, ds, (epoch * group_stride + gi) as u64, max_q) {
                    Ok(g) => g.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                },
                _ => ds.load_group(idx),
            };
            if !augment_on {
                return loaded;
            }
            // Keyed by (seed, epoch, first record of the chip) alone: the chip and its
            // first prompt as a lone sample would be; prompt j > 0 from its own stream.
            let key = seed.wrapping_mul(1_000_003) ^ ((epoch as u64) << 32) ^ idx[0] as u64;
            let (mut out, mut ok) = (Vec::with_capacity(loaded.len()), Vec::with_capacity(loaded.len()));
            for r in loaded {
                match r {
                    Ok(s) => ok.push(s),
                    Err(e) => out.push(Err(e)),
                }
            }
            let mut rng = ChaCha8Rng::seed_from_u64(key);
            let member = |j: usize| ChaCha8Rng::seed_from_u64(key ^ ((j as u64) << 48));
            out.extend(augment_group(ok, &aug, &mut rng, member).into_iter().map(Ok));
            out
        };
        let thread = std::thread::spawn(move || {
            for groups in batches {
                let out: LoadedBatch = if threads <= 1 || groups.len() <= 1 {
                    groups.iter().map(|g| load_group(&ds, g)).collect()
                } else {
                    let per = groups.len().div_ceil(threads);
                    std::thread::scope(|sc| {
                        let hs: Vec<_> = groups
                            .chunks(per)
                            .map(|c| sc.spawn(|| c.iter().map(|g| load_group(&ds, g)).collect::<Vec<_>>()))
                            .collect();
                        hs.into_iter()
                            .flat_map(|h| {
                                h.join().unwrap_or_else(|_| {
                                    vec![vec![Err(OfflineError::Config("a data loader thread panicked".into()))]]
                                })
                            })
                            .collect()
                    })
                };
                if tx.send(out).is_err() {
                    return; // the training loop stopped early
                }
            }
        });
        Prefetch { rx, _thread: thread }
    }

    fn next(&self) -> Result<LoadedBatch> {
        self.rx.recv().map_err(|_| OfflineError::Config("the data loader stopped unexpectedly".into()))
    }
}

/// Chip `g` of the training world with its prompts (at most `max`, 0 = all), as
/// `Dataset::load_group` would give them (model scale).
fn fresh_group(f: &FreshSampler, ds: &Dataset, g: u64, max: usize) -> Result<Vec<Sample>> {
    let mut grp =
        f.group(g).map_err(|e| OfflineError::Sample { id: g as i64, msg: format!("fresh chip {g}: {e:#}") })?;
    if max > 0 {
        grp.truncate(max);
    }
    Ok(grp.into_iter().map(|s| ds.to_model_scale(s)).collect())
}

/// `loader_threads` resolved: the configured number, or half the cores (1 to 8).
fn loader_threads(cfg: &TrainConfig) -> usize {
    if cfg.loader_threads > 0 {
        return cfg.loader_threads;
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    (cores / 2).clamp(1, 8)
}

/// Losses and gradient norm of one optimisation step.
#[derive(Debug, Clone, Copy)]
pub struct StepOut {
    pub total: f64,
    pub heatmap: f64,
    pub bbox: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
}

/// One optimisation step on a collated batch: forward in training mode, targets, the
/// paper loss, autograd gradients, clipping, AdamW. The caller seeds libtorch's
/// generator (drop path, gate noise) beforehand when it wants reproducibility.
pub fn train_step(
    model: &Smgeo,
    opt: &mut AdamW,
    batch: &super::dataset::Batch,
    cfg: &TrainConfig,
    balance_entropy: bool,
    lr: f64,
) -> Result<StepOut> {
    let out = model.forward_indexed(&batch.query, &batch.sat, batch.ref_index.as_ref(), true, &mut Trace::off())?;
    let hs = out.heatmap.size();
    let sat_hw = (batch.sat.size()[2], batch.sat.size()[3]);
    let tg = loss::build_targets(&batch.boxes, sat_hw, (hs[2], hs[3])).to_device(batch.sat.device());
    let bal = if balance_entropy { out.entropy.shallow_clone() } else { out.entropy.zeros_like() };
    let lp = loss::paper_loss(&out.heatmap, &out.bbox, &tg, &bal, cfg.lambdas);
    let total = match (&out.fusion_logits, cfg.match_loss > 0.0) {
        (Some(s), true) => {
            let m = match cfg.match_loss_kind {
                MatchLossKind::Focal => loss::match_loss(s, &tg),
                MatchLossKind::Softmax => loss::match_loss_softmax(s, &tg),
            };
            &lp.total + m * cfg.match_loss
        }
        _ => lp.total.shallow_clone(),
    };
    let mut grads = opt.gradients(&total)?;
    let grad_norm = AdamW::clip_grad_norm(&mut grads, cfg.clip_grad_norm);
    opt.step(&grads, lr, cfg.weight_decay);
    Ok(StepOut {
        total: total.double_value(&[]),
        heatmap: lp.heatmap.double_value(&[]),
        bbox: lp.bbox.double_value(&[]),
        grad_norm,
    })
}

pub fn train(a: &TrainArgs) -> Result<TrainSummary> {
    let cfg = &a.config;
    cfg.validate()?;
    if let Some(t) = cfg.threads {
        tch::set_num_threads(t);
    }
    let dev = crate::device::select(&cfg.device).map_err(|e| OfflineError::Config(e.to_string()))?;
    let mcfg = cfg.model_config()?;
    let mut train_ds = Dataset::open(&a.data, &a.dataset, "train", !cfg.skip_bad_samples)?;
    train_ds.scale = mcfg.input_scale;
    let val_ds = Dataset::open(&a.data, &a.dataset, "val", !cfg.skip_bad_samples).ok().map(|mut d| {
        d.scale = mcfg.input_scale;
        d
    });
    tch::manual_seed(cfg.seed as i64);
    let mut vs = VarStore::new(dev);
    let mut model = Smgeo::new(&vs.root(), &mcfg)?;
    let kind = cfg.precision.train_kind(dev);
    model.set_compute_kind(Some(kind))?;
    tracing::info!("compute precision {} ({:?} on {:?})", crate::model::Precision::name_of(kind), cfg.precision, dev);
    let mut opt;
    let last = a.out.join("last");
    let resuming = a.resume && last.join("state.json").exists();
    let mut state = if resuming {
        let st: TrainState = serde_json::from_slice(
            &std::fs::read(last.join("state.json")).map_err(|e| OfflineError::Io { path: last.clone(), source: e })?,
        )
        .map_err(ckpt_err)?;
        if st.data_hash_train != train_ds.hash {
            return Err(OfflineError::Checkpoint(format!(
                "{}: checkpoint was trained on other data (hash {} vs {})",
                last.display(),
                st.data_hash_train,
                train_ds.hash
            )));
        }
        weights::load_file(&vs, &last.join("weights.safetensors"), true)?;
        opt = AdamW::new(&vs);
        opt.load_state(&weights::read_safetensors(&last.join("optim.safetensors"))?, st.global_step)?;
        tracing::info!(epoch = st.epoch, step = st.global_step, "resumed from {}", last.display());
        st
    } else {
        if cfg.init == "scratch" && cfg.tie_embeds {
            if model.tie_query_embed_to_sat() {
                tracing::info!("query patch embed starts as the satellite one (click channel zero)");
            } else {
                tracing::warn!("tie_embeds: the patch embeds' shapes differ; left as drawn");
            }
        }
        if cfg.init != "scratch" {
            let rep = weights::load_file(&vs, Path::new(&cfg.init), false)?;
            tracing::info!(
                "initialised from {}: {} tensors, {} kept their init",
                cfg.init,
                rep.loaded,
                rep.missing.len()
            );
        }
        opt = AdamW::new(&vs);
        TrainState {
            epoch: 0,
            batch_in_epoch: 0,
            global_step: 0,
            best_val_acc50: -1.0,
            best_val_miou: -1.0,
            best_epoch: None,
            data_hash_train: train_ds.hash.clone(),
            data_hash_val: val_ds.as_ref().map(|d| d.hash.clone()),
            train_config: cfg.clone(),
            model_config: mcfg.clone(),
            history: vec![],
            epoch_loss: (0.0, 0),
            epoch_parts: (0.0, 0.0),
        }
    };
    // The weight average starts at the weights as loaded; a resumed run continues its own.
    let mut ema = (cfg.ema_decay > 0.0).then(|| Ema::new(&vs, cfg.ema_decay));
    if let (Some(e), true) = (&mut ema, resuming) {
        let p = last.join("ema.safetensors");
        if p.exists() {
            e.load(&p)?;
        } else {
            tracing::warn!("{}: no weight average saved; it restarts from the weights", p.display());
        }
    }
    let n_train = if cfg.limit_train > 0 { cfg.limit_train.min(train_ds.len()) } else { train_ds.len() };
    if n_train == 0 {
        return Err(OfflineError::Config(format!("{}: no training samples", train_ds.report.path.display())));
    }
    let groups = train_ds.chip_groups(n_train, cfg.max_queries_per_chip);
    let group_stride = if n_train == train_ds.len() {
        groups.len()
    } else {
        train_ds.chip_groups(train_ds.len(), cfg.max_queries_per_chip).len()
    };
    let batches_per_epoch = groups.len().div_ceil(cfg.batch);
    let n_loader = loader_threads(cfg);
    let fresh = if cfg.fresh_samples {
        let f =
            FreshSampler::open(&a.data, "train").map_err(|e| OfflineError::Config(format!("fresh_samples: {e:#}")))?;
        tracing::info!("fresh samples from the training world of {}", f.manifest.display());
        Some(Arc::new(f))
    } else {
        None
    };
    let bar = a.progress.then(|| {
        let pb = indicatif::ProgressBar::new((cfg.epochs * batches_per_epoch) as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb.set_position((state.epoch * batches_per_epoch + state.batch_in_epoch) as u64);
        pb
    });
    let t0 = Instant::now();
    let mut train_time = std::time::Duration::ZERO;
    let (mut seen, mut chips, mut skipped) = (0usize, 0usize, 0usize);
    let (mut first_loss, mut last_loss) = (f64::NAN, f64::NAN);
    let mut stop = false;
    while state.epoch < cfg.epochs && !stop {
        let epoch = state.epoch;
        // `limit_train` keeps the same first samples every epoch (a fixed subset).
        let mut order: Vec<usize> = (0..groups.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        let resumed_mid_epoch = state.batch_in_epoch > 0;
        let (mut sum_loss, mut n_loss) = if resumed_mid_epoch { state.epoch_loss } else { (0.0, 0) };
        let (mut sum_hm, mut sum_box) = if resumed_mid_epoch { state.epoch_parts } else { (0.0, 0.0) };
        let batches: Vec<Vec<(usize, Vec<usize>)>> = (state.batch_in_epoch..batches_per_epoch)
            .map(|b| {
                order[b * cfg.batch..((b + 1) * cfg.batch).min(groups.len())]
                    .iter()
                    .map(|&g| (g, groups[g].clone()))
                    .collect()
            })
            .collect();
        let prefetch = Prefetch::start(train_ds.clone(), fresh.clone(), batches, cfg, epoch, group_stride, n_loader);
        for b in state.batch_in_epoch..batches_per_epoch {
            let t_step = Instant::now();
            let mut loaded: Vec<Vec<Sample>> = Vec::with_capacity(cfg.batch);
            for g in prefetch.next()? {
                let mut ok = Vec::with_capacity(g.len());
                for s in g {
                    match s {
                        Ok(s) => ok.push(s),
                        Err(e) if cfg.skip_bad_samples => {
                            skipped += 1;
                            tracing::warn!("skipping: {e}");
                        }
                        Err(e) => return Err(e),
                    }
                }
                if !ok.is_empty() {
                    loaded.push(ok);
                }
            }
            if loaded.is_empty() {
                state.batch_in_epoch = b + 1;
                continue;
            }
            let group_refs: Vec<&[Sample]> = loaded.iter().map(Vec::as_slice).collect();
            let batch = collate_groups(&group_refs, dev)?;
            let n_samples: usize = loaded.iter().map(Vec::len).sum();
            let epoch_f = epoch as f64 + b as f64 / batches_per_epoch as f64;
            let lr = lr_at(cfg, epoch_f);
            tch::manual_seed((cfg.seed as i64).wrapping_mul(31).wrapping_add(state.global_step));
            let st = train_step(&model, &mut opt, &batch, cfg, mcfg.balance_entropy, lr)?;
            let (l, gnorm) = (st.total, st.grad_norm);
            if !l.is_finite() {
                return Err(OfflineError::Config(format!("loss became {l} at step {}", state.global_step)));
            }
            if first_loss.is_nan() {
                first_loss = l;
            }
            last_loss = l;
            sum_loss += l;
            n_loss += 1;
            sum_hm += st.heatmap;
            sum_box += st.bbox;
            state.epoch_loss = (sum_loss, n_loss);
            state.epoch_parts = (sum_hm, sum_box);
            seen += n_samples;
            chips += loaded.len();
            if let Some(e) = &mut ema {
                e.update(state.global_step);
            }
            state.global_step += 1;
            state.batch_in_epoch = b + 1;
            if let Some(pb) = &bar {
                pb.inc(1);
                let sps = seen as f64 / t0.elapsed().as_secs_f64().max(1e-9);
                pb.set_message(format!(
                    "ep {epoch} loss {l:.4} hm {:.3} box {:.3} lr {lr:.2e} |g| {gnorm:.2} {sps:.2} samples/s",
                    st.heatmap, st.bbox
                ));
            }
            train_time += t_step.elapsed();
            let max_hit = (cfg.max_steps > 0 && state.global_step as usize >= cfg.max_steps)
                || (cfg.max_minutes > 0.0 && train_time.as_secs_f64() >= cfg.max_minutes * 60.0);
            if max_hit {
                stop = true;
                break;
            }
            if cfg.checkpoint_every > 0 && state.global_step as usize % cfg.checkpoint_every == 0 {
                save_last(&last, &vs, &opt, ema.as_ref(), &state)?;
            }
        }
        // Epoch end, or the step/time budget's end inside the epoch (a budget-limited run
        // still validates what it trained and selects a best checkpoint): validation, best
        // selection, checkpoint. A partial epoch keeps its place, so `--resume` finishes it.
        let partial = stop && state.batch_in_epoch < batches_per_epoch;
        let n = n_loss.max(1) as f64;
        let done = if partial { state.batch_in_epoch as f64 / batches_per_epoch as f64 } else { 1.0 };
        let mut entry = serde_json::json!({"epoch": epoch, "train_loss": sum_loss / n, "train_heatmap": sum_hm / n,
            "train_bbox": sum_box / n, "lr_end": lr_at(cfg, epoch as f64 + done)});
        if partial {
            entry["partial"] = serde_json::json!(true);
            entry["batches"] = serde_json::json!(state.batch_in_epoch);
        }
        if let Some(val) = &val_ds {
            let opts = EvalOptions { batch: cfg.batch, limit: cfg.limit_val, device: dev, examples: 0 };
            // With a weight average, validation and `best/` see the average (an error
            // below ends the run before anything else is saved).
            if let Some(e) = &mut ema {
                e.swap();
            }
            let (summary, _) = evaluate(&model, val, &opts)?;
            let acc = summary.overall.pixel_iou.acc_at_0_5;
            entry["val"] = serde_json::to_value(&summary.overall).map_err(ckpt_err)?;
            let miou = summary.overall.pixel_iou.miou;
            if acc > state.best_val_acc50 || (acc == state.best_val_acc50 && miou > state.best_val_miou) {
                state.best_val_acc50 = acc;
                state.best_val_miou = miou;
                state.best_epoch = Some(epoch);
                save_dir(&a.out.join("best"), &vs, None, &state)?;
            }
            if let Some(e) = &mut ema {
                e.swap();
            }
            if let Some(pb) = &bar {
                pb.println(format!("epoch {epoch}: val acc@0.5 {:.4} mIoU {:.4}", acc, summary.overall.pixel_iou.miou));
            }
        }
        state.history.push(entry);
        if !partial {
            state.epoch += 1;
            state.batch_in_epoch = 0;
        }
        save_last(&last, &vs, &opt, ema.as_ref(), &state)?;
    }
    if let Some(pb) = bar {
        pb.finish();
    }
    vs.freeze();
    Ok(TrainSummary {
        steps: state.global_step,
        epochs_done: state.epoch,
        best_val_acc50: state.best_val_acc50,
        best_epoch: state.best_epoch,
        samples_per_s: seen as f64 / train_time.as_secs_f64().max(1e-9),
        chips_per_s: chips as f64 / train_time.as_secs_f64().max(1e-9),
        train_minutes: train_time.as_secs_f64() / 60.0,
        wall_minutes: t0.elapsed().as_secs_f64() / 60.0,
        skipped_samples: skipped,
        out: a.out.clone(),
        first_loss,
        last_loss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn schedule_warms_up_then_decays_to_min() {
        let c = TrainConfig { epochs: 25, batch: 8, lr: 1e-4, min_lr: 1e-5, warmup_epochs: 2.0, ..Default::default() };
        assert!(lr_at(&c, 0.0) < 1e-6);
        assert!((lr_at(&c, 1.0) - 0.5e-4).abs() < 1e-7);
        assert!((lr_at(&c, 2.0) - 1e-4).abs() < 1e-12);
        assert!((lr_at(&c, 25.0) - 1e-5).abs() < 1e-12);
        assert!(lr_at(&c, 10.0) < lr_at(&c, 5.0));
    }

    #[test]
    fn decay_groups() {
        let w = Tensor::zeros([2, 2], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        assert!(decays("backbone.stages.0.blocks.0.attn.in_proj_weight", &w));
        assert!(!decays("backbone.stages.0.blocks.0.attn.relative_position_bias_table", &w));
        assert!(!decays("backbone.stages.0.blocks.0.norm1.weight", &b));
        assert!(!decays("head.conv.0.bias", &b));
    }

    #[test]
    fn adamw_leaves_parameters_without_gradient_alone() {
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let a = root.var_copy("a", &Tensor::from_slice(&[1f32, -2.0]));
        let w = root.var_copy("w", &Tensor::ones([2, 2], (Kind::Float, Device::Cpu)));
        let mut opt = AdamW::new(&vs);
        let (lr, wd) = (0.1, 0.5);
        // Step 1 reaches only `a` (1-D: no decay): Adam's first step is lr·sign(g).
        let loss = (&a * Tensor::from_slice(&[3f32, -1.0])).sum(Kind::Float);
        let mut g = opt.gradients(&loss).unwrap();
        assert!(g[0].defined() && !g[1].defined(), "w takes no part in step 1");
        assert!((AdamW::clip_grad_norm(&mut g, 0.0) - 10f64.sqrt()).abs() < 1e-6);
        opt.step(&g, lr, wd);
        let got: Vec<f32> = Vec::try_from(&a).unwrap();
        assert!((got[0] - 0.9).abs() < 1e-6 && (got[1] + 1.9).abs() < 1e-6, "{got:?}");
        assert!(w.equal(&Tensor::ones([2, 2], (Kind::Float, Device::Cpu))), "no gradient: no decay, no update");
        // Step 2 reaches `w` for the first time: its own first step (bias correction
        // with t = 1), after decoupled decay: 1·(1 − lr·wd) − lr = 0.85.
        let loss = w.sum(Kind::Float) * 2.0 + (&a * &a).sum(Kind::Float);
        let g = opt.gradients(&loss).unwrap();
        opt.step(&g, lr, wd);
        let got: Vec<f32> = Vec::try_from(w.flatten(0, -1)).unwrap();
        assert!(got.iter().all(|x| (x - 0.85).abs() < 1e-6), "{got:?}");
        // The per-parameter steps survive a checkpoint round trip.
        let st = opt.state();
        assert_eq!(st["t.a"].int64_value(&[]), 2);
        assert_eq!(st["t.w"].int64_value(&[]), 1);
        let mut other = AdamW::new(&vs);
        other.load_state(&st, 2).unwrap();
        assert_eq!(other.t, opt.t);
    }

    #[test]
    fn weight_average_follows_its_decay_and_swaps_back() {
        let vs = VarStore::new(Device::Cpu);
        let mut w = vs.root().var_copy("w", &Tensor::from_slice(&[1f32, 2.0]));
        let mut ema = Ema::new(&vs, 0.9);
        let val = |t: &Tensor| Vec::<f32>::try_from(t).unwrap();
        tch::no_grad(|| w.copy_(&Tensor::from_slice(&[11f32, 2.0])));
        // Step 0: d = min(0.9, 1/10) = 0.1, the average moves 90 % of the way.
        ema.update(0);
        assert_eq!(val(&ema.avg["w"]), vec![10.0, 2.0]);
        // Late steps: d = 0.9.
        tch::no_grad(|| w.copy_(&Tensor::from_slice(&[20f32, 12.0])));
        ema.update(1000);
        let a = val(&ema.avg["w"]);
        assert!((a[0] - 11.0).abs() < 1e-5 && (a[1] - 3.0).abs() < 1e-5, "{a:?}");
        // The weights and the average trade places, and back.
        ema.swap();
        assert_eq!((val(&w), val(&ema.avg["w"])), (a.clone(), vec![20.0, 12.0]));
        ema.swap();
        assert_eq!((val(&w), val(&ema.avg["w"])), (vec![20.0, 12.0], a));
    }
}
