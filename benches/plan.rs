//! The plan benchmark: `cargo bench --bench plan` (see docs/performance.md).
//!
//! For each fleet size it generates an N-host flake and a fakepve cluster holding its VMs
//! (tests/support/fleet.rs: most in sync, some drifted, some missing), injects API latency,
//! runs the real `nixprox plan` twice — with its defaults, and as the sequential baseline
//! `--concurrency 1 --eval-jobs 1 --eval-batch 1` (what a per-host script does) — and prints each phase's
//! wall time, the total and the peak memory side by side with their ratio. Everything runs on
//! loopback and stops by itself.
//!
//! Options (after `--`): `--hosts 10,100,500`, `--latency 20,100` (ms; 50 is added for the
//! largest fleet: the 500-VM target), `--no-sequential`, `--json FILE`.
//! `NIXPROX_BENCH_BIN` runs another nixprox binary (e.g. an older build, for before/after).

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use support::fakepve::FakePve;
use support::fleet::{Expected, Fleet};

#[derive(Debug)]
struct Options {
    hosts: Vec<usize>,
    latencies: Vec<u64>,
    sequential: bool,
    json: Option<PathBuf>,
}

fn options() -> Options {
    let mut options =
        Options { hosts: vec![10, 100, 500], latencies: vec![20, 100], sequential: true, json: None };
    let mut args = std::env::args().skip(1);
    let list = |value: Option<String>| -> Vec<u64> {
        value
            .unwrap_or_default()
            .split(',')
            .map(|v| v.trim().parse().unwrap_or_else(|_| panic!("not a number: `{v}`")))
            .collect()
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--hosts" => options.hosts = list(args.next()).into_iter().map(|n| n as usize).collect(),
            "--latency" => options.latencies = list(args.next()),
            "--no-sequential" => options.sequential = false,
            "--json" => options.json = args.next().map(PathBuf::from),
            // cargo passes `--bench`; libtest-style filters are ignored too.
            _ => {}
        }
    }
    options
}

/// One `nixprox plan` run as measured from outside and reported by `--timings`.
#[derive(Debug, Clone)]
struct Measured {
    wall: Duration,
    timings: Value,
    /// Peak RSS of nixprox and its nix children (GNU time's `%M`), KiB.
    max_rss_tree_kib: u64,
    plan: Value,
}

impl Measured {
    fn ms(&self, key: &str) -> f64 {
        self.timings[key].as_f64().unwrap_or(f64::NAN)
    }
}

fn binary() -> PathBuf {
    std::env::var_os("NIXPROX_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_nixprox")))
}

fn run_plan(fleet: &Fleet, pve: &FakePve, extra: &[&str]) -> Measured {
    let dir = tempfile::tempdir().expect("tempdir");
    let timings_path = dir.path().join("timings.json");
    let rss_path = dir.path().join("rss");
    let time = PathBuf::from("/usr/bin/time");
    assert!(time.is_file(), "/usr/bin/time (GNU time) is missing: apt-get install time");
    let mut command = Command::new(time);
    command.arg("-f").arg("%M").arg("-o").arg(&rss_path).arg(binary());
    support::cli::clean_env(&mut command)
        .env("NIXPROX_LOG", "warn")
        .envs(support::cli::pve_env(pve))
        .arg("plan")
        .arg("--flake")
        .arg(fleet.flake_ref());
    for input in support::nix::override_inputs() {
        command.arg("--override-input").arg(&input.name).arg(&input.flake_ref);
    }
    command.args(["--format", "json", "--timings"]).arg(&timings_path).args(extra);
    let started = Instant::now();
    let output = command.output().expect("run nixprox");
    let wall = started.elapsed();
    assert!(output.status.success(), "nixprox plan failed: {}", String::from_utf8_lossy(&output.stderr));
    let timings: Value =
        serde_json::from_str(&std::fs::read_to_string(&timings_path).expect("timings written"))
            .expect("timings");
    let max_rss_tree_kib = std::fs::read_to_string(&rss_path)
        .ok()
        .and_then(|t| t.lines().last().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0);
    let plan: Value = serde_json::from_slice(&output.stdout).expect("json plan");
    Measured { wall, timings, max_rss_tree_kib, plan }
}

fn fmt_ms(ms: f64) -> String {
    if ms.is_nan() {
        "—".into()
    } else if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

fn ratio(fast: f64, slow: f64) -> String {
    if fast.is_nan() || slow.is_nan() || fast <= 0.0 { "—".into() } else { format!("{:.1}×", slow / fast) }
}

fn print_table(n: usize, latency: u64, fast: &Measured, slow: Option<&Measured>) {
    println!("\n#### {n} hosts, {latency} ms API latency\n");
    println!("| phase | nixprox defaults | sequential (`{}`) | ratio |", sequential_args().join(" "));
    println!("| --- | ---: | ---: | ---: |");
    let row = |name: &str, a: f64, b: Option<f64>| {
        let b = b.unwrap_or(f64::NAN);
        println!("| {name} | {} | {} | {} |", fmt_ms(a), fmt_ms(b), ratio(a, b));
    };
    for (key, name) in [
        ("eval_declarations_ms", "nix: declarations"),
        ("eval_systems_ms", "nix: systems"),
        ("proxmox_ms", "proxmox reads"),
        ("proxmox_after_eval_ms", "proxmox after nix (critical path)"),
        ("planning_ms", "planning"),
    ] {
        if !fast.timings[key].is_null() {
            row(name, fast.ms(key), slow.map(|s| s.ms(key)));
        }
    }
    let format_ms = |m: &Measured, f: &str| m.timings["render_formats_ms"][f].as_f64().unwrap_or(f64::NAN);
    for format in ["text", "markdown", "comment", "json", "matrix"] {
        row(&format!("render {format}"), format_ms(fast, format), slow.map(|s| format_ms(s, format)));
    }
    let wall = |m: &Measured| m.wall.as_secs_f64() * 1000.0;
    row("**total (wall)**", wall(fast), slow.map(wall));
    let own = |m: &Measured| m.timings["peak_rss_kib"].as_f64().map(|k| k / 1024.0).unwrap_or(f64::NAN);
    let tree = |m: &Measured| m.max_rss_tree_kib as f64 / 1024.0;
    let mib = |v: f64| if v.is_nan() { "—".to_string() } else { format!("{v:.1} MiB") };
    let slow_own = slow.map(own).unwrap_or(f64::NAN);
    let slow_tree = slow.map(tree).unwrap_or(f64::NAN);
    println!("| peak RSS, nixprox | {} | {} | |", mib(own(fast)), mib(slow_own));
    println!("| peak RSS, largest of nixprox and nix | {} | {} | |", mib(tree(fast)), mib(slow_tree));
    let overhead = wall(fast) - fast.ms("eval_declarations_ms") - fast.ms("eval_systems_ms");
    println!(
        "\nplan's own share beyond nix: {} of {} ({:.1}%); comment: {} characters at detail `{}`",
        fmt_ms(overhead),
        fmt_ms(wall(fast)),
        100.0 * overhead / wall(fast),
        fast.timings["comment_chars"],
        fast.timings["comment_detail"].as_str().unwrap_or("?"),
    );
}

fn main() {
    let options = options();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("nixprox plan benchmark: {} on {cpus} CPUs, binary {}", host_name(), binary().display());
    let largest = options.hosts.iter().copied().max().unwrap_or(0);
    let mut results = Vec::new();
    for &n in &options.hosts {
        let fleet = Fleet::generate(n);
        // Also warms the store copy of the flake, so neither run pays for it.
        let toplevels = runtime.block_on(fleet.toplevels());
        let mut latencies = options.latencies.clone();
        if n == largest && !latencies.contains(&50) {
            latencies.push(50);
            latencies.sort_unstable();
        }
        for latency in latencies {
            let scenario = fleet
                .scenario(&toplevels)
                .set("time_scale", json!(1))
                .set("latency", json!(latency as f64 / 1000.0));
            let pve = FakePve::start(scenario);
            let fast = run_plan(&fleet, &pve, &[]);
            assert_eq!(Expected::from_plan(&fast.plan), fleet.expected(), "the plan of the fleet is wrong");
            let slow = options.sequential.then(|| run_plan(&fleet, &pve, &sequential_args()));
            print_table(n, latency, &fast, slow.as_ref());
            results.push(json!({
                "hosts": n, "latency_ms": latency,
                "defaults": {"wall_ms": fast.wall.as_secs_f64() * 1000.0, "timings": fast.timings, "max_rss_tree_kib": fast.max_rss_tree_kib},
                "sequential": slow.as_ref().map(|s| json!({"wall_ms": s.wall.as_secs_f64() * 1000.0, "timings": s.timings, "max_rss_tree_kib": s.max_rss_tree_kib})),
            }));
        }
    }
    println!("\napply: `cargo bench --bench apply` (benches/apply.rs, docs/performance.md).");
    if let Some(path) = options.json {
        std::fs::write(&path, format!("{:#}\n", Value::Array(results))).expect("write the results");
        println!("results written to {}", path.display());
    }
}

/// The sequential baseline: one API read at a time, one `nix eval` at a time, one host per
/// `nix eval` (`--eval-batch 1`, unknown to builds before batching, so left out for those).
fn sequential_args() -> Vec<&'static str> {
    let mut args = vec!["--concurrency", "1", "--eval-jobs", "1"];
    if std::env::var_os("NIXPROX_BENCH_BIN").is_none() {
        args.extend(["--eval-batch", "1"]);
    }
    args
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
