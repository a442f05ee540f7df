//! Training targets and losses.
//!
//! Targets follow `build_target_anchorfree` (SMGEO_SPEC §6.1, σ = 2, 9×9 window).
//! Two losses: [`release_loss`] reproduces the official code (§6.2/6.3, clamps
//! included, for parity), [`paper_loss`] is what we train with (MODEL.md): CenterNet
//! focal loss (α = 2, β = 4, normalised by the number of centres), L1 over the target
//! window, and the MoE balance term; no clamps that cut gradients.

use tch::{Device, Kind, Tensor};

/// Target maps for a batch: heatmap (B,1,Hf,Wf), bbox (B,4,Hf,Wf), mask (B,1,Hf,Wf).
#[derive(Debug)]
pub struct Targets {
    pub heatmap: Tensor,
    pub bbox: Tensor,
    pub mask: Tensor,
}

impl Targets {
    pub fn to_device(&self, d: Device) -> Targets {
        Targets { heatmap: self.heatmap.to(d), bbox: self.bbox.to(d), mask: self.mask.to(d) }
    }
}

/// Build targets from xyxy boxes in satellite pixels. The box is clamped to
/// [0, size−1] per axis (the release clamps both axes to one `img_size`; for square
/// images that is identical).
pub fn build_targets(boxes: &[[f32; 4]], img_hw: (i64, i64), feat_hw: (i64, i64)) -> Targets {
    let (hf, wf) = feat_hw;
    let (h, w) = (img_hw.0 as f32, img_hw.1 as f32);
    let cells = (hf * wf) as usize;
    let n = boxes.len();
    let mut hm = vec![0f32; n * cells];
    let mut bb = vec![0f32; n * 4 * cells];
    let mut mk = vec![0f32; n * cells];
    for (i, b) in boxes.iter().enumerate() {
        let x1 = b[0].clamp(0.0, w - 1.0);
        let x2 = b[2].clamp(0.0, w - 1.0);
        let y1 = b[1].clamp(0.0, h - 1.0);
        let y2 = b[3].clamp(0.0, h - 1.0);
        let cx = (x1 + x2) / 2.0 / w * wf as f32;
        let cy = (y1 + y2) / 2.0 / h * hf as f32;
        let bw = (x2 - x1) / w * wf as f32;
        let bh = (y2 - y1) / h * hf as f32;
        let (cxi, cyi) = (cx as i64, cy as i64);
        for dy in -4i64..=4 {
            for dx in -4i64..=4 {
                let (nx, ny) = (cxi + dx, cyi + dy);
                if nx < 0 || ny < 0 || nx >= wf || ny >= hf {
                    continue;
                }
                let k = (ny * wf + nx) as usize;
                let g = (-((dx * dx + dy * dy) as f32) / 8.0).exp();
                let o = i * cells + k;
                hm[o] = hm[o].max(g);
                mk[o] = 1.0;
                let ob = i * 4 * cells;
                bb[ob + k] = cx - nx as f32;
                bb[ob + cells + k] = cy - ny as f32;
                bb[ob + 2 * cells + k] = bw;
                bb[ob + 3 * cells + k] = bh;
            }
        }
    }
    let n = n as i64;
    Targets {
        heatmap: Tensor::from_slice(&hm).view([n, 1, hf, wf]),
        bbox: Tensor::from_slice(&bb).view([n, 4, hf, wf]),
        mask: Tensor::from_slice(&mk).view([n, 1, hf, wf]),
    }
}

/// Loss parts; `total` carries the gradient.
#[derive(Debug)]
pub struct LossParts {
    pub heatmap: Tensor,
    pub bbox: Tensor,
    /// Entropy-related term as added to the total (already × λ).
    pub entropy_term: Tensor,
    pub total: Tensor,
}

/// The official `anchorfree_loss` and total (spec §6.2–6.3): simplified focal loss
/// with clamps, masked L1 with clamps, `−λ·avg_entropy` (detached).
/// `weights` = (0.7, 0.3) for one GPU, (0.8, 0.2) for several.
pub fn release_loss(
    hm: &Tensor,
    bb: &Tensor,
    t: &Targets,
    avg_entropy: &Tensor,
    lambda: f64,
    weights: (f64, f64),
) -> LossParts {
    let p = hm.sigmoid().clamp(1e-4, 1.0 - 1e-4);
    let pos = t.heatmap.eq(1.0);
    let neg = t.heatmap.lt(1.0);
    let pos_l = (-p.log() * (-&p + 1.0).square() * 0.25).masked_select(&pos).mean(Kind::Float);
    let neg_l = (-(-&p + 1.0).log() * p.square() * 0.75).masked_select(&neg).mean(Kind::Float);
    let heat = (pos_l + neg_l).clamp(0.0, 10.0) * 2.0;
    let m = &t.mask;
    let l1 = |c0: i64| {
        let pr = bb.narrow(1, c0, 2) * m;
        let tg = t.bbox.narrow(1, c0, 2) * m;
        ((pr - tg).abs().sum(Kind::Float) / (m.sum(Kind::Float) * 2.0 + 1e-4)).clamp(0.0, 5.0)
    };
    let bbox = (l1(0) * 0.7 + l1(2) * 0.3) * 3.0;
    let ent = avg_entropy.detach() * (-lambda);
    let total = &heat * weights.0 + &bbox * weights.1 + &ent;
    LossParts { heatmap: heat, bbox, entropy_term: ent, total }
}

/// Our training loss (MODEL.md): λ₁·focal + λ₂·L1 + λ₃·balance.
/// Focal (CenterNet, α=2, β=4): positives −(1−p)^α·log p where y = 1; negatives
/// −(1−y)^β·p^α·log(1−p); summed and divided by the number of centres. L1 over the
/// 4 box channels on the target window, divided by the window cells × 4.
/// `balance`: mean over MoE calls of log E − H(p̄) (with gradient), or zero.
pub fn paper_loss(hm: &Tensor, bb: &Tensor, t: &Targets, balance: &Tensor, lambdas: (f64, f64, f64)) -> LossParts {
    let heat = centernet_focal(hm, &t.heatmap);
    let m = &t.mask;
    let bbox = ((bb - &t.bbox).abs() * m).sum(Kind::Float) / (m.sum(Kind::Float) * 4.0).clamp_min(1.0);
    let ent = balance * lambdas.2;
    let total = &heat * lambdas.0 + &bbox * lambdas.1 + &ent;
    LossParts { heatmap: heat, bbox, entropy_term: ent, total }
}

/// CenterNet focal loss (α = 2, β = 4) of `logits` against the Gaussian `target` map of
/// the same shape, divided by the number of centres (see [`paper_loss`]).
pub fn centernet_focal(logits: &Tensor, target: &Tensor) -> Tensor {
    let logp = logits.log_sigmoid();
    let log1mp = (-logits).log_sigmoid();
    let p = logits.sigmoid();
    let pos = target.eq(1.0).to_kind(Kind::Float);
    let neg_w = (-target + 1.0).pow_tensor_scalar(4.0) * (-&pos + 1.0);
    let pos_l = -((-&p + 1.0).square() * logp * &pos).sum(Kind::Float);
    let neg_l = -(p.square() * log1mp * neg_w).sum(Kind::Float);
    let n_pos = pos.sum(Kind::Float).clamp_min(1.0);
    (pos_l + neg_l) / n_pos
}

/// Matching loss (optional, training only; not in MODEL.md's loss): the same focal loss
/// on the fusion's similarity logits (B, Hf, Wf), so that the query vector matches the
/// reference features at the prompted object's cell and not at the other cells — the
/// other objects of the chip included. A direct signal to the matching that the head's
/// loss reaches only through the fusion gate.
pub fn match_loss(fusion_logits: &Tensor, t: &Targets) -> Tensor {
    centernet_focal(&fusion_logits.unsqueeze(1), &t.heatmap)
}

/// Matching loss, softmax form (InfoNCE over the chip's cells): −log softmax(s)[centre]
/// per prompt, averaged. Each prompt's similarity map competes across its chip, so the
/// query vector must score the prompted object's cell above every other cell — the
/// other objects of the chip included — rather than each cell on its own as the focal
/// form does. Prompts whose centre fell off the map (no cell at 1) add nothing.
pub fn match_loss_softmax(fusion_logits: &Tensor, t: &Targets) -> Tensor {
    let s = fusion_logits.to_kind(Kind::Float).flatten(1, -1); // (B, HW)
    let centre = t.heatmap.flatten(1, -1).eq(1.0).to_kind(Kind::Float); // (B, HW), one 1 per row
    let has = centre.sum_dim_intlist(-1, false, Kind::Float).clamp_max(1.0); // (B,)
    let lse = s.logsumexp(-1, false);
    let pos = (&s * &centre).sum_dim_intlist(-1, false, Kind::Float);
    ((lse - pos) * &has).sum(Kind::Float) / has.sum(Kind::Float).clamp_min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_have_one_centre_and_clipped_window() {
        // box centred at pixel (48, 16) of a 128×64 image, 8×4 feature map (stride 16)
        let t = build_targets(&[[40.0, 8.0, 56.0, 24.0]], (64, 128), (4, 8));
        let hm: Vec<f32> = Vec::try_from(t.heatmap.flatten(0, -1)).unwrap();
        assert_eq!(hm.iter().filter(|&&v| v == 1.0).count(), 1);
        // centre cell (cx=3.0, cy=1.0) → index 1*8+3
        assert_eq!(hm[11], 1.0);
        // neighbour one cell right: exp(−1/8)
        assert!((hm[12] - (-0.125f32).exp()).abs() < 1e-7);
        // whole 4×8 map lies inside the 9×9 window
        let mk: Vec<f32> = Vec::try_from(t.mask.flatten(0, -1)).unwrap();
        assert!(mk.iter().all(|&v| v == 1.0));
        let bb: Vec<f32> = Vec::try_from(t.bbox.flatten(0, -1)).unwrap();
        // dx at cell (1, 0): cx − 0 = 3.0; w = 16/128·8 = 1
        assert_eq!(bb[8], 3.0);
        assert_eq!(bb[2 * 32 + 11], 1.0);
    }

    #[test]
    fn centernet_focal_matches_hand_computation() {
        // 1×1×1×2 map: a centre with logit 0 (p = .5) and a negative at y = .5, logit 0
        let hm = Tensor::from_slice(&[0.0f32, 0.0]).view([1, 1, 1, 2]);
        let t = Targets {
            heatmap: Tensor::from_slice(&[1.0f32, 0.5]).view([1, 1, 1, 2]),
            bbox: Tensor::zeros([1, 4, 1, 2], (Kind::Float, Device::Cpu)),
            mask: Tensor::zeros([1, 1, 1, 2], (Kind::Float, Device::Cpu)),
        };
        let bb = Tensor::zeros([1, 4, 1, 2], (Kind::Float, Device::Cpu));
        let l = paper_loss(&hm, &bb, &t, &Tensor::from(0.0f32), (1.0, 1.0, 1.0));
        let ln2 = 2f64.ln();
        // pos: (0.5)²·ln2 ; neg: (1−.5)^4 · 0.5² · ln2
        let want = 0.25 * ln2 + 0.0625 * 0.25 * ln2;
        assert!((l.heatmap.double_value(&[]) - want).abs() < 1e-6);
        assert_eq!(l.bbox.double_value(&[]), 0.0);
        // the matching loss is the same focal loss on (B, H, W) similarity logits
        let m = match_loss(&hm.squeeze_dim(1), &t);
        assert!((m.double_value(&[]) - want).abs() < 1e-6);
    }

    #[test]
    fn softmax_matching_loss_matches_hand_computation() {
        // 1×2×2 map, centre at cell (0, 1): loss = log(Σ e^s) − s[1]
        let t = build_targets(&[[40.0, 0.0, 56.0, 16.0]], (32, 64), (2, 2));
        let hm: Vec<f32> = Vec::try_from(t.heatmap.flatten(0, -1)).unwrap();
        assert_eq!(hm.iter().position(|&v| v == 1.0), Some(1));
        let s = Tensor::from_slice(&[0.5f32, 2.0, -1.0, 0.0]).reshape([1, 2, 2]);
        let want = ((0.5f64).exp() + 2f64.exp() + (-1f64).exp() + 1.0).ln() - 2.0;
        let got = match_loss_softmax(&s, &t).double_value(&[]);
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // two prompts, one without a centre on the map: the mean over the one that has
        let t2 = Targets {
            heatmap: Tensor::cat(&[t.heatmap.shallow_clone(), t.heatmap.zeros_like()], 0),
            bbox: Tensor::cat(&[t.bbox.shallow_clone(), t.bbox.zeros_like()], 0),
            mask: Tensor::cat(&[t.mask.shallow_clone(), t.mask.zeros_like()], 0),
        };
        let s2 = Tensor::cat(&[s.shallow_clone(), Tensor::from_slice(&[9.0f32, 0.0, 0.0, 0.0]).reshape([1, 2, 2])], 0);
        let got2 = match_loss_softmax(&s2, &t2).double_value(&[]);
        assert!((got2 - want).abs() < 1e-6, "{got2} vs {want}");
        // the loss falls as the centre's similarity rises above the others
        let better = Tensor::from_slice(&[0.5f32, 5.0, -1.0, 0.0]).reshape([1, 2, 2]);
        assert!(match_loss_softmax(&better, &t).double_value(&[]) < got);
    }
}
