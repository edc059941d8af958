//! What the plan's NixOS changes cost: `cargo bench --bench nixos_changes` (docs/performance.md).
//!
//! Generates a fleet of which `--changed` hosts change between a base and a head commit of a
//! real git repository (`Fleet::generate_nixos`: kernel, packages, a service, a port, a user and
//! a user probe change; their VMs record an older system, so they switch; the others are in
//! sync), starts fakepve with its VMs, and runs the real `nixprox plan --format json --timings` alternately with
//! `--no-base` (the head evaluation alone) and with `--base <base commit>`, after one warm-up
//! run of each. It prints the medians of the phases and the extra wall time of the comparison
//! against the head evaluation (`eval_ms` of the `--no-base` runs, which evaluate no probes).
//!
//! Options (after `--`): `--hosts 100`, `--changed N` (default: all hosts), `--runs 5`, `--latency 20` (ms), `--json FILE`, and
//! `--plan-args "--eval-batch 50"` (passed to every `nixprox plan`, split on whitespace).
//! `NIXPROX_BENCH_BIN` runs another nixprox binary.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use serde_json::{Value, json};

use support::fakepve::FakePve;
use support::fleet::{Fleet, State};
use support::git::Git;

struct Options {
    hosts: usize,
    changed: Option<usize>,
    runs: usize,
    latency: u64,
    json: Option<PathBuf>,
    plan_args: Vec<String>,
}

fn options() -> Options {
    let mut options =
        Options { hosts: 100, changed: None, runs: 5, latency: 20, json: None, plan_args: Vec::new() };
    let mut args = std::env::args().skip(1);
    let number = |value: Option<String>| -> u64 {
        let value = value.unwrap_or_default();
        value.trim().parse().unwrap_or_else(|_| panic!("not a number: `{value}`"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--hosts" => options.hosts = number(args.next()) as usize,
            "--changed" => options.changed = Some(number(args.next()) as usize),
            "--runs" => options.runs = number(args.next()).max(1) as usize,
            "--latency" => options.latency = number(args.next()),
            "--json" => options.json = args.next().map(PathBuf::from),
            "--plan-args" => {
                options.plan_args =
                    args.next().unwrap_or_default().split_whitespace().map(String::from).collect();
            }
            // cargo passes `--bench`; libtest-style filters are ignored too.
            _ => {}
        }
    }
    options
}

fn binary() -> PathBuf {
    std::env::var_os("NIXPROX_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_nixprox")))
}

/// One run: the wall time and `--timings`, in milliseconds; checks what the plan compared.
fn run(fleet: &Fleet, pve: &FakePve, base: Option<&str>, extra: &[String]) -> (f64, Value) {
    let dir = tempfile::tempdir().expect("tempdir");
    let timings = dir.path().join("timings.json");
    let mut command = Command::new(binary());
    support::cli::clean_env(&mut command)
        .env("NIXPROX_LOG", "warn")
        .envs(support::cli::pve_env(pve))
        .arg("plan")
        .arg("--flake")
        .arg(fleet.dir.path());
    for input in support::nix::override_inputs() {
        command.arg("--override-input").arg(&input.name).arg(&input.flake_ref);
    }
    command.args(["--format", "json", "--timings"]).arg(&timings).args(extra);
    match base {
        Some(base) => command.args(["--base", base]),
        None => command.arg("--no-base"),
    };
    let started = Instant::now();
    let output = command.output().expect("run nixprox");
    let wall = started.elapsed().as_secs_f64() * 1000.0;
    assert!(output.status.success(), "nixprox plan failed: {}", String::from_utf8_lossy(&output.stderr));
    let plan: Value = serde_json::from_slice(&output.stdout).expect("json plan");
    let compared =
        plan["hosts"].as_array().expect("hosts").iter().filter(|h| h["nixos_changes"]["state"] == "compared");
    let changed = fleet.hosts.iter().filter(|h| h.state == State::OldSystem).count();
    let expected = if base.is_some() { changed } else { 0 };
    assert_eq!(compared.count(), expected, "hosts compared with the base");
    let timings = serde_json::from_str(&std::fs::read_to_string(&timings).expect("timings")).expect("json");
    (wall, timings)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let options = options();
    let n = options.hosts;
    let changed = options.changed.unwrap_or(n).min(n);
    let fleet = Fleet::generate_nixos(n, changed);
    let git = Git::init(fleet.dir.path());
    let base = git.commit_all("base");
    fleet.set_version(2);
    git.commit_all("head");
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let scenario = fleet
        .scenario(&runtime.block_on(fleet.toplevels()))
        .set("time_scale", json!(1))
        .set("latency", json!(options.latency as f64 / 1000.0));
    let pve = FakePve::start(scenario);
    let cpus = std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1);
    println!(
        "nixprox NixOS changes benchmark: {changed} of {n} hosts changed, {cpus} CPUs, binary {}, plan arguments {:?}",
        binary().display(),
        options.plan_args
    );

    // Warm-up: the store copies of the head and of the base commit.
    let extra = &options.plan_args;
    run(&fleet, &pve, None, extra);
    run(&fleet, &pve, Some(&base), extra);
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..options.runs {
        without.push(run(&fleet, &pve, None, extra));
        with.push(run(&fleet, &pve, Some(&base), extra));
    }
    let of = |runs: &[(f64, Value)], key: &str| {
        median(runs.iter().map(|(_, t)| t[key].as_f64().unwrap_or(0.0)).collect())
    };
    let wall = |runs: &[(f64, Value)]| median(runs.iter().map(|(w, _)| *w).collect());
    let head = of(&without, "eval_ms");
    let extra = wall(&with) - wall(&without);
    println!("\n| phase (median of {} runs) | `--no-base` | `--base <commit>` |", options.runs);
    println!("| --- | ---: | ---: |");
    for (key, name) in
        [("eval_ms", "nix: the evaluation (+ head probes)"), ("eval_processes", "nix processes")]
    {
        println!("| {name} | {:.0} | {:.0} |", of(&without, key), of(&with, key));
    }
    println!(
        "| base: evaluate, compare (`nixos_changes_ms`; resolved and fetched during the head) | — | {:.0} ms |",
        of(&with, "nixos_changes_ms")
    );
    println!("| **total (wall)** | {:.0} ms | {:.0} ms |", wall(&without), wall(&with));
    println!(
        "\nextra wall time: {extra:.0} ms = {:.1} % of the head evaluation ({head:.0} ms); head probes {:+.0} ms, base phase {:.0} ms",
        100.0 * extra / head,
        of(&with, "eval_ms") - of(&without, "eval_ms"),
        of(&with, "nixos_changes_ms"),
    );
    if let Some(path) = options.json {
        let runs = |runs: &[(f64, Value)]| {
            runs.iter().map(|(w, t)| json!({"wall_ms": w, "timings": t})).collect::<Vec<_>>()
        };
        let results = json!({"hosts": n, "changed": changed, "latency_ms": options.latency, "without": runs(&without), "with": runs(&with)});
        std::fs::write(&path, format!("{results:#}\n")).expect("write the results");
        println!("results written to {}", path.display());
    }
}
