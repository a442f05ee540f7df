//! Open-land uses of the layout: sports grounds (courts side by side with tennis or
//! basketball lines), parks (tree clusters, ponds) and farmland (striped fields).
//! Units: metres, world frame (x east, y north).

use super::geom::{circle, convex_hull, rect, P2};
use super::layout::{Block, Builder};
use super::world::{Layer, Material};
use rand::Rng;
use std::f64::consts::{FRAC_PI_2, PI};

/// Tennis court surfaces: clay, green and blue hard courts, grass, red acrylic.
const TENNIS_SURFACES: [[u8; 3]; 5] = [[180, 95, 60], [60, 120, 80], [50, 90, 140], [95, 140, 70], [150, 55, 50]];
/// Basketball / multi-sport court surfaces.
const COURT_SURFACES: [[u8; 3]; 5] = [[200, 130, 80], [60, 100, 150], [150, 60, 55], [70, 130, 95], [120, 120, 125]];

impl Builder {
    pub(super) fn sports(&mut self, b: Block) {
        let tennis = self.rng.gen_bool(0.6);
        let (cl, cw) = if tennis { (36.6, 18.3) } else { (32.0, 19.0) };
        // Surfaces are drawn per court, as in real multi-court grounds, so a prompt can tell
        // neighbouring courts apart as it can roofs. They come from the block's side
        // generator, seeded by the draw that picked the block's one surface before, so the
        // world's stream (every later position and size) is unchanged.
        let palette: &[[u8; 3]] = if tennis { &TENNIS_SURFACES } else { &COURT_SURFACES };
        let mut surfaces = super::layout::side_rng(b, self.rng.gen_range(0..3));
        let (nx, ny) =
            (((b[2] - b[0]) / (cw + 3.0)).floor() as usize, ((b[3] - b[1]) / (cl + 8.0)).floor().min(2.0) as usize);
        let base = [b[0], b[1], b[0] + nx as f64 * (cw + 3.0), b[1] + ny as f64 * (cl + 8.0)];
        let bc = ((base[0] + base[2]) / 2.0, (base[1] + base[3]) / 2.0);
        self.push(
            vec![rect(bc, base[2] - base[0] + 4.0, base[3] - base[1] + 4.0, 0.0)],
            Material::Concrete,
            Layer::Marking,
        );
        for i in 0..nx {
            for j in 0..ny {
                let c = (b[0] + (i as f64 + 0.5) * (cw + 3.0), b[1] + (j as f64 + 0.5) * (cl + 8.0));
                if !self.try_occupy(c, cw / 2.0, cl / 2.0) {
                    continue;
                }
                let fp = rect(c, cw, cl, 0.0);
                let surf = palette[surfaces.gen_range(0..palette.len())];
                self.push(vec![fp.clone()], Material::Paint { rgb: surf }, Layer::Object);
                if tennis {
                    self.tennis_lines(c);
                } else {
                    self.basketball_lines(c);
                }
                self.object("sports_court", vec![fp], 0.0);
            }
        }
        self.park([b[0], base[3] + 6.0, b[2], b[3]]);
    }

    /// Outline of a rectangle as an even-odd annulus, line width `lw`.
    fn outline(&mut self, c: P2, w: f64, l: f64, lw: f64, rgb: [u8; 3]) {
        let rings = vec![rect(c, w + lw, l + lw, 0.0), rect(c, w - lw, l - lw, 0.0)];
        self.push(rings, Material::Paint { rgb }, Layer::Detail);
    }

    fn tennis_lines(&mut self, c: P2) {
        let white = [240, 240, 235];
        self.outline(c, 10.97, 23.77, 0.1, white);
        self.outline(c, 8.23, 23.77, 0.1, white);
        self.outline(c, 8.23, 12.8, 0.1, white);
        self.push(vec![rect(c, 0.1, 12.8, 0.0)], Material::Paint { rgb: white }, Layer::Detail);
        self.push(vec![rect(c, 12.8, 0.25, 0.0)], Material::Paint { rgb: [40, 40, 40] }, Layer::Detail);
    }

    fn basketball_lines(&mut self, c: P2) {
        let white = [240, 240, 235];
        self.outline(c, 15.0, 28.0, 0.1, white);
        self.push(vec![rect(c, 15.0, 0.1, 0.0)], Material::Paint { rgb: white }, Layer::Detail);
        self.push(vec![circle(c, 1.9, 24), circle(c, 1.7, 24)], Material::Paint { rgb: white }, Layer::Detail);
        for s in [-1.0, 1.0] {
            self.outline((c.0, c.1 + s * (14.0 - 2.9)), 4.9, 5.8, 0.1, white);
            let ring = vec![circle((c.0, c.1 + s * 12.4), 6.85, 36), circle((c.0, c.1 + s * 12.4), 6.65, 36)];
            self.push(ring, Material::Paint { rgb: white }, Layer::Detail);
        }
    }

    pub(super) fn park(&mut self, b: Block) {
        if b[2] - b[0] < 30.0 || b[3] - b[1] < 30.0 {
            return;
        }
        let area = (b[2] - b[0]) * (b[3] - b[1]);
        if self.rng.gen_bool(0.3) {
            let r = self.rng.gen_range(12.0..25.0);
            // a pond only where it fits (blocks may be as small as 30 m)
            // (the +1 m of slack keeps the worlds of earlier versions unchanged)
            let fits = b[2] - b[0] > 2.0 * r - 1.0 && b[3] - b[1] > 2.0 * r - 1.0;
            let c = if fits {
                (self.rng.gen_range(b[0] + r..b[2] - r + 1.0), self.rng.gen_range(b[1] + r..b[3] - r + 1.0))
            } else {
                (f64::NAN, f64::NAN)
            };
            if fits && self.try_occupy(c, r, r) {
                self.push(vec![circle(c, r + 2.0, 32)], Material::Sand, Layer::Ground);
                self.push(vec![circle(c, r, 32)], Material::Water, Layer::Water);
            }
        }
        let n = (area / 2000.0).ceil() as usize;
        for _ in 0..n {
            let rr = self.rng.gen_range(8.0..18.0);
            let c = (self.rng.gen_range(b[0]..b[2]), self.rng.gen_range(b[1]..b[3]));
            if self.try_occupy(c, rr + 3.0, rr + 3.0) {
                self.tree_cluster(c, rr);
            }
        }
    }

    fn tree_cluster(&mut self, c: P2, rr: f64) {
        let h = self.rng.gen_range(8.0..15.0);
        let mut pts = Vec::new();
        for _ in 0..self.rng.gen_range(6..14) {
            let (a, d) = (self.rng.gen_range(0.0..2.0 * PI), rr * self.rng.gen_range(0.0f64..1.0).sqrt());
            let r = self.rng.gen_range(2.5..4.5f64).min(rr);
            let p = (c.0 + d * a.cos(), c.1 + d * a.sin());
            let hv = h * self.rng.gen_range(0.8..1.0);
            self.tree(p, r, hv);
            pts.extend(circle(p, r, 14));
        }
        self.object("tree_cluster", vec![convex_hull(&pts)], h);
    }

    pub(super) fn farmland(&mut self, b: Block) {
        let n = self.rng.gen_range(2..=3);
        let along_x = b[2] - b[0] >= b[3] - b[1];
        for k in 0..n {
            let f = |v0: f64, v1: f64, k: usize| v0 + (v1 - v0) * k as f64 / n as f64;
            let fb = if along_x {
                [f(b[0], b[2], k), b[1], f(b[0], b[2], k + 1), b[3]]
            } else {
                [b[0], f(b[1], b[3], k), b[2], f(b[1], b[3], k + 1)]
            };
            let c = ((fb[0] + fb[2]) / 2.0, (fb[1] + fb[3]) / 2.0);
            let angle = if self.rng.gen_bool(0.5) { 0.0 } else { FRAC_PI_2 as f32 } + self.rng.gen_range(-0.05..0.05);
            let m = Material::Field { angle, tone: self.rng.gen_range(0..4) };
            self.push(vec![rect(c, fb[2] - fb[0] - 2.0, fb[3] - fb[1] - 2.0, 0.0)], m, Layer::Ground);
        }
    }
}
