//! Three separate `plumcast node --json` processes chat through stdin/stdout on loopback.

mod common;

use std::time::Duration;

use common::spawn;

#[test]
fn three_node_processes_chat() {
    let t = Duration::from_secs(15);
    let a = spawn(&["--bind", "127.0.0.1:0"]);
    let listening = a.expect(t, "listening", |v| v["event"] == "listening");
    let addr = listening["addr"].as_str().expect("addr").to_string();
    assert_eq!(listening["id"].as_str().map(str::len), Some(64));
    let mut b = spawn(&["--bootstrap", &addr]);
    let mut c = spawn(&["--bootstrap", &addr]);
    for p in [&b, &c] {
        p.expect(t, "listening", |v| v["event"] == "listening");
        p.expect(t, "neighbor_up", |v| v["event"] == "neighbor_up");
    }
    b.say("hello from b");
    for p in [&a, &c] {
        let d = p.expect(t, "b's message", |v| v["event"] == "delivered");
        assert_eq!(d["payload"], "hello from b");
        assert!(d["hops"].as_u64().is_some_and(|h| h >= 1));
        assert_eq!(d["id"].as_str().map(str::len), Some(64));
        assert_eq!(d["seq"], 1, "b's first message");
        assert!(d["incarnation"].as_u64().is_some_and(|i| i > 0), "{d}");
    }
    c.say("and one from c");
    for p in [&a, &b] {
        let d = p.expect(t, "c's message", |v| v["event"] == "delivered");
        assert_eq!(d["payload"], "and one from c");
    }
    c.finish();
    b.finish();
    a.finish();
}
