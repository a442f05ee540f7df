//! Anchor-free head (`head.*`, SMGEO_SPEC §5): conv3×3-BN-ReLU ×2, a 1×1 heatmap
//! (logits, bias −2) and a 1×1 box map (dx, dy, w, h in feature cells), and the decode.

use tch::{nn, Kind, Tensor};

use super::layers::{BatchNorm2d, Conv2d};

#[derive(Debug)]
pub struct Head {
    conv0: Conv2d,
    bn1: BatchNorm2d,
    conv3: Conv2d,
    bn4: BatchNorm2d,
    head_heatmap: Conv2d,
    head_bbox: Conv2d,
}

impl Head {
    pub fn new(vs: &nn::Path, c_in: i64, feat: i64) -> Self {
        let conv = vs / "conv";
        let head_heatmap = Conv2d::new(&(vs / "head_heatmap"), feat, 1, 1, 1, 0);
        tch::no_grad(|| {
            let _ = head_heatmap.bias.shallow_clone().fill_(-2.0);
        });
        Head {
            conv0: Conv2d::new(&(&conv / 0), c_in, feat, 3, 1, 1),
            bn1: BatchNorm2d::new(&(&conv / 1), feat),
            conv3: Conv2d::new(&(&conv / 3), feat, feat, 3, 1, 1),
            bn4: BatchNorm2d::new(&(&conv / 4), feat),
            head_heatmap,
            head_bbox: Conv2d::new(&(vs / "head_bbox"), feat, 4, 1, 1, 0),
        }
    }

    pub fn device(&self) -> tch::Device {
        self.conv0.weight.device()
    }

    /// `x`: (B, C, Hf, Wf) → (tower features, heatmap logits (B,1,Hf,Wf), box (B,4,Hf,Wf)).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> (Tensor, Tensor, Tensor) {
        let f = self.bn1.forward_t(&self.conv0.forward(x), train).relu();
        let f = self.bn4.forward_t(&self.conv3.forward(&f), train).relu();
        // the 1×1 outputs in float32 (cheap; the argmax decode needs the resolution)
        let hm = self.head_heatmap.forward_f32(&f);
        let bb = self.head_bbox.forward_f32(&f);
        (f, hm, bb)
    }
}

/// One decoded detection, in satellite-image pixels.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Detection {
    /// Row-major index of the argmax cell.
    pub index: i64,
    /// (y, x) of the argmax cell.
    pub cell: (i64, i64),
    /// sigmoid(heatmap) at the cell.
    pub score: f32,
    /// (dx, dy, w, h) at the cell, in cells.
    pub params: [f32; 4],
    /// Encoding-consistent box (x1, y1, x2, y2), not clipped (what the golden holds).
    pub box_raw: [f32; 4],
    /// The same box with |w|, |h| (ordered corners), clipped to the image: what users get.
    pub box_xyxy: [f32; 4],
}

/// Decode (spec §5.2, no +0.5): argmax cell (first maximum), cx = (x+dx)·sx,
/// cy = (y+dy)·sy, size = (w, h)·(sx, sy). `img_hw` is the satellite input size.
pub fn decode(heatmap: &Tensor, bbox: &Tensor, img_hw: (i64, i64)) -> Vec<Detection> {
    decode_with_prior(heatmap, bbox, img_hw, None)
}

/// [`decode`] with a log-prior over cells added to the heatmap logits before the argmax
/// (`log_prior` (B, 1, Hf, Wf), e.g. −d²/2σ² around where telemetry puts the click): the
/// cell maximising logit + log-prior — the heatmap's log-odds read as a log-likelihood —
/// is chosen. The score stays sigmoid(heatmap) at that cell, the model's own confidence.
pub fn decode_with_prior(
    heatmap: &Tensor,
    bbox: &Tensor,
    img_hw: (i64, i64),
    log_prior: Option<&Tensor>,
) -> Vec<Detection> {
    let (b, _, hf, wf) = heatmap.size4().expect("(B, 1, Hf, Wf)");
    let (sy, sx) = (img_hw.0 as f32 / hf as f32, img_hw.1 as f32 / wf as f32);
    let logits = heatmap.to_kind(Kind::Float).view([b, hf * wf]).to_device(tch::Device::Cpu);
    let scores = logits.sigmoid();
    let boxes = bbox.to_kind(Kind::Float).view([b, 4, hf * wf]).to_device(tch::Device::Cpu);
    let idx = match log_prior {
        Some(p) => (&logits + p.to_kind(Kind::Float).to_device(tch::Device::Cpu).view([b, hf * wf])).argmax(1, false),
        None => scores.argmax(1, false),
    };
    (0..b)
        .map(|i| {
            let k = idx.int64_value(&[i]);
            let (y, x) = (k / wf, k % wf);
            let p: Vec<f32> = (0..4).map(|c| boxes.double_value(&[i, c, k]) as f32).collect();
            let (cx, cy) = ((x as f32 + p[0]) * sx, (y as f32 + p[1]) * sy);
            let (w, h) = (p[2] * sx, p[3] * sy);
            let raw = [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0];
            let (iw, ih) = (img_hw.1 as f32, img_hw.0 as f32);
            // users get an ordered box: a negative predicted size is taken by magnitude
            let (aw, ah) = (w.abs() / 2.0, h.abs() / 2.0);
            let clip = [
                (cx - aw).clamp(0.0, iw),
                (cy - ah).clamp(0.0, ih),
                (cx + aw).clamp(0.0, iw),
                (cy + ah).clamp(0.0, ih),
            ];
            Detection {
                index: k,
                cell: (y, x),
                score: scores.double_value(&[i, k]) as f32,
                params: [p[0], p[1], p[2], p[3]],
                box_raw: raw,
                box_xyxy: clip,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prior_moves_the_argmax_but_not_the_score() {
        // 1 × 2×3 grid: the model's peak at (0, 2), a lower peak at (1, 0).
        let hm = Tensor::from_slice(&[-3.0f32, -2.0, 2.0, 1.0, -1.0, -4.0]).view([1, 1, 2, 3]);
        let bbox = Tensor::from_slice(&[0.5f32; 24]).view([1, 4, 2, 3]);
        let free = decode(&hm, &bbox, (64, 96));
        assert_eq!(free[0].cell, (0, 2));
        // A flat prior changes nothing; one favouring (1, 0) by more than the logit gap wins.
        let flat = decode_with_prior(
            &hm,
            &bbox,
            (64, 96),
            Some(&Tensor::zeros([1, 1, 2, 3], (Kind::Float, tch::Device::Cpu))),
        );
        assert_eq!(flat, free);
        let p = Tensor::from_slice(&[-5.0f32, -5.0, -1.5, 0.0, -5.0, -5.0]).view([1, 1, 2, 3]);
        let d = decode_with_prior(&hm, &bbox, (64, 96), Some(&p))[0];
        assert_eq!((d.cell, d.index), ((1, 0), 3));
        assert!((d.score - 1.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6, "score is sigmoid(1): {}", d.score);
        // cx = (0 + 0.5)·32, cy = (1 + 0.5)·32, size 0.5 cell.
        assert_eq!(d.box_raw, [8.0, 40.0, 24.0, 56.0]);
        // A prior not strong enough to beat a 1-logit gap leaves the peak.
        let weak = Tensor::from_slice(&[0.0f32, 0.0, -0.5, 0.0, 0.0, 0.0]).view([1, 1, 2, 3]);
        assert_eq!(decode_with_prior(&hm, &bbox, (64, 96), Some(&weak))[0].cell, (0, 2));
    }
}
