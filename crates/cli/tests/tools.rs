//! `plumcast sim` and `plumcast bench` as a user runs them: `--list` says what a scenario
//! costs, each run writes to its own folder and reports progress without a terminal, and
//! the benchmark's table prints text as text.

use std::path::{Path, PathBuf};
use std::process::Command;

fn plumcast(args: &[&str], tmp: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_plumcast")).args(args).env("TMPDIR", tmp).output().expect("run plumcast")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("plumcast-cli-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn sim_list_shows_each_scenarios_nodes_runs_memory_and_cpu() {
    let out = plumcast(&["sim", "--list"], &std::env::temp_dir());
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for name in ["hyparview-failures", "plumtree-stable", "churn", "concurrent-join", "partition-heal"] {
        let row = text.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_else(|| panic!("{text}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert!(cols[1].parse::<usize>().is_ok_and(|n| n >= 1000), "nodes: {row}");
        assert!(cols[2].parse::<usize>().is_ok_and(|n| n >= 1), "runs: {row}");
        assert!(matches!(cols[4], "GiB" | "MiB"), "memory per job: {row}");
        assert!(matches!(cols[6], "min" | "s"), "CPU: {row}");
    }
    // 10,000 nodes take about 1.1 GiB per seed (docs/simulation.md).
    assert!(text.lines().any(|l| l.starts_with("churn ") && l.contains("1.1 GiB")), "{text}");
}

#[test]
fn sim_runs_write_to_folders_of_their_own_and_report_progress_to_a_pipe() {
    let tmp = temp_dir("sim");
    let args = ["sim", "concurrent-join", "--nodes", "40", "--seeds", "1", "--broadcasts", "2"];
    let mut folders = Vec::new();
    for _ in 0..2 {
        let out = plumcast(&args, &tmp);
        assert!(out.status.success(), "{out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(!err.contains('\x1b'), "no terminal codes on a pipe: {err:?}");
        assert!(err.lines().any(|l| l.starts_with('[') && l.contains("/2 runs")), "progress lines: {err}");
        let csv = err.lines().find_map(|l| l.strip_prefix("wrote ")).expect("wrote the CSV");
        assert!(Path::new(csv).exists(), "{csv}");
        folders.push(Path::new(csv).parent().unwrap().to_path_buf());
    }
    assert_ne!(folders[0], folders[1], "a second run must not overwrite the first");
    assert!(folders.iter().all(|f| f.starts_with(tmp.join("plumcast-sim"))), "{folders:?}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn sim_bench_runs_the_size_and_the_lanes_asked_for() {
    let tmp = std::env::temp_dir();
    let out = plumcast(&["sim", "--bench", "--nodes", "300", "--broadcasts", "3", "--lanes", "2"], &tmp);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let row = text.lines().find(|l| l.starts_with("| 300 |")).unwrap_or_else(|| panic!("one row: {text}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert_eq!(&cells[1..4], &["300", "3", "2"], "nodes, broadcasts, lanes: {row}");
    assert_eq!(cells[9], "100.0000%", "every broadcast reached every node: {row}");
    let fifo = plumcast(&["sim", "--bench", "--nodes", "300", "--broadcasts", "3", "--lanes", "0"], &tmp);
    assert!(String::from_utf8(fifo.stdout).unwrap().lines().any(|l| l.starts_with("| 300 | 3 | FIFO |")));
    let half = plumcast(&["sim", "--bench", "--nodes", "300"], &tmp);
    assert!(!half.status.success());
    assert!(String::from_utf8(half.stderr).unwrap().contains("--broadcasts"), "the error names what is missing");
}

#[test]
fn bench_table_prints_text_without_json_quotes() {
    let out = plumcast(&["bench", "--nodes", "3", "--messages", "20", "--table"], &std::env::temp_dir());
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.lines().any(|l| l == "| mode | single |"), "{text}");
    assert!(!text.contains("\"single\" |"), "{text}");
}
