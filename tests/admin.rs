//! The admin endpoint over real HTTP on loopback: `/metrics` parsed by a Prometheus
//! parser, `/topology` before and after a neighbour is killed.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use plumcast::proto::Config;
use prometheus_parse::{Scrape, Value};

/// GET `url` with `accept`: (status, content type, body).
async fn get(url: String, accept: &'static str) -> (u16, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut r = ureq::get(&url).header("Accept", accept).call().expect("the admin endpoint answers");
        let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = r.body_mut().read_to_string().expect("a text body");
        (r.status().as_u16(), ct, body)
    })
    .await
    .unwrap()
}

async fn scrape(node: &TestNode) -> Scrape {
    let url = format!("http://{}/metrics", node.node.http_addr().unwrap());
    let (status, ct, body) = get(url, "text/plain").await;
    assert_eq!(status, 200);
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("the Prometheus parser reads /metrics")
}

/// The value of `metric` with these labels (all of them), if scraped.
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples.iter().find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))).map(|x| {
        match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => f64::NAN,
        }
    })
}

/// `n` nodes joining through the first, each serving its admin endpoint.
async fn start_admin_cluster(n: usize) -> Vec<TestNode> {
    let builder = |seed: u64| {
        plumcast::Node::builder().protocol(Config::local()).rng_seed(seed).http("127.0.0.1:0".parse().unwrap())
    };
    let first = TestNode::record(builder(1)).await;
    let contact = first.node.addr();
    let mut nodes = vec![first];
    for i in 1..n {
        nodes.push(TestNode::record(builder(i as u64 + 1).bootstrap(contact)).await);
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_with_a_prometheus_parser_and_count_what_the_node_did() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let nodes = start_admin_cluster(3).await;
    wait_until(Duration::from_secs(10), "overlay", || overlay_ready(&nodes)).await;
    let origin = nodes[1].node.id();
    let mut ids = Vec::new();
    for k in 0..20 {
        ids.push(nodes[1].node.broadcast(format!("m{k}").into_bytes()).await.unwrap());
    }
    wait_until(Duration::from_secs(10), "20 messages everywhere", || async {
        ids.iter().all(|id| delivered(&nodes, origin, *id) == (2, false))
    })
    .await;
    let s = scrape(&nodes[0]).await;
    assert_eq!(value(&s, "plumcast_active_view_peers", &[]), Some(2.0));
    assert_eq!(value(&s, "plumcast_deliveries_total", &[]), Some(20.0));
    assert_eq!(value(&s, "plumcast_broadcasts_total", &[]), Some(0.0));
    assert!(value(&s, "plumcast_duplicate_payloads_total", &[]).is_some());
    // The histogram counts every delivery, each at least one hop from its origin.
    let hops = s.samples.iter().find(|x| x.metric == "plumcast_delivery_hops").expect("the hop histogram");
    let Value::Histogram(buckets) = &hops.value else { panic!("plumcast_delivery_hops is a histogram") };
    let at = |le: f64| buckets.iter().find(|b| b.less_than == le).map(|b| b.count);
    assert_eq!(at(0.0), Some(0.0), "no delivery at 0 hops (ours)");
    assert_eq!(at(f64::INFINITY), Some(20.0));
    for reason in ["evicted", "failed", "left", "misbehaved"] {
        assert_eq!(value(&s, "plumcast_neighbor_down_total", &[("reason", reason)]), Some(0.0), "{reason}");
    }
    let gossip = value(&s, "plumcast_messages_received_total", &[("type", "gossip")]).unwrap();
    assert!(gossip >= 20.0, "at least one Gossip per delivery: {gossip}");
    assert!(value(&s, "plumcast_received_bytes_total", &[("type", "gossip")]).unwrap() > gossip * 20.0);
    // Node 0 is the contact: both others joined through it.
    assert!(value(&s, "plumcast_messages_received_total", &[("type", "join")]).unwrap() >= 2.0);
    for reason in ["forged", "missing_table_full", "join_over_rate", "frame_connection_lost"] {
        assert_eq!(value(&s, "plumcast_dropped_total", &[("reason", reason)]), Some(0.0), "{reason}");
    }
    assert_eq!(value(&s, "plumcast_connections_refused_total", &[("reason", "wrong_cluster")]), Some(0.0));
    // One φ and one queue depth per neighbour, labelled with its short id.
    for n in &nodes[1..] {
        let peer = n.node.id().short();
        assert!(value(&s, "plumcast_queued_frames", &[("peer", &peer)]).is_some(), "queue of {peer}");
        let phi = value(&s, "plumcast_neighbor_phi", &[("peer", &peer)]);
        assert!(phi.is_none_or(|p| p.is_finite() && p >= 0.0), "φ of {peer}: {phi:?}");
    }
    assert!(s.docs.get("plumcast_deliveries").is_some_and(|h| h.contains("delivered")), "{:?}", s.docs.keys());
    // OpenMetrics when asked for, with its content type and end marker.
    let url = format!("http://{}/metrics", nodes[0].node.http_addr().unwrap());
    let (status, ct, body) = get(url, "application/openmetrics-text; version=1.0.0").await;
    assert_eq!((status, ct.as_str()), (200, "application/openmetrics-text; version=1.0.0; charset=utf-8"));
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    for n in &nodes {
        n.node.shutdown().await.unwrap();
    }
}

/// `/topology` as JSON: our short id, each node's health, our active view, and each
/// node's active view as announced.
async fn topology(node: &TestNode) -> (String, HashMap<String, String>, Vec<String>, HashMap<String, Vec<String>>) {
    let url = format!("http://{}/topology", node.node.http_addr().unwrap());
    let (status, ct, body) = get(url, "application/json").await;
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let me = v["me"].as_str().unwrap().to_string();
    let nodes = v["nodes"].as_array().unwrap();
    let health = nodes
        .iter()
        .map(|n| (n["short"].as_str().unwrap().to_string(), n["health"].as_str().unwrap().to_string()))
        .collect();
    let view_of = |n: &serde_json::Value| -> Vec<String> {
        n["active_view"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
    };
    let views = nodes.iter().map(|n| (n["short"].as_str().unwrap().to_string(), view_of(n))).collect();
    let mine = nodes.iter().find(|n| n["short"] == me.as_str()).unwrap();
    (me, health, view_of(mine), views)
}

/// [`start_admin_cluster`] once every other node's record reached node 0 (neighbour or
/// not, with its active view); the nodes' short ids.
async fn cluster_with_records(n: usize) -> (Vec<TestNode>, Vec<String>) {
    let nodes = start_admin_cluster(n).await;
    wait_until(Duration::from_secs(10), "overlay", || overlay_ready(&nodes)).await;
    let shorts: Vec<String> = nodes.iter().map(|n| n.node.id().short()).collect();
    wait_until(Duration::from_secs(20), "every node's record at node 0", || async {
        let (_, _, _, views) = topology(&nodes[0]).await;
        shorts[1..].iter().all(|s| views.get(s).is_some_and(|v| !v.is_empty()))
    })
    .await;
    (nodes, shorts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_draws_every_node_from_its_record_and_shows_a_killed_one_down() {
    let _g = SERIAL.lock().await;
    init_tracing();
    // Nine nodes: more than an active view holds, so some records come through others.
    let (nodes, shorts) = cluster_with_records(9).await;
    let (me, health, view, _) = topology(&nodes[0]).await;
    assert_eq!(me, shorts[0]);
    assert!(shorts[1..].iter().any(|s| !view.contains(s)), "some node is not node 0's neighbour: {view:?}");
    assert!(shorts.iter().all(|s| health.get(s).map(String::as_str) == Some("up")), "{health:?}");
    // Kill a neighbour of node 0.
    let victim = nodes.iter().position(|n| view.contains(&n.node.id().short())).expect("node 0 has a neighbour");
    let v = shorts[victim].clone();
    nodes[victim].node.crash();
    wait_until(Duration::from_secs(20), "the killed node shown down at node 0", || async {
        let (_, health, view, _) = topology(&nodes[0]).await;
        !view.contains(&v) && health.get(&v).map(String::as_str) == Some("down")
    })
    .await;
    let s = scrape(&nodes[0]).await;
    assert_eq!(value(&s, "plumcast_neighbor_down_total", &[("reason", "failed")]), Some(1.0));
    assert!(value(&s, "plumcast_messages_received_total", &[("type", "topology")]).unwrap() > 0.0);
    // The others see it down too, once its record expires or their detector fires.
    for (i, n) in nodes.iter().enumerate() {
        if i == victim || i == 0 {
            continue;
        }
        wait_until(Duration::from_secs(30), "the killed node down everywhere", || async {
            let (_, health, _, _) = topology(n).await;
            health.get(&v).is_none_or(|h| h == "down")
        })
        .await;
    }
    for (i, n) in nodes.iter().enumerate() {
        if i != victim {
            n.node.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_stops_with_the_node_and_a_busy_address_is_a_clear_error() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let b = plumcast::Node::builder().http("127.0.0.1:0".parse().unwrap());
    let (node, _events) = b.spawn().await.unwrap();
    let addr = node.http_addr().unwrap();
    let taken = plumcast::Node::builder().http(addr).spawn().await;
    let err = taken.expect_err("the address is taken").to_string();
    assert!(err.contains(&format!("cannot bind the admin endpoint on {addr}")), "{err}");
    node.shutdown().await.unwrap();
    wait_until(Duration::from_secs(5), "the endpoint closed", || async move {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
}

/// Debian's Chromium, or a failure that says how to install it (the page test never
/// skips).
fn chromium() -> std::path::PathBuf {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("the page test needs Chromium: apt-get install -y chromium (.ci/run installs it)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_draws_every_node_and_its_links_in_headless_chromium() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let browser = chromium();
    let (nodes, shorts) = cluster_with_records(4).await;
    let profile = std::env::temp_dir().join(format!("plumcast-chromium-{}", std::process::id()));
    let url = format!("http://{}/", nodes[0].node.http_addr().unwrap());
    let run = tokio::process::Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1200,800",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(&url)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run).await.expect("Chromium ends within 60 s").unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains(r#"data-ready="yes""#), "the page drew nothing: {dom}");
    // One circle per node, each labelled with its short id; lines for the active views.
    assert_eq!(dom.matches(r#"class="node""#).count(), 4, "{dom}");
    for s in &shorts {
        assert!(dom.contains(&format!(r#"data-id="{s}""#)), "{s} missing: {dom}");
        assert!(dom.contains(&format!(">{s}</text>")), "{s} has no label");
    }
    assert!(dom.matches(r#"class="edge"#).count() >= 3, "a connected overlay of 4 has at least 3 links: {dom}");
    assert!(dom.contains(&format!("<b id=\"me\">{}</b>", shorts[0])), "the page names the node it is served by");
    for n in &nodes {
        n.node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_registers_plumcasts_metrics_beside_its_own() {
    use plumcast::prometheus_client::{encoding::text::encode, metrics::counter::Counter, registry::Registry};
    let _g = SERIAL.lock().await;
    init_tracing();
    let (node, _events) = plumcast::Node::builder().spawn().await.unwrap();
    node.broadcast(&b"one"[..]).await.unwrap();
    let mut registry = Registry::default();
    let requests: Counter = Counter::default();
    registry.register("app_requests", "The application's own requests", requests.clone());
    requests.inc();
    let metrics = plumcast::Metrics::new(&node);
    metrics.register(&mut registry);
    let scrape = || async {
        metrics.refresh().await.unwrap();
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
    };
    wait_until(Duration::from_secs(5), "the broadcast counted", || async {
        value(&scrape().await, "plumcast_broadcasts_total", &[]) == Some(1.0)
    })
    .await;
    let s = scrape().await;
    assert_eq!(value(&s, "app_requests_total", &[]), Some(1.0));
    assert_eq!(value(&s, "plumcast_active_view_peers", &[]), Some(0.0));
    node.shutdown().await.unwrap();
    assert!(metrics.refresh().await.is_err(), "a stopped node's metrics cannot be refreshed");
}
