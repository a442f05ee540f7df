//! Mixture of experts with sparse dispatch.
//!
//! One [`ExpertPool`] per stage (`backbone.stages.{i}.expert_pool.experts.{e}`, each
//! Linear(C→h) → GELU → Linear(h→C)), shared by that stage's MoE blocks and by both
//! branches; each MoE block owns its gate (`…blocks.{j}.ffn.gate`, Linear(C→E)).
//!
//! Routing unit is a *cell*: with grid routing a cell is one attention window
//! (wh×ww tokens) and the gate sees the mean of the cell's valid tokens; with token
//! routing (the release) a cell is one token. Each cell takes its top-k experts with
//! weights softmax(top-k logits); only those experts are computed (cells are grouped
//! by expert, one batched MLP per expert), which equals the dense weighted sum.

use tch::{nn, Kind, Tensor};

use super::layers::{xavier_uniform, Linear};
use super::swin::{window_partition, window_reverse};

#[derive(Debug)]
pub struct Expert {
    fc1: Linear,
    fc2: Linear,
}

impl Expert {
    fn new(vs: &nn::Path, dim: i64, hidden: i64, zero_out: bool) -> Self {
        let fc2_init = if zero_out { nn::Init::Const(0.0) } else { xavier_uniform(hidden, dim) };
        Expert {
            fc1: Linear::with_init(&(vs / 0), dim, hidden, true, xavier_uniform(dim, hidden)),
            fc2: Linear::with_init(&(vs / 2), hidden, dim, true, fc2_init),
        }
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        self.fc2.forward(&self.fc1.forward(xs).gelu("none"))
    }
}

/// The experts of one stage.
#[derive(Debug)]
pub struct ExpertPool {
    pub experts: Vec<Expert>,
}

impl ExpertPool {
    /// `zero_out`: start each expert's output layer at zero (used when the MoE is added
    /// beside a pretrained dense MLP, so the sum starts as the pretrained function).
    pub fn new(vs: &nn::Path, dim: i64, hidden: i64, n: i64, zero_out: bool) -> Self {
        let vs = vs / "experts";
        ExpertPool { experts: (0..n).map(|e| Expert::new(&(&vs / e), dim, hidden, zero_out)).collect() }
    }
}

/// What one MoE call decided; kept for losses, logging and golden tests.
#[derive(Debug)]
pub struct MoeCall {
    /// e.g. `sat_s2b0`.
    pub name: String,
    pub stage: usize,
    /// (cells, E) gate logits (noisy in training).
    pub logits: Tensor,
    /// (cells, E) softmax over all experts.
    pub probs: Tensor,
    /// (cells, k) int64, descending logit order.
    pub topk_idx: Tensor,
    /// (cells, k) softmax over the selected logits.
    pub topk_weights: Tensor,
}

impl MoeCall {
    /// Release entropy: mean over cells of −Σ p·log(p+1e-8), detached (spec §2).
    pub fn mean_entropy(&self) -> Tensor {
        let p = self.probs.detach();
        -(&p * (&p + 1e-8).log()).sum_dim_intlist(-1, false, Kind::Float).mean(Kind::Float)
    }

    /// Balance term log E − H(p̄), p̄ = mean gate distribution over the call's cells;
    /// zero when usage is balanced, with gradient.
    pub fn balance_term(&self) -> Tensor {
        let e = self.probs.size()[1] as f64;
        let pbar = self.probs.mean_dim(0, false, Kind::Float);
        let h = -(&pbar * (&pbar + 1e-8).log()).sum(Kind::Float);
        h.neg() + e.ln()
    }
}

#[derive(Debug)]
pub struct MoeGate {
    pub gate: Linear,
    pub top_k: i64,
    pub noise_std: f64,
}

impl MoeGate {
    /// Gate weights N(0, 0.01²), bias 0 (spec §2).
    pub fn new(vs: &nn::Path, dim: i64, n_experts: i64, top_k: i64, noise_std: f64) -> Self {
        let init = nn::Init::Randn { mean: 0.0, stdev: 0.01 };
        MoeGate { gate: Linear::with_init(&(vs / "gate"), dim, n_experts, true, init), top_k, noise_std }
    }

    /// `z`: (B, H, W, C) normalised tokens, in the compute kind (what the experts see);
    /// `z_gate`: the same tokens in float32 (what the gate routes on; the same tensor
    /// when computing in float32). `cell`: Some((wh, ww)) for grid routing (cells =
    /// windows on the zero-padded grid), None for per-token routing.
    /// Returns the MoE output (B, H, W, C) and the routing record.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        z: &Tensor,
        z_gate: &Tensor,
        pool: &ExpertPool,
        cell: Option<(i64, i64)>,
        train: bool,
        name: String,
        stage: usize,
    ) -> (Tensor, MoeCall) {
        let (b, h, w, c) = z.size4().expect("MoE input is (B, H, W, C)");
        let (cells, feat, pad) = match cell {
            None => (z.reshape([-1, 1, c]), z_gate.reshape([-1, c]), (0, 0)),
            Some((wh, ww)) => {
                let (cells, feat, pad) = cell_view(z, wh, ww);
                let feat = if z_gate.kind() == z.kind() { feat } else { cell_view(z_gate, wh, ww).1 };
                (cells, feat, pad)
            }
        };
        // routing in float32 whatever the model's precision: the gate decides which
        // experts run, so a rounding flip would change the function, not just its digits
        let mut logits = self.gate.forward_f32(&feat);
        if train && self.noise_std > 0.0 {
            logits = &logits + logits.randn_like() * self.noise_std;
        }
        let probs = logits.softmax(-1, Kind::Float);
        let (top_v, top_i) = logits.topk(self.top_k, -1, true, true);
        let top_w = top_v.softmax(-1, Kind::Float);
        let out_cells = dispatch(&cells, pool, &top_i, &top_w);
        let out = match cell {
            None => out_cells.reshape([b, h, w, c]),
            Some((wh, ww)) => {
                let full = window_reverse(&out_cells, wh, ww, b, h + pad.0, w + pad.1);
                full.narrow(1, 0, h).narrow(2, 0, w)
            }
        };
        let call = MoeCall { name, stage, logits, probs, topk_idx: top_i, topk_weights: top_w };
        (out, call)
    }
}

/// Grid cells of a (B, H, W, C) map: (B·nCells, wh·ww, C) token groups, the gate
/// input (mean over each cell's valid, i.e. unpadded, tokens) and the padding used.
fn cell_view(z: &Tensor, wh: i64, ww: i64) -> (Tensor, Tensor, (i64, i64)) {
    let (_, h, w, _) = z.size4().expect("(B, H, W, C)");
    let (ph, pw) = ((wh - h % wh) % wh, (ww - w % ww) % ww);
    if ph == 0 && pw == 0 {
        let cells = window_partition(z, wh, ww);
        let feat = cells.mean_dim(1, false, Kind::Float);
        return (cells, feat, (0, 0));
    }
    let zp = z.constant_pad_nd([0, 0, 0, pw, 0, ph]);
    let cells = window_partition(&zp, wh, ww);
    let ones = Tensor::ones([1, h, w, 1], (z.kind(), z.device())).constant_pad_nd([0, 0, 0, pw, 0, ph]);
    let nb = z.size()[0];
    let count = window_partition(&ones, wh, ww).sum_dim_intlist(1, false, Kind::Float); // (nC, 1)
    let count = count.repeat([nb, 1]);
    let feat = cells.sum_dim_intlist(1, false, Kind::Float) / count.clamp_min(1.0);
    (cells, feat, (ph, pw))
}

/// Sparse dispatch: for each expert, the cells that selected it, through the expert
/// once, scaled by that cell's weight for it, accumulated into the output.
///
/// The (cell, expert) choices are sorted by expert once and cut into per-expert runs by
/// their counts, so the host waits for the device once per MoE call (the counts), not
/// once per expert (a `nonzero` each).
fn dispatch(cells: &Tensor, pool: &ExpertPool, top_i: &Tensor, top_w: &Tensor) -> Tensor {
    let (n_cells, k) = (top_i.size()[0], top_i.size()[1]);
    let n_experts = pool.experts.len() as i64;
    let flat_e = top_i.reshape([-1]);
    let order = flat_e.argsort_stable(true, 0, false);
    let cell_of = Tensor::arange(n_cells, (Kind::Int64, cells.device())).unsqueeze(1).expand([n_cells, k], false);
    let sorted_cell = cell_of.reshape([-1]).index_select(0, &order);
    let sorted_w = top_w.reshape([-1]).index_select(0, &order).to_kind(cells.kind());
    let counts = Vec::<i64>::try_from(flat_e.bincount::<Tensor>(None, n_experts)).expect("expert counts");
    let mut out = cells.zeros_like();
    let mut start = 0;
    for (expert, &n) in pool.experts.iter().zip(&counts) {
        if n == 0 {
            continue;
        }
        let sel = sorted_cell.narrow(0, start, n);
        let xe = cells.index_select(0, &sel);
        let ye = expert.forward(&xe) * sorted_w.narrow(0, start, n).view([-1, 1, 1]);
        out = out.index_add(0, &sel, &ye);
        start += n;
    }
    out
}
