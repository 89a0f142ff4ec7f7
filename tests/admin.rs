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

async fn start_admin_cluster(n: usize) -> Vec<TestNode> {
    let b = plumcast::Node::builder().protocol(Config::local()).rng_seed(1).http("127.0.0.1:0".parse().unwrap());
    let first = TestNode::record(b).await;
    let contact = first.node.addr();
    let mut nodes = vec![first];
    for i in 1..n {
        nodes.push(start(Some(contact), i as u64 + 1).await);
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

/// `/topology` as JSON: the ids of the nodes listed and their health.
async fn topology(node: &TestNode) -> (String, HashMap<String, String>, Vec<String>) {
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
    let mine = nodes.iter().find(|n| n["short"] == me.as_str()).unwrap();
    let view = mine["active_view"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect();
    (me, health, view)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_shows_a_killed_neighbour_gone_and_metrics_count_it_failed() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let nodes = start_admin_cluster(3).await;
    wait_until(Duration::from_secs(10), "overlay", || overlay_ready(&nodes)).await;
    let (me, health, view) = topology(&nodes[0]).await;
    assert_eq!(me, nodes[0].node.id().short());
    let victim = nodes[2].node.id().short();
    assert!(view.contains(&victim), "{view:?}");
    assert_eq!(health.get(&victim).map(String::as_str), Some("up"));
    nodes[2].node.crash();
    wait_until(Duration::from_secs(20), "the killed node out of node 0's active view", || async {
        let (_, _, view) = topology(&nodes[0]).await;
        !view.contains(&victim)
    })
    .await;
    let (_, health, _) = topology(&nodes[0]).await;
    assert_ne!(health.get(&victim).map(String::as_str), Some("up"), "{health:?}");
    let s = scrape(&nodes[0]).await;
    assert_eq!(value(&s, "plumcast_neighbor_down_total", &[("reason", "failed")]), Some(1.0));
    assert_eq!(value(&s, "plumcast_active_view_peers", &[]), Some(1.0));
    for n in &nodes[..2] {
        n.node.shutdown().await.unwrap();
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
