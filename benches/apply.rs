//! The apply benchmark: `cargo bench --bench apply` (see docs/performance.md).
//!
//! For each fleet size it generates an N-host flake of new hosts (tests/support/fleet.rs
//! `Fleet::generate_new`: static loopback addresses, so no guest agent is asked) and a fakepve
//! cluster holding only the bootstrap template, with `time_scale` 1 and the hosts' disks on an
//! RBD storage that fakepve slows down (`ceph_slow`): every clone, disk resize and start task
//! takes real time. Then it runs the real binary twice, each time on a fresh cluster:
//! `nixprox plan --format json --out plan.json` and, timed,
//! `nixprox apply --reviewed-plan plan.json --report report.json` — with nixprox's default
//! concurrency, and as the sequential baseline `concurrency.hosts: 1`. No SSH key is
//! configured, so installs are skipped: this measures the Proxmox side (clone, configure,
//! resize, start). It prints apply's wall time and the executor's own (the report's
//! `duration_ms`), each size next to one host's, and defaults next to sequential. Everything
//! runs on loopback and stops by itself.
//!
//! Options (after `--`): `--hosts 1,10,50` (1 is always added: the ratios are against it),
//! `--ceph-slow 0.5` (PVE seconds per disk operation), `--latency 20` (ms), `--no-sequential`,
//! `--json FILE`. `NIXPROX_BENCH_BIN` runs another nixprox binary.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use support::fakepve::FakePve;
use support::fleet::{Expected, Fleet};

#[derive(Debug)]
struct Options {
    hosts: Vec<usize>,
    ceph_slow: f64,
    latency_ms: u64,
    sequential: bool,
    json: Option<PathBuf>,
}

fn options() -> Options {
    let mut options =
        Options { hosts: vec![1, 10, 50], ceph_slow: 0.5, latency_ms: 20, sequential: true, json: None };
    let mut args = std::env::args().skip(1);
    let number = |value: Option<String>| -> f64 {
        let value = value.unwrap_or_default();
        value.trim().parse().unwrap_or_else(|_| panic!("not a number: `{value}`"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--hosts" => {
                options.hosts = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(|v| v.trim().parse().unwrap_or_else(|_| panic!("not a number: `{v}`")))
                    .collect()
            }
            "--ceph-slow" => options.ceph_slow = number(args.next()),
            "--latency" => options.latency_ms = number(args.next()) as u64,
            "--no-sequential" => options.sequential = false,
            "--json" => options.json = args.next().map(PathBuf::from),
            // cargo passes `--bench`; libtest-style filters are ignored too.
            _ => {}
        }
    }
    if !options.hosts.contains(&1) {
        options.hosts.push(1);
    }
    options.hosts.sort_unstable();
    options.hosts.dedup();
    options
}

fn binary() -> PathBuf {
    std::env::var_os("NIXPROX_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_nixprox")))
}

/// The real binary against the fleet's flake and the fake, with a clean environment (no SSH
/// key variable, so installs are skipped).
fn nixprox(fleet: &Fleet, pve: &FakePve, subcommand: &str, args: &[&str]) -> Command {
    let mut command = Command::new(binary());
    support::cli::clean_env(&mut command)
        .env("NIXPROX_LOG", "error")
        .envs(support::cli::pve_env(pve))
        .arg(subcommand)
        .arg("--flake")
        .arg(fleet.flake_ref());
    for input in support::nix::override_inputs() {
        command.arg("--override-input").arg(&input.name).arg(&input.flake_ref);
    }
    command.args(args);
    command
}

fn run(mut command: Command, what: &str) -> Duration {
    let started = Instant::now();
    let output = command.output().unwrap_or_else(|e| panic!("run nixprox {what}: {e}"));
    let wall = started.elapsed();
    assert!(
        output.status.success(),
        "nixprox {what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    wall
}

/// One apply of an N-host all-new fleet, measured from outside and by its report.
#[derive(Debug, Clone, Copy)]
struct Measured {
    wall: Duration,
    /// The executor's own time (`duration_ms` of the report): apply minus nix and the reads.
    executor_ms: f64,
    /// The slowest host's own time.
    slowest_host_ms: f64,
}

fn measure(n: usize, host_concurrency: Option<usize>, options: &Options) -> Measured {
    let fleet = Fleet::generate_new(n);
    fleet.set_host_concurrency(host_concurrency);
    let scenario = fleet
        .apply_scenario(&BTreeMap::new(), options.ceph_slow)
        .set("time_scale", json!(1))
        .set("latency", json!(options.latency_ms as f64 / 1000.0));
    let pve = FakePve::start(scenario);
    let dir = fleet.dir.path();
    let plan_file = dir.join("plan.json");
    let report_file = dir.join("report.json");
    let plan_path = plan_file.display().to_string();
    run(nixprox(&fleet, &pve, "plan", &["--format", "json", "--out", &plan_path]), "plan");
    let plan = read_json(&plan_file);
    assert_eq!(Expected::from_plan(&plan), fleet.expected(), "the plan of the fleet is wrong");
    assert_eq!(fleet.expected().create_vm, n);

    let report_path = report_file.display().to_string();
    let wall = run(
        nixprox(&fleet, &pve, "apply", &["--reviewed-plan", &plan_path, "--report", &report_path]),
        "apply",
    );
    let report = read_json(&report_file);
    let hosts = report["hosts"].as_array().expect("report hosts");
    assert_eq!(hosts.len(), n, "{report:#}");
    for host in &fleet.hosts {
        let vm = pve.vm(host.vmid);
        assert_eq!(vm["status"], "running", "VM of `{}` not started: {vm:#}", host.attr);
    }
    let slowest_host_ms = hosts.iter().filter_map(|h| h["duration_ms"].as_f64()).fold(0.0, f64::max);
    Measured { wall, executor_ms: report["duration_ms"].as_f64().unwrap_or(f64::NAN), slowest_host_ms }
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn secs(ms: f64) -> String {
    if ms.is_nan() { "—".into() } else { format!("{:.2} s", ms / 1000.0) }
}

fn times(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || b <= 0.0 { "—".into() } else { format!("{:.2}×", a / b) }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let options = options();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "nixprox apply benchmark on {cpus} CPUs, binary {}; fakepve time_scale 1, ceph_slow {} s, latency {} ms",
        binary().display(),
        options.ceph_slow,
        options.latency_ms
    );
    let mut rows = Vec::new();
    for &n in &options.hosts {
        let fast = measure(n, None, &options);
        let slow = options.sequential.then(|| measure(n, Some(1), &options));
        println!(
            "{n} hosts: defaults {} (executor {}, slowest host {}); sequential {}",
            secs(ms(fast.wall)),
            secs(fast.executor_ms),
            secs(fast.slowest_host_ms),
            slow.map(|s| secs(ms(s.wall))).unwrap_or_else(|| "—".into())
        );
        rows.push((n, fast, slow));
    }
    let one = rows.iter().find(|(n, _, _)| *n == 1).map(|(_, fast, _)| *fast).expect("the 1-host run");
    println!(
        "\n| hosts | apply (wall), defaults | vs 1 host | executor only | vs 1 host | sequential `concurrency.hosts: 1` (wall) | vs 1 host | sequential ÷ defaults |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut results = Vec::new();
    for (n, fast, slow) in &rows {
        let slow_ms = slow.map(|s| ms(s.wall)).unwrap_or(f64::NAN);
        println!(
            "| {n} | {} | {} | {} | {} | {} | {} | {} |",
            secs(ms(fast.wall)),
            times(ms(fast.wall), ms(one.wall)),
            secs(fast.executor_ms),
            times(fast.executor_ms, one.executor_ms),
            secs(slow_ms),
            times(slow_ms, ms(one.wall)),
            times(slow_ms, ms(fast.wall)),
        );
        results.push(json!({
            "hosts": n,
            "defaults": {"wall_ms": ms(fast.wall), "executor_ms": fast.executor_ms, "slowest_host_ms": fast.slowest_host_ms},
            "sequential": slow.map(|s| json!({"wall_ms": ms(s.wall), "executor_ms": s.executor_ms, "slowest_host_ms": s.slowest_host_ms})),
        }));
    }
    if let Some(path) = options.json {
        let value =
            json!({"ceph_slow": options.ceph_slow, "latency_ms": options.latency_ms, "runs": results});
        std::fs::write(&path, format!("{value:#}\n")).expect("write the results");
        println!("results written to {}", path.display());
    }
}
