//! `plumcast node`: one node as a process, stdin → broadcast, deliveries → stdout.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use plumcast::{Event, Node, proto};
use serde_json::json;
use tokio::sync::mpsc;

/// A `--bootstrap` value, checked when the command line is parsed.
fn contact(s: &str) -> Result<String, String> {
    plumcast::config::check_contact(s).map(|()| s.to_string())
}

/// Lines read ahead of the broadcasts (the reader waits beyond it).
const STDIN_QUEUE: usize = 64;

/// Protocol presets.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Preset {
    /// LAN: paper view sizes, failure detection in about 0.65 s.
    Lan,
    /// WAN: slower heartbeats and timers.
    Wan,
    /// Many nodes on one machine.
    Local,
}

impl Preset {
    pub fn config(self) -> proto::Config {
        match self {
            Self::Lan => proto::Config::lan(),
            Self::Wan => proto::Config::wan(),
            Self::Local => proto::Config::local(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Lan => "lan",
            Self::Wan => "wan",
            Self::Local => "local",
        }
    }
}

/// Delivery order.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum OrderArg {
    /// As messages arrive (lowest latency).
    None,
    /// FIFO per origin: a message waits for its origin's earlier ones (at most 60 s).
    PerOrigin,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// UDP address to listen on (default 127.0.0.1:0).
    #[arg(long)]
    bind: Option<SocketAddr>,
    /// Contact to join through: IP:PORT or HOST:PORT. Repeatable.
    #[arg(long, value_parser = contact)]
    bootstrap: Vec<String>,
    /// Address other nodes should dial (default: the bound address).
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// PKCS#8 key file; created if missing. Default: a fresh identity each run.
    #[arg(long)]
    identity: Option<PathBuf>,
    /// Cluster name: nodes of other clusters are refused (default "plumcast").
    #[arg(long)]
    cluster: Option<String>,
    /// One JSON object per stdout line.
    #[arg(long)]
    json: bool,
    /// Protocol preset: the first layer of the configuration, under --config, the
    /// PLUMCAST_* environment and the flags.
    #[arg(long, value_enum, default_value = "lan")]
    preset: Preset,
    /// A TOML file of settings with the field names of NodeConfig (durations as "80ms",
    /// "5s"); unknown keys are an error. `plumcast config print` shows the result.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Keep identity, messages, deliveries and views here (created if missing): a restart
    /// on the same dir with no --bootstrap rejoins, catches up and delivers nothing twice.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Delivery order (default: as messages arrive).
    #[arg(long, value_enum)]
    ordering: Option<OrderArg>,
    /// Admit only this peer (a NodeId, 64 hex characters; `plumcast id` prints one).
    /// Repeatable; with --allow-file the lists add up. Default: every peer is admitted.
    #[arg(long, value_name = "NODE_ID")]
    allow: Vec<plumcast::NodeId>,
    /// Admit only the ids in this file (one a line, `#` comments), read again every 5 s
    /// and on SIGHUP; links to peers no longer listed are closed.
    #[arg(long, value_name = "PATH")]
    allow_file: Option<PathBuf>,
    /// Present this certificate (DER, from `plumcast ca issue` for --identity's key); read
    /// again every 5 s and on SIGHUP.
    #[arg(long, requires = "identity")]
    cert: Option<PathBuf>,
    /// Accept only peers whose certificate chains to this CA certificate (DER,
    /// `DIR/ca.crt` of `plumcast ca init`); read again every 5 s and on SIGHUP, links to
    /// peers that no longer chain to it are closed.
    #[arg(long, value_name = "CA_CRT")]
    ca: Option<PathBuf>,
    /// Send messages unsigned and take unsigned ones (by default every message is signed
    /// by its origin and checked by every node). Every node of a cluster must agree.
    #[arg(long)]
    unsigned: bool,
    /// Serve the admin endpoint (/metrics, /topology, the live page /) over HTTP: `PORT`
    /// binds 127.0.0.1:PORT, `HOST:PORT` binds as given.
    #[arg(long, value_name = "ADDR", value_parser = crate::http_addr)]
    http: Option<SocketAddr>,
    /// Send no topology records and pass none on (the admin page then shows only what
    /// this node sees itself).
    #[arg(long)]
    no_topology: bool,
    /// How long to wait for the first neighbour before broadcasting stdin, seconds.
    #[arg(long, default_value_t = 10)]
    wait_neighbor_secs: u64,
}

/// The configuration of `a`: its preset, its --config file, the PLUMCAST_* environment,
/// then its flags.
pub fn layered(a: &Args) -> anyhow::Result<crate::config::Layered> {
    let mut c = crate::config::Layered::preset(a.preset.name(), a.preset.config())?;
    if let Some(f) = &a.config {
        c.file(f)?;
    }
    c.env(std::env::vars())?;
    let s = |v: &dyn ToString| serde_json::Value::String(v.to_string());
    if let Some(bind) = a.bind {
        c.flag("bind", s(&bind), "bind")?;
    }
    if !a.bootstrap.is_empty() {
        c.flag("bootstrap", json!(a.bootstrap), "bootstrap")?;
    }
    if let Some(adv) = a.advertise {
        c.flag("advertise", s(&adv), "advertise")?;
    }
    if let Some(cluster) = &a.cluster {
        c.flag("cluster", s(cluster), "cluster")?;
    }
    if let Some(o) = a.ordering {
        let o = match o {
            OrderArg::None => proto::Ordering::None,
            OrderArg::PerOrigin => proto::Ordering::PerOrigin,
        };
        c.flag("protocol.broadcast.ordering", serde_json::to_value(o)?, "ordering")?;
    }
    if a.unsigned {
        c.flag("sign_messages", json!(false), "unsigned")?;
    }
    if let Some(http) = a.http {
        c.flag("http", s(&http), "http")?;
    }
    if a.no_topology {
        c.flag("protocol.topology.interval", serde_json::Value::Null, "no-topology")?;
    }
    Ok(c)
}

/// `plumcast config print`.
pub fn print_config(a: &Args) -> anyhow::Result<ExitCode> {
    let c = layered(a)?;
    c.config()?;
    print!("{}", c.print());
    Ok(ExitCode::SUCCESS)
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let config = layered(&a)?.config()?;
    let mut b = Node::builder().config(config);
    if let Some(dir) = &a.data_dir {
        b = b.data_dir(dir);
    }
    if let Some(path) = &a.identity {
        b = b.identity_file(path).context("--identity")?;
    }
    if !a.allow.is_empty() {
        b = b.allow(a.allow.iter().copied());
    }
    if let Some(path) = &a.allow_file {
        b = b.allow_file(path);
    }
    if let Some(path) = &a.cert {
        b = b.certificate_file(path);
    }
    if let Some(path) = &a.ca {
        b = b.cluster_ca_file(path);
    }
    // The handlers are in place before anything is printed: a signal sent as soon as the
    // node says it listens must find them, not the default action (which kills).
    let mut stop = Stop::new().context("installing the SIGINT and SIGTERM handlers")?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let (node, mut events) = b.spawn().await.context("starting the node")?;
    let reloader = node.clone();
    let has_file = a.allow_file.is_some() || a.ca.is_some() || a.cert.is_some();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            if !has_file {
                tracing::info!("SIGHUP: no --allow-file, --ca or --cert to read again");
                continue;
            }
            match reloader.reload_admission().await {
                Ok(n) => tracing::info!(ids = n, "SIGHUP: allow-list and certificates read again"),
                Err(plumcast::Error::Stopped) => break,
                Err(e) => tracing::warn!("SIGHUP: {e}; the list in force is kept"),
            }
        }
    });
    let json = a.json;
    if json {
        let http = node.http_addr().map(|a| a.to_string());
        println!(
            "{}",
            json!({"event": "listening", "addr": node.addr().to_string(), "id": node.id().to_hex(), "http": http})
        );
    } else {
        eprintln!("listening on {} as {}", node.addr(), node.id());
        if let Some(h) = node.http_addr() {
            eprintln!("admin endpoint on http://{h}/ (/metrics, /topology)");
        }
    }
    let printer = tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            print_event(&ev, json);
        }
    });
    let mut stopped = false;
    if !a.bootstrap.is_empty() {
        tokio::select! {
            r = node.wait_for_neighbors(1, Duration::from_secs(a.wait_neighbor_secs)) => {
                if let Err(e) = r {
                    tracing::warn!("no neighbour yet ({e}); broadcasting anyway");
                }
            }
            () = stop.signalled() => stopped = true,
        }
    }
    let mut refused = 0u64;
    let mut read_error = None;
    // A signal during the wait for a neighbour skips reading stdin.
    let lines = (!stopped).then(stdin_lines);
    if let Some(mut lines) = lines {
        loop {
            tokio::select! {
                line = lines.recv() => match line {
                    Some(Ok(line)) if line.is_empty() => {}
                    Some(Ok(line)) => match node.broadcast(line).await {
                        Ok(_) => {}
                        Err(e @ plumcast::Error::PayloadTooLarge { .. }) => {
                            refused += 1;
                            tracing::error!("line refused: {e}");
                        }
                        Err(e) => {
                            tracing::error!("broadcast failed: {e}");
                            break;
                        }
                    },
                    Some(Err(e)) => {
                        read_error = Some(e);
                        break;
                    }
                    None => break,
                },
                () = stop.signalled() => break,
            }
        }
    }
    node.shutdown().await.context("shutting down")?;
    let _ = printer.await;
    if let Some(e) = read_error {
        anyhow::bail!("reading stdin: {e}");
    }
    if refused > 0 {
        eprintln!("error: {refused} line(s) refused (larger than the payload limit); the others were sent");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGINT and SIGTERM, each of which ends the node gracefully.
struct Stop {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Stop {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self { interrupt: signal(SignalKind::interrupt())?, terminate: signal(SignalKind::terminate())? })
    }

    /// Wait for either signal.
    async fn signalled(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// Stdin as lines of bytes (without the `\n` or `\r\n`), read on a thread of its own: a
/// blocking read there cannot hold up the runtime's shutdown after a signal (tokio's
/// stdin reader would: the runtime waits for its blocking pool). Payloads are bytes, so a
/// line need not be UTF-8. The channel ends at EOF; a read error is its last item.
fn stdin_lines() -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(STDIN_QUEUE);
    let spawned = std::thread::Builder::new().name("plumcast-stdin".into()).spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut line = Vec::new();
            let item = match stdin.read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    }
                    Ok(line)
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let last = item.is_err();
            if tx.blocking_send(item).is_err() || last {
                return;
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!("cannot start the stdin reader: {e}");
    }
    rx
}

/// A peer's payload as text for a terminal: invalid UTF-8 replaced, control characters
/// escaped (`\u{1b}`), so that what a peer sends cannot drive the terminal.
fn printable(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload)
        .chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

fn print_event(ev: &Event, json: bool) {
    match (ev, json) {
        (Event::Delivered(d), true) => {
            let mut o = json!({
                "event": "delivered", "id": d.id.to_hex(), "origin": d.origin.to_hex(),
                "incarnation": d.incarnation, "seq": d.seq, "hops": d.hops, "recovered": d.recovered,
            });
            match std::str::from_utf8(&d.payload) {
                Ok(s) => o["payload"] = json!(s),
                Err(_) => o["payload_b64"] = json!(base64::engine::general_purpose::STANDARD.encode(&d.payload)),
            }
            println!("{o}");
        }
        (Event::Delivered(d), false) => {
            println!("{}: {}", d.origin.short(), printable(&d.payload));
        }
        (Event::NeighborUp(p), true) => {
            println!("{}", json!({"event": "neighbor_up", "peer": p.id.to_hex(), "addr": p.addr.to_string()}))
        }
        (Event::NeighborDown { peer, reason }, true) => println!(
            "{}",
            json!({"event": "neighbor_down", "peer": peer.id.to_hex(), "addr": peer.addr.to_string(), "reason": reason.as_str()})
        ),
        (Event::NeighborUp(p), false) => eprintln!("neighbor up: {p}"),
        (Event::NeighborDown { peer, reason }, false) => eprintln!("neighbor down: {peer} ({})", reason.as_str()),
        // Exchanges that moved nothing (the periodic ones of a healthy cluster) are quiet.
        (Event::Exchanged(x), _) if x.sent_messages == 0 && x.received_messages == 0 => {}
        (Event::Exchanged(x), true) => println!(
            "{}",
            json!({
                "event": "exchange", "peer": x.peer.to_hex(), "trigger": format!("{:?}", x.trigger).to_lowercase(),
                "complete": x.complete, "ms": x.duration.as_secs_f64() * 1e3, "digests": x.digests,
                "sent_messages": x.sent_messages, "sent_bytes": x.sent_bytes,
                "received_messages": x.received_messages, "received_bytes": x.received_bytes,
                "recovered": x.recovered,
            })
        ),
        (Event::Exchanged(x), false) => eprintln!(
            "anti-entropy with {}: {} message(s) recovered, {} sent, in {:.1} ms",
            x.peer.short(),
            x.recovered,
            x.sent_messages,
            x.duration.as_secs_f64() * 1e3
        ),
    }
}
