//! Overlay graph metrics over the live nodes' active views.

use std::collections::VecDeque;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::engine::Sim;

/// Shape of the active-view overlay.
#[derive(Clone, Debug, Serialize)]
pub struct OverlayStats {
    /// Live nodes.
    pub nodes: usize,
    /// Connected components of the (undirected) active-view graph.
    pub components: usize,
    /// Size of the largest component.
    pub largest_component: usize,
    /// Mean local clustering coefficient.
    pub clustering: f64,
    /// Mean shortest path, from BFS out of up to 64 sampled sources.
    pub avg_shortest_path: f64,
    /// Longest shortest path seen from those sources.
    pub diameter_seen: u32,
    /// `in_degree_hist[d]` = live nodes that appear in exactly `d` active views.
    pub in_degree_hist: Vec<usize>,
    /// Pairs (a has b active, b does not have a): 0 at quiescence.
    pub asymmetric_links: usize,
}

/// Measure the overlay now.
pub fn overlay_stats(sim: &Sim, seed: u64) -> OverlayStats {
    let live = sim.live();
    let adj = sim.adjacency();
    let n = sim.len();
    let mut in_deg = vec![0usize; n];
    let mut asymmetric = 0;
    for &i in &live {
        if let Some(s) = sim.state(i) {
            for &p in s.membership().active_view() {
                if sim.is_alive(p) {
                    in_deg[p as usize] += 1;
                    if !sim.state(p).is_some_and(|o| o.membership().is_active(&i)) {
                        asymmetric += 1;
                    }
                }
            }
        }
    }
    let mut hist = Vec::new();
    for &i in &live {
        let d = in_deg[i as usize];
        if hist.len() <= d {
            hist.resize(d + 1, 0);
        }
        hist[d] += 1;
    }
    // Components.
    let mut comp = vec![usize::MAX; n];
    let mut sizes = Vec::new();
    for &s in &live {
        if comp[s as usize] != usize::MAX {
            continue;
        }
        let c = sizes.len();
        let mut size = 0;
        let mut q = VecDeque::from([s]);
        comp[s as usize] = c;
        while let Some(x) = q.pop_front() {
            size += 1;
            for &y in &adj[x as usize] {
                if comp[y as usize] == usize::MAX {
                    comp[y as usize] = c;
                    q.push_back(y);
                }
            }
        }
        sizes.push(size);
    }
    // Clustering coefficient.
    let mut cc_sum = 0.0;
    for &i in &live {
        let nb = &adj[i as usize];
        let k = nb.len();
        if k < 2 {
            continue;
        }
        let mut links = 0;
        for (x, &a) in nb.iter().enumerate() {
            for &b in &nb[x + 1..] {
                if adj[a as usize].binary_search(&b).is_ok() {
                    links += 1;
                }
            }
        }
        cc_sum += 2.0 * links as f64 / (k * (k - 1)) as f64;
    }
    // Sampled shortest paths.
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut total, mut pairs, mut diameter) = (0u64, 0u64, 0u32);
    let samples = live.len().min(64);
    let mut dist = vec![u32::MAX; n];
    for _ in 0..samples {
        let s = live[rng.gen_range(0..live.len())];
        dist.iter_mut().for_each(|d| *d = u32::MAX);
        dist[s as usize] = 0;
        let mut q = VecDeque::from([s]);
        while let Some(x) = q.pop_front() {
            for &y in &adj[x as usize] {
                if dist[y as usize] == u32::MAX {
                    dist[y as usize] = dist[x as usize] + 1;
                    total += u64::from(dist[y as usize]);
                    pairs += 1;
                    diameter = diameter.max(dist[y as usize]);
                    q.push_back(y);
                }
            }
        }
    }
    OverlayStats {
        nodes: live.len(),
        components: sizes.len(),
        largest_component: sizes.iter().copied().max().unwrap_or(0),
        clustering: cc_sum / live.len().max(1) as f64,
        avg_shortest_path: if pairs == 0 { 0.0 } else { total as f64 / pairs as f64 },
        diameter_seen: diameter,
        in_degree_hist: hist,
        asymmetric_links: asymmetric,
    }
}
