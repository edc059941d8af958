//! The host inventory: which hosts a flake manages, what each declares (`config.nixprox`) and
//! what each evaluates to (system out path, disk layout hash).
//!
//! Phase one is ONE `nix eval` over `nixosConfigurations` that prints every managed host's
//! declaration, because evaluating the module system once per host costs a process start and
//! a flake fetch each. Phase two evaluates the hosts' systems in batches, one `nix eval` per
//! batch and at most `eval_jobs` at a time: those evaluations are the expensive, independent
//! part, and a batch pays nix's start, the flake fetch and the shared library evaluation once
//! instead of once per host (docs/performance.md). A batch is bounded ([`EvalRequest::batch`])
//! because one process holds every system it evaluated in memory, and a real NixOS system is
//! hundreds of MiB.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Semaphore;

use super::command::{Nix, NixError, NixVersion, OverrideInput, nix_string};
use super::host::{HostDecl, ImageEval, SystemEval};

const INVENTORY_EXPR: &str = include_str!("nix/inventory.nix");
const SYSTEM_EXPR: &str = include_str!("nix/system.nix");

/// What to evaluate and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalRequest {
    pub nix: Nix,
    /// Flake reference as nix understands it (`.`, `path:/src`, `github:owner/repo`).
    pub flake: String,
    pub override_inputs: Vec<OverrideInput>,
    /// Concurrent `nix eval` processes in phase two; 0 means the number of CPUs.
    pub eval_jobs: usize,
    /// Attribute names to evaluate (`--hosts`); `None` means all.
    pub hosts: Option<Vec<String>>,
    /// Most hosts whose systems one `nix eval` evaluates; 0 means [`DEFAULT_BATCH`].
    pub batch: usize,
}

/// Hosts per system evaluation by default: few enough that a process evaluating real NixOS
/// systems stays within a few GiB, many enough that nix's start-up stops dominating.
pub const DEFAULT_BATCH: usize = 8;

impl EvalRequest {
    pub fn new(flake: impl Into<String>) -> EvalRequest {
        EvalRequest {
            nix: Nix::default(),
            flake: flake.into(),
            override_inputs: Vec::new(),
            eval_jobs: 0,
            hosts: None,
            batch: 0,
        }
    }

    /// Hosts per `nix eval` for `hosts` hosts: spread over the jobs, at most the batch size.
    fn batch_size(&self, hosts: usize) -> usize {
        let limit = if self.batch == 0 { DEFAULT_BATCH } else { self.batch };
        hosts.div_ceil(self.jobs()).clamp(1, limit)
    }

    fn jobs(&self) -> usize {
        match self.eval_jobs {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        }
    }

    fn installable(&self) -> String {
        format!("{}#nixosConfigurations", self.flake)
    }
}

/// One managed host, as evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluatedHost {
    /// Attribute name under `nixosConfigurations`.
    pub attr: String,
    pub decl: HostDecl,
    pub system: SystemEval,
}

/// Wall time of the two phases, for `--timings` and the performance docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EvalTimings {
    /// The one evaluation of every host's `config.nixprox`.
    pub declarations: Duration,
    /// All per-host system evaluations, from the first start to the last finish.
    pub systems: Duration,
}

/// Everything the flake says, in attribute-name order.
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    pub nix_version: NixVersion,
    pub hosts: Vec<EvaluatedHost>,
    /// Selected attributes that are not managed (no `nixprox` options, or `enable = false`).
    pub skipped: Vec<String>,
    pub timings: EvalTimings,
}

/// The flake could not be turned into an inventory.
#[derive(Debug, thiserror::Error)]
pub enum FlakeError {
    #[error(transparent)]
    Nix(#[from] NixError),
    #[error("nix {found} is too old: nixprox needs Nix {}.{} or later (`{raw}`)", NixVersion::MINIMUM.0, NixVersion::MINIMUM.1)]
    UnsupportedNix { found: String, raw: String },
    #[error("failed to evaluate `nixosConfigurations` of flake `{flake}`: {message}")]
    Flake { flake: String, message: String },
    #[error("failed to evaluate host `{host}` of flake `{flake}`: {message}")]
    Host { host: String, flake: String, message: String },
    #[error(
        "failed to decode the `nixprox` options of host `{host}`: {source} (does the flake use a nixprox module of another version than this binary?)"
    )]
    Decode { host: String, source: serde_json::Error },
    #[error("{}: not in `nixosConfigurations` of flake `{flake}` (check `--hosts`)", names.iter().map(|n| format!("host `{n}`")).collect::<Vec<_>>().join(", "))]
    UnknownHosts { flake: String, names: Vec<String> },
}

impl FlakeError {
    /// nix's own message for evaluation failures.
    pub fn nix_message(&self) -> Option<&str> {
        match self {
            FlakeError::Flake { message, .. } | FlakeError::Host { message, .. } => Some(message),
            FlakeError::Nix(err) => err.nix_message(),
            _ => None,
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawInventory {
    hosts: BTreeMap<String, serde_json::Value>,
    skipped: Vec<String>,
    missing: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSystem {
    toplevel: String,
    disk_layout_hash: String,
    #[serde(default)]
    image: Option<ImageEval>,
}

/// The `--apply` expression of phase one.
pub fn inventory_expr(hosts: Option<&[String]>) -> String {
    let filter = match hosts {
        None => "null".to_string(),
        Some(names) => format!("[ {} ]", names.iter().map(|n| nix_string(n)).collect::<Vec<_>>().join(" ")),
    };
    INVENTORY_EXPR.replace("@FILTER@", &filter)
}

/// The `--apply` expression of phase two for the hosts `attrs`.
pub fn systems_expr(attrs: &[String]) -> String {
    let list = attrs.iter().map(|n| nix_string(n)).collect::<Vec<_>>().join(" ");
    SYSTEM_EXPR.replace("@HOSTS@", &format!("[ {list} ]"))
}

/// Evaluates the flake: every managed host's declaration and system.
pub async fn evaluate(req: &EvalRequest) -> Result<Inventory, FlakeError> {
    let nix_version = req.nix.version().await?;
    if !nix_version.is_supported() {
        return Err(FlakeError::UnsupportedNix { found: nix_version.to_string(), raw: nix_version.raw });
    }

    let started = Instant::now();
    let raw = declarations(req).await?;
    let declarations_time = started.elapsed();
    if !raw.missing.is_empty() {
        return Err(FlakeError::UnknownHosts { flake: req.flake.clone(), names: raw.missing });
    }
    let mut decls = Vec::with_capacity(raw.hosts.len());
    for (attr, value) in raw.hosts {
        let decl = serde_json::from_value::<HostDecl>(value)
            .map_err(|source| FlakeError::Decode { host: attr.clone(), source })?;
        decls.push((attr, decl));
    }

    let started = Instant::now();
    let systems = systems(req, decls.iter().map(|(attr, _)| attr.clone()).collect()).await?;
    let systems_time = started.elapsed();

    let hosts = decls
        .into_iter()
        .zip(systems)
        .map(|((attr, decl), system)| EvaluatedHost { attr, decl, system })
        .collect();
    Ok(Inventory {
        nix_version,
        hosts,
        skipped: raw.skipped,
        timings: EvalTimings { declarations: declarations_time, systems: systems_time },
    })
}

/// Phase one. When the combined evaluation fails, each selected host is evaluated alone to
/// find the one to blame: nix's message alone rarely says which configuration it came from.
async fn declarations(req: &EvalRequest) -> Result<RawInventory, FlakeError> {
    let command = req.nix.eval(req.installable()).override_inputs(&req.override_inputs);
    let err = match command.clone().apply(inventory_expr(req.hosts.as_deref())).run_json().await {
        Ok(raw) => return Ok(raw),
        Err(NixError::Failed { message, .. }) => message,
        Err(other) => return Err(other.into()),
    };
    let names: Vec<String> = match &req.hosts {
        Some(names) => names.clone(),
        None => match command.apply("builtins.attrNames").run_json().await {
            Ok(names) => names,
            Err(NixError::Failed { message, .. }) => {
                return Err(FlakeError::Flake { flake: req.flake.clone(), message });
            }
            Err(other) => return Err(other.into()),
        },
    };
    let results = bounded(req.jobs(), names, |name| {
        let command = req.nix.eval(req.installable()).override_inputs(&req.override_inputs);
        let expr = inventory_expr(Some(std::slice::from_ref(&name)));
        async move { (name, command.apply(expr).run_json::<RawInventory>().await) }
    })
    .await;
    for (host, result) in results {
        match result {
            Ok(_) => {}
            Err(NixError::Failed { message, .. }) => {
                return Err(FlakeError::Host { host, flake: req.flake.clone(), message });
            }
            Err(other) => return Err(other.into()),
        }
    }
    // Every host evaluates alone but not together (or the failure was outside any host).
    Err(FlakeError::Flake { flake: req.flake.clone(), message: err })
}

/// Phase two, in `attrs` order. When a batch fails, its hosts are evaluated one by one to name
/// the host to blame, with nix's message for that host alone.
async fn systems(req: &EvalRequest, attrs: Vec<String>) -> Result<Vec<SystemEval>, FlakeError> {
    let batches: Vec<Vec<String>> =
        attrs.chunks(req.batch_size(attrs.len())).map(<[String]>::to_vec).collect();
    let results = bounded(req.jobs(), batches, |batch| {
        let command = req.nix.eval(req.installable()).override_inputs(&req.override_inputs);
        async move {
            let result = command.apply(systems_expr(&batch)).run_json::<BTreeMap<String, RawSystem>>().await;
            (batch, result)
        }
    })
    .await;
    let mut systems = Vec::with_capacity(attrs.len());
    for (batch, result) in results {
        let mut raw = match result {
            Ok(raw) => raw,
            Err(NixError::Failed { message, .. }) => return Err(blame(req, batch, message).await),
            Err(other) => return Err(other.into()),
        };
        for host in batch {
            let Some(raw) = raw.remove(&host) else {
                return Err(FlakeError::Host {
                    host,
                    flake: req.flake.clone(),
                    message: "nix returned no system for this host".into(),
                });
            };
            systems.push(SystemEval {
                toplevel: raw.toplevel,
                disk_layout_hash: raw.disk_layout_hash,
                image: raw.image,
            });
        }
    }
    Ok(systems)
}

/// The error of the first host of a failed batch that fails alone.
async fn blame(req: &EvalRequest, batch: Vec<String>, batch_message: String) -> FlakeError {
    if let [host] = batch.as_slice() {
        return FlakeError::Host { host: host.clone(), flake: req.flake.clone(), message: batch_message };
    }
    let results = bounded(req.jobs(), batch, |attr| {
        let command = req.nix.eval(req.installable()).override_inputs(&req.override_inputs);
        let expr = systems_expr(std::slice::from_ref(&attr));
        async move { (attr, command.apply(expr).run_json::<BTreeMap<String, RawSystem>>().await) }
    })
    .await;
    for (host, result) in results {
        match result {
            Ok(_) => {}
            Err(NixError::Failed { message, .. }) => {
                return FlakeError::Host { host, flake: req.flake.clone(), message };
            }
            Err(other) => return other.into(),
        }
    }
    // Every host evaluates alone but not together.
    FlakeError::Flake { flake: req.flake.clone(), message: batch_message }
}

/// Runs `task` for every item, at most `jobs` at once, and returns the results in input order.
async fn bounded<I, F, Fut, T>(jobs: usize, items: Vec<I>, task: F) -> Vec<T>
where
    F: Fn(I) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let semaphore = Arc::new(Semaphore::new(jobs.max(1)));
    let futures = items.into_iter().map(|item| {
        let semaphore = Arc::clone(&semaphore);
        let future = task(item);
        async move {
            // The semaphore is never closed, so acquiring cannot fail.
            let _permit = semaphore.acquire().await.ok();
            future.await
        }
    });
    futures::future::join_all(futures).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_is_embedded_as_nix_strings() {
        assert!(inventory_expr(None).contains("filter = null;"));
        let expr = inventory_expr(Some(&["web".into(), "db\"x".into()]));
        assert!(expr.contains("filter = [ \"web\" \"db\\\"x\" ];"), "{expr}");
        assert!(!expr.contains('@'));
        let expr = systems_expr(&["web".into(), "db".into()]);
        assert!(expr.contains("hosts = [ \"web\" \"db\" ];"), "{expr}");
        assert!(!expr.contains('@'));
    }

    #[test]
    fn jobs_default_to_the_cpus() {
        let mut req = EvalRequest::new(".");
        assert!(req.jobs() >= 1);
        req.eval_jobs = 3;
        assert_eq!(req.jobs(), 3);
    }

    #[test]
    fn batches_spread_over_the_jobs_and_stay_bounded() {
        let mut req = EvalRequest::new(".");
        req.eval_jobs = 2;
        assert_eq!(req.batch_size(0), 1);
        assert_eq!(req.batch_size(5), 3);
        assert_eq!(req.batch_size(500), DEFAULT_BATCH);
        req.batch = 1;
        assert_eq!(req.batch_size(500), 1, "one host per process, as before batching");
        req.eval_jobs = 1;
        req.batch = 100;
        assert_eq!(req.batch_size(40), 40);
    }

    #[tokio::test]
    async fn bounded_keeps_order_and_limit() {
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let out = bounded(2, (0..6).collect(), |i: u32| {
            let running = Arc::clone(&running);
            let peak = Arc::clone(&peak);
            async move {
                use std::sync::atomic::Ordering::SeqCst;
                let now = running.fetch_add(1, SeqCst) + 1;
                peak.fetch_max(now, SeqCst);
                tokio::time::sleep(Duration::from_millis(5 * u64::from(6 - i))).await;
                running.fetch_sub(1, SeqCst);
                i * 10
            }
        })
        .await;
        assert_eq!(out, [0, 10, 20, 30, 40, 50]);
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
