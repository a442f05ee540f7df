//! Model configuration: two presets (`paper`, `release`) of one implementation, plus
//! overrides for custom sizes (e.g. the golden `tiny_config`).
//!
//! Sources: `release` follows the official SMGeo code as measured in
//! `SMGEO_SPEC.md` §1–§5; `paper` follows the SMGeo paper (shifted windows, relative
//! position bias, grid-level MoE beside the dense MLP, query-guided fusion; Table II/IV)
//! as laid down in the project's `MODEL.md`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

use super::{ModelError, Result};

/// Which architecture family a configuration belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Prompt-aware model of the paper (default).
    Paper,
    /// Released official code: query-blind, no shift, no position bias.
    Release,
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Preset::Paper => "paper",
            Preset::Release => "release",
        })
    }
}

/// Numeric precision of inference. The encoder's weights and matmuls take the chosen
/// kind; the residual stream, norms, MoE gates (routing), fusion, head and decode stay
/// float32 whatever the choice (see [`crate::model::Smgeo::set_precision`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Inference: bf16 on CUDA, float32 on CPU. Training (mixed precision): bf16 where
    /// the device multiplies bf16 natively (CUDA, or a CPU with AVX512-BF16), float32
    /// elsewhere.
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
}

impl Precision {
    /// The inference kind on `dev` (`Auto` resolved). `Auto` stays float32 on a CPU even
    /// with AVX512-BF16. There bf16 (with the patch embeds and stage 0 in float32,
    /// [`crate::model::DEFAULT_F32_STAGES`]) keeps the argmax cell of the synthetic
    /// benchmark's paper models on 99.2–99.3 % of 1,600 test prompts and runs the
    /// CVOGL-size paper forward 1.4× faster, but the small live models' batch-1 queries
    /// 10–20 % slower (bf16 ↔ float32 conversions outweigh the smaller matmuls): opt in
    /// with `--precision bf16` where the model is large (docs/BENCHMARKS.md).
    pub fn kind(self, dev: tch::Device) -> tch::Kind {
        self.resolve(dev, dev.is_cuda())
    }

    /// The compute kind of mixed-precision training on `dev` (`Auto` resolved): bf16 also
    /// on a CPU with AVX512-BF16, where it trains 1.4× faster (the master weights,
    /// gradients and optimiser state stay float32).
    pub fn train_kind(self, dev: tch::Device) -> tch::Kind {
        self.resolve(dev, dev.is_cuda() || cpu_has_native_bf16())
    }

    fn resolve(self, dev: tch::Device, auto_bf16: bool) -> tch::Kind {
        let kind = match self {
            Precision::Auto if auto_bf16 => tch::Kind::BFloat16,
            Precision::Auto | Precision::F32 => tch::Kind::Float,
            Precision::Bf16 => tch::Kind::BFloat16,
            Precision::F16 => tch::Kind::Half,
        };
        if !dev.is_cuda() {
            static SLOW_BF16: std::sync::Once = std::sync::Once::new();
            static SLOW_F16: std::sync::Once = std::sync::Once::new();
            match kind {
                tch::Kind::BFloat16 if !cpu_has_native_bf16() => SLOW_BF16.call_once(|| {
                    tracing::warn!(
                        "bf16 on a CPU without AVX512-BF16: libtorch falls back to a scalar matrix \
                         product, about 10× slower than float32 (measured); use --precision f32 (or auto)"
                    )
                }),
                tch::Kind::Half => SLOW_F16.call_once(|| {
                    tracing::warn!("f16 on the CPU has no fast matrix product (measured 4× slower than float32)")
                }),
                _ => {}
            }
        }
        kind
    }

    /// Name of a kind as users write it.
    pub fn name_of(kind: tch::Kind) -> &'static str {
        match kind {
            tch::Kind::BFloat16 => "bf16",
            tch::Kind::Half => "f16",
            tch::Kind::Float => "f32",
            _ => "other",
        }
    }
}

/// Whether this CPU computes bf16 matrix products natively (AVX512-BF16, which
/// libtorch's oneDNN kernels need); without it bf16 falls back to a scalar kernel.
pub fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// How the query (drone) branch is pooled into the global vector used by the fusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryPool {
    /// Mean over all stage-3 query tokens (paper eq. 10 as written).
    Mean,
    /// Weighted by the click prior (channel 3 of the query) raised to `click_pool_power`.
    Click,
}

/// Fully resolved model configuration. Every switch that distinguishes the presets is
/// an explicit field, so custom mixtures can be tested.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub preset: Preset,
    pub embed_dim: i64,
    pub patch_size: i64,
    pub window_size: i64,
    pub depths: Vec<i64>,
    pub num_heads: Vec<i64>,
    /// Hidden width of the dense MLP as a multiple of C.
    pub ffn_ratio: f64,
    pub num_experts: i64,
    pub top_k: i64,
    /// Stage index → block indices that carry a MoE.
    pub moe_block_indices: BTreeMap<usize, Vec<usize>>,
    /// Expert hidden width as a multiple of C.
    pub expert_hidden_ratio: f64,
    /// `true`: MoE blocks keep their dense MLP and add the MoE beside it (paper);
    /// `false`: the MoE replaces the MLP (release).
    pub moe_beside_dense: bool,
    /// `true`: one routing decision per attention window (cell); `false`: per token.
    pub grid_routing: bool,
    pub shifted_windows: bool,
    pub rel_pos_bias: bool,
    /// LayerNorm on the last stage outputs (`backbone.norm`).
    pub final_norm: bool,
    /// Zero-pad grids that are not window multiples (timm order: shift, then pad).
    pub pad_to_window: bool,
    /// Query-guided fusion (paper eq. 10); `None` = the release's query-blind head.
    /// Written as `"none"`, `"mean"` or `"click"`.
    #[serde(with = "fusion_serde")]
    pub fusion: Option<QueryPool>,
    pub click_pool_power: f64,
    pub head_feat_channels: i64,
    pub drop_path_rate: f64,
    /// Std of the Gaussian noise added to gate logits in training.
    pub gate_noise_std: f64,
    /// `true`: entropy term λ₃·(log E − H(p̄)) with gradient; `false`: the release's
    /// detached mean gate entropy over the last `entropy_fifo` calls.
    pub balance_entropy: bool,
    pub entropy_fifo: usize,
    pub query_in_chans: i64,
    pub sat_in_chans: i64,
    /// The model runs on images resized by this factor from their dataset size (CVOGL:
    /// satellite 1024², query 256²); 0.5 = a model trained on 512² chips.
    #[serde(default = "one")]
    pub input_scale: f64,
    /// `true` (both presets, Swin): a patch merge after stage 2, so the last stage and the
    /// head run at stride 32 with 8C channels. `false`: no last merge — stage 3 stays at
    /// stage 2's grid and width, the head runs at stride 16. A model at `input_scale` 0.5
    /// then has the paper's ground cell (32 px of the 1024² CVOGL chip) and the paper's
    /// 32×32 grid, at about the cost of the stride-32 model.
    #[serde(default = "yes")]
    pub final_merge: bool,
}

fn one() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

impl ModelConfig {
    /// Released official code at CVOGL size (`SMGEO_SPEC.md` §1): 53,499,439 parameters.
    pub fn release() -> Self {
        ModelConfig {
            preset: Preset::Release,
            embed_dim: 96,
            patch_size: 4,
            window_size: 8,
            depths: vec![2, 2, 6, 2],
            num_heads: vec![3, 6, 12, 24],
            ffn_ratio: 4.0,
            num_experts: 6,
            top_k: 2,
            moe_block_indices: [(0, vec![]), (1, vec![0, 1]), (2, vec![0, 2, 4]), (3, vec![0, 1])]
                .into_iter()
                .collect(),
            expert_hidden_ratio: 4.0,
            moe_beside_dense: false,
            grid_routing: false,
            shifted_windows: false,
            rel_pos_bias: false,
            final_norm: false,
            pad_to_window: false,
            fusion: None,
            click_pool_power: 8.0,
            head_feat_channels: 256,
            drop_path_rate: 0.0,
            gate_noise_std: 0.1,
            balance_entropy: false,
            entropy_fifo: 10,
            query_in_chans: 4,
            sat_in_chans: 3,
            input_scale: 1.0,
            final_merge: true,
        }
    }

    /// The paper's model (MODEL.md): Swin-T backbone with shift and bias, 6 experts
    /// top-2 beside the MLP in the even blocks of stages 1–3 (Table IV), grid routing,
    /// query-guided fusion. Expert hidden ratio 0.375 (72/144/288 hidden units) makes
    /// the total 33.46 M, within 0.4 % of the paper's 33.57 M (Table II, 6 experts).
    pub fn paper() -> Self {
        ModelConfig {
            preset: Preset::Paper,
            moe_block_indices: [(0, vec![]), (1, vec![0]), (2, vec![0, 2, 4]), (3, vec![0])].into_iter().collect(),
            expert_hidden_ratio: 0.375,
            moe_beside_dense: true,
            grid_routing: true,
            shifted_windows: true,
            rel_pos_bias: true,
            final_norm: true,
            pad_to_window: true,
            fusion: Some(QueryPool::Click),
            drop_path_rate: 0.1,
            balance_entropy: true,
            ..Self::release()
        }
    }

    pub fn preset(p: Preset) -> Self {
        match p {
            Preset::Paper => Self::paper(),
            Preset::Release => Self::release(),
        }
    }

    /// Check internal consistency; returns a readable error for bad values.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.depths.len() != 4 || self.num_heads.len() != 4 {
            return bad(format!(
                "depths and num_heads need 4 stages, got {} and {}",
                self.depths.len(),
                self.num_heads.len()
            ));
        }
        if self.embed_dim <= 0 || self.patch_size <= 0 || self.window_size <= 0 {
            return bad("embed_dim, patch_size and window_size must be positive".into());
        }
        for (i, (&d, &h)) in self.depths.iter().zip(&self.num_heads).enumerate() {
            let c = self.stage_dim(i);
            if d <= 0 || h <= 0 || c % h != 0 {
                return bad(format!("stage {i}: depth {d}, heads {h}: C={c} must divide by heads"));
            }
        }
        for (&s, blocks) in &self.moe_block_indices {
            if s >= 4 || blocks.iter().any(|&b| b as i64 >= self.depths[s]) {
                return bad(format!("moe_block_indices: stage {s} blocks {blocks:?} out of range"));
            }
        }
        let any_moe = self.moe_block_indices.values().any(|b| !b.is_empty());
        if any_moe && (self.top_k < 1 || self.top_k > self.num_experts) {
            return bad(format!("top_k {} must be in 1..={}", self.top_k, self.num_experts));
        }
        if !(self.ffn_ratio > 0.0 && self.expert_hidden_ratio > 0.0) {
            return bad("ffn_ratio and expert_hidden_ratio must be > 0".into());
        }
        if !(0.0..1.0).contains(&self.drop_path_rate) || self.gate_noise_std < 0.0 {
            return bad("drop_path_rate must be in [0,1) and gate_noise_std ≥ 0".into());
        }
        if !(self.input_scale > 0.0 && self.input_scale <= 4.0) {
            return bad(format!("input_scale {} must be in (0, 4]", self.input_scale));
        }
        if self.head_feat_channels <= 0 || self.query_in_chans < 4 || self.sat_in_chans < 1 {
            return bad("head_feat_channels > 0, query_in_chans ≥ 4 (RGB + click)".into());
        }
        Ok(())
    }

    /// Channels of stage `i`.
    pub fn stage_dim(&self, i: usize) -> i64 {
        self.embed_dim << i.min(self.merges())
    }

    /// Patch merges between the four stages: 3, or 2 without the final merge.
    pub fn merges(&self) -> usize {
        if self.final_merge {
            3
        } else {
            2
        }
    }

    /// Input pixels per cell of the last stage (and of the heatmap): 32, or 16 without
    /// the final merge (patch 4).
    pub fn output_stride(&self) -> i64 {
        self.patch_size << self.merges()
    }

    pub fn is_moe(&self, stage: usize, block: usize) -> bool {
        self.moe_block_indices.get(&stage).is_some_and(|b| b.contains(&block))
    }

    pub fn stage_has_moe(&self, stage: usize) -> bool {
        self.moe_block_indices.get(&stage).is_some_and(|b| !b.is_empty())
    }

    /// Input sizes must give stage grids the model can run: a multiple of the patch
    /// size always; without padding, every stage grid must divide by the window.
    pub fn input_multiple(&self) -> i64 {
        if self.pad_to_window {
            self.patch_size
        } else {
            self.output_stride() * self.window_size
        }
    }

    /// Load a model config file (JSON or TOML by extension). Accepts the project's own
    /// format (`preset` plus any field to override) and the golden `tiny_config.json`
    /// (its `tiny_config` section, on the release preset).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::Io(format!("reading model config {}: {e}", path.display())))?;
        let is_toml = path.extension().is_some_and(|e| e == "toml");
        let value: serde_json::Value = if is_toml {
            let t: toml::Value =
                toml::from_str(&text).map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
            serde_json::to_value(t).map_err(|e| ModelError::Config(e.to_string()))?
        } else {
            serde_json::from_str(&text).map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?
        };
        Self::from_value(value).map_err(|e| match e {
            ModelError::Config(m) => ModelError::Config(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// See [`ModelConfig::from_file`].
    pub fn from_value(value: serde_json::Value) -> Result<Self> {
        let value = match value.get("tiny_config") {
            Some(tiny) => {
                let mut t = tiny.clone();
                if let Some(obj) = t.as_object_mut() {
                    obj.entry("preset").or_insert("release".into());
                }
                t
            }
            None => value,
        };
        let raw: RawModelConfig = serde_json::from_value(value).map_err(|e| ModelError::Config(e.to_string()))?;
        let cfg = raw.resolve()?;
        cfg.validate()?;
        Ok(cfg)
    }
}

mod fusion_serde {
    use super::QueryPool;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<QueryPool>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match v {
            None => "none",
            Some(QueryPool::Mean) => "mean",
            Some(QueryPool::Click) => "click",
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<QueryPool>, D::Error> {
        match String::deserialize(d)?.as_str() {
            "none" => Ok(None),
            "mean" => Ok(Some(QueryPool::Mean)),
            "click" => Ok(Some(QueryPool::Click)),
            o => Err(serde::de::Error::custom(format!("fusion {o:?}: expected none|mean|click"))),
        }
    }
}

/// File form: a preset plus optional overrides of any field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModelConfig {
    #[serde(default = "default_preset")]
    preset: Preset,
    embed_dim: Option<i64>,
    patch_size: Option<i64>,
    window_size: Option<i64>,
    depths: Option<Vec<i64>>,
    num_heads: Option<Vec<i64>>,
    #[serde(alias = "mlp_ratio")]
    ffn_ratio: Option<f64>,
    num_experts: Option<i64>,
    top_k: Option<i64>,
    moe_block_indices: Option<BTreeMap<String, Vec<usize>>>,
    expert_hidden_ratio: Option<f64>,
    moe_beside_dense: Option<bool>,
    grid_routing: Option<bool>,
    shifted_windows: Option<bool>,
    rel_pos_bias: Option<bool>,
    final_norm: Option<bool>,
    pad_to_window: Option<bool>,
    fusion: Option<String>,
    click_pool_power: Option<f64>,
    head_feat_channels: Option<i64>,
    drop_path_rate: Option<f64>,
    gate_noise_std: Option<f64>,
    balance_entropy: Option<bool>,
    entropy_fifo: Option<usize>,
    query_in_chans: Option<i64>,
    sat_in_chans: Option<i64>,
    input_scale: Option<f64>,
    final_merge: Option<bool>,
}

fn default_preset() -> Preset {
    Preset::Paper
}

macro_rules! override_fields {
    ($cfg:ident, $raw:ident, $($f:ident),*) => { $( if let Some(v) = $raw.$f { $cfg.$f = v; } )* };
}

impl RawModelConfig {
    fn resolve(self) -> Result<ModelConfig> {
        let mut c = ModelConfig::preset(self.preset);
        let raw = self;
        override_fields!(
            c,
            raw,
            embed_dim,
            patch_size,
            window_size,
            depths,
            num_heads,
            ffn_ratio,
            num_experts,
            top_k,
            moe_beside_dense,
            grid_routing,
            shifted_windows,
            rel_pos_bias,
            final_norm,
            pad_to_window,
            click_pool_power,
            head_feat_channels,
            drop_path_rate,
            gate_noise_std,
            balance_entropy,
            entropy_fifo,
            query_in_chans,
            sat_in_chans,
            input_scale,
            final_merge
        );
        if let Some(r) = raw.expert_hidden_ratio {
            c.expert_hidden_ratio = r;
        } else if c.preset == Preset::Release {
            c.expert_hidden_ratio = c.ffn_ratio;
        }
        if let Some(m) = raw.moe_block_indices {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                let s: usize = k
                    .parse()
                    .map_err(|_| ModelError::Config(format!("moe_block_indices key {k:?} is not a stage number")))?;
                out.insert(s, v);
            }
            c.moe_block_indices = out;
        }
        if let Some(f) = raw.fusion {
            c.fusion = match f.as_str() {
                "none" => None,
                "mean" => Some(QueryPool::Mean),
                "click" => Some(QueryPool::Click),
                o => return Err(ModelError::Config(format!("fusion {o:?}: expected none|mean|click"))),
            };
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_precision_is_float32_for_cpu_inference_and_native_bf16_for_training() {
        let cpu = tch::Device::Cpu;
        assert_eq!(Precision::Auto.kind(cpu), tch::Kind::Float);
        let native = if cpu_has_native_bf16() { tch::Kind::BFloat16 } else { tch::Kind::Float };
        assert_eq!(Precision::Auto.train_kind(cpu), native);
        for (p, k) in [(Precision::F32, tch::Kind::Float), (Precision::Bf16, tch::Kind::BFloat16)] {
            assert_eq!((p.kind(cpu), p.train_kind(cpu)), (k, k), "{p:?} is forced in both");
        }
    }

    #[test]
    fn golden_tiny_config_section_is_accepted() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"tiny_config": {"embed_dim": 8, "patch_size": 4, "window_size": 4,
            "depths": [2, 2, 3, 2], "num_heads": [2, 2, 4, 4], "ffn_ratio": 4,
            "num_experts": 6, "top_k": 2,
            "moe_block_indices": {"0": [], "1": [0, 1], "2": [0, 2], "3": [0]},
            "head_feat_channels": 16}, "batch": 2}"#,
        )
        .unwrap();
        let c = ModelConfig::from_value(v).unwrap();
        assert_eq!(c.preset, Preset::Release);
        assert_eq!(c.embed_dim, 8);
        assert_eq!(c.moe_block_indices[&2], vec![0, 2]);
        assert_eq!(c.expert_hidden_ratio, 4.0);
    }

    #[test]
    fn serialised_config_round_trips() {
        for mut c in [ModelConfig::paper(), ModelConfig::release()] {
            c.embed_dim = 48;
            c.fusion = None;
            let v = serde_json::to_value(&c).unwrap();
            assert_eq!(ModelConfig::from_value(v).unwrap(), c);
        }
    }

    #[test]
    fn final_merge_defaults_on_and_is_an_override() {
        let c = ModelConfig::from_value(serde_json::json!({"preset": "paper"})).unwrap();
        assert!(c.final_merge);
        assert_eq!((c.output_stride(), c.stage_dim(3)), (32, 768));
        let c = ModelConfig::from_value(serde_json::json!({"preset": "release", "final_merge": false})).unwrap();
        assert_eq!((c.output_stride(), c.stage_dim(2), c.stage_dim(3)), (16, 384, 384));
        // without padding, inputs must give stage grids that divide by the window
        assert_eq!(c.input_multiple(), 16 * 8);
        // a resolved config written before the field existed (model.json of old checkpoints)
        let mut v = serde_json::to_value(ModelConfig::paper()).unwrap();
        v.as_object_mut().unwrap().remove("final_merge");
        let old: ModelConfig = serde_json::from_value(v).unwrap();
        assert!(old.final_merge);
    }

    #[test]
    fn bad_values_are_errors() {
        let v = serde_json::json!({"preset": "paper", "num_heads": [5, 6, 12, 24]});
        let e = ModelConfig::from_value(v).unwrap_err().to_string();
        assert!(e.contains("divide by heads"), "{e}");
        let v = serde_json::json!({"preset": "paper", "bogus": 1});
        assert!(ModelConfig::from_value(v).unwrap_err().to_string().contains("bogus"));
        let v = serde_json::json!({"preset": "paper", "top_k": 7});
        assert!(ModelConfig::from_value(v).is_err());
    }
}
