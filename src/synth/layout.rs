//! Procedural layout of a [`super::world::World`]: river, road grid with a curved road,
//! bridges, roundabouts, and city blocks of one land use each (residential rows, apartment
//! courtyards, retail + parking, industrial tank farms, sports courts, parks, farmland).
//!
//! Placement uses bounding circles checked against the river, the roads, roundabouts and the
//! objects already placed in the current block. All units are metres.

use super::geom::{bezier, circle, dist_point_segment, local_to_world, polyline_quads, rect, P2};
use super::world::{Layer, Material, Object, Shape};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::f64::consts::{FRAC_PI_2, PI};

/// Pitched-roof colours, drawn per house: tiles, slate, metal. Instances of one category
/// differ in colour as they do in real imagery, so a prompt can tell neighbours apart.
const ROOFS: [[u8; 3]; 12] = [
    [150, 70, 55],
    [120, 60, 50],
    [95, 95, 100],
    [70, 72, 80],
    [165, 110, 75],
    [110, 115, 95],
    [60, 85, 110],
    [175, 160, 140],
    [185, 80, 60],
    [45, 60, 90],
    [70, 105, 70],
    [130, 45, 40],
];
/// Flat-roof colours (membrane, gravel, green roofs, painted metal), drawn per building.
const FLAT_ROOFS: [[u8; 3]; 9] = [
    [200, 200, 195],
    [170, 170, 168],
    [215, 210, 200],
    [140, 145, 150],
    [185, 180, 165],
    [95, 125, 90],
    [150, 90, 75],
    [90, 110, 145],
    [75, 75, 80],
];
/// Industrial metal roofs, drawn per warehouse.
const METAL_ROOFS: [[u8; 3]; 5] = [[120, 135, 150], [150, 150, 145], [95, 110, 125], [160, 95, 70], [90, 125, 100]];
/// Storage-tank tops, drawn per tank: white and grey paint, aluminium, and the green,
/// rust, blue and sand coats of real tank farms, so neighbours in a row can differ.
const TANK_TOPS: [[u8; 3]; 8] = [
    [225, 225, 220],
    [180, 190, 175],
    [150, 160, 170],
    [95, 120, 90],
    [150, 90, 60],
    [80, 105, 140],
    [200, 185, 140],
    [120, 120, 115],
];
const CARS: [[u8; 3]; 7] =
    [[235, 235, 235], [25, 25, 28], [160, 162, 168], [150, 30, 30], [40, 60, 130], [90, 90, 95], [200, 190, 170]];

/// Block bounds [min_x, min_y, max_x, max_y] in metres.
pub(super) type Block = [f64; 4];

/// Stateful generator; see the module docs.
pub(super) struct Builder {
    pub(super) rng: ChaCha8Rng,
    extent: (f64, f64),
    shapes: Vec<Shape>,
    objects: Vec<Object>,
    roads: Vec<(Vec<P2>, f64)>,
    river: Vec<P2>,
    river_hw: f64,
    roundabouts: Vec<(P2, f64)>,
    occ: Vec<super::geom::BBox>,
}

impl Builder {
    pub(super) fn new(seed: u64, extent: (f64, f64)) -> Self {
        Builder {
            rng: ChaCha8Rng::seed_from_u64(seed),
            extent,
            shapes: Vec::new(),
            objects: Vec::new(),
            roads: Vec::new(),
            river: Vec::new(),
            river_hw: 0.0,
            roundabouts: Vec::new(),
            occ: Vec::new(),
        }
    }

    pub(super) fn build(mut self) -> (Vec<Shape>, Vec<Object>) {
        self.river();
        let (xs, ys) = self.road_grid();
        self.curved_road();
        self.roundabouts(&xs, &ys);
        self.road_shapes();
        self.bridges();
        self.blocks(&xs, &ys);
        (self.shapes, self.objects)
    }

    pub(super) fn push(&mut self, rings: Vec<Vec<P2>>, material: Material, layer: Layer) {
        self.shapes.push(Shape { rings, material, layer, bbox: [0.0; 4] });
    }

    /// Register a target object; shapes are added by the caller. Returns its id.
    pub(super) fn object(&mut self, category: &str, footprint: Vec<Vec<P2>>, height_m: f64) -> u64 {
        let id = self.objects.len() as u64 + 1;
        if height_m > 0.0 {
            self.push(footprint.clone(), Material::Caster { height: height_m as f32 }, Layer::Shadow);
        }
        self.objects.push(Object { id, category: category.to_string(), footprint, height_m, bbox: [0.0; 4] });
        id
    }

    /// True when the axis-aligned box `c ± (hx, hy)` lies inside the extent and avoids the
    /// river, roads (boundary sampled every ≤ 4 m), roundabouts and the block's occupied boxes.
    fn free(&self, c: P2, hx: f64, hy: f64) -> bool {
        let b = [c.0 - hx, c.1 - hy, c.0 + hx, c.1 + hy];
        if b[0] < 0.0 || b[1] < 0.0 || b[2] > self.extent.0 || b[3] > self.extent.1 {
            return false;
        }
        if self.occ.iter().any(|o| super::geom::bbox_overlaps(o, &b)) {
            return false;
        }
        let near_rb = |&(p, r): &(P2, f64)| (p.0 - p.0.clamp(b[0], b[2])).hypot(p.1 - p.1.clamp(b[1], b[3])) < r + 2.0;
        if self.roundabouts.iter().any(near_rb) {
            return false;
        }
        let (nx, ny) = ((2.0 * hx / 4.0).ceil().max(1.0) as usize, (2.0 * hy / 4.0).ceil().max(1.0) as usize);
        let mut samples = Vec::with_capacity(2 * (nx + ny) + 1);
        samples.push(c);
        for k in 0..=nx {
            let x = b[0] + (b[2] - b[0]) * k as f64 / nx as f64;
            samples.extend([(x, b[1]), (x, b[3])]);
        }
        for k in 0..=ny {
            let y = b[1] + (b[3] - b[1]) * k as f64 / ny as f64;
            samples.extend([(b[0], y), (b[2], y)]);
        }
        let near_line = |line: &[P2], d: f64| {
            line.windows(2).any(|w| samples.iter().any(|&p| dist_point_segment(p, w[0], w[1]) < d))
        };
        !near_line(&self.river, self.river_hw + 4.0) && !self.roads.iter().any(|(l, hw)| near_line(l, hw + 1.5))
    }

    /// Occupy the box `c ± (hx, hy)` if it is free.
    pub(super) fn try_occupy(&mut self, c: P2, hx: f64, hy: f64) -> bool {
        let ok = self.free(c, hx, hy);
        if ok {
            self.occ.push([c.0 - hx, c.1 - hy, c.0 + hx, c.1 + hy]);
        }
        ok
    }

    fn river(&mut self) {
        let vertical = self.rng.gen_bool(0.5);
        let (len, across) = if vertical { (self.extent.1, self.extent.0) } else { self.extent };
        let base = self.rng.gen_range(0.3..0.7) * across;
        let amp = self.rng.gen_range(15.0..70.0);
        let lambda = self.rng.gen_range(400.0..900.0);
        let phase = self.rng.gen_range(0.0..2.0 * PI);
        self.river_hw = self.rng.gen_range(14.0..28.0);
        let n = ((len + 100.0) / 15.0) as usize;
        self.river = (0..=n)
            .map(|i| {
                let s = -50.0 + i as f64 * 15.0;
                let t = base + amp * (2.0 * PI * s / lambda + phase).sin();
                if vertical {
                    (t, s)
                } else {
                    (s, t)
                }
            })
            .collect();
        let banks = polyline_quads(&self.river, self.river_hw + 3.5);
        for q in banks {
            self.push(vec![q], Material::Sand, Layer::Ground);
        }
        for q in polyline_quads(&self.river, self.river_hw) {
            self.push(vec![q], Material::Water, Layer::Water);
        }
    }

    fn grid_positions(&mut self, len: f64) -> Vec<f64> {
        let mut v = Vec::new();
        let mut p = self.rng.gen_range(60.0..140.0);
        while p < len - 40.0 {
            v.push(p);
            p += self.rng.gen_range(170.0..270.0);
        }
        v
    }

    fn road_grid(&mut self) -> (Vec<f64>, Vec<f64>) {
        let (w, h) = self.extent;
        let xs = self.grid_positions(w);
        let ys = self.grid_positions(h);
        for (i, &x) in xs.iter().enumerate() {
            let hw = if i % 2 == 0 { self.rng.gen_range(6.0..7.5) } else { self.rng.gen_range(3.5..4.5) };
            self.roads.push((vec![(x, -20.0), (x, h + 20.0)], hw));
        }
        for (j, &y) in ys.iter().enumerate() {
            let hw = if j % 2 == 1 { self.rng.gen_range(6.0..7.5) } else { self.rng.gen_range(3.5..4.5) };
            self.roads.push((vec![(-20.0, y), (w + 20.0, y)], hw));
        }
        (xs, ys)
    }

    fn curved_road(&mut self) {
        let (w, h) = self.extent;
        let p0 = (-20.0, self.rng.gen_range(0.2..0.8) * h);
        let p3 = (self.rng.gen_range(0.2..0.8) * w, h + 20.0);
        let p1 = (self.rng.gen_range(0.3..0.6) * w, p0.1 + self.rng.gen_range(-0.2..0.2) * h);
        let p2 = (p3.0 + self.rng.gen_range(-0.2..0.2) * w, self.rng.gen_range(0.4..0.7) * h);
        self.roads.push((bezier(p0, p1, p2, p3, 48), 4.5));
    }

    fn roundabouts(&mut self, xs: &[f64], ys: &[f64]) {
        for &x in xs {
            for &y in ys {
                let c = (x, y);
                let r = self.rng.gen_range(15.0..22.0);
                let wet = self.river.windows(2).any(|s| dist_point_segment(c, s[0], s[1]) < self.river_hw + r + 10.0);
                if self.rng.gen_bool(0.3) && !wet {
                    self.roundabouts.push((c, r));
                }
            }
        }
        let rbs = self.roundabouts.clone();
        for (c, r) in rbs {
            self.push(vec![circle(c, r, 40)], Material::Asphalt, Layer::Road);
            let ring = vec![circle(c, r - 1.2, 40), circle(c, r - 1.5, 40)];
            self.push(ring, Material::Marking, Layer::Detail);
            self.push(vec![circle(c, r * 0.5 + 0.8, 32)], Material::Concrete, Layer::Detail);
            self.push(vec![circle(c, r * 0.5, 32)], Material::Grass, Layer::Detail);
            self.object("roundabout", vec![circle(c, r, 40)], 0.0);
        }
    }

    /// Asphalt quads plus lane markings cut into 3 m pieces, skipped inside intersections.
    fn road_shapes(&mut self) {
        let roads = self.roads.clone();
        for (k, (line, hw)) in roads.iter().enumerate() {
            for q in polyline_quads(line, *hw) {
                self.push(vec![q], Material::Asphalt, Layer::Road);
            }
            let lanes: Vec<(f64, f64)> =
                if *hw > 5.0 { vec![(0.0, 0.0), (hw / 2.0, 6.0), (-hw / 2.0, 6.0)] } else { vec![(0.0, 6.0)] };
            for (off, gap) in lanes {
                for (c, ang) in pieces(line, off, 3.0, gap) {
                    let crossing = roads.iter().enumerate().any(|(m, (l2, hw2))| {
                        m != k && l2.windows(2).any(|s| dist_point_segment(c, s[0], s[1]) < hw2 + 1.0)
                    });
                    let in_rb = self.roundabouts.iter().any(|&(p, r)| (p.0 - c.0).hypot(p.1 - c.1) < r + 1.0);
                    if !crossing && !in_rb {
                        self.push(vec![rect(c, 3.0, 0.3, ang)], Material::Marking, Layer::Marking);
                    }
                }
            }
        }
    }

    fn bridges(&mut self) {
        let roads = self.roads.clone();
        let river = self.river.clone();
        for (line, hw) in roads {
            for s in line.windows(2) {
                for r in river.windows(2) {
                    let Some(p) = seg_intersection(s[0], s[1], r[0], r[1]) else { continue };
                    let a_road = (s[1].1 - s[0].1).atan2(s[1].0 - s[0].0);
                    let a_riv = (r[1].1 - r[0].1).atan2(r[1].0 - r[0].0);
                    let sin = (a_road - a_riv).sin().abs().max(0.3);
                    let len = (2.0 * self.river_hw / sin + 14.0).min(160.0);
                    let fp = rect(p, len, 2.0 * hw + 2.0, a_road);
                    self.push(vec![fp.clone()], Material::Asphalt, Layer::Object);
                    for side in [-1.0, 1.0] {
                        let (nx, ny) = (-a_road.sin() * side * (hw + 0.55), a_road.cos() * side * (hw + 0.55));
                        let c = (p.0 + nx, p.1 + ny);
                        self.push(
                            vec![rect(c, len, 0.9, a_road)],
                            Material::Paint { rgb: [196, 194, 186] },
                            Layer::Detail,
                        );
                    }
                    for (c, ang) in
                        pieces(&[local_pt(p, a_road, -len / 2.0), local_pt(p, a_road, len / 2.0)], 0.0, 3.0, 6.0)
                    {
                        self.push(vec![rect(c, 3.0, 0.3, ang)], Material::Marking, Layer::Detail);
                    }
                    self.object("bridge", vec![fp], 6.0);
                }
            }
        }
    }

    fn blocks(&mut self, xs: &[f64], ys: &[f64]) {
        let mut bx = vec![0.0];
        bx.extend_from_slice(xs);
        bx.push(self.extent.0);
        let mut by = vec![0.0];
        by.extend_from_slice(ys);
        by.push(self.extent.1);
        for i in 0..bx.len() - 1 {
            for j in 0..by.len() - 1 {
                let b = [bx[i] + 14.0, by[j] + 14.0, bx[i + 1] - 14.0, by[j + 1] - 14.0];
                if b[2] - b[0] < 40.0 || b[3] - b[1] < 40.0 {
                    continue;
                }
                self.occ.clear();
                match self.rng.gen_range(0..100) {
                    0..=29 => self.residential(b),
                    30..=39 => self.apartments(b),
                    40..=54 => self.retail(b),
                    55..=66 => self.industrial(b),
                    67..=77 => self.sports(b),
                    78..=89 => self.park(b),
                    _ => self.farmland(b),
                }
            }
        }
    }

    fn residential(&mut self, b: Block) {
        let along_x = b[2] - b[0] >= b[3] - b[1];
        let (long0, long1, s0, s1) = if along_x { (b[0], b[2], b[1], b[3]) } else { (b[1], b[3], b[0], b[2]) };
        let angle = if along_x { 0.0 } else { FRAC_PI_2 } + self.rng.gen_range(-0.03..0.03);
        let rows = ((s1 - s0) / 34.0).floor().max(1.0) as usize;
        let row_h = (s1 - s0) / rows as f64;
        for row in 0..rows {
            let (w, d) = (self.rng.gen_range(9.0..13.0), self.rng.gen_range(8.0..10.5));
            let step = w + self.rng.gen_range(5.0..9.0);
            let across = s0 + (row as f64 + 0.5) * row_h;
            let garden = if row % 2 == 0 { 1.0 } else { -1.0 };
            let mut t = long0 + step / 2.0;
            while t < long1 - step / 2.0 {
                let c = if along_x { (t, across) } else { (across, t) };
                let roof = ROOFS[self.rng.gen_range(0..ROOFS.len())];
                self.house(c, w, d, angle, roof, garden);
                t += step;
            }
        }
    }

    fn house(&mut self, c: P2, w: f64, d: f64, angle: f64, roof: [u8; 3], garden: f64) {
        let (hx, hy) =
            if angle.cos().abs() > 0.5 { (w / 2.0 + 0.5, d / 2.0 + 0.5) } else { (d / 2.0 + 0.5, w / 2.0 + 0.5) };
        if !self.try_occupy(c, hx, hy) {
            return;
        }
        let fp = rect(c, w, d, angle);
        for side in [1.0, -1.0] {
            let half = local_to_world(c, angle, &[(0.0, side * d / 4.0)])[0];
            let normal = (angle + side * FRAC_PI_2) as f32;
            self.push(
                vec![rect(half, w, d / 2.0, angle)],
                Material::Roof { rgb: roof, normal_az: Some(normal) },
                Layer::Object,
            );
        }
        let hv = self.rng.gen_range(6.0..9.0);
        self.object("building_residential", vec![fp], hv);
        let gc = local_to_world(c, angle, &[(self.rng.gen_range(-2.0..2.0), garden * (d / 2.0 + 6.5))])[0];
        if self.rng.gen_bool(0.35) && self.try_occupy(gc, 5.0, 5.0) {
            self.push(vec![rect(gc, 10.0, 6.5, angle)], Material::Concrete, Layer::Marking);
            let pool = rect(gc, 8.0, 4.0, angle);
            self.push(vec![pool.clone()], Material::Pool, Layer::Object);
            self.object("swimming_pool", vec![pool], 0.0);
        } else if self.rng.gen_bool(0.6) {
            let r = self.rng.gen_range(2.0..3.5);
            if self.try_occupy(gc, r, r) {
                let hv = self.rng.gen_range(6.0..11.0);
                self.tree(gc, r, hv);
            }
        }
    }

    pub(super) fn tree(&mut self, c: P2, r: f64, h: f64) {
        self.push(vec![circle(c, r, 14)], Material::Caster { height: h as f32 }, Layer::Shadow);
        self.push(vec![circle(c, r, 14)], Material::Tree, Layer::Object);
    }

    fn apartments(&mut self, b: Block) {
        let (bw, bh) = (self.rng.gen_range(38.0..55.0), self.rng.gen_range(30.0..42.0));
        let (nx, ny) = (((b[2] - b[0]) / (bw + 14.0)).floor() as usize, ((b[3] - b[1]) / (bh + 14.0)).floor() as usize);
        for i in 0..nx {
            for j in 0..ny {
                let c = (b[0] + (i as f64 + 0.5) * (bw + 14.0), b[1] + (j as f64 + 0.5) * (bh + 14.0));
                if !self.try_occupy(c, bw / 2.0, bh / 2.0) {
                    continue;
                }
                let roof = FLAT_ROOFS[self.rng.gen_range(0..FLAT_ROOFS.len())];
                let fp = if self.rng.gen_bool(0.6) {
                    let t = self.rng.gen_range(9.0..12.0);
                    vec![rect(c, bw, bh, 0.0), rect(c, bw - 2.0 * t, bh - 2.0 * t, 0.0)]
                } else {
                    vec![l_shape(c, bw, bh, self.rng.gen_range(12.0..16.0), self.rng.gen_range(0..4))]
                };
                self.push(fp.clone(), Material::Roof { rgb: roof, normal_az: None }, Layer::Object);
                let hv = self.rng.gen_range(12.0..24.0);
                self.object("building_apartment", fp, hv);
            }
        }
    }

    fn retail(&mut self, b: Block) {
        let depth = ((b[3] - b[1]) * 0.45).min(60.0);
        let n = if b[2] - b[0] > 150.0 { 2 } else { 1 };
        let bw = (b[2] - b[0]) / n as f64 - 10.0;
        for i in 0..n {
            let c = (b[0] + (i as f64 + 0.5) * (bw + 10.0), b[3] - depth / 2.0);
            if !self.try_occupy(c, bw / 2.0, depth / 2.0) {
                continue;
            }
            let roof = FLAT_ROOFS[self.rng.gen_range(0..FLAT_ROOFS.len())];
            let fp = if self.rng.gen_bool(0.4) {
                l_shape(c, bw, depth, depth * 0.5, self.rng.gen_range(0..2))
            } else {
                rect(c, bw, depth, 0.0)
            };
            self.push(vec![fp.clone()], Material::Roof { rgb: roof, normal_az: None }, Layer::Object);
            for _ in 0..4 {
                let p = (c.0 + self.rng.gen_range(-0.3..0.3) * bw, c.1 + self.rng.gen_range(-0.25..0.25) * depth);
                if super::geom::point_in_rings(std::slice::from_ref(&fp), p) {
                    self.push(vec![rect(p, 3.0, 2.0, 0.0)], Material::Paint { rgb: [150, 150, 150] }, Layer::Detail);
                }
            }
            let hv = self.rng.gen_range(6.0..11.0);
            self.object("building_retail", vec![fp], hv);
        }
        self.parking([b[0], b[1], b[2], b[3] - depth - 6.0]);
    }

    /// Parking lot: asphalt, double rows of 2.6 m × 5.2 m stalls with 7 m aisles, cars in 60 %.
    fn parking(&mut self, b: Block) {
        if b[3] - b[1] < 14.0 {
            return;
        }
        let c = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
        if !self.try_occupy(c, (b[2] - b[0]) / 2.0, (b[3] - b[1]) / 2.0) {
            return;
        }
        let lot = rect(c, b[2] - b[0], b[3] - b[1], 0.0);
        self.push(vec![lot], Material::Asphalt, Layer::Road);
        let mut y = b[1] + 2.0;
        while y + 5.2 <= b[3] - 1.0 {
            let mut x = b[0] + 3.0;
            while x + 2.6 <= b[2] - 3.0 {
                self.push(vec![rect((x, y + 2.6), 0.15, 5.2, 0.0)], Material::Marking, Layer::Marking);
                let c = (x + 1.3, y + 2.6);
                if self.rng.gen_bool(0.6) {
                    let fp = rect((c.0 + self.rng.gen_range(-0.2..0.2), c.1), 1.9, 4.5, 0.0);
                    let rgb = CARS[self.rng.gen_range(0..CARS.len())];
                    self.push(vec![fp.clone()], Material::Paint { rgb }, Layer::Object);
                    self.push(
                        vec![rect((c.0, c.1 + 0.4), 1.6, 1.4, 0.0)],
                        Material::Paint { rgb: shade(rgb, 0.55) },
                        Layer::Detail,
                    );
                    self.object("car", vec![fp], 1.5);
                }
                x += 2.6;
            }
            y += if ((y - b[1]) / 5.2).round() as i64 % 2 == 0 { 5.2 } else { 12.2 };
        }
    }

    fn industrial(&mut self, b: Block) {
        let yard = rect(((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0), b[2] - b[0], b[3] - b[1], 0.0);
        self.push(vec![yard], Material::Concrete, Layer::Ground);
        let r = self.rng.gen_range(6.0..11.0);
        let pitch = 2.0 * r + self.rng.gen_range(4.0..8.0);
        let h = self.rng.gen_range(8.0..16.0);
        let half = (b[2] - b[0]) * 0.55;
        let (nx, ny) = ((half / pitch).floor() as usize, ((b[3] - b[1]) / pitch).floor() as usize);
        // Coats: the world's draw picks one of 4 pairs (as it picked one of 4 tops before, so
        // the world's stream is unchanged); the block's own generator picks the member.
        let mut coats = side_rng(b, 1);
        for i in 0..nx {
            for j in 0..ny {
                let c = (b[0] + (i as f64 + 0.5) * pitch, b[1] + (j as f64 + 0.5) * pitch);
                if self.try_occupy(c, r + 1.0, r + 1.0) {
                    let top = TANK_TOPS[2 * self.rng.gen_range(0..TANK_TOPS.len() / 2) + coats.gen_range(0..2)];
                    self.push(vec![circle(c, r, 32)], Material::Paint { rgb: top }, Layer::Object);
                    self.push(
                        vec![circle(c, r * 0.55, 24), circle(c, r * 0.5, 24)],
                        Material::Paint { rgb: shade(top, 0.8) },
                        Layer::Detail,
                    );
                    self.push(vec![circle(c, r * 0.12, 10)], Material::Paint { rgb: shade(top, 0.6) }, Layer::Detail);
                    self.object("storage_tank", vec![circle(c, r, 32)], h);
                }
            }
        }
        let wb = [b[0] + nx as f64 * pitch + 8.0, b[1] + 4.0, b[2] - 4.0, b[3] - 4.0];
        self.warehouses(wb);
    }

    /// A column of similar gable-roofed warehouses (10 m apart, each its own metal colour)
    /// filling `wb`.
    fn warehouses(&mut self, wb: Block) {
        if wb[2] - wb[0] < 25.0 {
            return;
        }
        let (w, d) = ((wb[2] - wb[0]).min(90.0), self.rng.gen_range(22.0..34.0));
        let n = ((wb[3] - wb[1] + 10.0) / (d + 10.0)).floor() as usize;
        for k in 0..n {
            let c = ((wb[0] + wb[2]) / 2.0, wb[1] + d / 2.0 + k as f64 * (d + 10.0));
            if !self.try_occupy(c, w / 2.0, d / 2.0) {
                continue;
            }
            let rgb = METAL_ROOFS[self.rng.gen_range(0..METAL_ROOFS.len())];
            for side in [1.0, -1.0] {
                let half_c = (c.0, c.1 + side * d / 4.0);
                let m = Material::Roof { rgb, normal_az: Some((side * FRAC_PI_2) as f32) };
                self.push(vec![rect(half_c, w, d / 2.0, 0.0)], m, Layer::Object);
            }
            let hv = self.rng.gen_range(8.0..13.0);
            self.object("building_industrial", vec![rect(c, w, d, 0.0)], hv);
        }
    }
}

/// Point at distance `s` along direction `angle` from `p`.
fn local_pt(p: P2, angle: f64, s: f64) -> P2 {
    (p.0 + s * angle.cos(), p.1 + s * angle.sin())
}

/// A generator for appearance-only draws of block `b` (`tag` tells uses apart), kept off
/// the world's stream so that colour choices never move the world's geometry.
pub(super) fn side_rng(b: Block, tag: u64) -> ChaCha8Rng {
    let h = b.iter().fold(tag.wrapping_mul(0x9E37_79B9_7F4A_7C15), |h, v| {
        (h ^ v.to_bits()).wrapping_mul(0x100_0000_01B3).rotate_left(29)
    });
    ChaCha8Rng::seed_from_u64(h)
}

/// Scale a colour.
fn shade(rgb: [u8; 3], f: f64) -> [u8; 3] {
    rgb.map(|v| (v as f64 * f).clamp(0.0, 255.0) as u8)
}

/// L-shaped ring inside a `w`×`h` box at `c`, arm width `t`, missing corner `corner` (0..4).
fn l_shape(c: P2, w: f64, h: f64, t: f64, corner: usize) -> Vec<P2> {
    let (hw, hh) = (w / 2.0, h / 2.0);
    let base = [(-hw, -hh), (hw, -hh), (hw, -hh + t), (-hw + t, -hh + t), (-hw + t, hh), (-hw, hh)];
    let (sx, sy) = [(1.0, 1.0), (-1.0, 1.0), (-1.0, -1.0), (1.0, -1.0)][corner % 4];
    let mut pts: Vec<P2> = base.iter().map(|&(x, y)| (c.0 + sx * x, c.1 + sy * y)).collect();
    if sx * sy < 0.0 {
        pts.reverse();
    }
    pts
}

/// Pieces of length `on` separated by `off` along `line`, offset sideways by `offset`
/// (left of travel); returns (centre, direction angle) of each piece.
fn pieces(line: &[P2], offset: f64, on: f64, off: f64) -> Vec<(P2, f64)> {
    let mut out = Vec::new();
    let mut carry = 0.0;
    for w in line.windows(2) {
        let (a, b) = (w[0], w[1]);
        let len = (b.0 - a.0).hypot(b.1 - a.1);
        let ang = (b.1 - a.1).atan2(b.0 - a.0);
        let mut s = carry + on / 2.0;
        while s + on / 2.0 <= len {
            let p = local_pt(a, ang, s);
            out.push(((p.0 - offset * ang.sin(), p.1 + offset * ang.cos()), ang));
            s += on + off;
        }
        carry = (s - on / 2.0 - len).max(0.0);
    }
    out
}

/// Intersection point of segments `a`–`b` and `c`–`d`, if they cross.
fn seg_intersection(a: P2, b: P2, c: P2, d: P2) -> Option<P2> {
    let (r, s) = ((b.0 - a.0, b.1 - a.1), (d.0 - c.0, d.1 - c.1));
    let den = r.0 * s.1 - r.1 * s.0;
    if den.abs() < 1e-12 {
        return None;
    }
    let t = ((c.0 - a.0) * s.1 - (c.1 - a.1) * s.0) / den;
    let u = ((c.0 - a.0) * r.1 - (c.1 - a.1) * r.0) / den;
    ((0.0..=1.0).contains(&t) && (0.0..=1.0).contains(&u)).then_some((a.0 + t * r.0, a.1 + t * r.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cross_where_expected() {
        let p = seg_intersection((0.0, 0.0), (10.0, 10.0), (0.0, 10.0), (10.0, 0.0)).unwrap();
        assert!((p.0 - 5.0).abs() < 1e-12 && (p.1 - 5.0).abs() < 1e-12);
        assert!(seg_intersection((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)).is_none());
    }

    #[test]
    fn dashes_are_evenly_spaced() {
        let p = pieces(&[(0.0, 0.0), (30.0, 0.0)], 2.0, 3.0, 6.0);
        assert_eq!(p.len(), 4);
        assert!((p[1].0 .0 - p[0].0 .0 - 9.0).abs() < 1e-9);
        assert!((p[0].0 .1 - 2.0).abs() < 1e-9);
    }

    #[test]
    fn l_shape_area() {
        for corner in 0..4 {
            let r = l_shape((0.0, 0.0), 40.0, 30.0, 10.0, corner);
            let a = super::super::geom::ring_area(&r).abs();
            assert!((a - (40.0 * 10.0 + 10.0 * 20.0)).abs() < 1e-9, "corner {corner}: {a}");
        }
    }
}
