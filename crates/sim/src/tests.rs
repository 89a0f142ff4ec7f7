use std::time::Duration;

use plumcast::proto::{self, broadcast};
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

fn small(n: usize, seed: u64, detector: Detector) -> Sim {
    let mut cfg = SimConfig::new(seed);
    cfg.detector = detector;
    build_overlay(n, cfg, 10)
}

fn metrics(sim: &mut Sim, k: usize, seed: u64) -> Vec<(f64, f64, u32)> {
    let live = sim.live();
    let mut out = Vec::new();
    for j in 0..k {
        let o = live[(j * 7 + seed as usize) % live.len()];
        let key = sim.broadcast(o).unwrap();
        sim.run_for(Duration::from_millis(400));
        let t = sim.track(key).unwrap();
        out.push((
            t.delivered as f64 / t.expected as f64,
            t.payload_msgs as f64 / t.delivered.max(1) as f64 - 1.0,
            t.ldh,
        ));
    }
    out
}

#[test]
fn same_seed_same_metrics() {
    let mut a = small(200, 9, Detector::Paper);
    let mut b = small(200, 9, Detector::Paper);
    assert_eq!(metrics(&mut a, 10, 1), metrics(&mut b, 10, 1));
    assert_eq!(a.counters().events, b.counters().events);
}

/// Lanes on their own threads (conservative windows of one link latency) give the same
/// events in the same order as one lane: the same counters, per-broadcast figures and
/// per-node statistics, with per-origin trees, random senders, crashes and restarts,
/// drawn latencies and loss (each slot draws its own), and one lane per slot range.
#[test]
fn lanes_on_their_own_threads_give_the_same_rows_as_one_lane() {
    type Run = (Counters, Vec<(u32, u32, u32, u64, u64)>, Vec<broadcast::Stats>, Vec<Vec<u32>>);
    fn run(lanes: usize) -> Run {
        let mut cfg = SimConfig::new(5);
        cfg.latency = Latency::Uniform { min_ms: 2.0, max_ms: 12.0 };
        cfg.loss = 0.01;
        let mut sim = build_overlay(400, cfg, 5);
        sim.set_lanes(lanes);
        assert_eq!(sim.lanes(), lanes);
        sim.set_broadcast_tree(proto::Tree::PerOrigin);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut figures = Vec::new();
        for _ in 0..4 {
            let mut live = sim.live();
            live.shuffle(&mut rng);
            let victims: Vec<u32> = live.iter().copied().take(20).collect();
            sim.crash_many(&victims);
            let live = sim.live();
            for v in victims {
                sim.start(v, Some(live[rng.gen_range(0..live.len())]));
            }
            // Several broadcasts in flight at once, so the windows hold many events.
            let keys: Vec<_> = (0..8)
                .map(|_| {
                    let live = sim.live();
                    sim.broadcast(live[rng.gen_range(0..live.len())]).unwrap()
                })
                .collect();
            sim.run_for(Duration::from_millis(500));
            for key in keys {
                let t = sim.track(key).unwrap();
                figures.push((t.delivered, t.duplicates, t.ldh, t.payload_msgs, t.last_delivery_at));
            }
            sim.clear_tracks();
        }
        let stats = sim.live().iter().map(|&i| sim.state(i).unwrap().broadcast_state().stats().clone()).collect();
        (sim.counters().clone(), figures, stats, sim.adjacency())
    }
    let one = run(1);
    assert!(one.0.lost > 0 && one.0.grafts > 0, "the run exercises loss and Grafts: {:?}", one.0);
    for lanes in [2, 3] {
        let many = run(lanes);
        assert_eq!(one.0, many.0, "counters with {lanes} lanes");
        assert_eq!(one.1, many.1, "per-broadcast figures with {lanes} lanes");
        assert_eq!(format!("{:?}", one.2), format!("{:?}", many.2), "node stats with {lanes} lanes");
        assert_eq!(one.3, many.3, "active views with {lanes} lanes");
    }
}

/// Per-origin trees, random senders, crashes and restarts: two runs from one seed give the
/// same counters, the same per-broadcast figures and the same output sequence (a hash of
/// every output of every node, in order). Parent repair walks the per-origin trees on
/// every NeighborDown: with unordered iteration the Grafts came out in a different order.
#[test]
fn per_origin_trees_under_churn_same_seed_same_outputs() {
    type Run = (Counters, Vec<(u32, u32, u32, u64)>, Vec<broadcast::Stats>, u64);
    fn run(seed: u64) -> Run {
        let mut sim = small(300, seed, Detector::Shipped);
        sim.set_broadcast_tree(proto::Tree::PerOrigin);
        sim.trace_outputs();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut figures = Vec::new();
        for _ in 0..8 {
            let mut live = sim.live();
            live.shuffle(&mut rng);
            let victims: Vec<u32> = live.iter().copied().take(15).collect();
            sim.crash_many(&victims);
            let live = sim.live();
            for v in victims {
                sim.start(v, Some(live[rng.gen_range(0..live.len())]));
            }
            for _ in 0..6 {
                let live = sim.live();
                let o = live[rng.gen_range(0..live.len())];
                let key = sim.broadcast(o).unwrap();
                sim.run_for(Duration::from_millis(300));
                let t = sim.track(key).unwrap();
                figures.push((t.delivered, t.duplicates, t.ldh, t.payload_msgs));
            }
            sim.run_for(Duration::from_secs(2));
            sim.clear_tracks();
        }
        let stats = sim.live().iter().map(|&i| sim.state(i).unwrap().broadcast_state().stats().clone()).collect();
        (sim.counters().clone(), figures, stats, sim.output_hash().unwrap())
    }
    let a = run(11);
    assert!(a.2.iter().map(|s| s.parent_repairs).sum::<u64>() > 0, "the run exercises parent repair");
    let b = run(11);
    // Compared one by one: a failure prints which part differs, not pages of stats.
    assert_eq!(a.0, b.0, "simulator counters");
    assert!(a.1 == b.1, "per-broadcast delivered / duplicates / LDH / payload messages");
    assert!(a.2 == b.2, "every live node's Plumtree stats");
    assert_eq!(a.3, b.3, "hash of the whole output sequence");
}

#[test]
fn stable_500_single_sender_is_reliable_with_low_rmr() {
    let mut sim = small(500, 3, Detector::Paper);
    sim.check_invariants().unwrap();
    sim.check_symmetry_over(Duration::from_secs(1)).unwrap();
    let live = sim.live();
    let mut rmr = Vec::new();
    for _ in 0..30 {
        let key = sim.broadcast(live[0]).unwrap();
        sim.run_for(Duration::from_millis(400));
        let t = sim.track(key).unwrap();
        assert_eq!(t.delivered, t.expected, "reliability 100%");
        assert_eq!(t.duplicates, 0);
        rmr.push(t.payload_msgs as f64 / t.delivered as f64 - 1.0);
    }
    let after_warmup = &rmr[5..];
    let mean = after_warmup.iter().sum::<f64>() / after_warmup.len() as f64;
    assert!(mean < 0.05, "RMR after warm-up {mean} ({rmr:?})");
}

#[test]
fn half_of_the_nodes_failing_heals_to_full_reliability() {
    for detector in [Detector::Paper, Detector::Shipped] {
        let mut sim = small(500, 5, detector);
        let mut live = sim.live();
        live.truncate(250);
        sim.crash_many(&live);
        // A few membership rounds of repair.
        sim.run_for(Duration::from_secs(30));
        sim.check_invariants().unwrap();
        let m = metrics(&mut sim, 10, 2);
        assert!(m.iter().all(|(r, _, _)| *r >= 1.0), "{detector:?}: {m:?}");
        assert_eq!(overlay_stats(&sim, 1).components, 1);
    }
}

#[test]
fn a_healed_partition_becomes_one_overlay_within_two_rounds() {
    for detector in [Detector::Paper, Detector::Shipped] {
        let mut sim = small(300, 11, detector);
        let group: Vec<u8> = (0..300).map(|i| (i % 2) as u8).collect();
        sim.partition(group);
        // Six rounds apart: long enough for each side's passive views to forget the other.
        sim.run_for(Duration::from_secs(60));
        assert_eq!(overlay_stats(&sim, 1).components, 2, "{detector:?}: split");
        sim.heal();
        sim.run_for(sim.config().protocol.membership.shuffle_interval * 2);
        sim.check_invariants().unwrap();
        assert_eq!(overlay_stats(&sim, 1).components, 1, "{detector:?}: one overlay again");
        let m = metrics(&mut sim, 10, 3);
        assert!(m.iter().all(|(r, _, _)| *r >= 1.0), "{detector:?}: {m:?}");
    }
}

#[test]
fn embedded_scenarios_parse() {
    for (name, _) in scenario::EMBEDDED {
        let s = Scenario::load(name).unwrap();
        assert_eq!(&s.name, name);
    }
}

#[test]
fn small_scenarios_run_end_to_end() {
    for name in ["plumtree-stable", "concurrent-join", "partition-heal"] {
        let mut s = Scenario::load(name).unwrap();
        s.nodes = 100;
        s.seeds = vec![1];
        s.broadcasts = s.broadcasts.min(5);
        s.stabilize_rounds = s.stabilize_rounds.min(3);
        let rows = scenario::run(&s, 1, &|_, _, _| {});
        assert!(!rows.is_empty(), "{name}");
        assert!(rows.iter().all(|r| r.duplicates == 0), "{name}: {rows:?}");
    }
}

/// `sim churn --nodes 500 --seeds 1` reported 10 and 9 duplicates for `plumtree-multi`:
/// tracks were keyed by `(origin, seq)`, so a slot restarted by the churn (seq from 1
/// again) shared its keys with its previous life, and a node that delivered the old
/// life's message late and the new life's message counted as one duplicate. Keyed by
/// incarnation too, nothing is delivered twice to one node life.
#[test]
fn churn_at_500_nodes_seed_1_delivers_nothing_twice() {
    let mut s = Scenario::load("churn").unwrap();
    s.nodes = 500;
    s.seeds = vec![1];
    s.modes = vec![RunMode::PlumtreeMulti, RunMode::PlumtreeMultiPerOrigin];
    let rows = scenario::run(&s, 2, &|_, _, _| {});
    assert_eq!(rows.len(), 4, "two modes, two detectors");
    for r in &rows {
        assert_eq!(r.duplicates, 0, "{} / {}: {r:?}", r.mode, r.detector);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { max_shrink_time: 10_000, ..ProptestConfig::default() })]

    /// Invariants hold after every step over random crashes, restarts, partitions and
    /// broadcasts; every broadcast reaches every live node of a connected overlay once.
    #[test]
    fn invariants_hold_under_random_operations(
        seed in 0u64..10_000,
        ops in proptest::collection::vec((0u8..5, 0u32..40), 1..25),
        shipped in any::<bool>(),
    ) {
        let detector = if shipped { Detector::Shipped } else { Detector::Paper };
        let mut cfg = SimConfig::new(seed);
        cfg.detector = detector;
        cfg.latency = Latency::Uniform { min_ms: 1.0, max_ms: 30.0 };
        let mut sim = build_overlay(40, cfg, 3);
        for (op, x) in ops {
            match op {
                0 => sim.crash(x),
                1 => if !sim.is_alive(x) { let c = sim.live().first().copied(); sim.start(x, c) },
                2 => { let g = (0..40).map(|i| u8::from(i % 3 == (x % 3) as usize)).collect(); sim.partition(g); }
                3 => sim.heal(),
                _ => { if let Some(o) = sim.live().first().copied() { sim.broadcast(o); } }
            }
            for _ in 0..2000 {
                if !sim.step() { break; }
                if let Err(e) = sim.check_invariants() {
                    return Err(TestCaseError::fail(format!("seed {seed}: {e}")));
                }
            }
        }
        sim.heal();
        sim.run_for(Duration::from_secs(60));
        prop_assert!(sim.check_invariants().is_ok());
        let symmetric = sim.check_symmetry_over(Duration::from_secs(1));
        prop_assert!(symmetric.is_ok(), "{:?}", symmetric);
        if overlay_stats(&sim, 1).components == 1 {
            let live = sim.live();
            let key = sim.broadcast(live[0]).unwrap();
            sim.run_for(Duration::from_secs(2));
            let t = sim.track(key).unwrap();
            prop_assert_eq!(t.delivered, t.expected, "seed {}", seed);
            prop_assert_eq!(t.duplicates, 0);
        }
    }
}

/// A node that broadcast while alone announces it to its first neighbour (catch-up on
/// NeighborUp). The accepting side used to send that IHave before its NeighborReply, and
/// the joiner, which did not list it as a neighbour yet, dropped it: the message was lost.
#[test]
fn a_message_broadcast_while_alone_reaches_the_first_joiner() {
    let mut sim = Sim::new(2, SimConfig::new(5));
    sim.start(0, None);
    sim.run_for(Duration::from_millis(10));
    let key = sim.broadcast(0).unwrap();
    sim.start(1, Some(0));
    sim.run_for(Duration::from_secs(2));
    assert!(sim.state(1).unwrap().membership().is_active(&0), "joined");
    let t = sim.track(key).unwrap();
    assert_eq!(t.expected, 0, "nobody else was up when it was sent");
    assert_eq!(t.delivered, 1, "the joiner delivers it after a catch-up Graft");
}

#[test]
fn parallel_seeds_give_the_same_rows() {
    let mut s = Scenario::load("plumtree-stable").unwrap();
    s.nodes = 100;
    s.seeds = vec![3, 1, 2];
    s.broadcasts = 5;
    s.stabilize_rounds = 3;
    let strip = |rows: Vec<scenario::Row>| -> Vec<String> {
        rows.into_iter().map(|r| serde_json::to_string(&scenario::Row { wall_s: 0.0, ..r }).unwrap()).collect()
    };
    let one = strip(scenario::run(&s, 1, &|_, _, _| {}));
    let three = strip(scenario::run(&s, 3, &|_, _, _| {}));
    assert_eq!(one, three);
    assert!(one[0].contains("\"seed\":3"), "rows keep the scenario's seed order");
}

#[test]
fn churn_that_would_crash_every_node_is_refused_with_the_numbers() {
    let mut s = Scenario::load("churn-failures-only").unwrap();
    s.validate().unwrap();
    s.nodes = 2000;
    let e = s.validate().unwrap_err().to_string();
    assert!(e.contains("50 crashes per round for 100 rounds") && e.contains("all 2000 nodes"), "{e}");
    let mut s = Scenario::load("churn").unwrap();
    s.nodes = 2000;
    s.validate().unwrap();
    s.nodes = 50;
    assert!(s.validate().is_err());
    s.nodes = 1;
    assert!(s.validate().unwrap_err().to_string().contains("at least 2"));
}

/// Both halves broadcast during a 60 s partition, longer than the payload cache (30 s)
/// and the catch-up window (10 s). Without anti-entropy, messages of the split are lost
/// to the other half after the heal; with it, every node delivers every message once.
#[test]
fn a_partition_heals_with_its_messages_only_with_anti_entropy() {
    for anti_entropy in [false, true] {
        let mut cfg = SimConfig::new(5);
        if anti_entropy {
            cfg.protocol = sim_protocol_with_anti_entropy(Duration::from_secs(5), 10_000);
        }
        let n = 400;
        let mut sim = build_overlay(n, cfg, 10);
        sim.partition((0..n).map(|i| (i % 2) as u8).collect());
        let mut keys = Vec::new();
        for k in 0..40u32 {
            keys.push(sim.broadcast(k % n as u32).unwrap());
            sim.run_for(Duration::from_millis(1500));
        }
        sim.heal();
        let complete =
            |sim: &Sim| keys.iter().filter(|k| sim.track(**k).is_some_and(|t| t.delivered >= t.expected)).count();
        let mut waited = Duration::ZERO;
        while complete(&sim) < keys.len() && waited < Duration::from_secs(90) {
            sim.run_for(Duration::from_secs(1));
            waited += Duration::from_secs(1);
        }
        let dups: u32 = keys.iter().map(|k| sim.track(*k).unwrap().duplicates).sum();
        let c = sim.counters();
        eprintln!(
            "anti-entropy {anti_entropy}: {} of {} complete {waited:?} after the heal; digests {}, {} B, repairs {} ({} messages)",
            complete(&sim),
            keys.len(),
            c.digests,
            c.digest_bytes,
            c.repairs,
            c.repaired
        );
        assert_eq!(dups, 0, "exactly once (anti-entropy {anti_entropy})");
        if anti_entropy {
            assert_eq!(complete(&sim), keys.len(), "every message everywhere, {waited:?} after the heal");
            let c = sim.counters();
            assert!(c.repaired > 0 && c.digests > 0, "{c:?}");
        } else {
            assert!(complete(&sim) < keys.len(), "without anti-entropy the split loses messages");
        }
    }
}

/// Digests stay bounded as origins grow: every digest fits one 8 KiB piece, and a large
/// vector is covered over several exchanges instead.
#[test]
fn digests_stay_bounded_as_origins_grow() {
    for origins in [10, 1_000, 10_000] {
        let d = digest_sizes(origins);
        eprintln!("{d:?}");
        assert!(d.max_digest_bytes <= 8 << 10, "{d:?}");
        assert_eq!(d.other_frames, 0, "nothing missing, nothing repaired: {d:?}");
        let pieces = origins.div_ceil(128) as u64;
        assert_eq!(d.exchanges_to_cover, pieces, "{d:?}");
    }
}

/// A long partition (60 s, both halves broadcasting) at 1,000 nodes: after the heal every
/// node has every message exactly once (`plumcast sim --recovery` reports 10,000).
#[test]
fn after_a_long_partition_every_node_gets_every_message_once() {
    let r = crate::recovery::long_partition(1000, 60, 11);
    eprintln!("{r:?}");
    assert_eq!(r.messages, 40);
    assert_eq!(r.complete, r.messages, "{r:?}");
    assert!(r.converged_s.is_some() && r.duplicates == 0 && r.repaired > 0, "{r:?}");
}

/// 10% of 1,000 nodes stop, miss 60 s of broadcasts, restart from what they kept: every
/// node ends with every message, and nothing it had before the stop is delivered twice.
#[test]
fn restarted_nodes_catch_up_on_what_they_missed_and_deliver_nothing_twice() {
    let r = crate::recovery::restarts(1000, 10, 60, 12);
    eprintln!("{r:?}");
    assert_eq!(r.affected, 100);
    assert_eq!(r.messages, 44, "4 before the stop, 40 while down");
    assert_eq!(r.complete, r.messages, "{r:?}");
    assert!(r.converged_s.is_some() && r.duplicates == 0 && r.repaired > 0, "{r:?}");
}

#[test]
fn a_congested_uplink_keeps_the_tree_and_delivers_everything_once() {
    // One sender at 200 broadcasts/s of 256 bytes over 400 bytes/ms uplinks: a node with
    // five eager links is busy 80% of the time, so queues form at every relay, and the
    // IHaves wait in them behind the payloads (each node's uplink is one FIFO, as a QUIC
    // connection's stream is).
    let mut cfg = SimConfig::new(7);
    cfg.latency = Latency::Static { ms: 1.0 };
    cfg.payload_size = 256;
    cfg.protocol.broadcast.tree = proto::Tree::PerOrigin;
    cfg.protocol.broadcast.ihave_batch_window = Duration::from_millis(5);
    cfg.protocol.broadcast.graft_timeout_1 = broadcast::config::GRAFT_TIMEOUT_1;
    let mut sim = build_overlay(100, cfg, 10);
    sim.shuffle_paused = true;
    sim.set_uplink(Some(400.0));
    let origin = sim.live()[0];
    let grafts = sim.counters().grafts;
    let keys: Vec<_> = (0..2000)
        .map(|_| {
            let key = sim.broadcast(origin).unwrap();
            sim.run_for(Duration::from_millis(5));
            key
        })
        .collect();
    sim.run_for(Duration::from_secs(3));
    let (mut delivered, mut expected, mut payloads, mut duplicates) = (0u64, 0u64, 0u64, 0u64);
    for k in &keys {
        let t = sim.track(*k).unwrap();
        delivered += u64::from(t.delivered);
        expected += u64::from(t.expected);
        payloads += t.payload_msgs;
        duplicates += u64::from(t.duplicates);
    }
    assert_eq!((delivered, duplicates), (expected, 0));
    let rmr = payloads as f64 / delivered as f64 - 1.0;
    assert!(rmr <= 0.01, "RMR {rmr}");
    let grafts = sim.counters().grafts - grafts;
    assert!(grafts <= 20, "{grafts} Grafts for 2,000 broadcasts");
}
