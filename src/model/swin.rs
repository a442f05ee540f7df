//! The shared Swin backbone for both branches (query: RGB + click, satellite: RGB).
//!
//! Tokens are NHWC `(B, H, W, C)` between layers. Stage i runs its blocks, then (i < 3)
//! the shared patch merging `downsamples.{i}` — the same as timm's "downsample at the
//! start of the next stage". Switches from [`ModelConfig`] select the paper's Swin
//! (shifted windows with the −100 mask, relative position bias, zero padding to window
//! multiples in timm's order: roll, then pad; windows clamped to grids no larger than
//! the window) or the release's plain windowed attention. Facts: `SWIN_FACTS.md`,
//! `SMGEO_SPEC.md` §1.

use std::collections::HashMap;
use std::sync::Mutex;

use tch::{nn, Device, Kind, Tensor};

use super::config::ModelConfig;
use super::layers::{as_kind, drop_path, LayerNorm, Linear};
use super::moe::{ExpertPool, MoeCall, MoeGate};
use super::trace::Trace;

/// `(B, H, W, C) -> (B·nW, wh·ww, C)`, windows batch-major then row-major.
pub fn window_partition(x: &Tensor, wh: i64, ww: i64) -> Tensor {
    let (b, h, w, c) = x.size4().expect("(B, H, W, C)");
    x.view([b, h / wh, wh, w / ww, ww, c]).permute([0, 1, 3, 2, 4, 5]).reshape([-1, wh * ww, c])
}

/// Inverse of [`window_partition`]: `(B·nW, wh·ww, C) -> (B, H, W, C)`.
pub fn window_reverse(x: &Tensor, wh: i64, ww: i64, b: i64, h: i64, w: i64) -> Tensor {
    let c = *x.size().last().expect("rank ≥ 1");
    x.view([b, h / wh, w / ww, wh, ww, c]).permute([0, 1, 3, 2, 4, 5]).reshape([b, h, w, c])
}

/// Relative position index for a (wh, ww) window into a table built for a square
/// window `win` ((2·win−1)² rows, dy-major; offset = query − key).
pub fn relative_position_index(wh: i64, ww: i64, win: i64) -> Vec<i64> {
    let n = (wh * ww) as usize;
    let mut idx = Vec::with_capacity(n * n);
    for i in 0..wh * ww {
        for j in 0..wh * ww {
            let (yi, xi, yj, xj) = (i / ww, i % ww, j / ww, j % ww);
            idx.push((yi - yj + win - 1) * (2 * win - 1) + (xi - xj + win - 1));
        }
    }
    idx
}

/// Shift mask `(nW, N, N)` with 0 inside a region and −100 across (SWIN_FACTS §5),
/// built on the padded grid (hp, wp).
pub fn shift_mask(hp: i64, wp: i64, wh: i64, ww: i64, sh: i64, sw: i64) -> Vec<f32> {
    let band = |v: i64, len: i64, win: i64, s: i64| -> i64 {
        if s == 0 {
            0
        } else if v < len - win {
            0
        } else if v < len - s {
            1
        } else {
            2
        }
    };
    let (nwh, nww) = (hp / wh, wp / ww);
    let n = (wh * ww) as usize;
    let mut mask = Vec::with_capacity((nwh * nww) as usize * n * n);
    for r in 0..nwh {
        for c in 0..nww {
            let labels: Vec<i64> = (0..wh * ww)
                .map(|t| {
                    let (y, x) = (r * wh + t / ww, c * ww + t % ww);
                    3 * band(y, hp, wh, sh) + band(x, wp, ww, sw)
                })
                .collect();
            for li in &labels {
                mask.extend(labels.iter().map(|lj| if li == lj { 0.0 } else { -100.0 }));
            }
        }
    }
    mask
}

/// Window geometry of one block for a given grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WindowGeom {
    pub wh: i64,
    pub ww: i64,
    pub sh: i64,
    pub sw: i64,
    pub hp: i64,
    pub wp: i64,
}

impl WindowGeom {
    /// Clamp per dimension when the grid is no larger than the window (single window,
    /// no shift), shift by win/2 on shifted blocks, pad to window multiples.
    pub fn new(h: i64, w: i64, win: i64, shifted: bool) -> Self {
        let (wh, sh) = if h <= win { (h, 0) } else { (win, if shifted { win / 2 } else { 0 }) };
        let (ww, sw) = if w <= win { (w, 0) } else { (win, if shifted { win / 2 } else { 0 }) };
        let hp = (h + wh - 1) / wh * wh;
        let wp = (w + ww - 1) / ww * ww;
        WindowGeom { wh, ww, sh, sw, hp, wp }
    }
}

/// Per-geometry cache of the bias gather index and the shift mask, per device.
#[derive(Default, Debug)]
struct GeomCache {
    rel_index: HashMap<(i64, i64, Device), Tensor>,
    masks: HashMap<(WindowGeom, Device), Tensor>,
    gathers: HashMap<(WindowGeom, i64, i64, Device), (Tensor, Tensor)>,
}

/// Index maps that fuse roll(−s) → zero-pad → window partition into one gather, and
/// window reverse → crop → roll(+s) into another (timm's order: roll the unpadded grid,
/// then pad). `fwd[p]` is, for window-ordered position p of the padded grid, the source
/// token (row-major in H×W) or H·W for a padding token (a zero row appended);
/// `inv[t]` is, for source token t, its position in window order.
pub fn window_gather(g: WindowGeom, h: i64, w: i64) -> (Vec<i64>, Vec<i64>) {
    let (nwh, nww) = (g.hp / g.wh, g.wp / g.ww);
    let mut fwd = Vec::with_capacity((g.hp * g.wp) as usize);
    let mut inv = vec![0i64; (h * w) as usize];
    for r in 0..nwh {
        for c in 0..nww {
            for ty in 0..g.wh {
                for tx in 0..g.ww {
                    let (y, x) = (r * g.wh + ty, c * g.ww + tx); // rolled, padded grid
                    if y < h && x < w {
                        let src = ((y + g.sh) % h) * w + (x + g.sw) % w;
                        inv[src as usize] = fwd.len() as i64;
                        fwd.push(src);
                    } else {
                        fwd.push(h * w);
                    }
                }
            }
        }
    }
    (fwd, inv)
}

/// `(B, H, W, C)` → `(B·nW, wh·ww, C)` through a [`window_gather`] map.
fn gather_windows(y: &Tensor, fwd: &Tensor, g: WindowGeom) -> Tensor {
    let (b, h, w, c) = y.size4().expect("(B, H, W, C)");
    let flat = y.reshape([b, h * w, c]);
    let src = if g.hp * g.wp > h * w {
        Tensor::cat(&[&flat, &flat.new_zeros([b, 1, c], (y.kind(), y.device()))], 1)
    } else {
        flat
    };
    src.index_select(1, fwd).view([-1, g.wh * g.ww, c])
}

#[derive(Debug)]
pub struct WindowAttention {
    pub in_proj_weight: Tensor,
    pub in_proj_bias: Tensor,
    pub out_proj: Linear,
    pub relative_position_bias_table: Option<Tensor>,
    heads: i64,
    win: i64,
    cache: Mutex<GeomCache>,
}

impl WindowAttention {
    fn new(vs: &nn::Path, dim: i64, heads: i64, win: i64, rel_bias: bool) -> Self {
        let std = nn::Init::Randn { mean: 0.0, stdev: super::layers::TRUNC_STD };
        let table = rel_bias.then(|| vs.var("relative_position_bias_table", &[(2 * win - 1).pow(2), heads], std));
        WindowAttention {
            in_proj_weight: vs.var("in_proj_weight", &[3 * dim, dim], std),
            in_proj_bias: vs.var("in_proj_bias", &[3 * dim], nn::Init::Const(0.0)),
            out_proj: Linear::new(&(vs / "out_proj"), dim, dim, true),
            relative_position_bias_table: table,
            heads,
            win,
            cache: Mutex::new(GeomCache::default()),
        }
    }

    /// `(nH, N, N)` bias gathered from the table for a (wh, ww) window.
    fn bias(&self, table: &Tensor, wh: i64, ww: i64) -> Tensor {
        let dev = table.device();
        let idx = {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .rel_index
                .entry((wh, ww, dev))
                .or_insert_with(|| Tensor::from_slice(&relative_position_index(wh, ww, self.win)).to(dev))
                .shallow_clone()
        };
        let n = wh * ww;
        table.index_select(0, &idx).view([n, n, self.heads]).permute([2, 0, 1])
    }

    fn gathers(&self, g: WindowGeom, h: i64, w: i64, dev: Device) -> (Tensor, Tensor) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (f, i) = cache.gathers.entry((g, h, w, dev)).or_insert_with(|| {
            let (f, i) = window_gather(g, h, w);
            (Tensor::from_slice(&f).to(dev), Tensor::from_slice(&i).to(dev))
        });
        (f.shallow_clone(), i.shallow_clone())
    }

    fn mask(&self, g: WindowGeom, dev: Device) -> Tensor {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .masks
            .entry((g, dev))
            .or_insert_with(|| {
                let n = g.wh * g.ww;
                let nw = (g.hp / g.wh) * (g.wp / g.ww);
                Tensor::from_slice(&shift_mask(g.hp, g.wp, g.wh, g.ww, g.sh, g.sw)).view([nw, n, n]).to(dev)
            })
            .shallow_clone()
    }

    /// Relative position bias plus shift mask as one additive attention mask,
    /// broadcastable to (B·nW, nH, N, N); None when there is neither.
    fn additive_mask(&self, g: WindowGeom, b: i64, dev: Device, kind: Kind) -> Option<Tensor> {
        let n = g.wh * g.ww;
        let bias = self.relative_position_bias_table.as_ref().map(|t| self.bias(t, g.wh, g.ww).unsqueeze(0)); // (1,nH,N,N)
        let shifted = g.sh > 0 || g.sw > 0;
        let m = match (bias, shifted) {
            (None, false) => return None,
            (Some(bias), false) => bias,
            (bias, true) => {
                let mask = self.mask(g, dev); // (nW, N, N)
                let nw = mask.size()[0];
                let m = mask.unsqueeze(1); // (nW, 1, N, N)
                let m = match bias {
                    Some(bb) => bb + m, // (nW, nH, N, N)
                    None => m,
                };
                let h = m.size()[1];
                m.unsqueeze(0).expand([b, nw, h, n, n], false).reshape([b * nw, h, n, n])
            }
        };
        Some(m.to_kind(kind))
    }

    /// `x`: (B·nW, N, C) windows of `b` images; returns the same shape.
    pub fn forward(&self, x: &Tensor, g: WindowGeom, b: i64, trace: &mut Trace, name: &str) -> Tensor {
        let (bw, n, c) = x.size3().expect("(B·nW, N, C)");
        let hd = c / self.heads;
        // (B·nW, N, 3C) -> (3, B·nW, nH, N, hd): rows [0,C) q, [C,2C) k, [2C,3C) v
        let qkv = x
            .linear(&as_kind(&self.in_proj_weight, x.kind()), Some(&as_kind(&self.in_proj_bias, x.kind())))
            .view([bw, n, 3, self.heads, hd])
            .permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        if !trace.enabled() {
            // fused path: bias and shift mask as one additive mask (B·nW, nH, N, N)
            let mask = self.additive_mask(g, b, x.device(), x.kind());
            let out = Tensor::scaled_dot_product_attention(&q, &k, &v, mask, 0.0, false, None, false);
            return self.out_proj.forward(&out.transpose(1, 2).reshape([bw, n, c]));
        }
        let q = q * (hd as f64).powf(-0.5);
        let mut attn = q.matmul(&k.transpose(-2, -1)); // (B·nW, nH, N, N)
        if let Some(table) = &self.relative_position_bias_table {
            attn = attn + self.bias(table, g.wh, g.ww).unsqueeze(0);
        }
        if g.sh > 0 || g.sw > 0 {
            let mask = self.mask(g, x.device()); // (nW, N, N)
            let nw = mask.size()[0];
            attn = (attn.view([b, nw, self.heads, n, n]) + mask.unsqueeze(1).unsqueeze(0)).view([bw, self.heads, n, n]);
        }
        let probs = attn.softmax(-1, Kind::Float);
        trace.put(&format!("{name}.attn_probs"), || probs.shallow_clone());
        // (B·nW, nH, N, hd) -> (B·nW, N, C), heads concatenated in order
        let out = probs.to_kind(v.kind()).matmul(&v).transpose(1, 2).reshape([bw, n, c]);
        self.out_proj.forward(&out)
    }
}

/// Dense MLP `ffn.0` → GELU → `ffn.2`.
#[derive(Debug)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(vs: &nn::Path, dim: i64, hidden: i64) -> Self {
        Mlp { fc1: Linear::new(&(vs / 0), dim, hidden, true), fc2: Linear::new(&(vs / 2), hidden, dim, true) }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.fc2.forward(&self.fc1.forward(x).gelu("none"))
    }
}

#[derive(Debug)]
pub struct SwinBlock {
    norm1: LayerNorm,
    attn: WindowAttention,
    norm2: LayerNorm,
    mlp: Option<Mlp>,
    moe: Option<MoeGate>,
    shifted: bool,
    drop_path: f64,
    stage: usize,
    index: usize,
}

/// Per-call context passed down the backbone.
pub struct Ctx<'a> {
    pub cfg: &'a ModelConfig,
    /// Kind the attention, MLP and expert matmuls run in; the residual stream and the
    /// norms stay float32 (as under `torch.autocast`).
    pub kind: Kind,
    /// The kind comes from the weights (inference, [`crate::model::Smgeo::set_precision`]):
    /// then the patch embeds and each stage compute in the kind of their own weights, so
    /// that the float32 stages of a reduced-precision model stay float32. False under a
    /// mixed-precision compute kind (training), where `kind` holds everywhere.
    pub kind_from_weights: bool,
    pub train: bool,
    pub branch: &'a str,
    pub moe_calls: &'a mut Vec<MoeCall>,
    pub trace: &'a mut Trace,
}

impl SwinBlock {
    fn new(vs: &nn::Path, cfg: &ModelConfig, stage: usize, index: usize, drop_path: f64) -> Self {
        let dim = cfg.stage_dim(stage);
        let is_moe = cfg.is_moe(stage, index);
        let ffn = vs / "ffn";
        let mlp = (!is_moe || cfg.moe_beside_dense).then(|| Mlp::new(&ffn, dim, (dim as f64 * cfg.ffn_ratio) as i64));
        let moe = is_moe.then(|| MoeGate::new(&ffn, dim, cfg.num_experts, cfg.top_k, cfg.gate_noise_std));
        SwinBlock {
            norm1: LayerNorm::new(&(vs / "norm1"), dim),
            attn: WindowAttention::new(&(vs / "attn"), dim, cfg.num_heads[stage], cfg.window_size, cfg.rel_pos_bias),
            norm2: LayerNorm::new(&(vs / "norm2"), dim),
            mlp,
            moe,
            shifted: cfg.shifted_windows && index % 2 == 1,
            drop_path,
            stage,
            index,
        }
    }

    fn forward(&self, x: &Tensor, pool: Option<&ExpertPool>, ctx: &mut Ctx) -> Tensor {
        let (b, h, w, _c) = x.size4().expect("(B, H, W, C)");
        let g = WindowGeom::new(h, w, ctx.cfg.window_size, self.shifted);
        let name = format!("{}_s{}b{}", ctx.branch, self.stage, self.index);
        // attention path: norm → roll(−s) → pad → windows → attn → reverse → crop → roll(+s),
        // the roll/pad/partition and its inverse each done as one gather (see `window_gather`)
        let y = as_kind(&self.norm1.forward(x), ctx.kind);
        let (fwd, inv) = self.attn.gathers(g, h, w, x.device());
        let win = gather_windows(&y, &fwd, g);
        let a = self.attn.forward(&win, g, b, ctx.trace, &name);
        let c = a.size()[2];
        let y = a.view([b, -1, c]).index_select(1, &inv).view([b, h, w, c]);
        let x = x + drop_path(&y, self.drop_path, ctx.train);
        // feed-forward path: dense MLP and/or MoE on norm2(x)
        let z32 = self.norm2.forward(&x); // float32: what the MoE gate routes on
        let z = as_kind(&z32, ctx.kind);
        let mut f = self.mlp.as_ref().map(|m| m.forward(&z));
        if let (Some(gate), Some(pool)) = (&self.moe, pool) {
            let cell = ctx.cfg.grid_routing.then_some((g.wh, g.ww));
            let (m, call) = gate.forward(&z, &z32, pool, cell, ctx.train, name.clone(), self.stage);
            ctx.trace.put(&format!("moe.{name}.x"), || z.reshape([-1, z.size()[3]]));
            ctx.trace.put(&format!("moe.{name}.out"), || m.reshape([-1, m.size()[3]]));
            ctx.moe_calls.push(call);
            f = Some(match f {
                Some(d) => d + m,
                None => m,
            });
        }
        let f = f.expect("a block has an MLP, a MoE or both");
        x + drop_path(&f, self.drop_path, ctx.train) // float32 + compute kind → float32
    }
}

/// Conv patch embed (kernel = stride = patch) → NHWC → LayerNorm.
#[derive(Debug)]
pub struct PatchEmbed {
    proj: super::layers::Conv2d,
    norm: LayerNorm,
}

impl PatchEmbed {
    fn new(vs: &nn::Path, c_in: i64, dim: i64, patch: i64) -> Self {
        PatchEmbed {
            proj: super::layers::Conv2d::new(&(vs / "proj"), c_in, dim, patch, patch, 0),
            norm: LayerNorm::new(&(vs / "norm"), dim),
        }
    }

    /// Kind of the parameters (the model's precision).
    pub fn kind(&self) -> Kind {
        self.proj.weight.kind()
    }

    /// The projection's weight (C, C_in, p, p), shared with the VarStore.
    pub fn proj_weight(&self) -> Tensor {
        self.proj.weight.shallow_clone()
    }

    /// `x` in the compute kind → float32 tokens (the residual stream).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.norm.forward_f32(&self.proj.forward(x).permute([0, 2, 3, 1]))
    }
}

/// 2×2 merge in the order (0,0), (1,0), (0,1), (1,1) (row offset fastest), LN(4C),
/// Linear(4C→2C, no bias). Odd grids are zero-padded bottom/right when allowed.
#[derive(Debug)]
pub struct PatchMerging {
    norm: LayerNorm,
    reduction: Linear,
}

impl PatchMerging {
    fn new(vs: &nn::Path, dim: i64) -> Self {
        PatchMerging {
            norm: LayerNorm::new(&(vs / "norm"), 4 * dim),
            reduction: Linear::new(&(vs / "reduction"), 4 * dim, 2 * dim, false),
        }
    }

    /// Float32 tokens in and out; the reduction runs in `kind`.
    pub fn forward(&self, x: &Tensor, kind: Kind) -> Tensor {
        let (b, h, w, c) = x.size4().expect("(B, H, W, C)");
        let x =
            if h % 2 == 1 || w % 2 == 1 { x.constant_pad_nd([0, 0, 0, w % 2, 0, h % 2]) } else { x.shallow_clone() };
        let (h2, w2) = ((h + 1) / 2, (w + 1) / 2);
        // (B, H, W, C) -> (B, H/2, 2r, W/2, 2c, C) -> (B, H/2, W/2, c, r, C) -> (B, H/2, W/2, 4C)
        let x = x.view([b, h2, 2, w2, 2, c]).permute([0, 1, 3, 4, 2, 5]).reshape([b, h2, w2, 4 * c]);
        as_kind(&self.reduction.forward(&as_kind(&self.norm.forward_f32(&x), kind)), Kind::Float)
    }
}

#[derive(Debug)]
pub struct Stage {
    blocks: Vec<SwinBlock>,
    pool: Option<ExpertPool>,
}

impl Stage {
    /// Kind of the stage's weights (its first block's attention); None without blocks.
    fn kind(&self) -> Option<Kind> {
        self.blocks.first().map(|b| b.attn.in_proj_weight.kind())
    }
}

/// Both patch embeds, the four shared stages, the merges and the optional final norm.
#[derive(Debug)]
pub struct Backbone {
    pub query_embed: PatchEmbed,
    pub sat_embed: PatchEmbed,
    stages: Vec<Stage>,
    downsamples: Vec<PatchMerging>,
    norm: Option<LayerNorm>,
}

/// Which input a backbone pass encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Branch {
    Query,
    Sat,
}

impl Branch {
    pub fn name(self) -> &'static str {
        match self {
            Branch::Query => "query",
            Branch::Sat => "sat",
        }
    }
}

impl Backbone {
    pub fn new(vs: &nn::Path, cfg: &ModelConfig) -> Self {
        let pe = vs / "patch_embeds";
        let total: i64 = cfg.depths.iter().sum();
        let mut k = 0;
        let mut stages = Vec::new();
        for i in 0..4 {
            let sp = vs / "stages" / i;
            let dim = cfg.stage_dim(i);
            let mut blocks = Vec::new();
            for j in 0..cfg.depths[i] as usize {
                let dp = if total > 1 { cfg.drop_path_rate * k as f64 / (total - 1) as f64 } else { 0.0 };
                blocks.push(SwinBlock::new(&(&sp / "blocks" / j), cfg, i, j, dp));
                k += 1;
            }
            let pool = cfg.stage_has_moe(i).then(|| {
                let hidden = (dim as f64 * cfg.expert_hidden_ratio).round() as i64;
                ExpertPool::new(&(&sp / "expert_pool"), dim, hidden, cfg.num_experts, cfg.moe_beside_dense)
            });
            stages.push(Stage { blocks, pool });
        }
        Backbone {
            query_embed: PatchEmbed::new(&(&pe / "query"), cfg.query_in_chans, cfg.embed_dim, cfg.patch_size),
            sat_embed: PatchEmbed::new(&(&pe / "sat"), cfg.sat_in_chans, cfg.embed_dim, cfg.patch_size),
            stages,
            downsamples: (0..cfg.merges())
                .map(|i| PatchMerging::new(&(vs / "downsamples" / i), cfg.stage_dim(i)))
                .collect(),
            norm: cfg.final_norm.then(|| LayerNorm::new(&(vs / "norm"), cfg.stage_dim(3))),
        }
    }

    /// Start the query patch embed as a copy of the satellite one: its RGB filters, bias
    /// and norm equal the satellite embed's and its extra (click) channels are zero — the
    /// state both embeds start in when initialised from ImageNet weights (MODEL.md, Init),
    /// here for a from-scratch model, so that the shared stages see one view's object as
    /// they see the other's from the first step. Needs a 3-channel satellite embed and at
    /// least 3 query channels; returns false (nothing changed) otherwise.
    pub fn tie_query_embed_to_sat(&self) -> bool {
        let (q, s) = (&self.query_embed, &self.sat_embed);
        let (qw, sw) = (q.proj.weight.size(), s.proj.weight.size());
        if sw[1] != 3 || qw[1] < 3 || qw[0] != sw[0] || qw[2..] != sw[2..] {
            return false;
        }
        tch::no_grad(|| {
            let w = q.proj.weight.shallow_clone();
            w.narrow(1, 0, 3).copy_(&s.proj.weight);
            if qw[1] > 3 {
                let _ = w.narrow(1, 3, qw[1] - 3).fill_(0.0);
            }
            q.proj.bias.shallow_clone().copy_(&s.proj.bias);
            q.norm.weight.shallow_clone().copy_(&s.norm.weight);
            q.norm.bias.shallow_clone().copy_(&s.norm.bias);
        });
        true
    }

    /// Kind of the encoder's reduced-precision weights: that of the last stage with
    /// blocks (the first stages may keep float32, [`crate::model::Smgeo::set_precision_with`]).
    pub fn kind(&self) -> Kind {
        self.stages.iter().rev().find_map(Stage::kind).unwrap_or_else(|| self.sat_embed.kind())
    }

    /// Encode one branch: `x` (B, C_in, H, W) → last-stage tokens (B, H/s, W/s, C3), s the
    /// output stride (32, or 16 without the final merge)
    /// (final norm applied when configured). MoE calls are appended to `ctx.moe_calls`.
    pub fn encode(&self, x: &Tensor, branch: Branch, ctx: &mut Ctx) -> Tensor {
        let bn = branch.name();
        let embed = match branch {
            Branch::Query => &self.query_embed,
            Branch::Sat => &self.sat_embed,
        };
        let base = ctx.kind;
        let weights_kind = ctx.kind_from_weights;
        let kind_of = |k: Option<Kind>| if weights_kind { k.unwrap_or(base) } else { base };
        ctx.kind = kind_of(Some(embed.kind()));
        let mut t = embed.forward(&as_kind(x, ctx.kind));
        ctx.trace.put(&format!("inter.{bn}_patch_embed"), || flat(&t));
        for (i, stage) in self.stages.iter().enumerate() {
            ctx.kind = kind_of(stage.kind());
            for blk in &stage.blocks {
                t = blk.forward(&t, stage.pool.as_ref(), ctx);
            }
            ctx.trace.put(&format!("inter.{bn}_stage{i}_out"), || flat(&t));
            if let Some(down) = self.downsamples.get(i) {
                t = down.forward(&t, ctx.kind);
                ctx.trace.put(&format!("inter.{bn}_down{i}_out"), || flat(&t));
            }
        }
        ctx.kind = base;
        match &self.norm {
            Some(n) => n.forward_f32(&t),
            None => t,
        }
    }
}

/// (B, H, W, C) → (B, H·W, C), the layout of the golden files.
fn flat(t: &Tensor) -> Tensor {
    let s = t.size();
    t.reshape([s[0], s[1] * s[2], s[3]])
}
