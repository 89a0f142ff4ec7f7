//! `plumcast bench`: the peer-bench contract (../shared/peer-bench/README.md). N nodes in
//! one process, each with its own QUIC endpoint on 127.0.0.1, joined through node 0; one
//! JSON line on stdout (and a human table with `--table`).

use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use plumcast::proto;
use serde_json::json;

use crate::cluster::{HEADER, LocalCluster, Pick, cpu_secs, payload, pct_ms, rss_bytes};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Node 0 sends every message.
    Single,
    /// A random node sends each message.
    Random,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 20)]
    nodes: usize,
    /// Measured broadcasts.
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Payload size, bytes (at least 16).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Who sends.
    #[arg(long, value_enum, default_value = "single")]
    mode: Mode,
    /// Broadcasts per second; 0 = as fast as the node accepts them.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Unmeasured broadcasts from node 0 before measuring.
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// Sender-choice seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also print a human-readable table.
    #[arg(long)]
    table: bool,
    /// Instead of the broadcast benchmark, measure anti-entropy catch-up over loopback:
    /// one node broadcasts --messages alone, then a new node (replaying the history)
    /// joins it; prints messages recovered per second.
    #[arg(long)]
    catch_up: bool,
    /// Instead of the broadcast benchmark, measure what a data dir costs: --messages own
    /// broadcasts of one node alone (each durable, fsynced, before `broadcast` returns),
    /// and a catch-up of --messages into a new node, each with and without a data dir
    /// (in the system temp dir).
    #[arg(long)]
    store: bool,
    /// Instead of the broadcast benchmark, measure the signature work alone on one core:
    /// signing batches, checking proofs that need an Ed25519 verification, and proofs of
    /// a batch whose root was verified before; one JSON row each.
    #[arg(long)]
    signatures: bool,
    /// Messages unsigned (by default they are signed and every node checks them).
    #[arg(long)]
    unsigned: bool,
    /// No topology records (the admin page's overlay picture), as `plumcast node
    /// --no-topology`.
    #[arg(long)]
    no_topology: bool,
    /// Spanning trees: one per origin (the default) or one shared tree (the paper).
    #[arg(long, value_enum, default_value = "per-origin")]
    tree: TreeArg,
    /// IHave batching window, ms (default: the LAN preset's, 5 ms): how long a node
    /// gathers announcements for a lazy link before it sends them as one frame.
    #[arg(long, value_name = "MS")]
    ihave_window_ms: Option<u64>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreeArg {
    /// One tree per origin.
    PerOrigin,
    /// One shared tree (Plumtree paper).
    Shared,
}

impl From<TreeArg> for proto::Tree {
    fn from(t: TreeArg) -> Self {
        match t {
            TreeArg::PerOrigin => proto::Tree::PerOrigin,
            TreeArg::Shared => proto::Tree::Shared,
        }
    }
}

/// A payload of `size` bytes (at least 4) starting with `k`, so that equal sizes still
/// make distinct messages.
fn numbered(k: usize, size: usize) -> Vec<u8> {
    let mut p = vec![0u8; size.max(4)];
    p[..4].copy_from_slice(&(k as u32).to_le_bytes());
    p
}

/// A fresh directory for one data dir under the system temp dir.
fn temp_data_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("plumcast-bench-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `--signatures`: sign `--messages` in batches of one and of [`plumcast::sign::MAX_BATCH`],
/// then check each proof at a fresh receiver (every batch of one needs a verification;
/// in full batches all but the first message hit the cache of verified roots).
fn signatures(a: &Args) -> anyhow::Result<ExitCode> {
    use plumcast::proto::broadcast::Authenticator;
    use plumcast::proto::{Envelope, MessageId};
    let m = a.messages.max(1);
    let origin = plumcast::Identity::generate()?;
    for batch in [1, plumcast::sign::MAX_BATCH] {
        let mut signer = plumcast::sign::Signatures::new(&origin).map_err(anyhow::Error::msg)?;
        let mut envelopes: Vec<(Envelope<plumcast::NodeId>, MessageId)> = (0..m)
            .map(|k| {
                let e = Envelope::new(origin.node_id(), 1, k as u64 + 1, numbered(k, a.size).into());
                let id = e.id();
                (e, id)
            })
            .collect();
        let t = Instant::now();
        for chunk in envelopes.chunks_mut(batch) {
            let ids: Vec<MessageId> = chunk.iter().map(|(_, id)| *id).collect();
            for ((e, _), proof) in chunk.iter_mut().zip(signer.sign(&ids)) {
                e.proof = proof;
            }
        }
        let sign_s = t.elapsed().as_secs_f64();
        let mut receiver =
            plumcast::sign::Signatures::new(&plumcast::Identity::generate()?).map_err(anyhow::Error::msg)?;
        let t = Instant::now();
        let ok = envelopes.iter().filter(|(e, id)| receiver.verify(e, id)).count();
        let check_s = t.elapsed().as_secs_f64();
        anyhow::ensure!(ok == m, "only {ok} of {m} proofs checked");
        let row = json!({
            "bench": "signatures", "messages": m, "size": a.size, "batch": batch,
            "proof_bytes": envelopes[0].0.proof.len(),
            "signed_per_s": round1(m as f64 / sign_s.max(1e-9)),
            "checked_per_s": round1(m as f64 / check_s.max(1e-9)),
            "verifications": receiver.verifications(),
            "us_per_check": round3(check_s * 1e6 / m as f64),
        });
        println!("{row}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `--store`: own broadcasts and a catch-up, with and without a data dir.
async fn store(a: &Args) -> anyhow::Result<ExitCode> {
    let m = a.messages;
    let mut rows = Vec::new();
    for durable in [false, true] {
        let dir = temp_data_dir("own");
        let mut b = plumcast::Node::builder().bind("127.0.0.1:0".parse()?).sign_messages(!a.unsigned);
        if durable {
            b = b.data_dir(&dir);
        }
        let (node, _events) = b.spawn().await?;
        let start = Instant::now();
        for k in 0..m {
            node.broadcast(numbered(k, a.size)).await?;
        }
        let secs = start.elapsed().as_secs_f64();
        node.shutdown().await?;
        let _ = std::fs::remove_dir_all(&dir);
        rows.push(("own broadcasts", durable, m, secs));
        let dir = temp_data_dir("late");
        let (got, secs, _, _) = catch_up_run(a, durable.then_some(dir.as_path())).await?;
        let _ = std::fs::remove_dir_all(&dir);
        rows.push(("catch-up (received)", durable, got, secs));
    }
    for (what, durable, n, secs) in &rows {
        let row = json!({
            "impl": concat!("plumcast ", env!("CARGO_PKG_VERSION")), "bench": "store", "what": what,
            "data_dir": durable, "messages": n, "size": a.size, "secs": round3(*secs),
            "messages_per_s": round1(*n as f64 / secs.max(1e-9)), "us_per_message": round1(secs * 1e6 / (*n).max(1) as f64),
        });
        println!("{row}");
    }
    if a.table {
        println!(
            "| what | data dir | messages | size B | seconds | messages/s | µs per message |
|---|---|---|---|---|---|---|"
        );
        for (what, durable, n, secs) in &rows {
            println!(
                "| {what} | {} | {n} | {} | {secs:.2} | {:.0} | {:.1} |",
                if *durable { "yes" } else { "no" },
                a.size,
                *n as f64 / secs.max(1e-9),
                secs * 1e6 / (*n).max(1) as f64
            );
        }
    }
    let complete = rows.iter().all(|(_, _, n, _)| *n == m);
    Ok(if complete { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// One catch-up: a node broadcasts `--messages` alone, then a new node (on `late_dir` if
/// given) replaying the history joins it. Returns the messages recovered, the seconds
/// and the process CPU seconds from the join, and the new node's stats.
async fn catch_up_run(
    a: &Args,
    late_dir: Option<&std::path::Path>,
) -> anyhow::Result<(usize, f64, f64, plumcast::NodeStats)> {
    let m = a.messages;
    let mut config = proto::Config::lan();
    config.broadcast.retention.max_messages = config.broadcast.retention.max_messages.max(m);
    let (origin, _events) =
        plumcast::Node::builder().protocol(config.clone()).sign_messages(!a.unsigned).spawn().await?;
    for k in 0..m {
        origin.broadcast(numbered(k, a.size)).await?;
    }
    let start = Instant::now();
    let cpu0 = cpu_secs();
    let mut b = plumcast::Node::builder()
        .protocol(config)
        .replay_history(true)
        .bootstrap(origin.addr())
        .sign_messages(!a.unsigned);
    if let Some(d) = late_dir {
        b = b.data_dir(d);
    }
    let (late, mut events) = b.spawn().await?;
    let mut got = 0usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    while got < m && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Some(plumcast::Event::Delivered(_))) => got += 1,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    let s = late.stats().await?;
    late.shutdown().await?;
    origin.shutdown().await?;
    Ok((got, secs, cpu, s))
}

/// `--catch-up`: how fast anti-entropy brings a node everything it lacks.
async fn catch_up(a: &Args) -> anyhow::Result<ExitCode> {
    let m = a.messages;
    let (got, secs, cpu, s) = catch_up_run(a, None).await?;
    let row = json!({
        "impl": concat!("plumcast ", env!("CARGO_PKG_VERSION")), "bench": "catch-up", "signed": !a.unsigned,
        "messages": m, "size": a.size, "recovered": got, "complete": got == m,
        "secs": round3(secs), "messages_per_s": round1(got as f64 / secs.max(1e-9)),
        "repairs_received": s.broadcast.repaired_received, "digests_sent": s.broadcast.digests_sent,
        "verifications": s.signatures.verifications, "signature_cache_hits": s.signatures.cache_hits,
        "cpu_s": round3(cpu),
    });
    println!("{row}");
    if a.table {
        println!("| messages | size B | recovered | seconds (from the join) | messages/s |\n|---|---|---|---|---|");
        println!("| {m} | {} | {got} | {secs:.2} | {:.0} |", a.size, got as f64 / secs.max(1e-9));
    }
    Ok(if got == m { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    if a.catch_up {
        return catch_up(&a).await;
    }
    if a.store {
        return store(&a).await;
    }
    if a.signatures {
        return signatures(&a);
    }
    anyhow::ensure!(a.nodes >= 2, "--nodes must be at least 2");
    anyhow::ensure!(a.size >= HEADER, "--size must be at least {HEADER}");
    anyhow::ensure!(a.messages >= 1 && a.messages < u32::MAX as usize, "--messages out of range");
    let (n, m) = (a.nodes, a.messages);
    let mut config = proto::Config::lan();
    config.broadcast.tree = a.tree.into();
    if let Some(ms) = a.ihave_window_ms {
        config.broadcast.ihave_batch_window = Duration::from_millis(ms);
    }
    if a.no_topology {
        config.topology = proto::topology::Config::off();
    }
    let cluster = LocalCluster::start(n, m, config, a.seed, !a.unsigned, None).await?;
    let rec = cluster.rec.clone();
    let formed = cluster.wait_formed(Duration::from_secs(1), Duration::from_secs(60)).await;
    let formed_s = rec.t0.elapsed().as_secs_f64();
    let nodes: Vec<&plumcast::Node> = cluster.nodes.iter().flatten().collect();

    if a.warmup > 0 {
        for w in 0..a.warmup {
            nodes[0].broadcast(payload(w as u32, 0, 0, true, a.size)).await?;
        }
        let want = (a.warmup * (n - 1)) as u64;
        let end = Instant::now() + Duration::from_secs(20);
        while rec.warm_delivered.load(Relaxed) < want && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let before = cluster.stats().await;
    let data_before: u64 = before.iter().map(|s| s.broadcast.gossip_received).sum();
    let ctrl_before: u64 = before.iter().map(|s| s.net.frames_sent).sum();

    let mut pick = Pick::new(a.seed);
    let mut sent_ns = vec![0u64; m];
    let cpu0 = cpu_secs();
    let start_ns = rec.now_ns();
    let start = Instant::now();
    for (seq, sent) in sent_ns.iter_mut().enumerate() {
        if a.rate > 0.0 {
            tokio::time::sleep_until((start + Duration::from_secs_f64(seq as f64 / a.rate)).into()).await;
        }
        let origin = if a.mode == Mode::Random { pick.below(n) } else { 0 };
        *sent = rec.now_ns();
        rec.got[seq].fetch_add(1, Relaxed); // the origin "has" its own message
        nodes[origin].broadcast(payload(seq as u32, *sent, origin as u16, false, a.size)).await?;
    }
    let send_s = start.elapsed().as_secs_f64();
    let expected = (m * (n - 1)) as u64;
    let (mut last, mut progress) = (0, Instant::now());
    let complete = loop {
        let d = rec.delivered.load(Relaxed);
        if d >= expected {
            break true;
        }
        if d != last {
            (last, progress) = (d, Instant::now());
        } else if progress.elapsed() > Duration::from_secs(5) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let end_ns = rec.last_ns.iter().map(|x| x.load(Relaxed)).max().unwrap_or(0);
    let total_s = end_ns.saturating_sub(start_ns) as f64 / 1e9;
    let wall_s = start.elapsed().as_secs_f64();
    let cpu_s = cpu_secs() - cpu0;
    let rss = rss_bytes();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let after = cluster.stats().await;
    let delta = |f: fn(&plumcast::NodeStats) -> u64| -> u64 {
        after.iter().map(f).sum::<u64>().saturating_sub(before.iter().map(f).sum::<u64>())
    };
    let grafts = delta(|s| s.broadcast.grafts_sent);
    let prunes = delta(|s| s.broadcast.prunes_sent);
    let optimizations = delta(|s| s.broadcast.optimizations);
    let overtaken = delta(|s| s.broadcast.grafts_overtaken);
    let regrafts = delta(|s| s.broadcast.regrafts);
    let upstream_repairs = delta(|s| s.broadcast.upstream_repairs);
    let graft_timeout_ms_max = after.iter().map(|s| s.broadcast.graft_timeout_us).max().unwrap_or(0) as f64 / 1e3;
    let failures = delta(|s| s.membership.failures_detected);
    let evictions = delta(|s| s.membership.evictions);
    let catch_ups = delta(|s| s.broadcast.catch_ups);
    let disconnects = delta(|s| s.membership.disconnects_received);
    let strangers = delta(|s| s.membership.strangers_rejected);
    let data_recv: u64 = after.iter().map(|s| s.broadcast.gossip_received).sum::<u64>() - data_before;
    let frames: u64 = after.iter().map(|s| s.net.frames_sent).sum::<u64>() - ctrl_before;
    let delivered = rec.delivered.load(Relaxed);
    let samples = rec.all_samples();
    let mut lat: Vec<u64> = samples.iter().map(|s| s.latency_ns).collect();
    lat.sort_unstable();
    let max_hops = samples.iter().map(|s| s.hops).max().unwrap_or(0);
    let avg_hops = samples.iter().map(|s| s.hops as f64).sum::<f64>() / samples.len().max(1) as f64;
    let mut full: Vec<u64> = (0..m)
        .filter(|s| rec.got[*s].load(Relaxed) as usize == n)
        .map(|s| rec.last_ns[s].load(Relaxed).saturating_sub(sent_ns[s]))
        .collect();
    full.sort_unstable();
    let rmr = if delivered > 0 { data_recv as f64 / delivered as f64 - 1.0 } else { f64::NAN };
    let span = total_s.max(send_s).max(1e-9);
    let row = json!({
        "impl": concat!("plumcast ", env!("CARGO_PKG_VERSION")), "tree": format!("{:?}", a.tree),
        "signed": !a.unsigned, "topology": !a.no_topology,
        "signed_batches": delta(|s| s.signatures.signed_batches),
        "verifications": delta(|s| s.signatures.verifications),
        "signature_cache_hits": delta(|s| s.signatures.cache_hits),
        "nodes": n, "messages": m, "size": a.size,
        "mode": if a.mode == Mode::Random { "random" } else { "single" },
        "rate": a.rate, "warmup": a.warmup,
        "formed": formed, "formed_s": round3(formed_s),
        "complete": complete && rec.duplicates.load(Relaxed) == 0,
        "delivered": delivered, "expected": expected,
        "duplicates": rec.duplicates.load(Relaxed),
        "msgs_fully_delivered": full.len(),
        "lat_p50_ms": round3(pct_ms(&lat, 0.50)), "lat_p99_ms": round3(pct_ms(&lat, 0.99)),
        "lat_max_ms": round3(pct_ms(&lat, 1.0)),
        "all_nodes_p50_ms": round3(pct_ms(&full, 0.50)), "all_nodes_p99_ms": round3(pct_ms(&full, 0.99)),
        "send_s": round3(send_s), "total_s": round3(total_s),
        "bcast_per_s": round1(m as f64 / span), "deliveries_per_s": round1(delivered as f64 / span),
        "data_recv": data_recv, "rmr": round3(rmr), "frames_sent": frames,
        "grafts": grafts, "prunes": prunes, "optimizations": optimizations, "grafts_overtaken": overtaken,
        "regrafts": regrafts, "upstream_repairs": upstream_repairs, "graft_timeout_ms_max": round3(graft_timeout_ms_max), "failures_detected": failures, "evictions": evictions, "catch_ups": catch_ups,
        "disconnects": disconnects, "strangers_rejected": strangers,
        "avg_hops": round3(avg_hops), "max_hops": max_hops,
        "cpu_s": round3(cpu_s), "cpu_util": round3(cpu_s / wall_s.max(1e-9)),
        "cpu_us_per_delivery": round3(cpu_s * 1e6 / delivered.max(1) as f64),
        "rss_bytes": rss, "rss_per_node_bytes": rss / n as u64,
    });
    println!("{row}");
    if a.table {
        println!("| metric | value |\n|---|---|");
        for k in [
            "nodes",
            "messages",
            "mode",
            "rate",
            "complete",
            "delivered",
            "expected",
            "deliveries_per_s",
            "lat_p50_ms",
            "lat_p99_ms",
            "all_nodes_p99_ms",
            "rmr",
            "avg_hops",
            "max_hops",
            "cpu_util",
            "cpu_us_per_delivery",
            "rss_per_node_bytes",
        ] {
            // Text as it is, not as a JSON string literal.
            match &row[k] {
                serde_json::Value::String(text) => println!("| {k} | {text} |"),
                v => println!("| {k} | {v} |"),
            }
        }
    }
    drop(nodes);
    let mut cluster = cluster;
    cluster.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

fn round3(x: f64) -> f64 {
    if x.is_finite() { (x * 1e3).round() / 1e3 } else { -1.0 }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
