//! `plumcast demo`: the main job. A local cluster broadcasts, loses a share of its nodes
//! abruptly, heals, and proves that every message broadcast after healing reached every
//! live node exactly once.

use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use plumcast::proto;
use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::cluster::{LocalCluster, Pick, Sample, payload, pct_ms};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 20)]
    nodes: usize,
    /// Broadcasts in all: half before the crash, up to a quarter while healing, a quarter after.
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Fraction of nodes to crash abruptly (0–0.9).
    #[arg(long, default_value_t = 0.25)]
    kill: f64,
    /// Seed for which nodes crash and who sends.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Give up healing after this many seconds.
    #[arg(long, default_value_t = 30)]
    heal_timeout_secs: u64,
    /// Serve the admin endpoint (the live overlay page at /, /metrics, /topology) from the
    /// first node that is not crashed: `PORT` binds 127.0.0.1:PORT, `HOST:PORT` as given.
    /// The cluster then stays up after the run until Ctrl-C.
    #[arg(long, value_name = "ADDR", value_parser = crate::http_addr)]
    http: Option<std::net::SocketAddr>,
}

struct Phase {
    name: &'static str,
    seqs: std::ops::Range<usize>,
    origins: Vec<usize>,
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(a.nodes >= 3, "--nodes must be at least 3");
    anyhow::ensure!(a.messages >= 8, "--messages must be at least 8");
    anyhow::ensure!((0.0..=0.9).contains(&a.kill), "--kill must be within 0..=0.9");
    let (n, m) = (a.nodes, a.messages);
    let bar = ProgressBar::new(m as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} broadcasts  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("starting {n} nodes"));
    // Which nodes crash is the seed's choice, known before they start: the admin endpoint
    // goes to the first node that survives.
    let k = (n as f64 * a.kill).round() as usize;
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(a.seed));
    let mut victims: Vec<usize> = order.into_iter().take(k).collect();
    victims.sort_unstable();
    let admin = a.http.and_then(|addr| (0..n).find(|i| !victims.contains(i)).map(|i| (i, addr)));
    let mut cluster = LocalCluster::start(n, m, proto::Config::local(), a.seed, true, admin).await?;
    if let Some((i, _)) = admin
        && let Some(h) = cluster.nodes[i].as_ref().and_then(|node| node.http_addr())
    {
        bar.println(format!("node {i} serves the overlay page on http://{h}/"));
    }
    let rec = cluster.rec.clone();
    bar.set_message("forming the overlay");
    if !cluster.wait_formed(Duration::from_millis(500), Duration::from_secs(30)).await {
        bar.abandon_with_message("the overlay did not form within 30 s");
        return Ok(ExitCode::FAILURE);
    }
    let mut pick = Pick::new(a.seed);
    let n_before = m / 2;
    let n_during_max = m / 4;
    let mut phases = Vec::new();

    // Phase 1: everyone alive.
    bar.set_message("broadcasting (all nodes alive)");
    let live = cluster.live();
    let mut origins = Vec::new();
    for seq in 0..n_before {
        let o = live[pick.below(live.len())];
        send(&cluster, o, seq).await?;
        origins.push(o);
        bar.inc(1);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    phases.push(Phase { name: "before the crash", seqs: 0..n_before, origins });
    wait_delivered(&cluster, &phases[0], Duration::from_secs(10)).await;
    let stats_before = cluster.stats().await;

    // Crash round(N × kill) nodes chosen by the seed.
    let names: Vec<String> =
        victims.iter().map(|i| format!("{i}{}", if *i == 0 { " (bootstrap)" } else { "" })).collect();
    bar.println(format!("crashing {k} of {n} nodes abruptly: {}", names.join(", ")));
    for i in &victims {
        if let Some(node) = cluster.nodes[*i].take() {
            node.crash();
        }
    }
    let t_kill = Instant::now();

    // Phase 2: broadcast while healing.
    bar.set_message("healing");
    let live = cluster.live();
    let mut origins = Vec::new();
    let mut seq = n_before;
    let heal_deadline = t_kill + Duration::from_secs(a.heal_timeout_secs);
    let mut heal_time = None;
    while Instant::now() < heal_deadline {
        if cluster.healed().await {
            heal_time = Some(t_kill.elapsed());
            break;
        }
        if seq < n_before + n_during_max {
            let o = live[pick.below(live.len())];
            send(&cluster, o, seq).await?;
            origins.push(o);
            seq += 1;
            bar.inc(1);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    phases.push(Phase { name: "while healing", seqs: n_before..seq, origins });
    let Some(heal_time) = heal_time else {
        bar.abandon_with_message(format!("not healed within {} s", a.heal_timeout_secs));
        println!("NOT HEALED within {} s", a.heal_timeout_secs);
        cluster.shutdown().await;
        return Ok(ExitCode::FAILURE);
    };
    bar.println(format!("healed {:.0} ms after the crash", heal_time.as_secs_f64() * 1e3));

    // Phase 3: after healing.
    bar.set_message("broadcasting after healing");
    let stats_mid = cluster.stats().await;
    let mut origins = Vec::new();
    let start_after = seq;
    bar.set_length((start_after + m - n_before - n_during_max) as u64);
    let end = start_after + (m - n_before - n_during_max);
    for s in start_after..end {
        let o = live[pick.below(live.len())];
        send(&cluster, o, s).await?;
        origins.push(o);
        bar.inc(1);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    phases.push(Phase { name: "after healing", seqs: start_after..end, origins });
    wait_delivered(&cluster, &phases[2], Duration::from_secs(10)).await;
    // Let late repairs of the healing phase land before counting it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats_end = cluster.stats().await;
    bar.finish_and_clear();

    // Report.
    let samples = rec.all_samples();
    let survivors = cluster.live();
    println!("plumcast demo: {n} nodes on 127.0.0.1 (QUIC), seed {}, {k} crashed abruptly\n", a.seed);
    println!(
        "| phase | broadcasts | receivers | delivery ratio | duplicates | latency p50 ms | p99 ms | LDH mean | LDH max |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut after_ok = false;
    for (pi, p) in phases.iter().enumerate() {
        let receivers: Vec<usize> = if pi == 0 { (0..n).collect() } else { survivors.clone() };
        let (mut got, mut want, mut dups) = (0usize, 0usize, 0usize);
        for (k, seq) in p.seqs.clone().enumerate() {
            for r in receivers.iter().filter(|r| **r != p.origins[k]) {
                let c = rec.count(*r, seq);
                want += 1;
                got += usize::from(c >= 1);
                dups += usize::from(c > 1);
            }
        }
        let ps: Vec<&Sample> = samples.iter().filter(|s| p.seqs.contains(&(s.seq as usize))).collect();
        let mut lat: Vec<u64> = ps.iter().map(|s| s.latency_ns).collect();
        lat.sort_unstable();
        let ldh: Vec<u32> = p
            .seqs
            .clone()
            .map(|seq| ps.iter().filter(|s| s.seq as usize == seq).map(|s| s.hops).max().unwrap_or(0))
            .collect();
        let ratio = if want == 0 { 1.0 } else { got as f64 / want as f64 };
        println!(
            "| {} | {} | {} | {:.2}% | {} | {:.2} | {:.2} | {:.1} | {} |",
            p.name,
            p.seqs.len(),
            receivers.len(),
            ratio * 100.0,
            dups,
            pct_ms(&lat, 0.5),
            pct_ms(&lat, 0.99),
            ldh.iter().map(|h| *h as f64).sum::<f64>() / ldh.len().max(1) as f64,
            ldh.iter().max().copied().unwrap_or(0)
        );
        if pi == 2 {
            after_ok = got == want && dups == 0;
        }
    }
    let rmr = |from: &[plumcast::NodeStats], to: &[plumcast::NodeStats], delivered: usize| {
        let sum = |v: &[plumcast::NodeStats]| v.iter().map(|s| s.broadcast.gossip_received).sum::<u64>();
        let data = sum(to).saturating_sub(sum(from)) as f64;
        if delivered == 0 { f64::NAN } else { data / delivered as f64 - 1.0 }
    };
    let delivered_in = |p: &Phase| samples.iter().filter(|s| p.seqs.contains(&(s.seq as usize))).count();
    let views: Vec<usize> = cluster.views().await.iter().map(|(_, v)| v.len()).collect();
    println!();
    println!("| metric | value |\n|---|---|");
    println!(
        "| time to heal (no dead peer in any active view, survivors connected) | {:.0} ms |",
        heal_time.as_secs_f64() * 1e3
    );
    println!(
        "| RMR before the crash (includes the tree forming) | {:.3} |",
        rmr(&[], &stats_before, delivered_in(&phases[0]))
    );
    println!("| RMR after healing (survivors) | {:.3} |", rmr(&stats_mid, &stats_end, delivered_in(&phases[2])));
    println!(
        "| active-view sizes of survivors (min / mean / max) | {} / {:.1} / {} |",
        views.iter().min().copied().unwrap_or(0),
        views.iter().sum::<usize>() as f64 / views.len().max(1) as f64,
        views.iter().max().copied().unwrap_or(0)
    );
    println!("| duplicate deliveries (any phase) | {} |", rec.duplicates.load(Relaxed));
    let failures: u64 = stats_end.iter().map(|s| s.membership.failures_detected).sum();
    println!("| failures detected by survivors | {failures} |");
    let ok = after_ok && rec.duplicates.load(Relaxed) == 0;
    println!(
        "\n{}",
        if ok {
            "OK: healed, and every message broadcast after healing reached every other live node exactly once."
        } else {
            "FAILED: a message broadcast after healing missed a live node or was delivered twice."
        }
    );
    if let Some((i, _)) = admin
        && let Some(h) = cluster.nodes[i].as_ref().and_then(|node| node.http_addr())
    {
        eprintln!("the cluster stays up for the page on http://{h}/; Ctrl-C stops it");
        let _ = tokio::signal::ctrl_c().await;
    }
    cluster.shutdown().await;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn send(cluster: &LocalCluster, origin: usize, seq: usize) -> anyhow::Result<()> {
    let rec = &cluster.rec;
    if let Some(node) = &cluster.nodes[origin] {
        node.broadcast(payload(seq as u32, rec.now_ns(), origin as u16, false, 64)).await?;
    }
    Ok(())
}

/// Wait (bounded) until every live node other than the origin has each message of `p`.
async fn wait_delivered(cluster: &LocalCluster, p: &Phase, timeout: Duration) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        let live = cluster.live();
        let done = p
            .seqs
            .clone()
            .enumerate()
            .all(|(k, seq)| live.iter().filter(|r| **r != p.origins[k]).all(|r| cluster.rec.count(*r, seq) >= 1));
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
