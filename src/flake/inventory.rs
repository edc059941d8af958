//! The host inventory: which hosts a flake manages, what each declares (`config.nixprox`) and
//! what each evaluates to (system out path, disk layout hash), from ONE evaluation of each
//! host's module system.
//!
//! The evaluation runs in [`scheduler`](super::scheduler)-managed worker processes (`nix eval`
//! of [`eval.nix`](nix/eval.nix)), bounded by `jobs` processes and `max_memory` bytes for all
//! of them together: cheap hosts share a few long-lived processes, heavy ones end up one per
//! process, and a host that alone does not fit is an error naming it (docs/performance.md).

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::command::{Nix, NixCommand, NixError, NixVersion, OverrideInput, nix_string};
use super::host::{HostDecl, ImageEval, SystemEval};
use super::scheduler::{self, Failure, HostFailures, Limits, Selection};

pub use super::scheduler::EvalStats;

const EVAL_EXPR: &str = include_str!("nix/eval.nix");

/// The Boehm GC's initial heap size, which nix reads at start (its own default is a quarter of
/// the RAM, at most 384 MiB).
const GC_HEAP_VAR: &str = "GC_INITIAL_HEAP_SIZE";

pub use crate::config::DEFAULT_MAX_MEMORY;

/// Which hosts to evaluate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Hosts {
    /// Every attribute of `nixosConfigurations`.
    #[default]
    All,
    /// These attribute names (an unknown one is an error).
    Only(Vec<String>),
    /// Shard `index` (0-based) of `count`: every `count`-th attribute in name order.
    Shard { index: usize, count: usize },
}

/// What to evaluate and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalRequest {
    pub nix: Nix,
    /// Flake reference as nix understands it (`.`, `path:/src`, `github:owner/repo`).
    pub flake: String,
    pub override_inputs: Vec<OverrideInput>,
    /// Concurrent `nix eval` processes; 0 means the number of CPUs.
    pub eval_jobs: usize,
    pub hosts: Hosts,
    /// Most hosts one `nix eval` process evaluates before it is replaced; 0 = no limit (the
    /// memory bound decides).
    pub batch: usize,
    /// Resident memory of all `nix eval` processes together, in bytes (`eval.max_memory`).
    pub max_memory: u64,
    /// A Nix function `attr: host: { … }` evaluated for every managed host in the same
    /// process as its system (`host` is the `nixosConfigurations` value, with `config` and
    /// `options`); its JSON-able result lands in [`EvaluatedHost::extra`]. For callers that
    /// want more per host at no second evaluation (e.g. change summaries). nix cannot catch
    /// every error in it, so a host that fails with it is evaluated once more without it: its
    /// system counts, its `extra` failed ([`EvaluatedHost::extra_error`]).
    pub extra: Option<String>,
}

impl EvalRequest {
    pub fn new(flake: impl Into<String>) -> EvalRequest {
        EvalRequest {
            nix: Nix::default(),
            flake: flake.into(),
            override_inputs: Vec::new(),
            eval_jobs: 0,
            hosts: Hosts::All,
            batch: 0,
            max_memory: DEFAULT_MAX_MEMORY,
            extra: None,
        }
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

    /// The worker to start with; the scheduler splits its hosts with more workers as they
    /// prove worth it.
    fn initial(&self) -> Vec<Selection> {
        let selection = match &self.hosts {
            Hosts::All => Selection::Partition(Vec::new()),
            Hosts::Shard { index, count } => Selection::Partition(vec![[*count, *index]]),
            Hosts::Only(names) => {
                let mut names = names.clone();
                names.sort();
                names.dedup();
                Selection::Names(names)
            }
        };
        vec![selection]
    }

    /// The `nix eval` of one worker; `heap` is its initial GC heap (`GC_INITIAL_HEAP_SIZE`,
    /// unless the environment already sets one: the user's choice wins).
    fn worker_command(
        &self,
        selection: &Selection,
        marker: &str,
        heap: Option<u64>,
        mode: ExtraMode,
    ) -> NixCommand {
        let command = self
            .nix
            .eval(self.installable())
            .override_inputs(&self.override_inputs)
            .apply(eval_expr(selection, mode.of(self.extra.as_deref()), Some(marker)));
        let user_set =
            std::env::var_os(GC_HEAP_VAR).is_some() || self.nix.env.iter().any(|(k, _)| k == GC_HEAP_VAR);
        match heap {
            Some(bytes) if !user_set => command.env_var(GC_HEAP_VAR, bytes.to_string()),
            _ => command,
        }
    }

    /// ONE plain `nix eval` of everything an evaluation needs for the selected hosts, without
    /// workers or streaming: the reference the plan benchmark compares with.
    pub fn single_process_command(&self) -> NixCommand {
        let selection = self.initial().into_iter().next().unwrap_or(Selection::Names(Vec::new()));
        self.nix.eval(self.installable()).override_inputs(&self.override_inputs).apply(eval_expr(
            &selection,
            ExtraMode::With.of(self.extra.as_deref()),
            None,
        ))
    }
}

/// What a worker does with [`EvalRequest::extra`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExtraMode {
    /// Evaluates it with each managed host's declaration and system.
    With,
    /// Leaves it out (a host retried after it failed with it).
    Without,
    /// Evaluates only it, for every selected host ([`evaluate_extra`]).
    Only,
}

impl ExtraMode {
    fn of(self, extra: Option<&str>) -> Extra<'_> {
        match (self, extra) {
            (ExtraMode::Without, _) | (_, None) => Extra::None,
            (ExtraMode::With, Some(e)) => Extra::With(e),
            (ExtraMode::Only, Some(e)) => Extra::Only(e),
        }
    }
}

/// The `extra` part of [`eval_expr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extra<'a> {
    None,
    /// This function, beside each managed host's declaration and system.
    With(&'a str),
    /// Only this function, for every selected host.
    Only(&'a str),
}

/// One managed host, as evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluatedHost {
    /// Attribute name under `nixosConfigurations`.
    pub attr: String,
    pub decl: HostDecl,
    pub system: SystemEval,
    /// The result of [`EvalRequest::extra`] for this host.
    pub extra: Option<serde_json::Value>,
    /// Why [`EvalRequest::extra`] failed for this host (nix's message); its system was
    /// evaluated without it.
    pub extra_error: Option<String>,
}

/// Everything the flake says, in attribute-name order.
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    pub nix_version: NixVersion,
    pub hosts: Vec<EvaluatedHost>,
    /// Selected attributes that are not managed (no `nixprox` options, or `enable = false`).
    pub skipped: Vec<String>,
    /// Wall time of the evaluation.
    pub elapsed: Duration,
    pub stats: EvalStats,
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
        "host `{host}` of flake `{flake}` alone needs more than `eval.max_memory` ({limit} MiB) to evaluate: a `nix eval` of only this host outgrew it (raise `eval.max_memory` in nixprox.yaml)"
    )]
    HostMemory { host: String, flake: String, limit: u64 },
    #[error(
        "listing the hosts of flake `{flake}` needs more than `eval.max_memory` ({limit} MiB): `nix eval` outgrew it before evaluating any host (raise `eval.max_memory` in nixprox.yaml)"
    )]
    FlakeMemory { flake: String, limit: u64 },
    #[error(
        "failed to decode the `nixprox` options of host `{host}`: {source} (does the flake use a nixprox module of another version than this binary?)"
    )]
    Decode { host: String, source: serde_json::Error },
    #[error(
        "host attribute name {name:?} of flake `{flake}` cannot be shown safely in a plan: {reason} (rename `nixosConfigurations.{safe}` in the flake)",
        safe = crate::flake::inventory::shown_name(name)
    )]
    HostName { flake: String, name: String, reason: String },
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

/// The longest host attribute name nixprox accepts.
pub const MAX_HOST_NAME: usize = 128;

/// Whether nixprox can show a host attribute name as it is, everywhere it shows one: in
/// backticks in the plan comment, in an HTML `<summary>`, in a table cell, in the record's
/// JSON, in a terminal, in log lines. A name that could end any of these early (a backtick, a
/// line break, `<`, `|`, …) could hide or fake part of a plan comment, so it is refused
/// before anything is planned, with the reason. Host names in practice are DNS labels.
pub fn check_host_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._+-".contains(c);
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.chars().count() > MAX_HOST_NAME {
        return Err(format!("it is longer than {MAX_HOST_NAME} characters"));
    }
    if let Some(bad) = name.chars().find(|c| !allowed(*c)) {
        return Err(format!(
            "it contains {bad:?}; nixprox accepts ASCII letters, digits, `.`, `_`, `+` and `-`"
        ));
    }
    if name.starts_with(['.', '-', '+']) {
        return Err("it starts with `.`, `-` or `+`; start it with a letter, a digit or `_`".into());
    }
    Ok(())
}

/// A name as the error shows it: at most 40 characters, the rest left out.
pub(crate) fn shown_name(name: &str) -> String {
    let safe: String =
        name.chars().map(|c| if c.is_ascii_graphic() { c } else { '?' }).filter(|c| *c != '`').collect();
    crate::text::truncate(&safe, 40)
}

/// What `eval.nix` reports for one host.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    host: String,
    #[serde(default)]
    skipped: bool,
    decl: Option<serde_json::Value>,
    system: Option<RawSystem>,
    extra: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSystem {
    toplevel: String,
    disk_layout_hash: String,
    #[serde(default)]
    image: Option<ImageEval>,
    #[serde(default)]
    serial_console: bool,
    tarball: Option<ImageEval>,
}

/// The `--apply` expression for a selection. With a `marker`, hosts are streamed as traces
/// (a worker); without, the value is every result (one plain evaluation).
pub fn eval_expr(selection: &Selection, extra: Extra<'_>, marker: Option<&str>) -> String {
    let list = |names: &[String]| {
        format!("[ {} ]", names.iter().map(|n| nix_string(n)).collect::<Vec<_>>().join(" "))
    };
    let (names, partition) = match selection {
        Selection::Partition(parts) => (
            "null".to_string(),
            format!(
                "[ {} ]",
                parts.iter().map(|[c, i]| format!("[ {c} {i} ]")).collect::<Vec<_>>().join(" ")
            ),
        ),
        Selection::Names(names) => (list(names), "[ ]".to_string()),
    };
    EVAL_EXPR
        .replace("@NAMES@", &names)
        .replace("@PARTITION@", &partition)
        .replace(
            "@EXTRA@",
            &match extra {
                Extra::None => "null".to_string(),
                Extra::With(e) | Extra::Only(e) => format!("({e})"),
            },
        )
        .replace("@EXTRA_ONLY@", if matches!(extra, Extra::Only(_)) { "true" } else { "false" })
        .replace("@STREAM@", if marker.is_some() { "true" } else { "false" })
        .replace("@MARKER@", marker.unwrap_or(""))
}

/// A prefix no flake can guess: a flake's own `builtins.trace` output never counts as a report.
fn marker() -> String {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let random = std::collections::hash_map::RandomState::new().hash_one((seed, std::process::id()));
    format!("nixprox-{random:016x}:")
}

/// Evaluates the flake: every selected managed host's declaration and system.
pub async fn evaluate(req: &EvalRequest) -> Result<Inventory, FlakeError> {
    let started = Instant::now();
    let (nix_version, collected) = run(req, ExtraMode::With).await?;
    let elapsed = started.elapsed();
    if !collected.missing.is_empty() {
        return Err(FlakeError::UnknownHosts { flake: req.flake.clone(), names: collected.missing });
    }
    let mut hosts = Vec::new();
    let mut skipped = Vec::new();
    for (attr, value) in collected.results {
        if let Err(reason) = check_host_name(&attr) {
            return Err(FlakeError::HostName { flake: req.flake.clone(), name: attr, reason });
        }
        let raw: RawHost = serde_json::from_value(value)
            .map_err(|source| FlakeError::Decode { host: attr.clone(), source })?;
        match (raw.skipped, raw.decl, raw.system) {
            (true, _, _) => skipped.push(raw.host),
            (false, Some(decl), Some(system)) => {
                let decl = serde_json::from_value::<HostDecl>(decl)
                    .map_err(|source| FlakeError::Decode { host: attr.clone(), source })?;
                let system = SystemEval {
                    toplevel: system.toplevel,
                    disk_layout_hash: system.disk_layout_hash,
                    image: system.image,
                    serial_console: system.serial_console,
                    tarball: system.tarball,
                };
                let extra_error = collected.failed.get(&attr).cloned();
                hosts.push(EvaluatedHost { attr, decl, system, extra: raw.extra, extra_error });
            }
            _ => {
                return Err(FlakeError::Decode {
                    host: attr,
                    source: serde::de::Error::custom(
                        "the report has neither `skipped` nor `decl` and `system`",
                    ),
                });
            }
        }
    }
    Ok(Inventory { nix_version, hosts, skipped, elapsed, stats: collected.stats })
}

/// Runs the workers of `req` with `extra` as `mode` says, after checking nix's version.
async fn run(req: &EvalRequest, mode: ExtraMode) -> Result<(NixVersion, scheduler::Collected), FlakeError> {
    let limits = Limits { jobs: req.jobs(), max_memory: req.max_memory, batch: req.batch };
    let host_failures = match (mode, &req.extra) {
        (ExtraMode::Only, _) => HostFailures::Record,
        (_, Some(_)) => HostFailures::RetryWithoutExtra,
        (_, None) => HostFailures::Fatal,
    };
    let command_for = |selection: &Selection, marker: &str, heap: Option<u64>, extra: bool| {
        let mode = if extra { mode } else { ExtraMode::Without };
        req.worker_command(selection, marker, heap, mode)
    };
    // The version probe runs beside the evaluation (it is on the critical path otherwise); a
    // nix too old for the evaluation's flags is reported as such, whatever the evaluation did.
    let (nix_version, collected) = tokio::join!(
        req.nix.version(),
        scheduler::run(req.initial(), limits, host_failures, &command_for, marker())
    );
    let nix_version = nix_version?;
    if !nix_version.is_supported() {
        return Err(FlakeError::UnsupportedNix { found: nix_version.to_string(), raw: nix_version.raw });
    }
    let collected = collected.map_err(|failure| {
        let flake = req.flake.clone();
        let mib = |bytes: u64| bytes >> 20;
        match failure {
            Failure::Nix(err) => FlakeError::Nix(err),
            Failure::Flake(message) => FlakeError::Flake { flake, message },
            Failure::Host { host, message } => FlakeError::Host { host, flake, message },
            Failure::Memory { host: Some(host) } => {
                FlakeError::HostMemory { host, flake, limit: mib(req.max_memory) }
            }
            Failure::Memory { host: None } => FlakeError::FlakeMemory { flake, limit: mib(req.max_memory) },
        }
    })?;
    Ok((nix_version, collected))
}

/// What [`evaluate_extra`] found, host by host.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Extras {
    /// [`EvalRequest::extra`]'s result for each host that evaluated.
    pub values: BTreeMap<String, serde_json::Value>,
    /// Hosts that failed (nix's message); the others are not affected.
    pub failed: BTreeMap<String, String>,
    /// Requested hosts the flake does not have.
    pub missing: Vec<String>,
    pub elapsed: Duration,
    pub stats: EvalStats,
}

/// Evaluates only [`EvalRequest::extra`] for the selected hosts (managed or not), with the same
/// workers and bounds as [`evaluate`]: a host that fails or is missing is part of the answer,
/// not an error. An error is what stops every host (the flake, `nixosConfigurations`, nix).
pub async fn evaluate_extra(req: &EvalRequest) -> Result<Extras, FlakeError> {
    let started = Instant::now();
    let (_, collected) = run(req, ExtraMode::Only).await?;
    let values = collected
        .results
        .into_iter()
        .filter_map(|(host, mut value)| Some((host, value.get_mut("extra")?.take())))
        .collect();
    Ok(Extras {
        values,
        failed: collected.failed,
        missing: collected.missing,
        elapsed: started.elapsed(),
        stats: collected.stats,
    })
}

/// The locked identity of a flake with its overrides: `locked.narHash` (the content of the
/// source tree) and a digest of `locks` (every input, as locked or overridden). Equal
/// identities evaluate to equal results, so sharded plans can check they read one commit.
pub async fn flake_identity(
    nix: &Nix,
    flake: &str,
    override_inputs: &[OverrideInput],
) -> Result<FlakeIdentity, FlakeError> {
    #[derive(Deserialize)]
    struct Metadata {
        locked: BTreeMap<String, serde_json::Value>,
        #[serde(default)]
        locks: serde_json::Value,
    }
    let flake_ref = flake.split('#').next().unwrap_or(flake);
    let metadata: Metadata =
        nix.flake_metadata(flake_ref).override_inputs(override_inputs).run_json().await?;
    let nar_hash = metadata.locked.get("narHash").and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let locks = serde_json::to_vec(&canonical(&metadata.locks)).unwrap_or_default();
    let digest = <sha2::Sha256 as sha2::Digest>::digest(&locks);
    Ok(FlakeIdentity { nar_hash, locks: format!("sha256:{}", hex::encode(digest)) })
}

/// What [`flake_identity`] returns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FlakeIdentity {
    /// `locked.narHash` of the flake itself.
    pub nar_hash: String,
    /// `sha256:` of the canonical JSON of `locks` (the inputs); paths and times of `path:`
    /// inputs are part of it, as they are part of what was evaluated.
    pub locks: String,
}

/// JSON with object keys sorted, so equal data gives equal bytes whatever order nix printed.
fn canonical(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let sorted: BTreeMap<&String, serde_json::Value> =
                map.iter().map(|(k, v)| (k, canonical(v))).collect();
            serde_json::Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        serde_json::Value::Array(items) => serde_json::Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_are_embedded_as_nix_values() {
        let expr = eval_expr(&Selection::Partition(vec![[3, 1], [2, 0]]), Extra::None, Some("nixprox-ab:"));
        assert!(expr.contains("names = null;"), "{expr}");
        assert!(expr.contains("partition = [ [ 3 1 ] [ 2 0 ] ];"), "{expr}");
        assert!(expr.contains("extra = null;") && expr.contains("stream = true;"), "{expr}");
        assert!(expr.contains("marker = \"nixprox-ab:\";"), "{expr}");
        assert!(!expr.contains('@'), "{expr}");
        let expr =
            eval_expr(&Selection::Names(vec!["web".into(), "db\"x".into()]), Extra::With("a: h: { }"), None);
        assert!(expr.contains("names = [ \"web\" \"db\\\"x\" ];"), "{expr}");
        assert!(expr.contains("partition = [ ];") && expr.contains("stream = false;"), "{expr}");
        assert!(expr.contains("extra = (a: h: { });") && expr.contains("extraOnly = false;"), "{expr}");
        let expr = eval_expr(&Selection::Names(vec!["web".into()]), Extra::Only("a: h: { }"), None);
        assert!(expr.contains("extra = (a: h: { });") && expr.contains("extraOnly = true;"), "{expr}");
    }

    #[test]
    fn one_worker_starts_with_every_selected_host() {
        let mut req = EvalRequest::new(".");
        assert_eq!(req.initial(), [Selection::Partition(vec![])]);
        req.hosts = Hosts::Shard { index: 1, count: 3 };
        assert_eq!(req.initial(), [Selection::Partition(vec![[3, 1]])]);
        req.hosts = Hosts::Only(vec!["c".into(), "a".into(), "b".into(), "a".into()]);
        assert_eq!(req.initial(), [Selection::Names(vec!["a".into(), "b".into(), "c".into()])]);
        assert!(req.jobs() >= 1);
        req.eval_jobs = 3;
        assert_eq!(req.jobs(), 3);
    }

    #[test]
    fn markers_differ_and_canonical_json_sorts_keys() {
        assert_ne!(marker(), marker());
        assert!(marker().starts_with("nixprox-"));
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"d":[{"y":1,"x":2}],"c":2}}"#).expect("json");
        assert_eq!(
            serde_json::to_string(&canonical(&a)).expect("json"),
            r#"{"a":{"c":2,"d":[{"x":2,"y":1}]},"b":1}"#
        );
    }
}
