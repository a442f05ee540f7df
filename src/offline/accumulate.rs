//! Accumulation of per-sample localisation results into acc@0.25 / acc@0.5 / mIoU,
//! overall and by category and box size, as a serde-serialisable [`EvalSummary`].
//! The metric definitions and the size buckets are documented in [`super::metrics`].

use std::collections::BTreeMap;

use serde::Serialize;

use super::metrics::{box_iou, clamp_box, BoxXyxy};
use super::{OfflineError, Result};

/// Size thresholds on the clamped ground-truth box area, in pixels².
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SizeThresholds {
    /// Areas below this are small.
    pub small_max_area: f64,
    /// Areas below this (and not small) are medium; the rest large.
    pub medium_max_area: f64,
}

impl Default for SizeThresholds {
    /// COCO's 32² / 96² scaled by 1.6 per side for 1024-px images (module docs).
    fn default() -> Self {
        SizeThresholds { small_max_area: 51.2 * 51.2, medium_max_area: 153.6 * 153.6 }
    }
}

impl SizeThresholds {
    /// The thresholds for the same objects in images resized by `f` per side (areas ×
    /// f²): a model at `input_scale` 0.5 is scored on 512-px chips, and its size buckets
    /// must hold the boxes that the 1024-px chips' buckets hold.
    pub fn scaled(self, f: f64) -> Self {
        SizeThresholds { small_max_area: self.small_max_area * f * f, medium_max_area: self.medium_max_area * f * f }
    }

    /// Bucket name (`small`, `medium`, `large`) of an area in pixels².
    pub fn bucket(&self, area: f64) -> &'static str {
        if area < self.small_max_area {
            "small"
        } else if area < self.medium_max_area {
            "medium"
        } else {
            "large"
        }
    }
}

/// One evaluated sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalSample<'a> {
    /// Decoded prediction, image pixels.
    pub pred_box: BoxXyxy,
    /// Ground-truth box, image pixels (clamped by the accumulator).
    pub gt_box: BoxXyxy,
    /// CVOGL record field 7.
    pub category: &'a str,
    /// Predicted and ground-truth cells (y, x).
    pub pred_cell: (usize, usize),
    pub gt_cell: (usize, usize),
    /// Release cell-local IoU if computed ([`super::metrics::release_cell_local_iou`]).
    pub cell_local_iou: Option<f64>,
    /// Further breakdowns this sample belongs to, as (breakdown, bucket): e.g. the view
    /// geometry of synthetic data (`("chip_over_query", "2–4")`). Empty for none.
    pub tags: &'a [(&'static str, String)],
}

/// acc@0.25, acc@0.5 (IoU > τ) and mean IoU over `count` samples (all 0 when empty).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MetricTriple {
    pub count: usize,
    pub acc_at_0_25: f64,
    pub acc_at_0_5: f64,
    pub miou: f64,
}

/// Metrics of one group of samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupSummary {
    pub count: usize,
    /// DetGeo-style pixel IoU metrics: the ones to compare across methods.
    pub pixel_iou: MetricTriple,
    /// The SMGeo release's location-blind cell-local IoU metrics; `None` if no sample
    /// carried one. Comparable only with the release's own published numbers.
    pub release_cell_local_iou: Option<MetricTriple>,
    /// Fraction of samples whose predicted cell is the ground-truth cell.
    pub accu_c: f64,
}

/// Serializable evaluation result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalSummary {
    /// Image (height, width) used to clamp ground-truth boxes.
    pub image_hw: (f64, f64),
    pub size_thresholds: SizeThresholds,
    pub overall: GroupSummary,
    pub by_category: BTreeMap<String, GroupSummary>,
    /// Keys `small`, `medium`, `large` (only those with samples).
    pub by_size: BTreeMap<String, GroupSummary>,
    /// Breakdowns given by the samples' tags ([`EvalSample::tags`]): breakdown → bucket →
    /// metrics. Absent when no sample carried a tag.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_view: BTreeMap<String, BTreeMap<String, GroupSummary>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct TripleSums {
    n: usize,
    sum: f64,
    over_25: usize,
    over_50: usize,
}

impl TripleSums {
    fn add(&mut self, iou: f64) {
        self.n += 1;
        self.sum += iou;
        self.over_25 += usize::from(iou > 0.25);
        self.over_50 += usize::from(iou > 0.5);
    }

    fn merge(&mut self, o: &TripleSums) {
        self.n += o.n;
        self.sum += o.sum;
        self.over_25 += o.over_25;
        self.over_50 += o.over_50;
    }

    fn summary(&self) -> MetricTriple {
        let d = self.n.max(1) as f64;
        MetricTriple {
            count: self.n,
            acc_at_0_25: self.over_25 as f64 / d,
            acc_at_0_5: self.over_50 as f64 / d,
            miou: self.sum / d,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct GroupSums {
    pixel: TripleSums,
    cell_local: TripleSums,
    same_cell: usize,
}

impl GroupSums {
    fn add(&mut self, pixel: f64, cell_local: Option<f64>, same_cell: bool) {
        self.pixel.add(pixel);
        if let Some(c) = cell_local {
            self.cell_local.add(if c.is_finite() { c } else { 0.0 });
        }
        self.same_cell += usize::from(same_cell);
    }

    fn merge(&mut self, o: &GroupSums) {
        self.pixel.merge(&o.pixel);
        self.cell_local.merge(&o.cell_local);
        self.same_cell += o.same_cell;
    }

    fn summary(&self) -> GroupSummary {
        GroupSummary {
            count: self.pixel.n,
            pixel_iou: self.pixel.summary(),
            release_cell_local_iou: (self.cell_local.n > 0).then(|| self.cell_local.summary()),
            accu_c: self.same_cell as f64 / self.pixel.n.max(1) as f64,
        }
    }
}

/// Accumulates per-sample results into an [`EvalSummary`].
#[derive(Debug, Clone)]
pub struct EvalAccumulator {
    image_hw: (f64, f64),
    thresholds: SizeThresholds,
    overall: GroupSums,
    by_category: BTreeMap<String, GroupSums>,
    by_size: BTreeMap<&'static str, GroupSums>,
    by_tag: BTreeMap<&'static str, BTreeMap<String, GroupSums>>,
}

impl EvalAccumulator {
    /// Accumulator for images of `image_hw` = (height, width) pixels, default size
    /// thresholds. CVOGL satellite images: (1024.0, 1024.0).
    pub fn new(image_hw: (f64, f64)) -> Self {
        Self::with_thresholds(image_hw, SizeThresholds::default())
    }

    pub fn with_thresholds(image_hw: (f64, f64), thresholds: SizeThresholds) -> Self {
        EvalAccumulator {
            image_hw,
            thresholds,
            overall: GroupSums::default(),
            by_category: BTreeMap::new(),
            by_size: BTreeMap::new(),
            by_tag: BTreeMap::new(),
        }
    }

    /// Add one sample; returns its pixel IoU.
    pub fn push(&mut self, s: &EvalSample<'_>) -> f64 {
        let gt = clamp_box(&s.gt_box, self.image_hw);
        let iou = box_iou(&s.pred_box, &gt);
        let same = s.pred_cell == s.gt_cell;
        let area = (gt[2] - gt[0]).max(0.0) * (gt[3] - gt[1]).max(0.0);
        self.overall.add(iou, s.cell_local_iou, same);
        self.by_category.entry(s.category.to_owned()).or_default().add(iou, s.cell_local_iou, same);
        self.by_size.entry(self.thresholds.bucket(area)).or_default().add(iou, s.cell_local_iou, same);
        for (k, v) in s.tags {
            self.by_tag.entry(k).or_default().entry(v.clone()).or_default().add(iou, s.cell_local_iou, same);
        }
        iou
    }

    /// Fold in another accumulator (e.g. from another worker). Image size and
    /// thresholds must match, else an error.
    pub fn merge(&mut self, other: &EvalAccumulator) -> Result<()> {
        if other.image_hw != self.image_hw || other.thresholds != self.thresholds {
            return Err(OfflineError::BadInput {
                what: "accumulator merge",
                reason: "image size or size thresholds differ".into(),
            });
        }
        self.overall.merge(&other.overall);
        for (k, v) in &other.by_category {
            self.by_category.entry(k.clone()).or_default().merge(v);
        }
        for (k, v) in &other.by_size {
            self.by_size.entry(k).or_default().merge(v);
        }
        for (k, m) in &other.by_tag {
            let mine = self.by_tag.entry(k).or_default();
            for (b, v) in m {
                mine.entry(b.clone()).or_default().merge(v);
            }
        }
        Ok(())
    }

    /// Number of samples pushed.
    pub fn count(&self) -> usize {
        self.overall.pixel.n
    }

    pub fn summary(&self) -> EvalSummary {
        EvalSummary {
            image_hw: self.image_hw,
            size_thresholds: self.thresholds,
            overall: self.overall.summary(),
            by_category: self.by_category.iter().map(|(k, v)| (k.clone(), v.summary())).collect(),
            by_size: self.by_size.iter().map(|(k, v)| ((*k).to_owned(), v.summary())).collect(),
            by_view: self
                .by_tag
                .iter()
                .map(|(k, m)| ((*k).to_owned(), m.iter().map(|(b, v)| (b.clone(), v.summary())).collect()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMG_1024: (f64, f64) = (1024.0, 1024.0);

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn thresholds_are_strict() {
        let mut acc = EvalAccumulator::new(IMG_1024);
        // IoU exactly 0.5 (100x100 vs 100x50 inside it) and exactly 0.25.
        let gt = [0.0, 0.0, 100.0, 100.0];
        for pred in [[0.0, 0.0, 100.0, 50.0], [0.0, 0.0, 50.0, 50.0]] {
            acc.push(&EvalSample {
                pred_box: pred,
                gt_box: gt,
                category: "c",
                pred_cell: (0, 0),
                gt_cell: (0, 0),
                cell_local_iou: None,
                tags: &[],
            });
        }
        let s = acc.summary().overall;
        assert_eq!((s.pixel_iou.acc_at_0_5, s.pixel_iou.acc_at_0_25), (0.0, 0.5));
        assert!(close(s.pixel_iou.miou, 0.375, 1e-12));
        assert_eq!(s.release_cell_local_iou, None);
        assert_eq!(s.accu_c, 1.0);
    }

    #[test]
    fn breakdowns_by_category_and_size() {
        let mut acc = EvalAccumulator::new(IMG_1024);
        let (low, high) = ([("pitch", "low".to_string())], [("pitch", "high".to_string())]);
        let tags = |cat: &str| if cat == "court" { &high[..] } else { &low[..] };
        let sample = |gt: BoxXyxy, pred: BoxXyxy, cat| EvalSample {
            pred_box: pred,
            gt_box: gt,
            category: cat,
            pred_cell: (1, 1),
            gt_cell: (1, 2),
            cell_local_iou: Some(0.9),
            tags: tags(cat),
        };
        let small = [0.0, 0.0, 50.0, 50.0]; // 2500 < 2621.44
        let medium = [0.0, 0.0, 52.0, 52.0]; // 2704
        let large = [0.0, 0.0, 160.0, 150.0]; // 24000 >= 23592.96
        acc.push(&sample(small, small, "roof"));
        acc.push(&sample(medium, [500.0, 500.0, 552.0, 552.0], "roof"));
        acc.push(&sample(large, large, "court"));
        let s = acc.summary();
        assert_eq!(s.overall.count, 3);
        assert!(close(s.overall.pixel_iou.miou, 2.0 / 3.0, 1e-12));
        assert_eq!(s.overall.accu_c, 0.0);
        let cl = s.overall.release_cell_local_iou.unwrap();
        assert_eq!((cl.count, cl.acc_at_0_5), (3, 1.0));
        assert_eq!(s.by_category["roof"].pixel_iou.acc_at_0_5, 0.5);
        assert_eq!(s.by_category["court"].count, 1);
        let sizes: Vec<(&str, usize, f64)> =
            s.by_size.iter().map(|(k, v)| (k.as_str(), v.count, v.pixel_iou.miou)).collect();
        assert_eq!(sizes, [("large", 1, 1.0), ("medium", 1, 0.0), ("small", 1, 1.0)]);
        // Tags group the samples again: the two roofs (IoU 1 and 0) are "low", the court "high".
        let pitch: Vec<(&str, usize, f64)> =
            s.by_view["pitch"].iter().map(|(k, v)| (k.as_str(), v.count, v.pixel_iou.miou)).collect();
        assert_eq!(pitch, [("high", 1, 1.0), ("low", 2, 0.5)]);
        assert_eq!(s.by_view.len(), 1);
        // Merging equals pushing everything into one accumulator.
        let mut a = EvalAccumulator::new(IMG_1024);
        a.push(&sample(small, small, "roof"));
        let mut b = EvalAccumulator::new(IMG_1024);
        b.push(&sample(medium, [500.0, 500.0, 552.0, 552.0], "roof"));
        b.push(&sample(large, large, "court"));
        a.merge(&b).unwrap();
        assert_eq!(a.summary(), s);
        assert!(a.merge(&EvalAccumulator::new((512.0, 512.0))).is_err());
        // The same boxes on a half-size image, with the thresholds scaled to it, land in
        // the same buckets.
        let half = |b: BoxXyxy| b.map(|v| v / 2.0);
        let mut h = EvalAccumulator::with_thresholds((512.0, 512.0), SizeThresholds::default().scaled(0.5));
        for (gt, pred, cat) in
            [(small, small, "roof"), (medium, [500.0, 500.0, 552.0, 552.0], "roof"), (large, large, "court")]
        {
            h.push(&sample(half(gt), half(pred), cat));
        }
        let hs = h.summary();
        let half_sizes: Vec<(&str, usize, f64)> =
            hs.by_size.iter().map(|(k, v)| (k.as_str(), v.count, v.pixel_iou.miou)).collect();
        assert_eq!(half_sizes, sizes);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["by_size"]["small"]["pixel_iou"]["miou"], 1.0);
        assert_eq!(json["overall"]["release_cell_local_iou"]["count"], 3);
    }
}
