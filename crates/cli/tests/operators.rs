//! The operator commands as processes: `node --http` with `top --once`, `config print`
//! with its layers, and `--log-format json`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{spawn, spawn_logged};

const START: Duration = Duration::from_secs(15);

fn plumcast(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_plumcast"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run plumcast")
}

#[test]
fn top_once_shows_the_nodes_neighbours_from_its_admin_endpoint() {
    let a = spawn(&["--http", "127.0.0.1:0"]);
    let listening = a.expect(START, "listening", |v| v["event"] == "listening");
    let addr = listening["addr"].as_str().unwrap().to_string();
    let http = listening["http"].as_str().expect("the admin address in the listening line").to_string();
    let b = spawn(&["--bootstrap", &addr]);
    let b_id = b.expect(START, "listening", |v| v["event"] == "listening")["id"].as_str().unwrap().to_string();
    a.expect(START, "neighbor_up", |v| v["event"] == "neighbor_up");
    let out = plumcast(&["top", &http, "--once"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    let a_short = &listening["id"].as_str().unwrap()[..10];
    assert!(text.contains(&format!("node {a_short}")), "{text}");
    assert!(text.contains("active view 1"), "{text}");
    assert!(text.contains(&b_id[..10]), "the neighbour's row: {text}");
    assert!(text.contains("deliveries"), "{text}");
    // Nobody listens there: a clear error, a failing exit status.
    let out = plumcast(&["top", "127.0.0.1:9", "--once"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("GET http://127.0.0.1:9/metrics"));
}

#[test]
fn config_print_shows_each_layer_winning_and_refuses_unknown_keys() {
    let dir = std::env::temp_dir().join(format!("plumcast-cli-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("node.toml");
    std::fs::write(
        &file,
        "cluster = \"file\"\nmax_connections = 7\n[protocol.membership]\nshuffle_interval = \"3s\"\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out = plumcast(
        &["config", "print", "--preset", "wan", "--config", f, "--cluster", "flag"],
        &[("PLUMCAST_MAX_CONNECTIONS", "9")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("cluster = \"flag\"  # flag --cluster"), "{text}");
    assert!(text.contains("max_connections = 9  # environment PLUMCAST_MAX_CONNECTIONS"), "{text}");
    assert!(text.contains(&format!("protocol.membership.shuffle_interval = \"3s\"  # file {f}")), "{text}");
    assert!(text.contains("sign_messages = true  # preset wan"), "{text}");
    std::fs::write(&file, "[transport]\nkeep_alive = \"2s\"\nkeepalive = 1\n").unwrap();
    let out = plumcast(&["config", "print", "--config", f], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("unknown key `transport.keepalive`"), "{err}");
    let out = plumcast(&["node", "--config", f], &[]);
    assert!(!out.status.success(), "the node refuses to start on it too");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn log_format_json_writes_one_object_a_line() {
    // Nobody listens at the bootstrap address: the node warns about it.
    let p = spawn_logged(&["--log-format", "json", "--bootstrap", "127.0.0.1:9"]);
    p.expect(START, "listening", |v| v["event"] == "listening");
    p.expect_log(START, "bootstrap contact unreachable");
    let log = p.stderr.lock().unwrap().clone();
    let mut warned = false;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        warned |= v["level"] == "WARN" && v["fields"]["message"].as_str().is_some_and(|m| m.contains("unreachable"));
    }
    assert!(warned, "the warning as a JSON object: {log}");
}
