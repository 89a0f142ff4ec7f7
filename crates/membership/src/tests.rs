use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::*;

type S = State<u32, ChaCha8Rng>;

fn node(me: u32) -> S {
    State::new(me, Config::lan(), ChaCha8Rng::seed_from_u64(me as u64))
}

fn sends(out: &[Output<u32>]) -> Vec<(u32, Message<u32>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, message } if *message != Message::Heartbeat => Some((*to, message.clone())),
            _ => None,
        })
        .collect()
}

fn events(out: &[Output<u32>]) -> Vec<Event<u32>> {
    out.iter().filter_map(|o| if let Output::Event(e) = o { Some(e.clone()) } else { None }).collect()
}

fn msg(s: &mut S, now: Instant, from: u32, m: Message<u32>) -> Vec<Output<u32>> {
    s.handle(now, Input::Message { from, message: m }).collect()
}

#[test]
fn join_sends_join_and_waits_for_reply() {
    let now = Instant::now();
    let mut a = node(1);
    let out: Vec<_> = a.handle(now, Input::Join { contact: 2 }).collect();
    assert_eq!(sends(&out), vec![(2, Message::Join)]);
    assert!(a.active_view().is_empty(), "active only after the handshake completes");
    let out = msg(&mut a, now, 2, Message::NeighborReply { accepted: true });
    assert_eq!(a.active_view(), &[2]);
    assert_eq!(events(&out), vec![Event::NeighborUp(2)]);
}

#[test]
fn contact_accepts_join_and_forwards_with_arwl() {
    let now = Instant::now();
    let mut c = node(1);
    msg(&mut c, now, 2, Message::Join);
    msg(&mut c, now, 3, Message::Join);
    let out = msg(&mut c, now, 4, Message::Join);
    assert_eq!(c.active_view(), &[2, 3, 4]);
    let s = sends(&out);
    assert_eq!(s[0], (4, Message::NeighborReply { accepted: true }));
    assert_eq!(
        &s[1..],
        &[(2, Message::ForwardJoin { joiner: 4, ttl: 6 }), (3, Message::ForwardJoin { joiner: 4, ttl: 6 })]
    );
}

#[test]
fn forward_join_at_prwl_adds_passive_and_forwards() {
    let now = Instant::now();
    let mut a = node(1);
    msg(&mut a, now, 2, Message::Join);
    msg(&mut a, now, 3, Message::Join);
    let out = msg(&mut a, now, 2, Message::ForwardJoin { joiner: 9, ttl: 3 });
    assert_eq!(a.passive_view(), &[9]);
    assert_eq!(sends(&out), vec![(3, Message::ForwardJoin { joiner: 9, ttl: 2 })]);
}

#[test]
fn forward_join_ends_with_high_priority_neighbor() {
    let now = Instant::now();
    let mut a = node(1);
    msg(&mut a, now, 2, Message::Join);
    msg(&mut a, now, 3, Message::Join);
    let out = msg(&mut a, now, 2, Message::ForwardJoin { joiner: 9, ttl: 0 });
    assert_eq!(sends(&out), vec![(9, Message::Neighbor { priority: Priority::High })]);
    // Only the sender in the active view: accept even with ttl left (paper Alg. 1).
    let mut b = node(5);
    msg(&mut b, now, 2, Message::Join);
    let out = msg(&mut b, now, 2, Message::ForwardJoin { joiner: 9, ttl: 5 });
    assert_eq!(sends(&out), vec![(9, Message::Neighbor { priority: Priority::High })]);
}

#[test]
fn low_priority_refused_when_full_high_evicts() {
    let now = Instant::now();
    let mut a = node(1);
    for p in 2..=6 {
        msg(&mut a, now, p, Message::Join);
    }
    assert_eq!(a.active_view().len(), 5);
    let out = msg(&mut a, now, 7, Message::Neighbor { priority: Priority::Low });
    assert_eq!(sends(&out), vec![(7, Message::NeighborReply { accepted: false })]);
    assert!(a.passive_view().contains(&7));
    let out = msg(&mut a, now, 8, Message::Neighbor { priority: Priority::High });
    let s = sends(&out);
    assert_eq!(s.len(), 2);
    assert!(matches!(s[0], (_, Message::Disconnect { alive: true })));
    assert_eq!(s[1], (8, Message::NeighborReply { accepted: true }));
    assert_eq!(a.active_view().len(), 5);
    assert!(a.is_active(&8));
    let ev = events(&out);
    assert!(matches!(ev[0], Event::NeighborDown { reason: DownReason::Evicted, .. }));
    assert_eq!(ev[1], Event::NeighborUp(8));
}

#[test]
fn disconnect_moves_to_passive_and_promotes() {
    let now = Instant::now();
    let mut a = node(1);
    msg(&mut a, now, 2, Message::Join);
    msg(&mut a, now, 3, Message::Neighbor { priority: Priority::Low });
    a.add_passive(9);
    let out = msg(&mut a, now, 2, Message::Disconnect { alive: true });
    assert_eq!(events(&out), vec![Event::NeighborDown { peer: 2, reason: DownReason::Evicted }]);
    assert!(a.passive_view().contains(&2));
    // Promotion with Low priority (active view not empty) to fill the free slots.
    let s = sends(&out);
    assert!(s.iter().all(|(_, m)| *m == Message::Neighbor { priority: Priority::Low }));
    assert_eq!(s.len(), 2);
    let out = msg(&mut a, now, 3, Message::Disconnect { alive: false });
    assert_eq!(events(&out), vec![Event::NeighborDown { peer: 3, reason: DownReason::Left }]);
    assert!(!a.passive_view().contains(&3));
}

#[test]
fn connection_lost_promotes_with_high_priority_when_empty() {
    let now = Instant::now();
    let mut a = node(1);
    msg(&mut a, now, 2, Message::Join);
    a.add_passive(7);
    let out: Vec<_> = a.handle(now, Input::ConnectionLost { peer: 2 }).collect();
    assert!(out.contains(&Output::Disconnect { peer: 2 }));
    assert_eq!(events(&out), vec![Event::NeighborDown { peer: 2, reason: DownReason::Failed }]);
    assert_eq!(sends(&out), vec![(7, Message::Neighbor { priority: Priority::High })]);
    // Rejected by 7? It stays passive, is not retried until the next shuffle round.
    let out = msg(&mut a, now, 7, Message::NeighborReply { accepted: false });
    assert!(sends(&out).is_empty());
    assert_eq!(a.passive_view(), &[7]);
}

#[test]
fn shuffle_walks_then_replies_to_origin() {
    let now = Instant::now();
    let mut a = node(1);
    msg(&mut a, now, 2, Message::Join);
    msg(&mut a, now, 3, Message::Join);
    let out = msg(&mut a, now, 2, Message::Shuffle { origin: 2, ttl: 4, nodes: vec![2, 10, 11] });
    assert_eq!(sends(&out), vec![(3, Message::Shuffle { origin: 2, ttl: 3, nodes: vec![2, 10, 11] })]);
    a.add_passive(20);
    let out = msg(&mut a, now, 2, Message::Shuffle { origin: 8, ttl: 0, nodes: vec![8, 10] });
    assert_eq!(sends(&out), vec![(8, Message::ShuffleReply { nodes: vec![20] })]);
    assert!(a.passive_view().contains(&8) && a.passive_view().contains(&10));
}

#[test]
fn shuffle_timer_sends_self_ka_kp() {
    let t0 = Instant::now();
    let mut a = node(1);
    for p in 2..=6 {
        msg(&mut a, t0, p, Message::Join);
    }
    for p in 10..20 {
        a.add_passive(p);
    }
    let out: Vec<_> = a.handle(t0, Input::Timer(Timer::Shuffle)).collect();
    let s = sends(&out);
    let (_, Message::Shuffle { origin, ttl, nodes }) = &s[0] else { panic!("expected a shuffle: {s:?}") };
    assert_eq!((*origin, *ttl, nodes.len()), (1, 6, 1 + 3 + 4));
    assert_eq!(nodes[0], 1);
}

#[test]
fn link_traffic_from_a_non_neighbor_is_answered_with_disconnect() {
    let now = Instant::now();
    let mut a = node(1);
    let out = msg(&mut a, now, 7, Message::Heartbeat);
    assert_eq!(sends(&out), vec![(7, Message::Disconnect { alive: true })]);
    assert!(a.passive_view().contains(&7));
    // A neighbour's heartbeat is just a heartbeat.
    msg(&mut a, now, 2, Message::Join);
    assert!(sends(&msg(&mut a, now, 2, Message::Heartbeat)).is_empty());
    // `heard` tells the host which peers are strangers.
    assert!(a.heard(now, &2));
    assert!(!a.heard(now, &9));
}

#[test]
fn failed_peer_is_probed_once_per_round_and_restored_even_into_a_full_view() {
    let now = Instant::now();
    let mut a = node(1);
    for p in 2..=6 {
        msg(&mut a, now, p, Message::Join);
    }
    assert_eq!(a.active_view().len(), 5);
    // Peer 6 fails (partition): it is remembered, not forgotten.
    let _: Vec<_> = a.handle(now, Input::ConnectionLost { peer: 6 }).collect();
    assert_eq!(a.departed().collect::<Vec<_>>(), vec![&6]);
    msg(&mut a, now, 7, Message::Join);
    assert_eq!(a.active_view().len(), 5, "refilled by someone else");
    // Next round: one Low probe to the departed peer.
    let out: Vec<_> = a.handle(now, Input::Timer(Timer::Shuffle)).collect();
    assert!(sends(&out).contains(&(6, Message::Neighbor { priority: Priority::Low })));
    assert_eq!(a.stats().reconnects_sent, 1);
    // Its Low request (it had lost us too) is accepted although the view is full.
    let mut b = node(6);
    for p in 10..=14 {
        msg(&mut b, now, p, Message::Join);
    }
    let _: Vec<_> = b.handle(now, Input::ConnectionLost { peer: 10 }).collect();
    msg(&mut b, now, 15, Message::Join);
    let out = msg(&mut b, now, 10, Message::Neighbor { priority: Priority::Low });
    assert!(sends(&out).contains(&(10, Message::NeighborReply { accepted: true })));
    assert!(b.is_active(&10) && b.active_view().len() == 5);
    assert_eq!(b.stats().links_restored, 1);
    assert_eq!(b.departed().count(), 0, "answered: forgotten");
    // A stranger's Low request into a full view is still refused.
    let out = msg(&mut b, now, 99, Message::Neighbor { priority: Priority::Low });
    assert!(sends(&out).contains(&(99, Message::NeighborReply { accepted: false })));
}

#[test]
fn departed_peers_are_bounded_and_expire() {
    let now = Instant::now();
    let cfg = Config { reconnect_capacity: 3, ..Config::lan() };
    let mut a = State::new(1u32, cfg.clone(), ChaCha8Rng::seed_from_u64(1));
    for p in 2..=6 {
        msg(&mut a, now, p, Message::Join);
    }
    for p in 2..=6 {
        let _: Vec<_> = a.handle(now, Input::ConnectionLost { peer: p }).collect();
    }
    assert_eq!(a.departed().count(), 3);
    assert_eq!(a.stats().reconnects_given_up, 2);
    let later = now + cfg.reconnect_timeout;
    let out: Vec<_> = a.handle(later, Input::Timer(Timer::Shuffle)).collect();
    assert_eq!(a.departed().count(), 0);
    assert!(!sends(&out).iter().any(|(_, m)| matches!(m, Message::Neighbor { .. })));
}

#[test]
fn phi_detects_silence_within_one_second_and_not_before() {
    let t0 = Instant::now();
    let mut a = node(1);
    msg(&mut a, t0, 2, Message::Join);
    // Healthy idle link: heartbeats every 100 ms for 60 s, with 150 ms jitter now and then.
    let mut t = t0;
    for i in 0..600u32 {
        t += Duration::from_millis(if i % 50 == 0 { 250 } else { 100 });
        msg(&mut a, t, 2, Message::Heartbeat);
        let out: Vec<_> = a.handle(t, Input::Timer(Timer::Heartbeat)).collect();
        assert!(!out.contains(&Output::Disconnect { peer: 2 }), "false suspicion at step {i}");
    }
    // Silence: declared down within 1 s.
    let last = t;
    let mut down_at = None;
    while t < last + Duration::from_secs(2) {
        t += Duration::from_millis(100);
        let out: Vec<_> = a.handle(t, Input::Timer(Timer::Heartbeat)).collect();
        if out.contains(&Output::Disconnect { peer: 2 }) {
            down_at = Some(t - last);
            break;
        }
    }
    let d = down_at.expect("never declared down");
    assert!(d <= Duration::from_secs(1), "took {d:?}");
    assert!(d >= Duration::from_millis(300), "too eager: {d:?}");
}

#[test]
fn rejoin_with_backoff_when_views_empty() {
    let t0 = Instant::now();
    let mut a = node(1);
    let out: Vec<_> = a.handle(t0, Input::Join { contact: 2 }).collect();
    let _ = out;
    let out: Vec<_> = a.handle(t0, Input::ConnectionLost { peer: 2 }).collect();
    let at = out.iter().find_map(|o| match o {
        Output::Timer { at, timer: Timer::Rejoin { attempt: 0 } } => Some(*at),
        _ => None,
    });
    assert_eq!(at, Some(t0 + Duration::from_millis(500)));
    let out: Vec<_> = a.handle(t0 + Duration::from_millis(500), Input::Timer(Timer::Rejoin { attempt: 0 })).collect();
    assert!(out.contains(&Output::Rejoin));
    assert!(out.iter().any(|o| matches!(o, Output::Timer { timer: Timer::Rejoin { attempt: 1 }, at } if *at == t0 + Duration::from_millis(1500))));
}

/// A tiny in-memory network: one FIFO queue, delivered in order (the randomness is in
/// each node's seeded RNG and the operation sequences of the tests, not in delivery).
/// A Disconnect travels as a Heartbeat marker and reaches the peer as ConnectionLost.
pub(crate) struct Net {
    nodes: BTreeMap<u32, S>,
    queue: VecDeque<(u32, u32, Message<u32>)>,
    now: Instant,
}

impl Net {
    fn new(n: u32, cap: usize) -> Self {
        let nodes = (0..n)
            .map(|i| {
                let cfg = Config { active_view_capacity: cap, passive_view_capacity: cap * 3, ..Config::lan() };
                (i, State::new(i, cfg, ChaCha8Rng::seed_from_u64(i as u64 * 7 + 1)))
            })
            .collect();
        Self { nodes, queue: VecDeque::new(), now: Instant::now() }
    }

    fn input(&mut self, at: u32, input: Input<u32>) {
        let Some(s) = self.nodes.get_mut(&at) else { return };
        let out: Vec<_> = s.handle(self.now, input).collect();
        for o in out {
            match o {
                Output::Send { to, message } if message != Message::Heartbeat => {
                    self.queue.push_back((at, to, message))
                }
                Output::Disconnect { peer } => self.queue.push_back((at, peer, Message::Heartbeat)),
                _ => {}
            }
        }
    }

    fn run(&mut self) {
        let mut steps = 0;
        while let Some((from, to, m)) = self.queue.pop_front() {
            steps += 1;
            assert!(steps < 1_000_000, "did not quiesce");
            if !self.nodes.contains_key(&to) {
                self.input(from, Input::ConnectionLost { peer: to });
                continue;
            }
            if m == Message::Heartbeat {
                // A closed connection reaches the other side as ConnectionLost.
                self.input(to, Input::ConnectionLost { peer: from });
                continue;
            }
            self.input(to, Input::Message { from, message: m });
            self.check();
        }
    }

    fn check(&self) {
        for (id, s) in &self.nodes {
            assert!(s.active_view().len() <= s.config().active_view_capacity);
            assert!(s.passive_view().len() <= s.config().passive_view_capacity);
            assert!(!s.active_view().contains(id) && !s.passive_view().contains(id));
            assert!(s.active_view().iter().all(|p| !s.passive_view().contains(p)));
        }
    }

    fn symmetric(&self) -> Result<(), String> {
        for (id, s) in &self.nodes {
            for p in s.active_view() {
                if let Some(o) = self.nodes.get(p)
                    && !o.is_active(id)
                {
                    return Err(format!("{id} has {p} active but not vice versa"));
                }
            }
        }
        Ok(())
    }
}

#[test]
fn fifty_concurrent_joins_through_one_contact_are_symmetric() {
    let mut net = Net::new(50, 5);
    for i in 1..50 {
        net.input(i, Input::Join { contact: 0 });
    }
    net.run();
    net.symmetric().unwrap();
    assert!(net.nodes.values().all(|s| !s.active_view().is_empty()));
}

proptest! {
    #![proptest_config(ProptestConfig { max_shrink_time: 10_000, ..ProptestConfig::default() })]

    /// Random joins, crashes, shuffles and leaves keep every invariant, and the active
    /// views are symmetric once the network is quiet.
    #[test]
    fn invariants_hold_over_random_operations(ops in proptest::collection::vec((0u8..5, 0u32..24, 0u32..24), 1..120)) {
        let mut net = Net::new(24, 4);
        for i in 1..12 {
            net.input(i, Input::Join { contact: 0 });
        }
        net.run();
        for (op, a, b) in ops {
            match op {
                0 => net.input(a, Input::Join { contact: b }),
                1 => net.input(a, Input::Timer(Timer::Shuffle)),
                2 => { net.nodes.remove(&a); }
                3 => net.input(a, Input::Leave),
                _ => net.input(a, Input::Timer(Timer::Heartbeat)),
            }
            net.run();
            net.check();
        }
        // Leavers keep no active view; everyone else is symmetric with live peers.
        let dead: Vec<u32> = (0..24).filter(|i| !net.nodes.contains_key(i)).collect();
        for d in dead {
            let ids: Vec<u32> = net.nodes.keys().copied().collect();
            for id in ids {
                if net.nodes[&id].is_active(&d) {
                    net.input(id, Input::ConnectionLost { peer: d });
                }
            }
        }
        net.run();
        prop_assert!(net.symmetric().is_ok(), "{:?}", net.symmetric());
    }
}

#[test]
fn a_flood_of_joins_forward_joins_and_shuffles_from_one_peer_is_cut_to_its_rate() {
    let now = Instant::now();
    let mut a = node(1);
    // Four neighbours, so every Join costs three ForwardJoins.
    for p in 2..6 {
        let _ = msg(&mut a, now, p, Message::Join);
    }
    let mut forwarded = 0;
    for _ in 0..1000 {
        forwarded += sends(&msg(&mut a, now, 9, Message::Join))
            .iter()
            .filter(|(_, m)| matches!(m, Message::ForwardJoin { .. }))
            .count();
    }
    let burst = config::JOIN_RATE.burst as usize;
    assert_eq!(a.stats().joins_limited, 1000 - burst as u64);
    assert!(forwarded <= burst * 4, "{forwarded} ForwardJoins for {burst} accepted Joins");
    for k in 0..1000u32 {
        let _ = msg(&mut a, now, 2, Message::ForwardJoin { joiner: 1000 + k, ttl: 3 });
        let _ = msg(&mut a, now, 3, Message::Shuffle { origin: 2000 + k, ttl: 0, nodes: vec![3000 + k] });
    }
    let s = a.stats();
    assert_eq!(s.forward_joins_limited, 1000 - u64::from(config::FORWARD_JOIN_RATE.burst));
    assert_eq!(s.shuffles_limited, 1000 - u64::from(config::SHUFFLE_RATE.burst));
    assert!(a.passive_view().len() <= Config::lan().passive_view_capacity);
    // A second later each peer has its rate's worth again.
    let later = now + Duration::from_secs(1);
    let _ = msg(&mut a, later, 9, Message::Join);
    assert_eq!(a.stats().joins_limited, 1000 - burst as u64, "the next Join is taken");
}
