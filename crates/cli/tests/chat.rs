//! Three separate `plumcast node --json` processes chat through stdin/stdout on loopback.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Value>,
}

fn spawn(args: &[&str]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_plumcast"))
        .arg("node")
        .arg("--json")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn plumcast node");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    let stdin = child.stdin.take();
    Proc { child, stdin, lines }
}

impl Proc {
    /// The next line matching `pred`, within `timeout`.
    fn expect(&self, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if pred(&v) => return v,
                Ok(_) => {}
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write stdin");
        stdin.flush().expect("flush");
    }

    /// Close stdin (EOF): the node leaves and exits 0.
    fn finish(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "exit status {status}");
                return;
            }
            assert!(Instant::now() < deadline, "node did not exit after EOF");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

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
