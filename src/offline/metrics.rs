//! Localisation metrics: pixel IoU (DetGeo's definition) and the release code's
//! cell-local IoU, with acc@0.25 / acc@0.5 / mIoU and breakdowns.
//!
//! - **Pixel IoU** (spec §8.2, the one to compare with DetGeo and other baselines): IoU
//!   of the decoded box (spec §5.2, not clipped) with the ground-truth box clamped to
//!   `[0, W−1] × [0, H−1]`, both `(x1, y1, x2, y2)` in satellite pixels, continuous
//!   areas (no +1). A box with x2 < x1 or y2 < y1 has zero area; any non-finite
//!   coordinate gives IoU 0, so a broken prediction counts as a miss.
//! - **Release cell-local IoU** (spec §8.1, `test_epoch` of the SMGeo release): IoU of
//!   the centre-size boxes `(dx, dy, w, h)` read at the predicted cell and
//!   `(cx − cxi, cy − cyi, w, h)` at the ground-truth cell, in cell units, cell
//!   positions ignored. It does not measure location (spec §10.7); it is reported only
//!   to compare with the release's published numbers and is labelled as such.
//! - acc@τ = fraction with IoU **> τ** (strict), τ ∈ {0.25, 0.5}; mIoU = mean IoU;
//!   accu_c = fraction whose predicted cell equals the ground-truth cell.
//! - Size buckets use the area of the clamped ground-truth box in satellite pixels²,
//!   with COCO's thresholds (32², 96² for images of about 640 px) scaled by
//!   1024/640 = 1.6 per side for 1024-px satellite images: **small < 51.2² = 2621.44**,
//!   **medium < 153.6² = 23592.96**, **large** otherwise. At stride 32 that is a box
//!   below ~1.6 cells square, below ~4.8 cells square, and larger. A model scored at a
//!   reduced input size (`input_scale`) uses them scaled to it
//!   ([`SizeThresholds::scaled`]), so a box keeps its bucket of the 1024-px chip.
//!
//! Map inputs are plain `f32` slices of one sample in channel-major (C, H, W) order:
//! a heatmap of H·W logits and a box map of 4·H·W values (dx, dy, w, h) in cell units.

use serde::Serialize;

pub use super::accumulate::{EvalAccumulator, EvalSample, EvalSummary, GroupSummary, MetricTriple, SizeThresholds};
use super::{OfflineError, Result};

/// Box `(x1, y1, x2, y2)`.
pub type BoxXyxy = [f64; 4];

/// IoU of two xyxy boxes (continuous areas; inverted or non-finite boxes give 0).
pub fn box_iou(a: &BoxXyxy, b: &BoxXyxy) -> f64 {
    if !a.iter().chain(b).all(|v| v.is_finite()) {
        return 0.0;
    }
    let area = |r: &BoxXyxy| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Clamp a box to `[0, W−1] × [0, H−1]`; `image_hw` is (height, width) in pixels.
pub fn clamp_box(b: &BoxXyxy, image_hw: (f64, f64)) -> BoxXyxy {
    let (h, w) = image_hw;
    let cx = |v: f64| v.clamp(0.0, (w - 1.0).max(0.0));
    let cy = |v: f64| v.clamp(0.0, (h - 1.0).max(0.0));
    [cx(b[0]), cy(b[1]), cx(b[2]), cy(b[3])]
}

/// DetGeo's pixel IoU: `pred` as is, `gt` clamped to the image (spec §8.2).
pub fn pixel_iou(pred: &BoxXyxy, gt: &BoxXyxy, image_hw: (f64, f64)) -> f64 {
    box_iou(pred, &clamp_box(gt, image_hw))
}

/// Centre-size `(cx, cy, w, h)` to xyxy.
pub fn cxcywh_to_xyxy(p: [f64; 4]) -> BoxXyxy {
    let [cx, cy, w, h] = p;
    [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]
}

/// Feature-map size of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MapDims {
    pub h: usize,
    pub w: usize,
}

impl MapDims {
    fn cells(&self) -> usize {
        self.h * self.w
    }

    fn check(&self, what: &'static str, data: &[f32], channels: usize) -> Result<()> {
        let expected = self.cells() * channels;
        if data.len() != expected || expected == 0 {
            return Err(OfflineError::Shape { what, expected, got: data.len() });
        }
        Ok(())
    }
}

fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// First index of the maximum; errors on NaN.
fn argmax_first(values: impl Iterator<Item = f32>, what: &'static str) -> Result<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, v) in values.enumerate() {
        if v.is_nan() {
            return Err(OfflineError::BadInput { what, reason: format!("NaN at flat index {i}") });
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i).ok_or(OfflineError::BadInput { what, reason: "empty map".into() })
}

/// Predicted cell `(y, x)`: argmax of sigmoid(logits) over the row-major flattened
/// map, first maximum on ties (sigmoid in f32, as torch, so saturated logits tie).
pub fn predicted_cell(heatmap_logits: &[f32], dims: MapDims) -> Result<(usize, usize)> {
    dims.check("heatmap", heatmap_logits, 1)?;
    let i = argmax_first(heatmap_logits.iter().map(|&v| sigmoid_f32(v)), "heatmap")?;
    Ok((i / dims.w, i % dims.w))
}

/// Ground-truth cell `(y, x)`: argmax of a target heatmap (values in [0, 1]).
pub fn target_cell(target_heatmap: &[f32], dims: MapDims) -> Result<(usize, usize)> {
    dims.check("target heatmap", target_heatmap, 1)?;
    let i = argmax_first(target_heatmap.iter().copied(), "target heatmap")?;
    Ok((i / dims.w, i % dims.w))
}

/// The four box channels `(dx, dy, w, h)` at a cell.
pub fn params_at(bbox: &[f32], dims: MapDims, cell: (usize, usize)) -> Result<[f32; 4]> {
    dims.check("box map", bbox, 4)?;
    let (y, x) = cell;
    if y >= dims.h || x >= dims.w {
        return Err(OfflineError::BadInput {
            what: "cell",
            reason: format!("({y}, {x}) outside a {}x{} map", dims.h, dims.w),
        });
    }
    let at = y * dims.w + x;
    Ok([0, 1, 2, 3].map(|c| bbox[c * dims.cells() + at]))
}

/// A decoded prediction (spec §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Decoded {
    /// Argmax cell (y, x).
    pub cell: (usize, usize),
    /// sigmoid(logit) at the cell.
    pub score: f32,
    /// (dx, dy, w, h) at the cell, cell units.
    pub params: [f32; 4],
    /// Box in image pixels, not clipped.
    pub box_xyxy: BoxXyxy,
}

/// Decode one sample consistently with the training targets (spec §5.2):
/// cx = (x + dx)·sₓ, cy = (y + dy)·s_y, width = w·sₓ, height = h·s_y, with the stride
/// s = image size / map size per axis; `image_hw` is (height, width) in pixels.
pub fn decode(heatmap: &[f32], bbox: &[f32], dims: MapDims, image_hw: (f64, f64)) -> Result<Decoded> {
    let cell = predicted_cell(heatmap, dims)?;
    let params = params_at(bbox, dims, cell)?;
    let sx = image_hw.1 / dims.w as f64;
    let sy = image_hw.0 / dims.h as f64;
    let [dx, dy, w, h] = params.map(f64::from);
    let box_xyxy = cxcywh_to_xyxy([(cell.1 as f64 + dx) * sx, (cell.0 as f64 + dy) * sy, w * sx, h * sy]);
    Ok(Decoded { cell, score: sigmoid_f32(heatmap[cell.0 * dims.w + cell.1]), params, box_xyxy })
}

/// The release's validation IoU for one sample, with the cells it used.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CellLocal {
    pub pred_cell: (usize, usize),
    pub gt_cell: (usize, usize),
    /// Release cell-local IoU (location-blind, spec §8.1 / §10.7).
    pub iou: f64,
}

/// The SMGeo release's cell-local IoU (spec §8.1): the box params at the predicted
/// cell vs the target params at the ground-truth cell, as centre-size boxes in cell
/// units with the cell positions ignored. Not a localisation metric.
pub fn release_cell_local_iou(
    pred_heatmap: &[f32],
    pred_bbox: &[f32],
    target_heatmap: &[f32],
    target_bbox: &[f32],
    dims: MapDims,
) -> Result<CellLocal> {
    let pred_cell = predicted_cell(pred_heatmap, dims)?;
    let gt_cell = target_cell(target_heatmap, dims)?;
    let p = params_at(pred_bbox, dims, pred_cell)?.map(f64::from);
    let g = params_at(target_bbox, dims, gt_cell)?.map(f64::from);
    Ok(CellLocal { pred_cell, gt_cell, iou: box_iou(&cxcywh_to_xyxy(p), &cxcywh_to_xyxy(g)) })
}

/// Split a batch slice of `batch` equal samples.
pub fn per_sample<'a>(data: &'a [f32], batch: usize, what: &'static str) -> Result<std::slice::ChunksExact<'a, f32>> {
    if batch == 0 || !data.len().is_multiple_of(batch) || data.is_empty() {
        return Err(OfflineError::Shape { what, expected: batch, got: data.len() });
    }
    Ok(data.chunks_exact(data.len() / batch))
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMG_1024: (f64, f64) = (1024.0, 1024.0);

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn box_iou_hand_cases() {
        // Two 10x10 squares overlapping in a 5x10 strip: 50 / 150.
        let iou = box_iou(&[0.0, 0.0, 10.0, 10.0], &[5.0, 0.0, 15.0, 10.0]);
        assert!(close(iou, 1.0 / 3.0, 1e-12));
        // Nested: 4 / 16.
        assert_eq!(box_iou(&[0.0, 0.0, 4.0, 4.0], &[1.0, 1.0, 3.0, 3.0]), 0.25);
        assert_eq!(box_iou(&[0.0, 0.0, 1.0, 1.0], &[2.0, 2.0, 3.0, 3.0]), 0.0);
        // Inverted, degenerate and non-finite boxes score 0.
        assert_eq!(box_iou(&[10.0, 10.0, 0.0, 0.0], &[10.0, 10.0, 0.0, 0.0]), 0.0);
        assert_eq!(box_iou(&[0.0, 0.0, 0.0, 0.0], &[0.0, 0.0, 0.0, 0.0]), 0.0);
        assert_eq!(box_iou(&[f64::NAN, 0.0, 1.0, 1.0], &[0.0, 0.0, 1.0, 1.0]), 0.0);
    }

    #[test]
    fn pixel_iou_clamps_only_the_ground_truth() {
        // gt [1000, 1000, 1100, 1100] clamps to [1000, 1000, 1023, 1023] (23x23).
        let gt = [1000.0, 1000.0, 1100.0, 1100.0];
        assert_eq!(pixel_iou(&[1000.0, 1000.0, 1023.0, 1023.0], &gt, IMG_1024), 1.0);
        // The prediction is not clamped: 529 / 10000.
        let iou = pixel_iou(&[1000.0, 1000.0, 1100.0, 1100.0], &gt, IMG_1024);
        assert!(close(iou, 529.0 / 10000.0, 1e-12));
        // Non-square image: y clamps to H-1 = 383, x to W-1 = 255.
        assert_eq!(clamp_box(&[-5.0, -5.0, 300.0, 400.0], (384.0, 256.0)), [0.0, 0.0, 255.0, 383.0]);
    }

    #[test]
    fn decode_and_cells_on_hand_made_maps() {
        let dims = MapDims { h: 2, w: 3 };
        // Saturated logits tie in f32 sigmoid: the first maximum wins (flat index 1).
        let heat = [0.0, 40.0, 50.0, -1.0, 0.0, 0.0];
        assert_eq!(predicted_cell(&heat, dims).unwrap(), (0, 1));
        let mut bbox = [0.0f32; 24];
        // Cell (0, 1): dx 0.5, dy 0.25, w 1, h 2 -> with stride 32:
        // cx = 1.5*32 = 48, cy = 0.25*32 = 8, size 32 x 64.
        for (c, v) in [0.5, 0.25, 1.0, 2.0].into_iter().enumerate() {
            bbox[c * 6 + 1] = v;
        }
        let d = decode(&heat, &bbox, dims, (64.0, 96.0)).unwrap();
        assert_eq!(d.box_xyxy, [32.0, -24.0, 64.0, 40.0]);
        assert_eq!(d.params, [0.5, 0.25, 1.0, 2.0]);
        assert!(decode(&heat[..5], &bbox, dims, (64.0, 96.0)).is_err());
        assert!(predicted_cell(&[f32::NAN; 6], dims).is_err());
        assert!(params_at(&bbox, dims, (2, 0)).is_err());
    }

    /// Tensors from the golden file (spec §11), as f32 / i32 values.
    struct Golden(Vec<u8>);

    impl Golden {
        fn load() -> Golden {
            let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/golden/tiny_io.safetensors");
            Golden(std::fs::read(p).expect("golden tiny_io.safetensors"))
        }

        fn raw(&self, name: &str) -> Vec<[u8; 4]> {
            let st = safetensors::SafeTensors::deserialize(&self.0).unwrap();
            let t = st.tensor(name).unwrap();
            t.data().chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]).collect()
        }

        fn f32s(&self, name: &str) -> Vec<f32> {
            self.raw(name).into_iter().map(f32::from_le_bytes).collect()
        }

        fn i32s(&self, name: &str) -> Vec<i32> {
            self.raw(name).into_iter().map(i32::from_le_bytes).collect()
        }
    }

    const DIMS: MapDims = MapDims { h: 12, w: 8 };
    const SAT_HW: (f64, f64) = (384.0, 256.0);

    fn golden_cell_local(g: &Golden, heat: &str, bbox: &str) -> Vec<CellLocal> {
        let (h, b) = (g.f32s(heat), g.f32s(bbox));
        let (th, tb) = (g.f32s("target.heatmap"), g.f32s("target.bbox"));
        let it = per_sample(&h, 2, "h")
            .unwrap()
            .zip(per_sample(&b, 2, "b").unwrap())
            .zip(per_sample(&th, 2, "th").unwrap().zip(per_sample(&tb, 2, "tb").unwrap()));
        it.map(|((h, b), (th, tb))| release_cell_local_iou(h, b, th, tb, DIMS).unwrap()).collect()
    }

    #[test]
    fn golden_decode_and_metrics_on_model_outputs() {
        let g = Golden::load();
        let (h, b) = (g.f32s("out.heatmap"), g.f32s("out.bbox"));
        let boxes = g.f32s("decode.box_xyxy");
        let cells = g.i32s("decode.cell_yx");
        let gt = g.f32s("target.box_xyxy");
        let pix = g.f32s("metric.pixel_iou");
        let gt_cells = g.i32s("metric.gt_cell_yx");
        let cl = golden_cell_local(&g, "out.heatmap", "out.bbox");
        let ref_cl = g.f32s("metric.reference_cell_local_iou");
        for (i, (h, b)) in per_sample(&h, 2, "h").unwrap().zip(per_sample(&b, 2, "b").unwrap()).enumerate() {
            let d = decode(h, b, DIMS, SAT_HW).unwrap();
            assert_eq!(d.cell, (cells[2 * i] as usize, cells[2 * i + 1] as usize));
            for k in 0..4 {
                assert!(close(d.box_xyxy[k], f64::from(boxes[4 * i + k]), 5e-3), "box {i}");
            }
            let gt_i: BoxXyxy = std::array::from_fn(|k| f64::from(gt[4 * i + k]));
            assert!(close(pixel_iou(&d.box_xyxy, &gt_i, SAT_HW), f64::from(pix[i]), 1e-5));
            assert_eq!(cl[i].gt_cell, (gt_cells[2 * i] as usize, gt_cells[2 * i + 1] as usize));
            assert!(close(cl[i].iou, f64::from(ref_cl[i]), 1e-5));
        }
    }

    #[test]
    fn golden_metric_demo_wrong_place_scores_under_release_metric_only() {
        let g = Golden::load();
        let cl = golden_cell_local(&g, "metric_demo.pred_heatmap", "metric_demo.pred_bbox");
        let ref_cl = g.f32s("metric_demo.reference_cell_local_iou");
        let ref_pix = g.f32s("metric_demo.pixel_iou");
        let demo_boxes = g.f32s("metric_demo.decode_box_xyxy");
        let gt = g.f32s("target.box_xyxy");
        let (h, b) = (g.f32s("metric_demo.pred_heatmap"), g.f32s("metric_demo.pred_bbox"));
        let mut acc = EvalAccumulator::new(SAT_HW);
        for (i, (h, b)) in per_sample(&h, 2, "h").unwrap().zip(per_sample(&b, 2, "b").unwrap()).enumerate() {
            let d = decode(h, b, DIMS, SAT_HW).unwrap();
            for k in 0..4 {
                assert!(close(d.box_xyxy[k], f64::from(demo_boxes[4 * i + k]), 5e-3));
            }
            assert!(close(cl[i].iou, f64::from(ref_cl[i]), 1e-5), "{i}: {}", cl[i].iou);
            let iou = acc.push(&EvalSample {
                pred_box: d.box_xyxy,
                gt_box: std::array::from_fn(|k| f64::from(gt[4 * i + k])),
                category: "demo",
                pred_cell: d.cell,
                gt_cell: cl[i].gt_cell,
                cell_local_iou: Some(cl[i].iou),
                tags: &[],
            });
            assert!(close(iou, f64::from(ref_pix[i]), 1e-5), "{i}: {iou}");
        }
        // Sample 1: peak far from the target, right size and offset.
        assert!(cl[1].iou > 0.75 && cl[1].pred_cell != cl[1].gt_cell);
        let s = acc.summary().overall;
        let check = |t: &MetricTriple, name: &str| {
            let want = g.f32s(name); // acc50, acc25, miou
            let got = [t.acc_at_0_5, t.acc_at_0_25, t.miou];
            for k in 0..3 {
                assert!(close(got[k], f64::from(want[k]), 1e-5), "{name}: {got:?} vs {want:?}");
            }
        };
        check(&s.pixel_iou, "metric_demo.pixel_acc50_acc25_miou");
        check(s.release_cell_local_iou.as_ref().unwrap(), "metric_demo.reference_acc50_acc25_miou");
        assert_eq!(s.pixel_iou.acc_at_0_5, 0.5);
        assert_eq!(s.accu_c, 0.5);
    }
}
