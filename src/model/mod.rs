//! The SMGeo model in tch (libtorch): shared Swin encoder for the drone query
//! (RGB + click prior) and the satellite reference, grid-level sparse MoE,
//! query-guided fusion and the anchor-free head. Builds without GStreamer/GDAL.
//!
//! Inputs: query (B, 4, Hq, Wq) — ImageNet-normalised RGB plus the click prior (not
//! normalised); satellite (B, 3, Hs, Ws) ImageNet-normalised RGB; any float kind, cast
//! to the model's precision on entry ([`Smgeo::set_precision`]: float32, bf16, f16).
//! Outputs: heatmap logits (B, 1, Hs/s, Ws/s), s the output stride (32, or 16 without the
//! final merge), and box map (B, 4, …) in cells, float32.
//! The two branches never mix before the fusion, so [`Smgeo::encode_reference`] can
//! be cached per chip and [`Smgeo::localise`] reused for every prompt on it.

pub mod config;
pub mod fusion;
pub mod head;
pub mod layers;
pub mod loss;
pub mod moe;
pub mod preprocess;
pub mod service;
pub mod swin;
pub mod trace;
pub mod weights;

use tch::{nn, Device, Kind, Tensor};

pub use config::{ModelConfig, Precision, Preset, QueryPool};
pub use head::{decode, decode_with_prior, Detection};
pub use moe::MoeCall;
use swin::{Backbone, Branch, Ctx};
pub use trace::Trace;

/// Stages (after the patch embeds, which go with them) that a reduced-precision model
/// keeps in float32 by default ([`Smgeo::set_precision`]). With 1, bf16 kept the argmax
/// cell of the synthetic benchmark's paper model on 99.25 % of 1,600 test prompts
/// (98.75 % with every stage in bf16); docs/BENCHMARKS.md.
pub const DEFAULT_F32_STAGES: usize = 1;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model config: {0}")]
    Config(String),
    #[error("bad model input: {0}")]
    Input(String),
    #[error("weights: {0}")]
    Weights(String),
    #[error("{0}")]
    Io(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

pub type Result<T> = std::result::Result<T, ModelError>;

/// Satellite features of one chip: everything the prompt-independent branch yields.
#[derive(Debug)]
pub struct RefFeatures {
    /// Last-stage tokens (B, Hf, Wf, C3), final norm applied when configured.
    pub tokens: Tensor,
    pub moe_calls: Vec<MoeCall>,
    /// Satellite input size (H, W) in pixels, for the decode.
    pub img_hw: (i64, i64),
}

/// Query features of one prompt.
#[derive(Debug)]
pub struct QueryFeatures {
    pub tokens: Tensor,
    pub moe_calls: Vec<MoeCall>,
    /// Click prior (B, 1, Hq, Wq), used by click-weighted pooling.
    pub click: Tensor,
}

#[derive(Debug)]
pub struct Outputs {
    pub heatmap: Tensor,
    pub bbox: Tensor,
    /// Release: detached mean gate entropy over the last calls (spec §2).
    /// Paper: mean over calls of log E − H(p̄), with gradient (0 without MoE).
    pub entropy: Tensor,
    /// Query global vector (B, C3).
    pub query_vec: Tensor,
    /// Fusion attention (B, Hf, Wf) when the model has a fusion.
    pub fusion_attn: Option<Tensor>,
    /// Its logits (A = σ(logits)), for the matching loss.
    pub fusion_logits: Option<Tensor>,
    /// MoE calls in the reference order: per stage, query blocks then satellite blocks.
    pub moe_calls: Vec<MoeCall>,
}

#[derive(Debug)]
pub struct Smgeo {
    pub cfg: ModelConfig,
    backbone: Backbone,
    fusion: Option<fusion::Fusion>,
    head: head::Head,
    /// Kind the encoder and head tower compute in; None: the parameters' kind.
    compute: Option<Kind>,
}

impl Smgeo {
    /// Build under `vs` (the root of a VarStore): parameters `backbone.*`, `fusion.*`, `head.*`.
    pub fn new(vs: &nn::Path, cfg: &ModelConfig) -> Result<Self> {
        cfg.validate()?;
        let c3 = cfg.stage_dim(3);
        Ok(Smgeo {
            cfg: cfg.clone(),
            backbone: Backbone::new(&(vs / "backbone"), cfg),
            fusion: cfg.fusion.map(|p| fusion::Fusion::new(&(vs / "fusion"), c3, p, cfg.click_pool_power)),
            head: head::Head::new(&(vs / "head"), c3, cfg.head_feat_channels),
            compute: None,
        })
    }

    /// See [`Backbone::tie_query_embed_to_sat`]: the query patch embed starts as the
    /// satellite one (click channels zero). Returns whether it applied.
    pub fn tie_query_embed_to_sat(&self) -> bool {
        self.backbone.tie_query_embed_to_sat()
    }

    /// Check a branch input: rank 4, float32, channels, batch, and a size the model runs.
    pub fn check_input(&self, x: &Tensor, chans: i64, what: &str) -> Result<()> {
        let s = x.size();
        if s.len() != 4 {
            return Err(ModelError::Input(format!("{what}: expected (B, {chans}, H, W), got shape {s:?}")));
        }
        if !matches!(x.kind(), Kind::Float | Kind::BFloat16 | Kind::Half) {
            return Err(ModelError::Input(format!("{what}: expected float32, bf16 or f16, got {:?}", x.kind())));
        }
        if s[1] != chans {
            return Err(ModelError::Input(format!("{what}: expected {chans} channels, got {} (shape {s:?})", s[1])));
        }
        let m = self.cfg.input_multiple();
        if s[0] < 1 || s[2] < m || s[3] < m || s[2] % m != 0 || s[3] % m != 0 {
            return Err(ModelError::Input(format!(
                "{what}: H and W must be positive multiples of {m} for this model, got {}×{}",
                s[2], s[3]
            )));
        }
        Ok(())
    }

    /// Device of the model's parameters.
    pub fn device(&self) -> Device {
        self.head.device()
    }

    /// Kind of the encoder's parameters: float32, or bf16/f16 after [`Smgeo::set_precision`]
    /// (the last stages'; the patch embeds and the first stages may keep float32).
    pub fn kind(&self) -> Kind {
        self.backbone.kind()
    }

    /// Convert the encoder's parameters in `vs` (the store this model was built in) to
    /// `kind`, keeping the patch embeds and the first [`DEFAULT_F32_STAGES`] stages in
    /// float32: [`Smgeo::set_precision_with`].
    pub fn set_precision(&self, vs: &mut nn::VarStore, kind: Kind) -> Result<()> {
        self.set_precision_with(vs, kind, DEFAULT_F32_STAGES)
    }

    /// Convert the encoder's parameters in `vs` (the store this model was built in) to
    /// `kind`, except the patch embeds and the first `f32_stages` stages (with their patch
    /// merging) when `f32_stages` > 0: those keep float32 weights and compute in float32.
    /// The MoE gates, the fusion and the head keep float32 parameters, and the residual
    /// stream, norms, routing, fusion similarity, head and decode compute in float32
    /// whatever the choice. `f32_stages` ≤ 3 (at least the last stage is reduced); it is
    /// ignored for `kind` float32. Returns an error for a non-float kind or a store that
    /// is not this model's.
    pub fn set_precision_with(&self, vs: &mut nn::VarStore, kind: Kind, f32_stages: usize) -> Result<()> {
        if !matches!(kind, Kind::Float | Kind::BFloat16 | Kind::Half) {
            return Err(ModelError::Config(format!("precision {kind:?}: expected float32, bf16 or f16")));
        }
        if f32_stages > 3 {
            return Err(ModelError::Config(format!(
                "float32 stages: {f32_stages}, expected 0 to 3 (the last stage computes in the reduced kind)"
            )));
        }
        // The head, the fusion's norms and the MoE gates keep their float32 values: they
        // decide the argmax cell and the routing, and cost little. The first stages see
        // the most tokens in the least channels: rounding there moved the argmax cell of
        // near-ties (docs/BENCHMARKS.md, "Float32 where bf16 moves the answer").
        let f32_stage = |name: &str| {
            let stage = name.strip_prefix("backbone.stages.").or_else(|| name.strip_prefix("backbone.downsamples."));
            let index = stage.and_then(|rest| rest.split('.').next()?.parse::<usize>().ok());
            f32_stages > 0 && name.starts_with("backbone.patch_embeds.") || index.is_some_and(|i| i < f32_stages)
        };
        let keep = |name: &str| {
            name.starts_with("head.") || name.starts_with("fusion.") || name.contains(".ffn.gate.") || f32_stage(name)
        };
        for (name, mut t) in vs.variables() {
            let want = if keep(&name) { Kind::Float } else { kind };
            if t.is_floating_point() && t.kind() != want {
                let converted = t.to_kind(want);
                t.set_data(&converted);
            }
        }
        if self.kind() != kind {
            return Err(ModelError::Config("set_precision: the VarStore does not hold this model".into()));
        }
        Ok(())
    }

    /// Compute in `kind` (bf16, f16) while the parameters keep theirs (float32 master
    /// weights that receive float32 gradients): mixed-precision training, as
    /// `torch.autocast` does. `None` computes in the parameters' kind. Routing, fusion
    /// similarity, the head and the losses stay float32 either way.
    pub fn set_compute_kind(&mut self, kind: Option<Kind>) -> Result<()> {
        if let Some(k) = kind {
            if !matches!(k, Kind::Float | Kind::BFloat16 | Kind::Half) {
                return Err(ModelError::Config(format!("compute kind {k:?}: expected float32, bf16 or f16")));
            }
        }
        self.compute = kind;
        Ok(())
    }

    /// Kind the encoder computes in.
    pub fn compute_kind(&self) -> Kind {
        self.compute.unwrap_or_else(|| self.kind())
    }

    fn ctx<'a>(&'a self, train: bool, branch: &'a str, calls: &'a mut Vec<MoeCall>, trace: &'a mut Trace) -> Ctx<'a> {
        Ctx {
            cfg: &self.cfg,
            kind: self.compute_kind(),
            kind_from_weights: self.compute.is_none(),
            train,
            branch,
            moe_calls: calls,
            trace,
        }
    }

    /// Encode the satellite reference (cacheable per chip).
    pub fn encode_reference(&self, sat: &Tensor, train: bool, trace: &mut Trace) -> Result<RefFeatures> {
        self.check_input(sat, self.cfg.sat_in_chans, "satellite")?;
        let mut calls = Vec::new();
        let tokens = self.backbone.encode(sat, Branch::Sat, &mut self.ctx(train, "sat", &mut calls, trace));
        let s = sat.size();
        Ok(RefFeatures { tokens, moe_calls: calls, img_hw: (s[2], s[3]) })
    }

    /// Encode the query (drone frame + click prior).
    pub fn encode_query(&self, query: &Tensor, train: bool, trace: &mut Trace) -> Result<QueryFeatures> {
        self.check_input(query, self.cfg.query_in_chans, "query")?;
        let mut calls = Vec::new();
        let tokens = self.backbone.encode(query, Branch::Query, &mut self.ctx(train, "query", &mut calls, trace));
        let click = query.narrow(1, self.cfg.query_in_chans - 1, 1);
        Ok(QueryFeatures { tokens, moe_calls: calls, click })
    }

    /// Fusion and head on encoded features. Consumes the MoE records of both.
    pub fn localise(&self, q: QueryFeatures, r: &RefFeatures, train: bool, trace: &mut Trace) -> Result<Outputs> {
        self.localise_indexed(q, r, None, train, trace)
    }

    /// [`Smgeo::localise`] where query `i` is matched against reference `ref_index[i]`
    /// (int64, one entry per query): several prompts on each of several chips in one
    /// call, every chip encoded once (training on chips with several prompts). `None`:
    /// query `i` against reference `i`, or every query against a single reference.
    pub fn localise_indexed(
        &self,
        q: QueryFeatures,
        r: &RefFeatures,
        ref_index: Option<&Tensor>,
        train: bool,
        trace: &mut Trace,
    ) -> Result<Outputs> {
        let (bq, br) = (q.tokens.size()[0], r.tokens.size()[0]);
        let ref_tokens = match ref_index {
            Some(idx) => {
                let n = idx.size();
                if n != [bq] || idx.kind() != Kind::Int64 {
                    return Err(ModelError::Input(format!(
                        "ref_index: expected int64 of shape [{bq}], got {:?} of shape {n:?}",
                        idx.kind()
                    )));
                }
                if bq > 0 {
                    let (lo, hi) = (idx.min().int64_value(&[]), idx.max().int64_value(&[]));
                    if lo < 0 || hi >= br {
                        return Err(ModelError::Input(format!(
                            "ref_index: entries {lo}..={hi} outside the satellite batch of {br}"
                        )));
                    }
                }
                r.tokens.index_select(0, &idx.to_device(r.tokens.device()))
            }
            None if bq != br && br != 1 => {
                return Err(ModelError::Input(format!("query batch {bq} ≠ satellite batch {br}")));
            }
            // One reference for several queries (prompts on the same chip): a broadcast view.
            None if br == 1 && bq > 1 => r.tokens.expand([bq, -1, -1, -1], false),
            None => r.tokens.shallow_clone(),
        };
        let query_vec = match &self.fusion {
            Some(f) => f.pool_query(&q.tokens, &q.click),
            None => q.tokens.mean_dim(&[1i64, 2][..], false, Kind::Float),
        };
        let (fused, attn, logits) = match &self.fusion {
            Some(f) => {
                let (x, a, s) = f.forward_with_logits(&ref_tokens, &query_vec);
                (x, Some(a), Some(s))
            }
            None => (ref_tokens, None, None),
        };
        // (B, Hf, Wf, C) -> (B, C, Hf, Wf); the head runs in float32 whatever the
        // precision (it decides the argmax cell and costs little)
        let feat = layers::as_kind(&fused.permute([0, 3, 1, 2]), Kind::Float);
        trace.put("inter.query_vec", || query_vec.shallow_clone());
        trace.put("inter.sat_feat", || r.tokens.permute([0, 3, 1, 2]));
        let (hf, heatmap, bbox) = self.head.forward_t(&feat, train);
        trace.put("inter.head_feat", || hf);
        let moe_calls = merge_calls(q.moe_calls, &r.moe_calls);
        let entropy = self.entropy(&moe_calls, heatmap.device());
        Ok(Outputs { heatmap, bbox, entropy, query_vec, fusion_attn: attn, fusion_logits: logits, moe_calls })
    }

    /// Full forward: `query` (B,4,Hq,Wq), `sat` (B,3,Hs,Ws).
    pub fn forward_t(&self, query: &Tensor, sat: &Tensor, train: bool, trace: &mut Trace) -> Result<Outputs> {
        self.forward_indexed(query, sat, None, train, trace)
    }

    /// Full forward with query `i` matched against chip `ref_index[i]` (see
    /// [`Smgeo::localise_indexed`]): `query` (N,4,Hq,Wq), `sat` (G,3,Hs,Ws), G ≤ N.
    pub fn forward_indexed(
        &self,
        query: &Tensor,
        sat: &Tensor,
        ref_index: Option<&Tensor>,
        train: bool,
        trace: &mut Trace,
    ) -> Result<Outputs> {
        let qf = self.encode_query(query, train, trace)?;
        let rf = self.encode_reference(sat, train, trace)?;
        self.localise_indexed(qf, &rf, ref_index, train, trace)
    }

    fn entropy(&self, calls: &[MoeCall], dev: Device) -> Tensor {
        if calls.is_empty() {
            return Tensor::zeros([], (Kind::Float, dev));
        }
        if self.cfg.balance_entropy {
            let terms: Vec<Tensor> = calls.iter().map(|c| c.balance_term()).collect();
            Tensor::stack(&terms, 0).mean(Kind::Float)
        } else {
            let n = self.cfg.entropy_fifo.max(1).min(calls.len());
            let last: Vec<Tensor> = calls[calls.len() - n..].iter().map(|c| c.mean_entropy()).collect();
            Tensor::stack(&last, 0).mean(Kind::Float)
        }
    }
}

/// Interleave the branches' MoE records in the reference call order: for each stage,
/// the query's blocks, then the satellite's. Reference records are shallow copies, so a
/// cached `RefFeatures` keeps its own.
fn merge_calls(q: Vec<MoeCall>, r: &[MoeCall]) -> Vec<MoeCall> {
    let copy = |c: &MoeCall| MoeCall {
        name: c.name.clone(),
        stage: c.stage,
        logits: c.logits.shallow_clone(),
        probs: c.probs.shallow_clone(),
        topk_idx: c.topk_idx.shallow_clone(),
        topk_weights: c.topk_weights.shallow_clone(),
    };
    let mut out = Vec::with_capacity(q.len() + r.len());
    let mut qi = q.into_iter().peekable();
    let mut ri = r.iter().peekable();
    for stage in 0..4 {
        while let Some(c) = qi.next_if(|c| c.stage == stage) {
            out.push(c);
        }
        while let Some(c) = ri.next_if(|c| c.stage == stage) {
            out.push(copy(c));
        }
    }
    out
}

/// Wait for the work queued on `dev` (CUDA); nothing to wait for on the CPU.
pub fn synchronize(dev: Device) {
    if let Device::Cuda(i) = dev {
        tch::Cuda::synchronize(i as i64);
    }
}

/// A host tensor onto `dev`. On CUDA through pinned (page-locked) memory with a
/// non-blocking copy, so the upload queues behind the kernels already launched instead of
/// stalling the host; libtorch's caching host allocator keeps the pinned buffer alive
/// until the copy is done. Anywhere else (or if pinning fails) a plain copy.
pub fn upload(t: &Tensor, dev: Device) -> Tensor {
    if dev.is_cuda() && t.device() == Device::Cpu {
        if let Ok(p) = t.f_pin_memory(dev) {
            if let Ok(d) = p.f_to_device_(dev, p.kind(), true, false) {
                return d;
            }
        }
    }
    t.to_device(dev)
}

/// Number of parameters (trainable and not, excluding BN running statistics).
pub fn count_params(vs: &nn::VarStore) -> i64 {
    vs.variables()
        .iter()
        .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
        .map(|(_, t)| t.numel() as i64)
        .sum()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tch::nn::VarStore;

    /// A tiny paper-preset model (embed 8, MoE in stages 1–3) for unit tests.
    pub(crate) fn tiny() -> (VarStore, Smgeo) {
        let mut cfg = ModelConfig::paper();
        cfg.embed_dim = 8;
        cfg.num_heads = vec![1, 2, 2, 4];
        cfg.depths = vec![2, 2, 2, 2];
        cfg.head_feat_channels = 8;
        cfg.moe_block_indices = [(1, vec![0]), (2, vec![0]), (3, vec![0])].into_iter().collect();
        let vs = VarStore::new(Device::Cpu);
        let m = Smgeo::new(&vs.root(), &cfg).unwrap();
        (vs, m)
    }

    /// A deterministic input of `shape` without the global generator (tests run in parallel).
    pub(crate) fn wave(shape: &[i64], f: f64) -> Tensor {
        let n: i64 = shape.iter().product();
        (Tensor::arange(n, (Kind::Float, Device::Cpu)) * f).sin().view(shape) * 2.0
    }

    #[test]
    fn indexed_forward_matches_one_chip_per_query_and_sends_gradients_to_each_chip() {
        let (_vs, m) = tiny();
        let q = wave(&[3, 4, 64, 64], 0.37);
        let s = wave(&[2, 3, 128, 128], 0.53).set_requires_grad(true);
        let idx = Tensor::from_slice(&[1i64, 0, 1]);
        let o = m.forward_indexed(&q, &s, Some(&idx), false, &mut Trace::off()).unwrap();
        let per = m.forward_t(&q, &s.index_select(0, &idx), false, &mut Trace::off()).unwrap();
        assert_eq!(o.heatmap.size(), vec![3, 1, 4, 4]);
        let d = (&o.heatmap - &per.heatmap).abs().max().double_value(&[]);
        assert!(d < 1e-5, "heatmaps differ by {d}");
        let d = (&o.bbox - &per.bbox).abs().max().double_value(&[]);
        assert!(d < 1e-5, "boxes differ by {d}");
        // Each chip receives the gradients of its own queries.
        let g = Tensor::run_backward(&[o.heatmap.sum(Kind::Float)], &[&s], false, false);
        for c in 0..2 {
            assert!(g[0].get(c).abs().sum(Kind::Float).double_value(&[]) > 0.0, "chip {c} got no gradient");
        }
        // A wrong index is an input error, not a libtorch crash.
        for bad in
            [Tensor::from_slice(&[0i64, 2, 1]), Tensor::from_slice(&[0i64, 1]), Tensor::from_slice(&[0i32, 1, 0])]
        {
            let e = m.forward_indexed(&q, &s, Some(&bad), false, &mut Trace::off()).unwrap_err();
            assert!(e.to_string().contains("ref_index"), "{e}");
        }
    }

    #[test]
    fn without_the_final_merge_the_head_runs_at_stride_16_on_stage_2_width() {
        let (vs32, m32) = tiny();
        let mut cfg = m32.cfg.clone();
        cfg.final_merge = false;
        assert_eq!((cfg.output_stride(), cfg.stage_dim(2), cfg.stage_dim(3)), (16, 32, 32));
        let vs = VarStore::new(Device::Cpu);
        let m = Smgeo::new(&vs.root(), &cfg).unwrap();
        let names: Vec<String> = vs.variables().into_keys().collect();
        assert!(names.iter().any(|k| k.starts_with("backbone.downsamples.1.")));
        assert!(!names.iter().any(|k| k.starts_with("backbone.downsamples.2.")), "no third merge");
        let q = wave(&[2, 4, 64, 64], 0.37);
        let s = wave(&[1, 3, 128, 128], 0.53);
        let idx = Tensor::from_slice(&[0i64, 0]);
        let o = m.forward_indexed(&q, &s, Some(&idx), false, &mut Trace::off()).unwrap();
        assert_eq!(o.heatmap.size(), vec![2, 1, 8, 8]);
        assert_eq!(o.bbox.size(), vec![2, 4, 8, 8]);
        let t = m.encode_reference(&s, false, &mut Trace::off()).unwrap().tokens;
        assert_eq!(t.size(), vec![1, 8, 8, 32]);
        // Fewer parameters than the stride-32 model: no last merge, stage 3 at stage 2's width.
        let n = |vs: &VarStore| vs.trainable_variables().iter().map(|t| t.numel()).sum::<usize>();
        assert!(n(&vs) < n(&vs32));
    }

    #[test]
    fn tied_embeds_encode_the_query_as_the_satellite_whatever_the_click() {
        let (_vs, m) = tiny();
        let rgb = wave(&[1, 3, 64, 64], 0.41);
        let click = wave(&[1, 1, 64, 64], 0.17).abs();
        let q = Tensor::cat(&[&rgb, &click], 1);
        let enc = |m: &Smgeo| {
            let a = m.encode_query(&q, false, &mut Trace::off()).unwrap().tokens;
            let b = m.encode_reference(&rgb, false, &mut Trace::off()).unwrap().tokens;
            (a - b).abs().max().double_value(&[])
        };
        assert!(enc(&m) > 1e-2, "independent embeds should differ");
        assert!(m.tie_query_embed_to_sat());
        let d = enc(&m);
        assert!(d < 1e-5, "tied embeds differ by {d}");
        // The click channel starts at zero but still learns.
        let qw = &m.backbone.query_embed;
        let loss = m.encode_query(&q, true, &mut Trace::off()).unwrap().tokens.square().sum(Kind::Float);
        let w = qw.proj_weight();
        let g = Tensor::run_backward(&[loss], &[&w], false, false);
        assert!(g[0].narrow(1, 3, 1).abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
}
