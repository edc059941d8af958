//! The shared front half of plan, apply and drift: settings, the flake's hosts, the live
//! cluster, and the plan computed from them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cli::SourceArgs;
use crate::config::{self, Settings};
use crate::flake::base::local_flake_dir;
use crate::flake::probes::{Probed, probes_extra};
use crate::flake::{self, DesiredHost, EvalRequest, EvalStats, Hosts, Inventory, Nix, OverrideInput};
use crate::plan::{Plan, PlanInput, Probe};
use crate::proxmox::{Client, ClientOptions, LiveVm, ReadRequest};
use crate::secret::ApiToken;

/// The command line's description of the desired state, parsed once for plan, apply and
/// drift: every command evaluates and builds with the same `--override-input`s, checked here.
#[derive(Debug, Clone)]
pub struct Source {
    pub flake: String,
    pub config: Option<PathBuf>,
    pub override_inputs: Vec<OverrideInput>,
    /// `--hosts`: attribute names, or orphan VMs by VM name (the filter applies to the plan).
    pub hosts: Vec<String>,
    pub eval_jobs: Option<usize>,
    pub eval_batch: Option<usize>,
    pub concurrency: Option<usize>,
    /// Evaluate each host's NixOS probes with it (the plan compares them with a base).
    pub nixos_probes: bool,
}

impl Source {
    pub fn from_args(args: &SourceArgs) -> anyhow::Result<Source> {
        Ok(Source {
            flake: args.flake.clone(),
            config: args.config.clone(),
            override_inputs: OverrideInput::parse_pairs(&args.override_input)?,
            hosts: args.hosts.clone(),
            eval_jobs: args.eval_jobs,
            eval_batch: args.eval_batch,
            concurrency: args.concurrency,
            nixos_probes: false,
        })
    }

    /// `--hosts` as a set, or `None` for all.
    pub fn only(&self) -> Option<BTreeSet<String>> {
        (!self.hosts.is_empty()).then(|| self.hosts.iter().cloned().collect())
    }

    /// The evaluation of `hosts` with the settings' bounds.
    pub fn eval_request(&self, settings: &Settings, hosts: Hosts) -> EvalRequest {
        EvalRequest {
            nix: Nix::default(),
            flake: self.flake.clone(),
            override_inputs: self.override_inputs.clone(),
            eval_jobs: self.eval_jobs.unwrap_or(settings.concurrency.eval_jobs),
            hosts,
            batch: self.eval_batch.unwrap_or(0),
            max_memory: settings.eval.max_memory.bytes(),
            extra: self.nixos_probes.then(probes_extra),
        }
    }

    fn concurrency(&self, settings: &Settings) -> usize {
        self.concurrency.unwrap_or(settings.concurrency.api)
    }
}

/// Everything one planning pass produced.
#[derive(Debug)]
pub struct Planned {
    pub settings: Settings,
    pub desired: Vec<DesiredHost>,
    pub live: Vec<LiveVm>,
    pub plan: Plan,
    /// `None` for a merge of shards, which talks to no Proxmox.
    pub client: Option<Client>,
    pub timings: Timings,
    /// Each host's NixOS probes at the head, when [`Source::nixos_probes`] asked for them.
    pub head_probes: BTreeMap<String, Probed>,
}

/// Wall time of each phase, logged and used by the benchmark.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// The evaluation of every host (declaration, system, disk layout in one pass).
    pub eval: Duration,
    pub eval_stats: EvalStats,
    /// The API reads' own time: the prefetch (which overlaps nix) plus the rest.
    pub proxmox: Duration,
    /// What the reads added to the wall time after nix finished (the critical path).
    pub proxmox_after_eval: Duration,
    pub planning: Duration,
    /// The NixOS changes against the base (`run::changes`) after planning, when computed.
    pub nixos_changes: Option<Duration>,
}

/// The settings file: `--config`, else `nixprox.yaml` at a local flake's root.
fn settings_path(flake: &str, config: Option<&Path>) -> (Option<PathBuf>, bool) {
    if let Some(path) = config {
        return (Some(path.to_path_buf()), true);
    }
    (local_flake_dir(flake).map(|dir| dir.join(config::FILE_NAME)), false)
}

/// Loads the settings and applies `PROXMOX_URL` / `PROXMOX_CA_CERT`.
pub fn load_settings(source: &Source) -> anyhow::Result<Settings> {
    settings_of(&source.flake, source.config.as_deref())
}

/// [`load_settings`] for the flake `flake` (a local one holds `nixprox.yaml`) or the file `config`.
pub fn settings_of(flake: &str, config: Option<&Path>) -> anyhow::Result<Settings> {
    let (path, explicit) = settings_path(flake, config);
    let mut settings = match &path {
        Some(path) => Settings::load(path, explicit)?,
        None => Settings::default(),
    };
    // A relative CA path in the file is relative to the file, not to the working directory.
    if let (Some(ca), Some(path)) = (&settings.proxmox.ca_cert, &path)
        && ca.is_relative()
    {
        let base = path.parent().unwrap_or(Path::new("."));
        settings.proxmox.ca_cert = Some(base.join(ca));
    }
    if let Some(url) = env_nonempty("PROXMOX_URL") {
        settings.proxmox.url = Some(url);
    }
    if let Some(ca) = env_nonempty("PROXMOX_CA_CERT") {
        settings.proxmox.ca_cert = Some(PathBuf::from(ca));
    }
    // A runner that keeps the key on disk (nixosModules.runner) names it here, so the
    // repository's nixprox.yaml need not know the runner's paths.
    if let Some(key) = env_nonempty("NIXPROX_SSH_KEY_FILE") {
        settings.ssh.key = Some(PathBuf::from(key));
        settings.ssh.key_env = None;
    }
    Ok(settings)
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The API client from the settings and `PROXMOX_API_TOKEN`.
pub fn proxmox_client(settings: &Settings) -> anyhow::Result<Client> {
    let Some(url) = settings.proxmox.url.clone() else {
        bail!("no Proxmox URL: set `proxmox.url` in nixprox.yaml or the PROXMOX_URL environment variable");
    };
    Ok(Client::new(ClientOptions::from_settings(&settings.proxmox, url, api_token()?))?)
}

/// The API token from `PROXMOX_API_TOKEN`, or from the file `PROXMOX_API_TOKEN_FILE` names
/// (for runners that keep secrets on disk rather than in the forge).
fn api_token() -> anyhow::Result<ApiToken> {
    let (text, source) = match (env_nonempty("PROXMOX_API_TOKEN"), env_nonempty("PROXMOX_API_TOKEN_FILE")) {
        (Some(_), Some(_)) => bail!(
            "both PROXMOX_API_TOKEN and PROXMOX_API_TOKEN_FILE are set: unset one of them, so it is clear which token nixprox uses"
        ),
        (Some(token), None) => (token, "PROXMOX_API_TOKEN".to_string()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!("failed to read the API token from PROXMOX_API_TOKEN_FILE `{path}` (it must be readable by the user nixprox runs as)")
            })?;
            // The first line: a trailing newline (or a comment below it) is not the secret.
            (text.lines().next().unwrap_or_default().to_string(), format!("PROXMOX_API_TOKEN_FILE `{path}`"))
        }
        (None, None) => bail!(
            "PROXMOX_API_TOKEN is not set: create an API token in Proxmox (Datacenter → Permissions → API Tokens) and export it as `user@realm!tokenid=secret`, or put it in a file and set PROXMOX_API_TOKEN_FILE (see docs/guide.md)"
        ),
    };
    ApiToken::parse(&text).map_err(|msg| anyhow::anyhow!("invalid {source}: {msg}"))
}

/// The flake's hosts, resolved against the settings' defaults.
#[derive(Debug)]
pub struct Evaluated {
    pub desired: Vec<DesiredHost>,
    pub elapsed: Duration,
    pub stats: EvalStats,
    pub probes: BTreeMap<String, Probed>,
}

/// Evaluates every host of the flake with nix (plan, drift and apply alike).
pub async fn evaluate(source: &Source, settings: &Settings) -> anyhow::Result<Evaluated> {
    // `--hosts` may name orphan VMs, which are not attributes: the filter applies to the plan.
    let inventory = evaluate_hosts(source, settings, Hosts::All).await?;
    let desired = flake::resolve_all(&inventory.hosts, &settings.defaults)?;
    Ok(Evaluated {
        desired,
        elapsed: inventory.elapsed,
        stats: inventory.stats,
        probes: head_probes(&inventory),
    })
}

/// Each host's NixOS probes (its `extra`), when the evaluation had them.
pub fn head_probes(inventory: &Inventory) -> BTreeMap<String, Probed> {
    inventory
        .hosts
        .iter()
        .filter_map(|h| Some((h.attr.clone(), Probed::of(h.extra.as_ref(), h.extra_error.as_deref())?)))
        .collect()
}

/// Evaluates `hosts` (all, or a shard) and logs how it went.
pub async fn evaluate_hosts(source: &Source, settings: &Settings, hosts: Hosts) -> anyhow::Result<Inventory> {
    let inventory = flake::evaluate(&source.eval_request(settings, hosts)).await?;
    let stats = inventory.stats;
    tracing::info!(
        hosts = inventory.hosts.len(),
        ms = inventory.elapsed.as_millis() as u64,
        processes = stats.processes,
        restarts = stats.restarts,
        peak_mib = stats.peak_memory >> 20,
        "evaluated the flake with nix {}",
        inventory.nix_version.raw
    );
    Ok(inventory)
}

/// Evaluates the flake, reads the cluster and plans; with `probe`, also asks every installed
/// host over SSH which system it runs.
pub async fn plan(source: &Source, probe: bool) -> anyhow::Result<Planned> {
    let settings = load_settings(source)?;
    let client = proxmox_client(&settings)?;
    let concurrency = source.concurrency(&settings);

    // The Proxmox listing and the managed VMs' configs need no host names: read them while nix
    // evaluates, so the API's round trips hide behind the evaluation. An evaluation error still
    // wins (the reads are dropped), and a read error is reported after the flake resolved, as
    // when the two ran one after the other.
    let reader = client.clone();
    let prefetch = async move {
        let started = Instant::now();
        let result = crate::proxmox::prefetch_cluster(&reader, concurrency).await;
        (result, started.elapsed())
    };
    let evaluation = evaluate(source, &settings);
    let (Evaluated { desired, elapsed, stats, probes: head_probes }, (prefetched, prefetch_time), started) =
        overlap(evaluation, prefetch).await?;
    let read = ReadRequest { host_names: desired.iter().map(|d| d.spec.name.clone()).collect(), concurrency };
    let finish_started = Instant::now();
    let live = match prefetched {
        Ok(prefetched) => crate::proxmox::finish_read(&client, prefetched, &read).await,
        Err(err) => Err(err),
    }
    .context("failed to read the cluster")?;
    // The reads' own time (as if they ran alone), and what they added after nix was done.
    let proxmox = prefetch_time + finish_started.elapsed();
    let proxmox_after_eval = started.elapsed();
    tracing::info!(vms = live.len(), ms = proxmox.as_millis() as u64, "read the cluster at {}", client.url());

    let probes =
        if probe { Some(super::probe::probe(&client, &settings, &desired, &live).await?) } else { None };
    let (mut plan, planning) =
        compute(source, &settings, &desired, &live, probes.as_ref(), Some(&client)).await?;
    plan.unreferenced_images = super::gc_cmd::unreferenced(&client, &settings, &desired).await;
    let timings = Timings {
        eval: elapsed,
        eval_stats: stats,
        proxmox,
        proxmox_after_eval,
        planning,
        nixos_changes: None,
    };
    Ok(Planned { settings, desired, live, plan, client: Some(client), timings, head_probes })
}

/// The planning step (of a run, or of merged shards), timed: pure, except that a plan which
/// creates VMs from images reads what their storages hold (through `client`, or one made from
/// the settings for a merge).
pub async fn compute(
    source: &Source,
    settings: &Settings,
    desired: &[DesiredHost],
    live: &[LiveVm],
    probes: Option<&BTreeMap<String, Probe>>,
    client: Option<&Client>,
) -> anyhow::Result<(Plan, Duration)> {
    let started = Instant::now();
    let only = source.only();
    let input = PlanInput { desired, live, policies: settings.policies, only: only.as_ref(), probes };
    let plan = match client {
        Some(client) => crate::apply::plan_with_image_stores(client, input).await,
        None => {
            // A merge of shards talks to no Proxmox, unless its plan creates VMs from images:
            // what their storages hold decides the uploads, so they are read here.
            let first = crate::plan::plan(input);
            if crate::plan::image_stores_to_read(&first, desired).is_empty() {
                Ok(first)
            } else {
                let client = proxmox_client(settings).context(
                    "the merged plan creates VMs from images, whose storages must be read: give the merge job the Proxmox URL and token",
                )?;
                crate::apply::plan_with_image_stores(&client, input).await
            }
        }
    }
    .context("failed to read the image storages or the resource mappings the plan checks")?;
    Ok((plan, started.elapsed()))
}

/// Runs `work` (the evaluation) and `side` (cluster reads) at once: `work`'s error wins and
/// drops `side`; otherwise both results, and when `work` finished (what `side` added after it
/// is the critical path).
pub async fn overlap<W, S, T>(work: W, side: S) -> anyhow::Result<(T, S::Output, Instant)>
where
    W: std::future::Future<Output = anyhow::Result<T>>,
    S: std::future::Future,
{
    tokio::pin!(work, side);
    let mut side_done = None;
    let worked = loop {
        tokio::select! {
            worked = &mut work => break worked?,
            done = &mut side, if side_done.is_none() => side_done = Some(done),
        }
    };
    let started = Instant::now();
    let side_done = match side_done {
        Some(done) => done,
        None => side.await,
    };
    Ok((worked, side_done, started))
}

impl Timings {
    /// The phases in milliseconds, for `plan --timings` and the benchmark.
    pub fn to_json(&self, render: Duration) -> serde_json::Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let stats = &self.eval_stats;
        let mut timings = serde_json::json!({
            "eval_ms": ms(self.eval),
            "eval_processes": stats.processes,
            "eval_restarts": stats.restarts,
            "eval_steals": stats.steals,
            "eval_max_workers": stats.max_workers,
            "eval_peak_memory_kib": stats.peak_memory / 1024,
            "eval_reservation_kib": stats.reservation / 1024,
            "proxmox_ms": ms(self.proxmox),
            "proxmox_after_eval_ms": ms(self.proxmox_after_eval),
            "planning_ms": ms(self.planning),
            "render_ms": ms(render),
        });
        if let Some(changes) = self.nixos_changes {
            timings["nixos_changes_ms"] = ms(changes).into();
        }
        timings
    }
}
