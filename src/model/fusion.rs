//! Query-guided fusion (paper eq. 10): the query's global vector q is compared with
//! every reference location, A = σ(⟨LN(F_ref), LN(q)⟩ / √C), fused = F_ref ⊙ A.
//!
//! q is pooled from the (normalised) last query stage: plain mean, or weighted by the
//! click prior (query channel 3) average-pooled to the stage grid and raised to a
//! power, so the vector describes the clicked object rather than the whole view.
//! Both run in float32 whatever the model's precision (they are small).

use tch::{nn, Kind, Tensor};

use super::config::QueryPool;
use super::layers::LayerNorm;

#[derive(Debug)]
pub struct Fusion {
    norm_query: LayerNorm,
    norm_ref: LayerNorm,
    pool: QueryPool,
    power: f64,
}

impl Fusion {
    pub fn new(vs: &nn::Path, dim: i64, pool: QueryPool, power: f64) -> Self {
        Fusion {
            norm_query: LayerNorm::new(&(vs / "norm_query"), dim),
            norm_ref: LayerNorm::new(&(vs / "norm_ref"), dim),
            pool,
            power,
        }
    }

    /// `q_tokens`: (B, h, w, C) last query stage; `click`: (B, 1, Hq, Wq) prior map.
    /// Returns q: (B, C).
    pub fn pool_query(&self, q_tokens: &Tensor, click: &Tensor) -> Tensor {
        let q_tokens = &q_tokens.to_kind(Kind::Float);
        let click = &click.to_kind(Kind::Float);
        match self.pool {
            QueryPool::Mean => q_tokens.mean_dim(&[1i64, 2][..], false, Kind::Float),
            QueryPool::Click => {
                let (_, h, w, _) = q_tokens.size4().expect("(B, h, w, C)");
                let m = click.adaptive_avg_pool2d([h, w]).clamp_min(0.0).pow_tensor_scalar(self.power); // (B,1,h,w)
                let wts = &m / (m.sum_dim_intlist(&[2i64, 3][..], true, Kind::Float) + 1e-12);
                let wts = wts.permute([0, 2, 3, 1]); // (B, h, w, 1)
                (q_tokens * wts).sum_dim_intlist(&[1i64, 2][..], false, Kind::Float)
            }
        }
    }

    /// `f_ref`: (B, H, W, C), `q`: (B, C) float32 → (fused (B, H, W, C) in the kind of
    /// `f_ref`, A (B, H, W) float32). The similarity is computed in float32.
    pub fn forward(&self, f_ref: &Tensor, q: &Tensor) -> (Tensor, Tensor) {
        let (fused, a, _) = self.forward_with_logits(f_ref, q);
        (fused, a)
    }

    /// [`Fusion::forward`] plus the similarity logits s (B, H, W), A = σ(s): what the
    /// optional matching loss supervises.
    pub fn forward_with_logits(&self, f_ref: &Tensor, q: &Tensor) -> (Tensor, Tensor, Tensor) {
        let c = *f_ref.size().last().expect("rank 4");
        let r = self.norm_ref.forward_f32(f_ref);
        let qn = self.norm_query.forward_f32(q).unsqueeze(1).unsqueeze(1); // (B,1,1,C)
        let s = (r * qn).sum_dim_intlist(-1, false, Kind::Float) / (c as f64).sqrt();
        let a = s.sigmoid();
        (f_ref * a.unsqueeze(-1).to_kind(f_ref.kind()), a, s)
    }
}
