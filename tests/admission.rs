//! Cluster admission by allow-list over real QUIC: a node whose id is not listed completes
//! no connection, is counted, and learns nothing of the overlay; a reload that drops a
//! member closes its link.

mod common;

use std::time::Duration;

use common::*;
use plumcast::proto::Config;
use plumcast::{Event, Identity, Node, NodeId};

fn allow_file(name: &str, ids: &[NodeId]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("plumcast-allow-{name}-{}", std::process::id()));
    let text: String = ids.iter().map(|id| format!("{} member\n", id.to_hex())).collect();
    std::fs::write(&path, format!("# test members\n{text}")).unwrap();
    path
}

async fn spawn(
    identity: Identity,
    allow: Option<&std::path::Path>,
    contact: Option<std::net::SocketAddr>,
) -> (Node, plumcast::Events) {
    let mut b = Node::builder().protocol(Config::local()).identity(identity);
    if let Some(f) = allow {
        b = b.allow_file(f);
    }
    if let Some(c) = contact {
        b = b.bootstrap(c);
    }
    b.spawn().await.expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_nodes_join_and_a_node_dropped_from_the_list_is_closed_out() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let (ia, ib, ic) = (Identity::generate().unwrap(), Identity::generate().unwrap(), Identity::generate().unwrap());
    let (id_a, id_b) = (ia.node_id(), ib.node_id());
    let file = allow_file("members", &[id_a, id_b]);
    let (a, _ea) = spawn(ia, Some(&file), None).await;
    let (b, mut eb) = spawn(ib, Some(&file), Some(a.addr())).await;
    wait_until(Duration::from_secs(20), "B joined A", || async { !b.neighbors().await.unwrap().is_empty() }).await;

    // C is not listed: A refuses it in the handshake, counted; C learns no one.
    let (c, mut ec) = spawn(ic, None, Some(a.addr())).await;
    wait_until(Duration::from_secs(20), "A refused C", || async {
        a.stats().await.unwrap().net.admission_refused >= 1
    })
    .await;
    let sc = c.stats().await.unwrap();
    assert!(sc.active_view.is_empty() && sc.passive_view.is_empty(), "C learned nothing: {sc:?}");
    let sa = a.stats().await.unwrap();
    assert!(sa.active_view.iter().chain(&sa.passive_view).all(|p| p.id != c.id()), "A never took C in");

    // Members still deliver; C gets nothing.
    let id = a.broadcast("members only").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = eb.recv().await {
            if matches!(ev, Event::Delivered(ref d) if d.id == id) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(got, Ok(true), "B delivered A's message");
    while let Some(ev) = ec.try_recv() {
        assert!(!matches!(ev, Event::Delivered(_)), "C got a delivery: {ev:?}");
    }

    // B is dropped from the list: A's reload closes the link, counts it, and refuses B
    // from then on.
    std::fs::write(&file, format!("{}\n", id_a.to_hex())).unwrap();
    assert_eq!(a.reload_admission().await.unwrap(), 1);
    wait_until(Duration::from_secs(20), "A closed B out", || async {
        let s = a.stats().await.unwrap();
        s.net.admission_closed >= 1 && s.active_view.iter().all(|p| p.id != id_b)
    })
    .await;
    let refused_before = a.stats().await.unwrap().net.admission_refused;
    wait_until(Duration::from_secs(20), "B's rejoins are refused", || async {
        a.stats().await.unwrap().net.admission_refused > refused_before
    })
    .await;
    assert!(a.stats().await.unwrap().active_view.iter().all(|p| p.id != id_b), "B stays out");
    // A bad line keeps the list in force.
    std::fs::write(&file, "not-an-id\n").unwrap();
    let e = a.reload_admission().await.expect_err("a bad line");
    assert!(e.to_string().contains("line 1"), "{e}");
    for n in [c, b, a] {
        n.shutdown().await.unwrap();
    }
    let _ = std::fs::remove_file(&file);
}

/// A cluster CA: nodes with a certificate it issued join each other; a stranger with a
/// certificate of another CA, one with its self-signed certificate, and one that trusts
/// no CA at all complete no connection, are counted, and learn no one. When the CA file
/// changes, a reload closes the links whose peer no longer chains to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_certified_by_the_cluster_ca_join() {
    use plumcast_transport::ca::ClusterCa;
    let _g = SERIAL.lock().await;
    init_tracing();
    let base = std::env::temp_dir().join(format!("plumcast-ca-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let ca = ClusterCa::init(&base.join("ca")).unwrap();
    assert!(ClusterCa::init(&base.join("ca")).is_err(), "a CA is never overwritten");
    let ca = {
        drop(ca);
        ClusterCa::load(&base.join("ca")).unwrap()
    };
    let other = ClusterCa::init(&base.join("other")).unwrap();
    let certify = |ca: &ClusterCa, id: &Identity, name: &str| {
        let path = base.join(format!("{name}.crt"));
        std::fs::write(&path, ca.issue(id.node_id()).unwrap().as_ref()).unwrap();
        path
    };
    let ca_crt = base.join("ca").join("ca.crt");
    let member =
        |id: Identity, cert: std::path::PathBuf, ca: &std::path::Path, contact: Option<std::net::SocketAddr>| {
            let mut b =
                Node::builder().protocol(Config::local()).identity(id).certificate_file(cert).cluster_ca_file(ca);
            if let Some(c) = contact {
                b = b.bootstrap(c);
            }
            b.spawn()
        };
    let (ia, ib) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (ca_a, ca_b) = (certify(&ca, &ia, "a"), certify(&ca, &ib, "b"));
    // A certificate for another key is refused at start.
    let wrong = Node::builder().identity(Identity::generate().unwrap()).certificate_file(&ca_a).spawn().await;
    assert!(wrong.expect_err("another key").to_string().contains("the certificate is for node"));
    let (a, _ea) = member(ia, ca_a, &ca_crt, None).await.unwrap();
    let (b, _eb) = member(ib, ca_b, &ca_crt, Some(a.addr())).await.unwrap();
    wait_until(Duration::from_secs(20), "B joined A", || async { !b.neighbors().await.unwrap().is_empty() }).await;

    let ic = Identity::generate().unwrap();
    let other_crt = base.join("other").join("ca.crt");
    let (c, _ec) = member(ic.clone(), certify(&other, &ic, "c"), &other_crt, Some(a.addr())).await.unwrap();
    let (d, _ed) =
        Node::builder().protocol(Config::local()).cluster_ca_file(&ca_crt).bootstrap(a.addr()).spawn().await.unwrap();
    let (e, _ee) = spawn(Identity::generate().unwrap(), None, Some(a.addr())).await;
    wait_until(Duration::from_secs(20), "A refused the three strangers", || async {
        a.stats().await.unwrap().net.admission_refused >= 3
    })
    .await;
    let sa = a.stats().await.unwrap();
    for s in [&c, &d, &e] {
        let st = s.stats().await.unwrap();
        assert!(st.active_view.is_empty() && st.passive_view.is_empty(), "a stranger learned nothing: {st:?}");
        assert!(sa.active_view.iter().chain(&sa.passive_view).all(|p| p.id != s.id()), "A never took it in");
    }
    // The cluster moves to the other CA: A reloads, and B, whose certificate the old CA
    // issued, no longer passes: its link is closed and counted.
    std::fs::copy(&other_crt, &ca_crt).unwrap();
    a.reload_admission().await.unwrap();
    wait_until(Duration::from_secs(20), "A closed B out after the CA changed", || async {
        let s = a.stats().await.unwrap();
        s.net.admission_closed >= 1 && s.active_view.iter().all(|p| p.id != b.id())
    })
    .await;
    for n in [e, d, c, b, a] {
        n.shutdown().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&base);
}
