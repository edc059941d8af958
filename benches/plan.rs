//! The plan benchmark: `cargo bench --bench plan` (see docs/performance.md).
//!
//! Side by side in one run, for each fleet:
//! - **the reference**: ONE plain `nix eval` of everything a plan needs from the flake (every
//!   host's declaration, system out path and disk layout hash), the floor for any evaluation;
//! - **this build's `nixprox plan --format json`** against a fakepve holding the fleet's VMs
//!   (tests/support/fleet.rs: most in sync, some drifted, missing, resized, orphans);
//! - optionally **another build** (`--before BIN`, e.g. `main`'s), the "before" column.
//!
//! Fleets: the light generated fleet at `--hosts 10,100,500` (stand-in hosts that cost ~1 ms
//! each to evaluate) and the heavy fleet at `--heavy 40` (hosts that cost what a small NixOS
//! does, `fixtures/lib/heavy.nix`), the heavy one with nixprox's default `eval.max_memory` and
//! with each `--max-memory` value (default `1G`) to show the bound at work.
//!
//! fakepve shares the machine's CPUs with nix (a real Proxmox API would not): the tables show
//! the API reads' own time and what they added after nix, so the critical path is visible.
//! Every measurement is the median of `--runs` repetitions (default 3); the repetitions
//! interleave the reference and the builds, and a ratio is the median of the per-repetition
//! ratios, so a change of the machine's load between repetitions does not skew it. Memory is the peak of
//! the summed resident memory of all `nix` processes under the measured process, sampled every
//! 10 ms from `/proc` (independently of nixprox's own accounting). The load average is printed
//! with every fleet: this runs on shared machines. Everything runs on loopback.
//!
//! Options (after `--`): `--hosts 10,100,500`, `--heavy 40` (0: none), `--heavy-units 650`,
//! `--max-memory 1G,…`, `--latency 50` (ms), `--runs 3`, `--before BIN`, `--json FILE`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nixprox::flake::EvalRequest;
use serde_json::{Value, json};

use support::fakepve::FakePve;
use support::fleet::{Expected, Fleet, HEAVY_UNITS};
use support::nix::{nix, override_inputs};

#[derive(Debug)]
struct Options {
    hosts: Vec<usize>,
    heavy: usize,
    heavy_units: usize,
    max_memory: Vec<String>,
    latency_ms: u64,
    runs: usize,
    before: Option<PathBuf>,
    json: Option<PathBuf>,
}

fn options() -> Options {
    let mut options = Options {
        hosts: vec![10, 100, 500],
        heavy: 40,
        heavy_units: HEAVY_UNITS,
        max_memory: vec!["1G".into()],
        latency_ms: 50,
        runs: 3,
        before: None,
        json: None,
    };
    let mut args = std::env::args().skip(1);
    let number = |value: Option<String>| -> usize {
        let value = value.unwrap_or_default();
        value.trim().parse().unwrap_or_else(|_| panic!("not a number: `{value}`"))
    };
    let list = |value: Option<String>| -> Vec<String> {
        value.unwrap_or_default().split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect()
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--hosts" => {
                options.hosts = list(args.next()).iter().map(|v| number(Some(v.clone()))).collect();
            }
            "--heavy" => options.heavy = number(args.next()),
            "--heavy-units" => options.heavy_units = number(args.next()),
            "--max-memory" => options.max_memory = list(args.next()),
            "--latency" => options.latency_ms = number(args.next()) as u64,
            "--runs" => options.runs = number(args.next()).max(1),
            "--before" => options.before = args.next().map(PathBuf::from),
            "--json" => options.json = args.next().map(PathBuf::from),
            // cargo passes `--bench`; libtest-style filters are ignored too.
            _ => {}
        }
    }
    options
}

/// One measured run (or the median of several, with every run's wall time).
#[derive(Debug, Clone)]
struct Measured {
    wall: Duration,
    /// Every repetition's wall time, in the order run.
    walls: Vec<Duration>,
    /// Peak of the summed RSS of every `nix` process under the measured one, bytes.
    nix_peak: u64,
    /// `--timings` of a nixprox run (empty for the reference).
    timings: Value,
}

/// The median run of several (by wall time), with the median memory peak.
fn median(mut runs: Vec<Measured>) -> Measured {
    let walls: Vec<Duration> = runs.iter().map(|m| m.wall).collect();
    let mut peaks: Vec<u64> = runs.iter().map(|m| m.nix_peak).collect();
    peaks.sort_unstable();
    runs.sort_by_key(|m| m.wall);
    let mut middle = runs[runs.len() / 2].clone();
    middle.nix_peak = peaks[peaks.len() / 2];
    middle.walls = walls;
    middle
}

/// Samples the summed RSS of all `nix` processes below (and including) `root` until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(root: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(nix_rss_below(root), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Sampler { stop, peak, thread }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.peak.load(Ordering::Relaxed)
    }
}

/// Sum of `VmRSS` of the `nix` processes in the tree of `root` (children from every thread's
/// `/proc/<pid>/task/<tid>/children`).
fn nix_rss_below(root: u32) -> u64 {
    let mut total = 0;
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "nix") {
            total += nixprox::flake::worker::rss_bytes(pid).unwrap_or(0);
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for task in tasks.flatten() {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            stack.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
    }
    total
}

/// Runs `command` to completion, sampling its `nix` processes; panics with its stderr on failure.
fn measure(mut command: Command) -> (Duration, u64, Vec<u8>) {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = Instant::now();
    let child = command.spawn().expect("start the measured command");
    let sampler = Sampler::start(child.id());
    let output = child.wait_with_output().expect("wait for the measured command");
    let wall = started.elapsed();
    let peak = sampler.finish();
    assert!(output.status.success(), "{command:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    (wall, peak, output.stdout)
}

/// The reference: one plain `nix eval` of every host's declaration, system and disk layout.
/// Returns the measurement and every host's toplevel (for the fakepve cluster).
fn reference(fleet: &Fleet) -> (Measured, BTreeMap<String, String>) {
    let request =
        EvalRequest { nix: nix(), override_inputs: override_inputs(), ..EvalRequest::new(fleet.flake_ref()) };
    let eval = request.single_process_command();
    let argv = eval.argv();
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]).envs(eval.env());
    let (wall, nix_peak, stdout) = measure(command);
    let value: Value = serde_json::from_slice(&stdout).expect("the reference prints JSON");
    let toplevels = value["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .filter_map(|h| {
            Some((h["host"].as_str()?.to_string(), h["system"]["toplevel"].as_str()?.to_string()))
        })
        .collect();
    (Measured { wall, walls: vec![wall], nix_peak, timings: Value::Null }, toplevels)
}

/// `nixprox plan --format json` of the fleet against `pve` with `binary`; checks the plan.
fn plan(binary: &Path, fleet: &Fleet, pve: &FakePve, config: Option<&Path>) -> Measured {
    let dir = tempfile::tempdir().expect("tempdir");
    let timings_path = dir.path().join("timings.json");
    let mut command = Command::new(binary);
    support::cli::clean_env(&mut command)
        .env("NIXPROX_LOG", "warn")
        .envs(support::cli::pve_env(pve))
        .arg("plan")
        .arg("--flake")
        .arg(fleet.flake_ref());
    for input in override_inputs() {
        command.arg("--override-input").arg(&input.name).arg(&input.flake_ref);
    }
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command.args(["--format", "json", "--timings"]).arg(&timings_path);
    let (wall, nix_peak, stdout) = measure(command);
    let plan: Value = serde_json::from_slice(&stdout).expect("json plan");
    assert_eq!(Expected::from_plan(&plan), fleet.expected(), "the plan of the fleet is wrong");
    let timings = std::fs::read_to_string(&timings_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    Measured { wall, walls: vec![wall], nix_peak, timings }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

fn ratio(value: f64) -> String {
    format!("{value:.2}×")
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The median run of a column, and the median of its per-repetition ratios to the reference.
#[derive(Debug, Clone)]
struct Ratioed {
    median: Measured,
    ratio: f64,
}

impl Ratioed {
    fn new(runs: Vec<Measured>, reference: &[Duration]) -> Ratioed {
        let mut ratios: Vec<f64> =
            runs.iter().zip(reference).map(|(m, r)| m.wall.as_secs_f64() / r.as_secs_f64()).collect();
        ratios.sort_by(f64::total_cmp);
        Ratioed { ratio: ratios[ratios.len() / 2], median: median(runs) }
    }
}

/// One table row and the JSON record of a fleet.
struct Row {
    fleet: String,
    hosts: usize,
    variant: String,
    reference: Measured,
    now: Ratioed,
    before: Option<Ratioed>,
}

impl Row {
    fn print(&self) {
        let spread = |m: &Measured| {
            let secs: Vec<String> = m.walls.iter().map(|w| format!("{:.2}", w.as_secs_f64())).collect();
            secs.join(" ")
        };
        eprintln!(
            "  runs (s): reference {} | plan {}{}",
            spread(&self.reference),
            spread(&self.now.median),
            self.before.as_ref().map(|b| format!(" | before {}", spread(&b.median))).unwrap_or_default()
        );
        let before = match &self.before {
            Some(b) => format!("{} | {} | {}", secs(b.median.wall), ratio(b.ratio), mib(b.median.nix_peak)),
            None => "— | — | —".into(),
        };
        println!(
            "| {} | {} | {} | {} ({}) | {} | {} | {} | {} |",
            self.fleet,
            self.hosts,
            self.variant,
            secs(self.reference.wall),
            mib(self.reference.nix_peak),
            secs(self.now.median.wall),
            ratio(self.now.ratio),
            mib(self.now.median.nix_peak),
            before
        );
    }

    fn details(&self) -> String {
        let t = &self.now.median.timings;
        let ms = |key: &str| t[key].as_f64().map_or("—".into(), |v| format!("{v:.0} ms"));
        let count = |key: &str| t[key].as_u64().map_or("—".into(), |v| v.to_string());
        let slowest_render = t["render_formats_ms"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_f64).fold(0.0, f64::max))
            .map_or("—".into(), |v| format!("{v:.1} ms"));
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.fleet,
            self.hosts,
            self.variant,
            ms("eval_ms"),
            count("eval_processes"),
            count("eval_restarts"),
            count("eval_steals"),
            count("eval_max_workers"),
            ms("proxmox_ms"),
            ms("proxmox_after_eval_ms"),
            ms("planning_ms"),
            slowest_render
        )
    }

    fn json(&self) -> Value {
        let m = |m: &Measured| {
            let walls: Vec<f64> = m.walls.iter().map(|w| w.as_secs_f64() * 1000.0).collect();
            json!({"wall_ms": m.wall.as_secs_f64() * 1000.0, "walls_ms": walls, "nix_peak_kib": m.nix_peak / 1024, "timings": m.timings})
        };
        let r = |r: &Ratioed| json!({"median": m(&r.median), "ratio": r.ratio});
        json!({
            "fleet": self.fleet, "hosts": self.hosts, "variant": self.variant,
            "reference": m(&self.reference), "now": r(&self.now), "before": self.before.as_ref().map(r),
        })
    }
}

fn main() {
    let options = options();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let now_bin = PathBuf::from(env!("CARGO_BIN_EXE_nixprox"));
    println!(
        "nixprox plan benchmark: {cpus} CPUs, {} ms API latency, median of {} runs; this build {}{}",
        options.latency_ms,
        options.runs,
        now_bin.display(),
        options.before.as_ref().map(|b| format!(", before {}", b.display())).unwrap_or_default()
    );
    let mut fleets: Vec<(String, usize, Fleet)> =
        options.hosts.iter().map(|&n| ("light".to_string(), n, Fleet::generate(n))).collect();
    if options.heavy > 0 {
        fleets.push((
            "heavy".into(),
            options.heavy,
            Fleet::generate_heavy(options.heavy, options.heavy_units),
        ));
    }
    let mut rows = Vec::new();
    for (kind, n, fleet) in &fleets {
        println!("\n{kind} fleet, {n} hosts: load average {}", load());
        // The first reference run also warms the store copy of the flake and gives the systems.
        let (first, toplevels) = reference(fleet);
        let scenario = fleet
            .scenario(&toplevels)
            .set("time_scale", json!(1))
            .set("latency", json!(options.latency_ms as f64 / 1000.0));
        let pve = FakePve::start(scenario);
        let mut variants: Vec<(String, Option<PathBuf>)> = vec![("default".into(), None)];
        let settings_dir = tempfile::tempdir().expect("tempdir");
        if kind == "heavy" {
            for limit in &options.max_memory {
                let path = settings_dir.path().join(format!("nixprox-{limit}.yaml"));
                let base = std::fs::read_to_string(fleet.dir.path().join("nixprox.yaml")).expect("settings");
                std::fs::write(&path, format!("{base}eval:\n  max_memory: {limit}\n"))
                    .expect("write settings");
                variants.push((format!("`max_memory: {limit}`"), Some(path)));
            }
        }
        // Repetitions interleave the reference, every variant and the build before, so that
        // each repetition's ratios compare runs made under the same load.
        let mut references = vec![first];
        let mut nows: Vec<Vec<Measured>> = vec![Vec::new(); variants.len()];
        let mut befores = Vec::new();
        for repetition in 0..options.runs {
            if repetition > 0 {
                references.push(reference(fleet).0);
            }
            for (i, (_, config)) in variants.iter().enumerate() {
                nows[i].push(plan(&now_bin, fleet, &pve, config.as_deref()));
            }
            // The build before has no `eval` settings: it runs with its defaults only.
            if let Some(bin) = &options.before {
                befores.push(plan(bin, fleet, &pve, None));
            }
        }
        let ref_walls: Vec<Duration> = references.iter().map(|m| m.wall).collect();
        let reference = median(references);
        let before = (!befores.is_empty()).then(|| Ratioed::new(befores, &ref_walls));
        for (i, ((variant, _), now)) in variants.into_iter().zip(nows).enumerate() {
            let row = Row {
                fleet: kind.clone(),
                hosts: *n,
                variant,
                reference: reference.clone(),
                now: Ratioed::new(now, &ref_walls),
                before: if i == 0 { before.clone() } else { None },
            };
            row.print();
            rows.push(row);
        }
        println!("load average after: {}", load());
    }

    println!(
        "\n| fleet | hosts | variant | one `nix eval` (peak nix memory) | plan | ÷ reference | peak nix memory | before | ÷ reference | peak nix memory |"
    );
    println!("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in &rows {
        row.print();
    }
    println!(
        "\n| fleet | hosts | variant | evaluation | nix processes | restarts | steals | most at once | Proxmox reads | Proxmox after nix | planning | slowest render |"
    );
    println!("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in &rows {
        println!("{}", row.details());
    }
    if let Some(path) = options.json {
        let results: Vec<Value> = rows.iter().map(Row::json).collect();
        std::fs::write(&path, format!("{:#}\n", Value::Array(results))).expect("write the results");
        println!("results written to {}", path.display());
    }
}
