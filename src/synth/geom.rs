//! Planar geometry helpers for the synthetic world, in the local metric frame
//! (x east, y north, metres) or in pixel space; all functions are unit-agnostic.
//!
//! Polygons are lists of rings (`Vec<Vec<(f64, f64)>>`), filled with the even-odd rule, so a
//! courtyard building is an outer ring plus an inner ring. Rings are implicitly closed.

use std::f64::consts::PI;

/// A point or vector (x, y) in metres (world) or pixels (image), as stated by the caller.
pub type P2 = (f64, f64);

/// Axis-aligned box [min_x, min_y, max_x, max_y].
pub type BBox = [f64; 4];

/// Bounding box of a set of points; `None` for an empty set.
pub fn bbox_of<'a>(pts: impl IntoIterator<Item = &'a P2>) -> Option<BBox> {
    let mut b = [f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY];
    let mut any = false;
    for &(x, y) in pts {
        any = true;
        b = [b[0].min(x), b[1].min(y), b[2].max(x), b[3].max(y)];
    }
    any.then_some(b)
}

/// True when the two boxes overlap (touching counts).
pub fn bbox_overlaps(a: &BBox, b: &BBox) -> bool {
    a[0] <= b[2] && b[0] <= a[2] && a[1] <= b[3] && b[1] <= a[3]
}

/// Signed area of a ring (positive when counter-clockwise).
pub fn ring_area(r: &[P2]) -> f64 {
    let n = r.len();
    (0..n).map(|i| r[i].0 * r[(i + 1) % n].1 - r[(i + 1) % n].0 * r[i].1).sum::<f64>() * 0.5
}

/// Area-weighted centroid of an even-odd polygon (holes subtract). Falls back to the vertex
/// mean of the first ring when the area is degenerate.
pub fn centroid(rings: &[Vec<P2>]) -> P2 {
    let (mut a, mut cx, mut cy) = (0.0, 0.0, 0.0);
    for (k, r) in rings.iter().enumerate() {
        // The first ring is the outer boundary; later rings are holes.
        let sign = if k == 0 { 1.0 } else { -1.0 };
        let ra = ring_area(r);
        let s = sign * ra.signum();
        let n = r.len();
        for i in 0..n {
            let (p, q) = (r[i], r[(i + 1) % n]);
            let c = p.0 * q.1 - q.0 * p.1;
            cx += s * (p.0 + q.0) * c;
            cy += s * (p.1 + q.1) * c;
        }
        a += s * ra * 2.0;
    }
    if a.abs() < 1e-12 {
        let r = &rings[0];
        let n = r.len().max(1) as f64;
        return (r.iter().map(|p| p.0).sum::<f64>() / n, r.iter().map(|p| p.1).sum::<f64>() / n);
    }
    (cx / (3.0 * a), cy / (3.0 * a))
}

/// Even-odd point-in-polygon test over all rings.
pub fn point_in_rings(rings: &[Vec<P2>], p: P2) -> bool {
    let mut inside = false;
    for r in rings {
        let n = r.len();
        for i in 0..n {
            let (a, b) = (r[i], r[(i + 1) % n]);
            if (a.1 > p.1) != (b.1 > p.1) {
                let x = a.0 + (p.1 - a.1) / (b.1 - a.1) * (b.0 - a.0);
                if p.0 < x {
                    inside = !inside;
                }
            }
        }
    }
    inside
}

/// Distance from `p` to the segment `a`–`b`.
pub fn dist_point_segment(p: P2, a: P2, b: P2) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let l2 = dx * dx + dy * dy;
    let t = if l2 > 0.0 { (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / l2).clamp(0.0, 1.0) } else { 0.0 };
    ((p.0 - a.0 - t * dx).powi(2) + (p.1 - a.1 - t * dy).powi(2)).sqrt()
}

/// Distance from `p` to the boundary of the polygon (all rings).
pub fn dist_to_boundary(rings: &[Vec<P2>], p: P2) -> f64 {
    let mut d = f64::INFINITY;
    for r in rings {
        for i in 0..r.len() {
            d = d.min(dist_point_segment(p, r[i], r[(i + 1) % r.len()]));
        }
    }
    d
}

/// A point well inside the polygon: the centroid when it is inside and not too close to an
/// edge, otherwise the grid point (24×24 over the bbox) farthest from the boundary.
pub fn interior_point(rings: &[Vec<P2>]) -> P2 {
    let c = centroid(rings);
    let Some(b) = bbox_of(rings.iter().flatten()) else { return c };
    let scale = (b[2] - b[0]).min(b[3] - b[1]);
    if point_in_rings(rings, c) && dist_to_boundary(rings, c) > 0.2 * scale {
        return c;
    }
    let mut best = (f64::NEG_INFINITY, c);
    for i in 0..24 {
        for j in 0..24 {
            let p = (b[0] + (i as f64 + 0.5) / 24.0 * (b[2] - b[0]), b[1] + (j as f64 + 0.5) / 24.0 * (b[3] - b[1]));
            if point_in_rings(rings, p) {
                let d = dist_to_boundary(rings, p);
                if d > best.0 {
                    best = (d, p);
                }
            }
        }
    }
    best.1
}

/// Rectangle centred at `c` with size `len` along direction `angle` (radians from +x,
/// counter-clockwise) and `wid` across it; counter-clockwise ring.
pub fn rect(c: P2, len: f64, wid: f64, angle: f64) -> Vec<P2> {
    let (ux, uy) = (angle.cos(), angle.sin());
    let (vx, vy) = (-uy, ux);
    let (hl, hw) = (len / 2.0, wid / 2.0);
    [(-hl, -hw), (hl, -hw), (hl, hw), (-hl, hw)]
        .iter()
        .map(|&(a, b)| (c.0 + a * ux + b * vx, c.1 + a * uy + b * vy))
        .collect()
}

/// Map local coordinates (a along `angle`, b across) around `c` to world coordinates.
pub fn local_to_world(c: P2, angle: f64, pts: &[P2]) -> Vec<P2> {
    let (ux, uy) = (angle.cos(), angle.sin());
    pts.iter().map(|&(a, b)| (c.0 + a * ux - b * uy, c.1 + a * uy + b * ux)).collect()
}

/// Regular polygon approximating a circle (`n` vertices, counter-clockwise).
pub fn circle(c: P2, r: f64, n: usize) -> Vec<P2> {
    (0..n).map(|i| 2.0 * PI * i as f64 / n as f64).map(|t| (c.0 + r * t.cos(), c.1 + r * t.sin())).collect()
}

/// Convex hull (Andrew's monotone chain), counter-clockwise, without repeated end point.
pub fn convex_hull(pts: &[P2]) -> Vec<P2> {
    let mut p: Vec<P2> = pts.to_vec();
    p.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    p.dedup();
    if p.len() < 3 {
        return p;
    }
    let cross = |o: P2, a: P2, b: P2| (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0);
    let mut h: Vec<P2> = Vec::with_capacity(2 * p.len());
    for pass in 0..2 {
        let start = h.len();
        let iter: Box<dyn Iterator<Item = &P2>> = if pass == 0 { Box::new(p.iter()) } else { Box::new(p.iter().rev()) };
        for &q in iter {
            while h.len() >= start + 2 && cross(h[h.len() - 2], h[h.len() - 1], q) <= 0.0 {
                h.pop();
            }
            h.push(q);
        }
        h.pop();
    }
    h
}

/// Minimum-area enclosing rectangle of a point set (rotating over hull edges); 4 corners.
pub fn min_area_rect(pts: &[P2]) -> Vec<P2> {
    let h = convex_hull(pts);
    if h.len() < 3 {
        let b = bbox_of(pts.iter()).unwrap_or([0.0; 4]);
        return vec![(b[0], b[1]), (b[2], b[1]), (b[2], b[3]), (b[0], b[3])];
    }
    let mut best: Option<(f64, Vec<P2>)> = None;
    for i in 0..h.len() {
        let (a, b) = (h[i], h[(i + 1) % h.len()]);
        let ang = (b.1 - a.1).atan2(b.0 - a.0);
        let (c, s) = (ang.cos(), ang.sin());
        // Coordinates in the edge-aligned frame.
        let loc: Vec<P2> = h.iter().map(|p| (p.0 * c + p.1 * s, -p.0 * s + p.1 * c)).collect();
        let Some(lb) = bbox_of(loc.iter()) else { continue };
        let area = (lb[2] - lb[0]) * (lb[3] - lb[1]);
        if best.as_ref().is_none_or(|(ba, _)| area < *ba) {
            let corners = [(lb[0], lb[1]), (lb[2], lb[1]), (lb[2], lb[3]), (lb[0], lb[3])];
            best = Some((area, corners.iter().map(|&(u, v)| (u * c - v * s, u * s + v * c)).collect()));
        }
    }
    best.map(|b| b.1).unwrap_or_default()
}

/// Quads (one per segment) plus joint discs covering a polyline of half-width `hw`.
pub fn polyline_quads(line: &[P2], hw: f64) -> Vec<Vec<P2>> {
    let mut out = Vec::new();
    for w in line.windows(2) {
        let (a, b) = (w[0], w[1]);
        let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
        if len < 1e-9 {
            continue;
        }
        let ang = (b.1 - a.1).atan2(b.0 - a.0);
        out.push(rect(((a.0 + b.0) / 2.0, (a.1 + b.1) / 2.0), len, 2.0 * hw, ang));
    }
    for &p in line.iter().skip(1).take(line.len().saturating_sub(2)) {
        out.push(circle(p, hw, 12));
    }
    out
}

/// Points of a cubic Bézier curve, `n + 1` samples including both ends.
pub fn bezier(p0: P2, p1: P2, p2: P2, p3: P2, n: usize) -> Vec<P2> {
    (0..=n)
        .map(|i| {
            let t = i as f64 / n as f64;
            let u = 1.0 - t;
            let (a, b, c, d) = (u * u * u, 3.0 * u * u * t, 3.0 * u * t * t, t * t * t);
            (a * p0.0 + b * p1.0 + c * p2.0 + d * p3.0, a * p0.1 + b * p1.1 + c * p2.1 + d * p3.1)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centroid_and_area_of_courtyard() {
        let outer = rect((10.0, 20.0), 40.0, 30.0, 0.3);
        let inner = rect((10.0, 20.0), 20.0, 10.0, 0.3);
        assert!((ring_area(&outer) - 1200.0).abs() < 1e-9);
        let c = centroid(&[outer.clone(), inner.clone()]);
        assert!((c.0 - 10.0).abs() < 1e-9 && (c.1 - 20.0).abs() < 1e-9);
        // The centroid lies in the hole, so the interior point must move off it.
        assert!(!point_in_rings(&[outer.clone(), inner.clone()], c));
        let p = interior_point(&[outer.clone(), inner]);
        assert!(point_in_rings(&[outer], p));
    }

    #[test]
    fn min_area_rect_of_rotated_rectangle() {
        let r = rect((5.0, -3.0), 12.0, 4.0, 0.7);
        let m = min_area_rect(&r);
        assert!((ring_area(&m).abs() - 48.0).abs() < 1e-6);
        let hull = convex_hull(&r);
        assert_eq!(hull.len(), 4);
    }
}
