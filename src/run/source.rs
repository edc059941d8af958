//! The shared front half of plan, apply and drift: settings, the flake's hosts, the live
//! cluster, and the plan computed from them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cli::SourceArgs;
use crate::config::{self, Settings};
use crate::flake::{self, DesiredHost, EvalRequest, Nix, OverrideInput};
use crate::plan::{Plan, PlanInput};
use crate::proxmox::{Client, ClientOptions, LiveVm, ReadRequest};
use crate::secret::ApiToken;

/// Everything one planning pass produced.
#[derive(Debug)]
pub struct Planned {
    pub settings: Settings,
    pub desired: Vec<DesiredHost>,
    pub live: Vec<LiveVm>,
    pub plan: Plan,
    pub client: Client,
    pub timings: Timings,
}

/// Wall time of each phase, logged and used by the benchmark.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub eval_declarations: Duration,
    pub eval_systems: Duration,
    /// The API reads' own time: the prefetch (which overlaps nix) plus the rest.
    pub proxmox: Duration,
    /// What the reads added to the wall time after nix finished (the critical path).
    pub proxmox_after_eval: Duration,
    pub planning: Duration,
}

/// The settings file: `--config`, else `nixprox.yaml` at a local flake's root.
fn settings_path(flake: &str, config: Option<&Path>) -> (Option<PathBuf>, bool) {
    if let Some(path) = config {
        return (Some(path.to_path_buf()), true);
    }
    (local_flake_dir(flake).map(|dir| dir.join(config::FILE_NAME)), false)
}

/// The directory of a flake given as a local path (`.`, `./x`, `path:/x`, `git+file:///x`).
fn local_flake_dir(flake: &str) -> Option<PathBuf> {
    let without_attr = flake.split('#').next().unwrap_or(flake);
    let without_query = without_attr.split('?').next().unwrap_or(without_attr);
    let path = if let Some(rest) = without_query.strip_prefix("path:") {
        rest
    } else if let Some(rest) = without_query.strip_prefix("git+file://") {
        rest
    } else if without_query.contains(':') {
        return None;
    } else {
        without_query
    };
    Some(PathBuf::from(path))
}

/// Loads the settings and applies `PROXMOX_URL` / `PROXMOX_CA_CERT`.
pub fn load_settings(args: &SourceArgs) -> anyhow::Result<Settings> {
    settings_of(&args.flake, args.config.as_deref())
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
    pub declarations: Duration,
    pub systems: Duration,
}

/// Evaluates the flake's hosts with nix.
pub async fn evaluate(args: &SourceArgs, settings: &Settings) -> anyhow::Result<Evaluated> {
    let mut request = EvalRequest::new(args.flake.clone());
    request.nix = Nix::default();
    request.override_inputs = override_inputs(&args.override_input)?;
    request.eval_jobs = args.eval_jobs.unwrap_or(settings.concurrency.eval_jobs);
    // `--hosts` may name orphan VMs, which are not attributes: the filter applies to the plan.
    request.hosts = None;
    request.batch = args.eval_batch.unwrap_or(0);
    let inventory = flake::evaluate(&request).await?;
    let desired = flake::resolve_all(&inventory.hosts, &settings.defaults)?;
    tracing::info!(
        hosts = desired.len(),
        declarations_ms = inventory.timings.declarations.as_millis() as u64,
        systems_ms = inventory.timings.systems.as_millis() as u64,
        "evaluated the flake with nix {}",
        inventory.nix_version.raw
    );
    Ok(Evaluated {
        desired,
        declarations: inventory.timings.declarations,
        systems: inventory.timings.systems,
    })
}

/// `--hosts` as a set, or `None` for all.
pub fn only(args: &SourceArgs) -> Option<BTreeSet<String>> {
    (!args.hosts.is_empty()).then(|| args.hosts.iter().cloned().collect())
}

/// Evaluates the flake, reads the cluster and plans; with `probe`, also asks every installed
/// host over SSH which system it runs.
pub async fn plan(args: &SourceArgs, probe: bool) -> anyhow::Result<Planned> {
    let settings = load_settings(args)?;
    let client = proxmox_client(&settings)?;
    let concurrency = args.concurrency.unwrap_or(settings.concurrency.api);

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
    // The futures borrow the settings: keep them in this block so the settings move on after.
    let (Evaluated { desired, declarations, systems }, (prefetched, prefetch_time), started) = {
        let evaluation = evaluate(args, &settings);
        tokio::pin!(prefetch, evaluation);
        let mut prefetched = None;
        let evaluated = loop {
            tokio::select! {
                evaluated = &mut evaluation => break evaluated?,
                done = &mut prefetch, if prefetched.is_none() => prefetched = Some(done),
            }
        };
        let started = Instant::now();
        let prefetched = match prefetched {
            Some(done) => done,
            None => prefetch.await,
        };
        (evaluated, prefetched, started)
    };
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
    let started = Instant::now();
    let only = only(args);
    let input = PlanInput {
        desired: &desired,
        live: &live,
        policies: settings.policies,
        only: only.as_ref(),
        probes: probes.as_ref(),
    };
    let plan = crate::apply::plan_with_image_stores(&client, input)
        .await
        .context("failed to read the image storages")?;
    let planning = started.elapsed();
    let timings = Timings {
        eval_declarations: declarations,
        eval_systems: systems,
        proxmox,
        proxmox_after_eval,
        planning,
    };
    Ok(Planned { settings, desired, live, plan, client, timings })
}

impl Timings {
    /// The phases in milliseconds, for `plan --timings` and the benchmark.
    pub fn to_json(&self, render: Duration) -> serde_json::Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        serde_json::json!({
            "eval_declarations_ms": ms(self.eval_declarations),
            "eval_systems_ms": ms(self.eval_systems),
            "proxmox_ms": ms(self.proxmox),
            "proxmox_after_eval_ms": ms(self.proxmox_after_eval),
            "planning_ms": ms(self.planning),
            "render_ms": ms(render),
        })
    }
}

pub(super) fn override_inputs(pairs: &[String]) -> anyhow::Result<Vec<OverrideInput>> {
    if !pairs.len().is_multiple_of(2) {
        bail!("--override-input takes two values: NAME REF");
    }
    Ok(pairs.chunks(2).map(|pair| OverrideInput::new(pair[0].clone(), pair[1].clone())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_flake_dirs() {
        assert_eq!(local_flake_dir("."), Some(PathBuf::from(".")));
        assert_eq!(local_flake_dir("path:/src/lab#x"), Some(PathBuf::from("/src/lab")));
        assert_eq!(local_flake_dir("git+file:///src/lab?ref=main"), Some(PathBuf::from("/src/lab")));
        assert_eq!(local_flake_dir("github:me/lab"), None);
    }
}
