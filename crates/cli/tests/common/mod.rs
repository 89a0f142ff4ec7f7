//! Helpers shared by the tests that run the `plumcast` binary: a node process whose
//! stdout lines are read as JSON, with condition waits bounded by deadlines.

#![allow(dead_code)] // each test file uses a part

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A `plumcast node --json` child process: its stdin, its stdout lines as JSON, and (if
/// asked for) its stderr so far.
pub struct Proc {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub lines: mpsc::Receiver<Value>,
    pub stderr: Arc<Mutex<String>>,
}

/// Start `plumcast node --json ARGS` with stdin and stdout piped (stderr discarded).
pub fn spawn(args: &[&str]) -> Proc {
    start(args, false)
}

/// Like [`spawn`], keeping stderr (the log) in [`Proc::stderr`].
pub fn spawn_logged(args: &[&str]) -> Proc {
    start(args, true)
}

fn start(args: &[&str], keep_stderr: bool) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_plumcast"))
        .args(["node", "--json"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(if keep_stderr { Stdio::piped() } else { Stdio::null() })
        .spawn()
        .expect("spawn plumcast node");
    let stderr = Arc::new(Mutex::new(String::new()));
    if let Some(pipe) = child.stderr.take() {
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
    }
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
    Proc { child, stdin, lines, stderr }
}

impl Proc {
    /// The next line matching `pred`, within `timeout`.
    pub fn expect(&self, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
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

    /// Wait until stderr holds `text` (within `timeout`); returns stderr so far.
    pub fn expect_log(&self, timeout: Duration, text: &str) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.stderr.lock().unwrap().clone();
            if log.contains(text) {
                return log;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {text:?} in the log:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Write bytes to stdin.
    pub fn write(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).expect("write stdin");
        stdin.flush().expect("flush");
    }

    /// Send the signal `name` (INT, TERM) to the process.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -{name}");
    }

    /// The exit status, or `None` if the process still runs at `deadline` (it is then
    /// killed).
    pub fn exit_by(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Write one line to stdin.
    pub fn say(&mut self, line: &str) {
        self.write(format!("{line}\n").as_bytes());
    }

    /// Close stdin (EOF): the node leaves and must exit 0 within 10 s.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.exit_by(Instant::now() + Duration::from_secs(10));
        assert!(status.is_some(), "node did not exit after EOF");
        assert!(status.is_some_and(|s| s.success()), "exit status {status:?}");
    }
}
