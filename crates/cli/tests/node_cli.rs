//! `plumcast node` as a process: signals end it while stdin stays open, stdin lines are
//! bytes, and refused lines make the exit status say so.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{spawn, spawn_logged};

/// The node's default shutdown linger (`NodeConfig::shutdown_linger`).
const LINGER: Duration = Duration::from_secs(2);
/// How long a node may take to start and print its first line.
const START: Duration = Duration::from_secs(15);

#[test]
fn sigint_and_sigterm_end_the_node_while_stdin_stays_open() {
    // The last case signals while the node still waits for its first neighbour (nobody
    // listens at the bootstrap address).
    for (signal, args) in [("INT", &[][..]), ("TERM", &[][..]), ("TERM", &["--bootstrap", "127.0.0.1:9"][..])] {
        let mut p = spawn(args);
        p.expect(START, "listening", |v| v["event"] == "listening");
        // stdin stays open (held in `p`) the whole time.
        p.signal(signal);
        let bound = LINGER + Duration::from_secs(2);
        let status = p.exit_by(Instant::now() + bound);
        assert!(status.is_some(), "SIG{signal}: still running {bound:?} after the signal");
        assert!(status.is_some_and(|s| s.success()), "SIG{signal}: exit status {status:?}");
    }
}

#[test]
fn lines_are_bytes_and_refused_lines_make_the_exit_status_fail() {
    let a = spawn(&[]);
    let addr = a.expect(START, "listening", |v| v["event"] == "listening")["addr"].as_str().unwrap().to_string();
    let mut b = spawn(&["--bootstrap", &addr]);
    b.expect(START, "neighbor_up", |v| v["event"] == "neighbor_up");
    // Not UTF-8, then one line over the 64 KiB payload limit, then an empty line, then text.
    b.write(b"caf\xe9\n");
    b.write(&[b'x'; 200 << 10]);
    b.write(b"\n\nafter\n");
    let d = a.expect(START, "the non-UTF-8 line", |v| v["event"] == "delivered");
    assert_eq!(d["payload_b64"], "Y2Fm6Q==", "the bytes as sent: {d}");
    let d = a.expect(START, "the line after the refused one", |v| v["event"] == "delivered");
    assert_eq!(d["payload"], "after", "the empty line was not broadcast: {d}");
    drop(b.stdin.take());
    let status = b.exit_by(Instant::now() + LINGER + Duration::from_secs(5)).expect("b exits after EOF");
    assert_eq!(status.code(), Some(1), "one line was refused: {status}");
    let mut a = a;
    drop(a.stdin.take());
    let status = a.exit_by(Instant::now() + LINGER + Duration::from_secs(5)).expect("a exits after EOF");
    assert!(status.success(), "{status}");
}

#[test]
fn help_names_every_command_and_logs_to_a_pipe_have_no_colour_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_plumcast")).arg("--help").output().expect("run --help");
    let help = String::from_utf8_lossy(&out.stdout);
    let first = help.lines().next().unwrap_or_default();
    for word in ["node", "demo", "benchmark", "simulator", "plots"] {
        assert!(first.contains(word), "first help line {first:?} lacks {word}");
    }
    // stderr is a pipe here, not a terminal: a refused line's error has no ANSI escapes.
    let mut child = Command::new(env!("CARGO_BIN_EXE_plumcast"))
        .args(["node", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(&[b'x'; 70 << 10]).and_then(|()| stdin.write_all(b"\n")).expect("write");
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line refused"), "{err}");
    assert!(!err.contains('\x1b'), "colour codes in a pipe: {err:?}");
}

#[test]
fn a_bootstrap_contact_without_a_port_is_refused_when_parsed() {
    let out = Command::new(env!("CARGO_BIN_EXE_plumcast"))
        .args(["node", "--bootstrap", "127.0.0.1"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error: {err}");
    assert!(err.contains("\"127.0.0.1\" has no port"), "{err}");
}

#[test]
fn text_mode_escapes_control_characters_and_json_neighbor_events_carry_the_addr() {
    let a = spawn(&[]);
    let addr = a.expect(START, "listening", |v| v["event"] == "listening")["addr"].as_str().unwrap().to_string();
    // A second node in text mode (not --json): its stdout is what a terminal would show.
    let mut text = Command::new(env!("CARGO_BIN_EXE_plumcast"))
        .args(["node", "--bootstrap", &addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = text.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let up = a.expect(START, "neighbor_up", |v| v["event"] == "neighbor_up");
    assert!(up["addr"].as_str().is_some_and(|s| s.starts_with("127.0.0.1:")), "{up}");
    let mut a = a;
    a.write(b"\x1b[2Jcleared?\n");
    let line = rx.recv_timeout(START).expect("the text node printed the message");
    assert!(line.ends_with(": \\u{1b}[2Jcleared?"), "{line:?}");
    assert!(!line.contains('\x1b'), "{line:?}");
    drop(text.stdin.take());
    let _ = text.wait();
    drop(a.stdin.take());
    let _ = a.exit_by(Instant::now() + LINGER + Duration::from_secs(5));
}

/// `plumcast sim --list | head -0`: the reader is gone before the first line is written.
/// The pipe's read end is closed before the process starts, so every run hits `EPIPE`.
#[test]
#[allow(clippy::incompatible_msrv)] // std::io::pipe is 1.87; the tests run on the toolchain here
fn a_closed_pipe_ends_the_process_quietly() {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let err_writer = writer.try_clone().expect("clone");
    let status = Command::new(env!("CARGO_BIN_EXE_plumcast"))
        .args(["sim", "--list"])
        .stdout(writer)
        .stderr(err_writer)
        .status()
        .expect("run");
    assert_eq!(status.code(), Some(0), "{status}");
}

/// A contact of another cluster and a name that does not resolve are each warned about
/// once, by name, while the node retries; the end of the wait for a neighbour says why.
#[test]
fn failing_bootstrap_contacts_are_warned_about_once_and_the_wait_says_why() {
    let x = spawn_logged(&["--cluster", "x"]);
    let addr = x.expect(START, "listening", |v| v["event"] == "listening")["addr"].as_str().unwrap().to_string();
    // The wait lasts 4 s: retries at 0.5, 1.5 and 3.5 s (the LAN preset's backoff).
    let y = spawn_logged(&["--cluster", "y", "--bootstrap", &addr, "--wait-neighbor-secs", "4"]);
    let log = y.expect_log(START, "no neighbour yet");
    assert_eq!(log.lines().filter(|l| l.contains("belongs to another cluster")).count(), 1, "{log}");
    assert!(log.lines().any(|l| l.contains("no neighbour yet") && l.contains("another cluster")), "{log}");
    let x_log = x.expect_log(START, "refused a node of another cluster");
    assert_eq!(x_log.lines().filter(|l| l.contains("another cluster")).count(), 1, "{x_log}");

    let lost = spawn_logged(&["--bootstrap", "nosuchhost.invalid:7000", "--wait-neighbor-secs", "3"]);
    let log = lost.expect_log(START, "no neighbour yet");
    assert_eq!(log.matches("WARN").count(), 2, "one warning for the contact, one for the wait:\n{log}");
    assert!(log.contains("cannot resolve nosuchhost.invalid:7000") && !log.contains("0.0.0.0:0"), "{log}");
    for p in [x, y, lost] {
        p.finish();
    }
}

/// Two processes on one data dir: the second refuses to start, naming the dir; a data dir
/// and an `--identity` of another key are refused too.
#[test]
fn a_data_dir_serves_one_process_and_one_identity() {
    let dir = std::env::temp_dir().join(format!("plumcast-cli-datadir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.to_str().unwrap().to_string();
    let first = spawn(&["--data-dir", &dir_s]);
    first.expect(START, "listening", |v| v["event"] == "listening");
    let out = Command::new(env!("CARGO_BIN_EXE_plumcast"))
        .args(["node", "--data-dir", &dir_s])
        .stdin(Stdio::null())
        .output()
        .expect("run a second node");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&dir_s) && err.contains("in use by another plumcast process"), "{err}");
    first.finish();
    // Another key than the dir's own.
    let key = dir.with_extension("other.key");
    let _ = std::fs::remove_file(&key);
    let out = Command::new(env!("CARGO_BIN_EXE_plumcast"))
        .args(["node", "--data-dir", &dir_s, "--identity", key.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .expect("run a node with another identity");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not the one given"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&key);
}

/// `plumcast id` prints the id a node with that key listens as; a missing key file and a
/// bad `--allow` id are refused with what is wrong.
#[test]
fn plumcast_id_prints_the_id_a_node_listens_as() {
    let key = std::env::temp_dir().join(format!("plumcast-cli-id-{}.key", std::process::id()));
    let _ = std::fs::remove_file(&key);
    let key_s = key.to_str().unwrap().to_string();
    let missing = Command::new(env!("CARGO_BIN_EXE_plumcast")).args(["id", "--identity", &key_s]).output().unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));
    let node = spawn(&["--identity", &key_s, "--allow", &"ab".repeat(32)]);
    let listening = node.expect(START, "listening", |v| v["event"] == "listening");
    node.finish();
    let out = Command::new(env!("CARGO_BIN_EXE_plumcast")).args(["id", "--identity", &key_s]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), listening["id"].as_str().unwrap());
    let bad = Command::new(env!("CARGO_BIN_EXE_plumcast"))
        .args(["node", "--allow", "not-an-id"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not-an-id"));
    let _ = std::fs::remove_file(&key);
}

/// `plumcast ca init` and `ca issue` (for a key file, and for a bare node id), then two
/// nodes with `--cert` and `--ca` join; a second `ca init` on the dir is refused.
#[test]
fn a_cluster_ca_certifies_two_nodes_that_then_join() {
    let dir = std::env::temp_dir().join(format!("plumcast-cli-ca-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_plumcast")).args(args).output().unwrap();
    let ca_dir = p("ca");
    assert!(run(&["ca", "init", "--dir", &ca_dir]).status.success());
    let again = run(&["ca", "init", "--dir", &ca_dir]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwritten"));
    let (ka, kb) = (p("a.key"), p("b.key"));
    assert!(run(&["ca", "issue", "--dir", &ca_dir, "--identity", &ka, "--out", &p("a.crt")]).status.success());
    // B's key is made by the node; the CA certifies its id only.
    let id_b = {
        let n = spawn(&["--identity", &kb]);
        let v = n.expect(START, "listening", |v| v["event"] == "listening");
        n.finish();
        v["id"].as_str().unwrap().to_string()
    };
    assert!(run(&["ca", "issue", "--dir", &ca_dir, "--node-id", &id_b, "--out", &p("b.crt")]).status.success());
    let ca_crt = format!("{ca_dir}/ca.crt");
    let a = spawn(&["--identity", &ka, "--cert", &p("a.crt"), "--ca", &ca_crt]);
    let addr = a.expect(START, "listening", |v| v["event"] == "listening")["addr"].as_str().unwrap().to_string();
    let b = spawn(&["--identity", &kb, "--cert", &p("b.crt"), "--ca", &ca_crt, "--bootstrap", &addr]);
    b.expect(START, "neighbor_up", |v| v["event"] == "neighbor_up");
    a.expect(START, "neighbor_up", |v| v["event"] == "neighbor_up");
    b.finish();
    a.finish();
    let _ = std::fs::remove_dir_all(&dir);
}
