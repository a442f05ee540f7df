//! `smgeo weights …`: inspect, import, init and forward (run the model on tensors from
//! a file and write its outputs and named intermediates, golden-file names).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::model::{self, loss, weights, ModelConfig, Preset, Smgeo, Trace};
use crate::{Error, Result};

/// Which model configuration a command uses: a preset or a config file.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelChoice {
    /// Model preset.
    #[arg(long, value_enum, default_value_t = Preset::Paper)]
    pub preset: Preset,
    /// Model config file (JSON or TOML; `preset` plus overrides, or a golden
    /// `tiny_config.json`); takes precedence over --preset.
    #[arg(long, value_name = "MODEL.json|toml")]
    pub config: Option<PathBuf>,
}

impl ModelChoice {
    pub fn resolve(&self) -> Result<ModelConfig> {
        match &self.config {
            Some(p) => Ok(ModelConfig::from_file(p)?),
            None => Ok(ModelConfig::preset(self.preset)),
        }
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum WeightsCmd {
    /// Print keys, shapes and parameter counts of a safetensors file; with --preset or
    /// --config, also diff it against that model.
    Inspect {
        file: PathBuf,
        #[arg(long, value_enum)]
        preset: Option<Preset>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print every key (default: a summary).
        #[arg(long)]
        keys: bool,
    },
    /// Convert an official SMGeo checkpoint or Swin-T ImageNet weights to our
    /// safetensors layout. `.pth` inputs go through deploy/pth_to_safetensors.py.
    Import {
        /// What the input is.
        #[arg(long, value_enum)]
        from: ImportKind,
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Window size of the target model (bias tables are resized to it).
        #[arg(long, default_value_t = 8)]
        window: i64,
        /// `.pth` only: unpickle with torch.load(weights_only=False), for trusted files
        /// that hold non-tensor objects beside the weights (unpickling can run code).
        #[arg(long)]
        trust_pickle: bool,
        /// Python with torch for `.pth` inputs (default: python3; e.g. a venv's python).
        #[arg(long, env = "SMGEO_PYTHON", default_value = "python3")]
        python: String,
    },
    /// Write randomly initialised weights for a model (seeded), e.g. to try `predict`.
    Init {
        #[command(flatten)]
        model: ModelChoice,
        #[arg(long, default_value_t = 0)]
        seed: i64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Run the model on input tensors (`input.query`, `input.sat`, optional
    /// `target.box_xyxy`) and write outputs and named intermediates.
    Forward {
        #[command(flatten)]
        model: ModelChoice,
        #[arg(long)]
        weights: PathBuf,
        #[arg(long)]
        inputs: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Train-mode forward (batch statistics) with gate noise forced to 0.
        #[arg(long)]
        train: bool,
        #[arg(long, default_value = "auto")]
        device: String,
    },
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum ImportKind {
    /// Official SMGeo checkpoint (release preset), with or without `module.`.
    Smgeo,
    /// Swin-T ImageNet checkpoint, timm or Microsoft layout.
    Swin,
}

pub fn run(cmd: &WeightsCmd) -> Result<()> {
    match cmd {
        WeightsCmd::Inspect { file, preset, config, keys } => inspect(file, *preset, config.as_deref(), *keys),
        WeightsCmd::Import { from, input, out, window, trust_pickle, python } => {
            import(*from, input, out, *window, *trust_pickle, python)
        }
        WeightsCmd::Init { model, seed, out } => {
            tch::manual_seed(*seed);
            let cfg = model.resolve()?;
            let (vs, _) = build(&cfg, Device::Cpu)?;
            let meta = [("config".to_string(), serde_json::to_string(&cfg).unwrap_or_default())].into();
            weights::write_safetensors(&weights::state_dict(&vs), &meta, out)?;
            println!("{}", serde_json::json!({"out": out, "params": model::count_params(&vs), "preset": cfg.preset}));
            Ok(())
        }
        WeightsCmd::Forward { model, weights: w, inputs, out, train, device } => {
            let dev = crate::device::select(device)?;
            let mut cfg = model.resolve()?;
            if *train {
                cfg.gate_noise_std = 0.0;
                cfg.drop_path_rate = 0.0;
            }
            let (vs, m) = build(&cfg, dev)?;
            weights::load_file(&vs, w, true)?;
            let inp = weights::read_safetensors(inputs)?;
            let get = |names: &[&str]| -> Result<Tensor> {
                names.iter().find_map(|n| inp.get(*n)).map(|t| t.to(dev)).ok_or_else(|| {
                    Error::Usage(format!("{}: no tensor named {}", inputs.display(), names.join(" or ")))
                })
            };
            let query = get(&["input.query", "query"])?;
            let sat = get(&["input.sat", "sat"])?;
            let boxes = inp.get("target.box_xyxy").map(|t| t.shallow_clone());
            let named = named_outputs(&m, &query, &sat, *train, boxes.as_ref())?;
            weights::write_safetensors(&named, &BTreeMap::new(), out)?;
            eprintln!("wrote {} tensors to {}", named.len(), out.display());
            Ok(())
        }
    }
}

/// Build a model, load `weights` (strict) and put it in `precision` on `dev`: what
/// every inference command (predict, eval, run, replay, bench) starts from. A reduced
/// precision keeps the patch embeds and the first [`model::DEFAULT_F32_STAGES`] stages
/// in float32.
pub fn load_for_inference(
    cfg: &ModelConfig,
    weights_path: &std::path::Path,
    dev: Device,
    precision: model::Precision,
) -> Result<(VarStore, Smgeo)> {
    load_for_inference_with(cfg, weights_path, dev, precision, model::DEFAULT_F32_STAGES)
}

/// [`load_for_inference`] with `f32_stages` float32 stages in a reduced precision
/// ([`Smgeo::set_precision_with`]).
pub fn load_for_inference_with(
    cfg: &ModelConfig,
    weights_path: &std::path::Path,
    dev: Device,
    precision: model::Precision,
    f32_stages: usize,
) -> Result<(VarStore, Smgeo)> {
    let (mut vs, m) = build(cfg, dev)?;
    weights::load_file(&vs, weights_path, true)?;
    m.set_precision_with(&mut vs, precision.kind(dev), f32_stages)?;
    Ok((vs, m))
}

/// Build a model on a fresh VarStore.
pub fn build(cfg: &ModelConfig, dev: Device) -> Result<(VarStore, Smgeo)> {
    let vs = VarStore::new(dev);
    let m = Smgeo::new(&vs.root(), cfg)?;
    Ok((vs, m))
}

/// Run the model and collect every named tensor the golden files carry: `inter.*`,
/// `moe.*` (routing as int32), `out.*`, `decode.*`, and with boxes `target.*` and the
/// loss terms (`loss_eval.*` in eval, `loss_train.*` in train mode).
pub fn named_outputs(
    m: &Smgeo,
    query: &Tensor,
    sat: &Tensor,
    train: bool,
    boxes: Option<&Tensor>,
) -> Result<BTreeMap<String, Tensor>> {
    let mut trace = Trace::on();
    let out = tch::no_grad(|| m.forward_t(query, sat, train, &mut trace))?;
    let mut t = std::mem::take(&mut trace.tensors);
    let pre = if train { "train" } else { "out" };
    t.insert(format!("{pre}.heatmap"), out.heatmap.shallow_clone());
    t.insert(format!("{pre}.bbox"), out.bbox.shallow_clone());
    t.insert(format!("{pre}.avg_entropy"), out.entropy.shallow_clone());
    let mut fifo = Vec::new();
    for c in &out.moe_calls {
        t.insert(format!("moe.{}.topk_idx", c.name), c.topk_idx.to_kind(Kind::Int));
        t.insert(format!("moe.{}.entropy", c.name), c.mean_entropy());
        t.insert(format!("moe.{}.gate_logits", c.name), c.logits.shallow_clone());
        t.insert(format!("moe.{}.gate_probs", c.name), c.probs.shallow_clone());
        t.insert(format!("moe.{}.topk_weights", c.name), c.topk_weights.shallow_clone());
        fifo.push(c.mean_entropy());
    }
    if !fifo.is_empty() {
        let n = m.cfg.entropy_fifo.min(fifo.len());
        t.insert("moe.entropy_fifo".into(), Tensor::stack(&fifo[fifo.len() - n..], 0));
    }
    if let Some(a) = &out.fusion_attn {
        t.insert("fusion.attn".into(), a.shallow_clone());
    }
    let s = sat.size();
    let dets = model::decode(&out.heatmap, &out.bbox, (s[2], s[3]));
    let col = |f: &dyn Fn(&model::Detection) -> Vec<f32>| {
        let v: Vec<f32> = dets.iter().flat_map(f).collect();
        Tensor::from_slice(&v).view([dets.len() as i64, -1])
    };
    t.insert(
        "decode.argmax_index".into(),
        Tensor::from_slice(&dets.iter().map(|d| d.index as i32).collect::<Vec<_>>()),
    );
    let cells: Vec<i32> = dets.iter().flat_map(|d| [d.cell.0 as i32, d.cell.1 as i32]).collect();
    t.insert("decode.cell_yx".into(), Tensor::from_slice(&cells).view([dets.len() as i64, 2]));
    t.insert("decode.score".into(), Tensor::from_slice(&dets.iter().map(|d| d.score).collect::<Vec<_>>()));
    t.insert("decode.params".into(), col(&|d| d.params.to_vec()));
    t.insert("decode.box_xyxy".into(), col(&|d| d.box_raw.to_vec()));
    if let Some(b) = boxes {
        let bv: Vec<f32> = Vec::try_from(b.to_kind(Kind::Float).to_device(Device::Cpu).flatten(0, -1))?;
        let bx: Vec<[f32; 4]> = bv.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
        let hm = &out.heatmap;
        let hs = hm.size();
        let tg = loss::build_targets(&bx, (s[2], s[3]), (hs[2], hs[3])).to_device(hm.device());
        let lp = if m.cfg.preset == Preset::Release {
            loss::release_loss(hm, &out.bbox, &tg, &out.entropy, 0.005, (0.7, 0.3))
        } else {
            loss::paper_loss(hm, &out.bbox, &tg, &out.entropy, (1.0, 1.0, 0.01))
        };
        let lpre = if train { "loss_train" } else { "loss_eval" };
        t.insert(format!("{lpre}.heatmap_loss"), lp.heatmap);
        t.insert(format!("{lpre}.bbox_loss"), lp.bbox);
        t.insert(format!("{lpre}.entropy_loss"), lp.entropy_term);
        t.insert(format!("{lpre}.total"), lp.total);
        t.insert("target.heatmap".into(), tg.heatmap);
        t.insert("target.bbox".into(), tg.bbox);
        t.insert("target.mask".into(), tg.mask);
    }
    Ok(t)
}

fn inspect(file: &Path, preset: Option<Preset>, config: Option<&Path>, keys: bool) -> Result<()> {
    let t = weights::read_safetensors(file)?;
    let total: i64 = t.iter().filter(|(k, _)| weights::alias_target(k).is_none()).map(|(_, v)| v.numel() as i64).sum();
    let aliases = t.keys().filter(|k| weights::alias_target(k).is_some()).count();
    let mut per_prefix: BTreeMap<String, i64> = BTreeMap::new();
    for (k, v) in &t {
        if weights::alias_target(k).is_none() {
            let p: Vec<&str> = k.split('.').take(3).collect();
            *per_prefix.entry(p.join(".")).or_default() += v.numel() as i64;
        }
    }
    let mut report = serde_json::json!({
        "file": file, "keys": t.len(), "alias_keys": aliases, "elements_unique": total,
        "looks_like": weights::guess_preset(t.keys()), "by_prefix": per_prefix,
    });
    if keys {
        let list: BTreeMap<&String, Vec<i64>> = t.iter().map(|(k, v)| (k, v.size())).collect();
        report["tensors"] = serde_json::to_value(list).unwrap_or_default();
    }
    if preset.is_some() || config.is_some() {
        let cfg = match config {
            Some(c) => ModelConfig::from_file(c)?,
            None => ModelConfig::preset(preset.unwrap_or(Preset::Paper)),
        };
        let (vs, _) = build(&cfg, Device::Cpu)?;
        let diff = match weights::load_tensors(&vs, &t, true, &file.display().to_string()) {
            Ok(r) => serde_json::json!({"fits": true, "report": r}),
            Err(e) => serde_json::json!({"fits": false, "report": e.to_string()}),
        };
        report["against_model"] = diff;
        report["model_params"] = model::count_params(&vs).into();
    }
    println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    Ok(())
}

fn import(kind: ImportKind, input: &Path, out: &Path, window: i64, trust_pickle: bool, python: &str) -> Result<()> {
    let file = if input.extension().is_some_and(|e| e == "pth" || e == "pt" || e == "bin") {
        let tmp = out.with_extension("raw.safetensors");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/pth_to_safetensors.py");
        let mut cmd = std::process::Command::new(python);
        cmd.arg(&script).arg(input).arg(&tmp);
        if trust_pickle {
            cmd.arg("--trust-pickle");
        }
        let st = cmd.status().map_err(|e| Error::Io(format!("running {}: {e}", script.display())))?;
        if !st.success() {
            return Err(Error::Usage(format!(
                "{} failed on {} (it needs a Python with torch; or convert the file yourself to safetensors)",
                script.display(),
                input.display()
            )));
        }
        let f = weights::read_safetensors(&tmp)?;
        let _ = std::fs::remove_file(&tmp);
        f
    } else {
        weights::read_safetensors(input)?
    };
    let (mapped, preset) = match kind {
        ImportKind::Smgeo => (weights::import_smgeo(file), "release"),
        ImportKind::Swin => (weights::import_swin(file, window, 4)?, "paper-backbone"),
    };
    let meta = [("source".to_string(), input.display().to_string()), ("layout".to_string(), preset.to_string())].into();
    weights::write_safetensors(&mapped, &meta, out)?;
    println!("{}", serde_json::json!({"out": out, "tensors": mapped.len(), "layout": preset}));
    Ok(())
}
