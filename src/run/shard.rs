//! Plans across runners: `plan --shard I/N` evaluates every N-th host and reads the VMs of its
//! share of the Proxmox nodes into a shard file; `plan --merge` checks that the shards belong
//! together and plans from their union, which is exactly what one unsharded run reads and
//! evaluates, so the plan (and its id) is the same.
//!
//! Hosts are split by name, not by node: a host's node is part of its evaluated declaration,
//! so grouping hosts by node would make every shard evaluate every host first. The cluster
//! read is split by node (whole nodes per shard, like `--format matrix`): every shard lists the
//! cluster (one request), reads the configs of the tagged VMs on its nodes, and the configs of
//! untagged VMs named like its own hosts (adoption and name clashes).
//!
//! What makes shards checkable: each records the flake's locked identity (`narHash` and a
//! digest of its locked inputs, overrides included), a digest of the settings that shape a
//! plan, a digest of the cluster listing it saw, the shard count and its number, and the
//! nixprox version. With a base (`--base`, or the pull request's), each shard also carries its
//! hosts' NixOS probes at the head and at the base (every host of the shard: a shard cannot
//! know which hosts will change), and the merge compares those whose system changes.
//! `--merge` refuses a missing or duplicate shard, shards that disagree on
//! any of those, and shards from another commit or settings than the merging checkout.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Settings;
use crate::flake::base::BaseSpec;
use crate::flake::probes::{BaseProbed, Probed};
use crate::flake::{self, EvaluatedHost, FlakeIdentity, Hosts};
use crate::proxmox::{LiveVm, Prefetched, ReadRequest};

use super::changes::{self, AtBase};
use super::source::{self, Planned, Source, Timings};

/// The `format` field of a shard file.
pub const FORMAT: &str = "nixprox-plan-shard";
/// The version of the shard file's layout.
pub const VERSION: u32 = 1;

/// `--shard I/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    /// 1-based.
    pub index: usize,
    pub count: usize,
}

impl ShardSpec {
    pub fn parse(text: &str) -> anyhow::Result<ShardSpec> {
        let parsed = text
            .split_once('/')
            .and_then(|(i, n)| Some((i.trim().parse::<usize>().ok()?, n.trim().parse::<usize>().ok()?)));
        match parsed {
            Some((index, count)) if index >= 1 && index <= count => Ok(ShardSpec { index, count }),
            _ => {
                bail!("`--shard {text}` is not a shard: use `--shard I/N` with 1 ≤ I ≤ N, e.g. `--shard 2/3`")
            }
        }
    }
}

/// One host as a shard evaluated it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardHost {
    pub attr: String,
    pub decl: flake::HostDecl,
    pub system: flake::SystemEval,
    /// The host's NixOS probes at the head, when the shard compared with a base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_probes: Option<Probed>,
    /// ... and at the base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_probes: Option<BaseProbed>,
}

/// What a shard writes and `--merge` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardFile {
    pub format: String,
    pub version: u32,
    /// The nixprox version that wrote it: another version may evaluate or plan differently.
    pub nixprox: String,
    /// 1-based.
    pub shard: usize,
    pub shards: usize,
    pub flake: FlakeIdentity,
    /// `sha256:` of what in the settings shapes a plan (defaults, policies, the cluster URL).
    pub settings: String,
    /// `sha256:` of the cluster listing (every VM's id, node, name, status, tags, lock, pool).
    pub cluster: String,
    /// The nodes whose tagged VMs this shard read.
    pub nodes: Vec<String>,
    pub hosts: Vec<ShardHost>,
    /// Attributes this shard found unmanaged.
    pub skipped: Vec<String>,
    /// The whole listing, with the configs this shard read.
    pub live: Vec<LiveVm>,
    /// The base the shard compared its hosts' NixOS probes with (`Ok`: how summaries name it)
    /// or why it could not (`Err`); absent without a base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Result<String, String>>,
}

/// `sha256:` of the settings a plan depends on.
pub fn settings_digest(settings: &Settings) -> String {
    let shaping = serde_json::json!({
        "defaults": settings.defaults,
        "policies": settings.policies,
        "proxmox_url": settings.proxmox.url,
    });
    digest(&shaping)
}

fn digest(value: &impl Serialize) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
}

/// `sha256:` of the listing: what every shard must have seen alike for their reads to fit.
fn cluster_digest(prefetched: &Prefetched) -> String {
    let listing: Vec<_> = prefetched.listing().collect();
    digest(&listing)
}

/// The nodes shard `spec` reads: whole nodes, the ones with most tagged VMs first, each to the
/// shard with the fewest so far (ties: the lower shard), so every shard computes the same split
/// from the same listing.
pub fn nodes_of(prefetched: &Prefetched, spec: ShardSpec) -> BTreeSet<String> {
    let mut weight: BTreeMap<&str, usize> = BTreeMap::new();
    for (vm, _) in prefetched.listing() {
        *weight.entry(vm.node.as_str()).or_default() += usize::from(vm.is_managed() && !vm.template);
    }
    let mut nodes: Vec<(&str, usize)> = weight.into_iter().collect();
    nodes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut load = vec![0usize; spec.count];
    let mut mine = BTreeSet::new();
    for (node, weight) in nodes {
        let shard = (0..spec.count).min_by_key(|&i| (load[i], i)).unwrap_or(0);
        load[shard] += weight.max(1);
        if shard + 1 == spec.index {
            mine.insert(node.to_string());
        }
    }
    mine
}

/// `plan --shard`: evaluates this shard's hosts and reads its nodes, into a shard file.
pub async fn plan_shard(
    source: &Source,
    spec: ShardSpec,
    base: Option<&BaseSpec>,
) -> anyhow::Result<(ShardFile, Timings)> {
    let settings = source::load_settings(source)?;
    let client = source::proxmox_client(&settings)?;
    let concurrency = source.concurrency.unwrap_or(settings.concurrency.api);
    let hosts = Hosts::Shard { index: spec.index - 1, count: spec.count };
    let evaluation = async {
        let identity = async {
            flake::flake_identity(&flake::Nix::default(), &source.flake, &source.override_inputs).await
        };
        // The base is resolved and fetched while the head is evaluated.
        let prepared = async {
            match base {
                Some(spec) => Some(changes::prepare(spec, &source.flake, &source.override_inputs).await),
                None => None,
            }
        };
        let (inventory, identity, prepared) =
            tokio::join!(source::evaluate_hosts(source, &settings, hosts), identity, prepared);
        anyhow::Ok((inventory?, identity?, prepared))
    };
    let reader = client.clone();
    let prefetch = async move {
        let started = Instant::now();
        let read = async {
            let listed = crate::proxmox::list_cluster(&reader).await?;
            let nodes = nodes_of(&listed, spec);
            let prefetched =
                crate::proxmox::read_managed(&reader, listed, concurrency, |vm| nodes.contains(&vm.node))
                    .await?;
            Ok::<_, crate::proxmox::ProxmoxError>((prefetched, nodes))
        };
        (read.await, started.elapsed())
    };
    let ((inventory, identity, prepared), (read, prefetch_time), started) =
        source::overlap(evaluation, prefetch).await?;
    let (prefetched, nodes) = read.context("failed to read the cluster")?;
    let cluster = cluster_digest(&prefetched);
    // Untagged VMs named like this shard's hosts; tagged ones are their node's shard's. The
    // declaration already carries the resolved VM name.
    let host_names = inventory.hosts.iter().map(|h| h.decl.vm.name.clone()).collect();
    let finish_started = Instant::now();
    let live = crate::proxmox::finish_read(&client, prefetched, &ReadRequest { host_names, concurrency })
        .await
        .context("failed to read the cluster")?;
    // Every host of the shard at the base: which of them will change is known only to the merge.
    let head = source::head_probes(&inventory);
    let compared = Instant::now();
    let at_base = match prepared {
        Some(Ok(base)) => {
            let like = source.eval_request(&settings, Hosts::All);
            let attrs: Vec<String> = inventory.hosts.iter().map(|h| h.attr.clone()).collect();
            Some(Ok(changes::evaluate_at_base(&like, &base, &attrs, &head).await))
        }
        Some(Err(reason)) => Some(Err(reason)),
        None => None,
    };
    let timings = Timings {
        eval: inventory.elapsed,
        eval_stats: inventory.stats,
        proxmox: prefetch_time + finish_started.elapsed(),
        proxmox_after_eval: started.elapsed(),
        planning: std::time::Duration::ZERO,
        nixos_changes: at_base.as_ref().map(|_| compared.elapsed()),
    };
    let file = ShardFile {
        format: FORMAT.into(),
        version: VERSION,
        nixprox: env!("CARGO_PKG_VERSION").into(),
        shard: spec.index,
        shards: spec.count,
        flake: identity,
        settings: settings_digest(&settings),
        cluster,
        nodes: nodes.into_iter().collect(),
        hosts: inventory
            .hosts
            .into_iter()
            .map(|h| ShardHost {
                head_probes: head.get(&h.attr).cloned(),
                base_probes: at_base.as_ref().and_then(|b| b.as_ref().ok()?.probes.get(&h.attr).cloned()),
                attr: h.attr,
                decl: h.decl,
                system: h.system,
            })
            .collect(),
        skipped: inventory.skipped,
        live,
        base: at_base.map(|b| b.map(|b| b.label)),
    };
    Ok((file, timings))
}

/// Reads and checks shard files, and plans from their union; the NixOS changes come from the
/// shards' probes (`wanted`: the merge has a base, so their absence is worth a warning).
pub async fn merge(source: &Source, paths: &[PathBuf], wanted: bool) -> anyhow::Result<Planned> {
    let settings = source::load_settings(source)?;
    let shards = paths.iter().map(|path| read_shard(path)).collect::<anyhow::Result<Vec<_>>>()?;
    let identity =
        flake::flake_identity(&flake::Nix::default(), &source.flake, &source.override_inputs).await?;
    let (hosts, live) = combine(&shards, &identity, &settings_digest(&settings))?;
    let base = shards_base(&shards)?;
    let head: BTreeMap<String, Probed> =
        hosts.iter().filter_map(|h| Some((h.attr.clone(), h.head_probes.clone()?))).collect();
    let at_base = base.map(|base| {
        base.map(|label| AtBase {
            label,
            probes: hosts.iter().filter_map(|h| Some((h.attr.clone(), h.base_probes.clone()?))).collect(),
        })
    });
    let evaluated: Vec<EvaluatedHost> = hosts
        .into_iter()
        .map(|h| EvaluatedHost {
            attr: h.attr,
            decl: h.decl,
            system: h.system,
            extra: None,
            extra_error: None,
        })
        .collect();
    let desired = flake::resolve_all(&evaluated, &settings.defaults)?;
    let (mut plan, planning) = source::compute(source, &settings, &desired, &live, None, None).await?;
    match &at_base {
        Some(at_base) => changes::attach(&mut plan, &head, at_base),
        None if wanted => tracing::warn!(
            "the shards were planned without a base, so the merged plan shows no NixOS changes: give every `plan --shard` job the base (`--base`, or run it on the pull request event)"
        ),
        None => {}
    }
    let timings = Timings { planning, ..Timings::default() };
    Ok(Planned { settings, desired, live, plan, client: None, timings, head_probes: head })
}

/// The base every shard compared with (`None`: none did); shards that disagree are refused.
fn shards_base(shards: &[(PathBuf, ShardFile)]) -> anyhow::Result<Option<Result<String, String>>> {
    let Some((_, first)) = shards.first() else { return Ok(None) };
    if let Some((path, other)) = shards.iter().find(|(_, s)| s.base != first.base) {
        bail!(
            "shard {} (`{}`) compared with another base than shard {} ({} vs {}): give every shard the same `--base`",
            other.shard,
            path.display(),
            first.shard,
            describe_base(other.base.as_ref()),
            describe_base(first.base.as_ref())
        );
    }
    Ok(first.base.clone())
}

fn describe_base(base: Option<&Result<String, String>>) -> String {
    match base {
        Some(Ok(label)) => format!("`{label}`"),
        Some(Err(_)) => "an unusable base".into(),
        None => "none".into(),
    }
}

fn read_shard(path: &Path) -> anyhow::Result<(PathBuf, ShardFile)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read the shard file `{}`", path.display()))?;
    let not_a_shard = || {
        format!(
            "`{}` is not a nixprox plan shard (write one with `nixprox plan --shard I/N --format json --out FILE`)",
            path.display()
        )
    };
    let value: serde_json::Value = serde_json::from_str(&text).with_context(not_a_shard)?;
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        bail!(not_a_shard());
    }
    if value.get("version").and_then(|v| v.as_u64()) != Some(u64::from(VERSION)) {
        bail!(
            "`{}` is a plan shard of another layout (version {}; this nixprox reads version {VERSION}): write every shard with the same nixprox as the merge",
            path.display(),
            value.get("version").unwrap_or(&serde_json::Value::Null)
        );
    }
    let shard = serde_json::from_value(value).with_context(not_a_shard)?;
    Ok((path.to_path_buf(), shard))
}

/// Checks that the shards are one complete, consistent run of this checkout, and returns the
/// union of their hosts (sorted) and the listing with every shard's configs.
fn combine(
    shards: &[(PathBuf, ShardFile)],
    identity: &FlakeIdentity,
    settings: &str,
) -> anyhow::Result<(Vec<ShardHost>, Vec<LiveVm>)> {
    let Some((first_path, first)) = shards.first() else { bail!("`--merge` needs the shard files") };
    check_complete_run(shards, first_path, first)?;
    check_same_inputs(shards, first, identity, settings)?;
    let mut hosts: Vec<ShardHost> = shards.iter().flat_map(|(_, s)| s.hosts.iter().cloned()).collect();
    hosts.sort_by(|a, b| a.attr.cmp(&b.attr));
    Ok((hosts, merged_listing(shards, first)?))
}

fn name(path: &Path) -> String {
    path.display().to_string()
}

/// Every shard of one run, each once, written by this nixprox.
fn check_complete_run(
    shards: &[(PathBuf, ShardFile)],
    first_path: &Path,
    first: &ShardFile,
) -> anyhow::Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let mut seen: BTreeMap<usize, &PathBuf> = BTreeMap::new();
    for (path, shard) in shards {
        if shard.nixprox != version {
            bail!(
                "shard {} (`{}`) was written by nixprox {}, this is nixprox {version}: run every shard and the merge with the same nixprox",
                shard.shard,
                name(path),
                shard.nixprox
            );
        }
        if shard.shards != first.shards {
            bail!(
                "`{}` is shard {} of {} but `{}` is shard {} of {}: merge the shards of one run",
                name(first_path),
                first.shard,
                first.shards,
                name(path),
                shard.shard,
                shard.shards
            );
        }
        if let Some(other) = seen.insert(shard.shard, path) {
            bail!(
                "shard {} of {} is given twice (`{}` and `{}`): pass each shard file once",
                shard.shard,
                shard.shards,
                name(other),
                name(path)
            );
        }
    }
    let absent: Vec<String> =
        (1..=first.shards).filter(|i| !seen.contains_key(i)).map(|i| i.to_string()).collect();
    if !absent.is_empty() {
        bail!(
            "shard {} of {} missing: pass every shard file of the run (`--merge part-*.json`), and re-run a shard job that failed",
            absent.join(", "),
            first.shards
        );
    }
    Ok(())
}

/// The shards read the same commit, settings and cluster, and it is this checkout's.
fn check_same_inputs(
    shards: &[(PathBuf, ShardFile)],
    first: &ShardFile,
    identity: &FlakeIdentity,
    settings: &str,
) -> anyhow::Result<()> {
    for (path, shard) in shards {
        if shard.flake != first.flake {
            bail!(
                "shard {} (`{}`) evaluated another commit than shard {} (flake {} vs {}): re-run every shard on the same commit",
                shard.shard,
                name(path),
                first.shard,
                shard.flake.nar_hash,
                first.flake.nar_hash
            );
        }
        if shard.settings != first.settings {
            bail!(
                "shard {} (`{}`) planned with other settings than shard {}: re-run every shard with the same nixprox.yaml",
                shard.shard,
                name(path),
                first.shard
            );
        }
        if shard.cluster != first.cluster {
            bail!(
                "shard {} (`{}`) read another cluster than shard {} (VMs were created, removed, renamed, moved, started or stopped between the shard runs): re-run every shard",
                shard.shard,
                name(path),
                first.shard
            );
        }
    }
    if &first.flake != identity {
        bail!(
            "the shards evaluated another commit than the flake here (flake {} in the shards, {} here): merge the shards of this commit's run",
            first.flake.nar_hash,
            identity.nar_hash
        );
    }
    if first.settings != settings {
        bail!(
            "the shards planned with other settings than the nixprox.yaml here: re-run the shards with this nixprox.yaml"
        );
    }
    Ok(())
}

/// The first shard's listing with the config each shard read of its own VMs; two shards that
/// read one VM differently mean the cluster changed between them.
fn merged_listing(shards: &[(PathBuf, ShardFile)], first: &ShardFile) -> anyhow::Result<Vec<LiveVm>> {
    let mut live = first.live.clone();
    for vm in &mut live {
        vm.config = None;
    }
    let index: BTreeMap<u32, usize> = live.iter().enumerate().map(|(i, vm)| (vm.vmid, i)).collect();
    for (path, shard) in shards {
        for vm in &shard.live {
            let (Some(config), Some(&i)) = (&vm.config, index.get(&vm.vmid)) else { continue };
            match &live[i].config {
                Some(read) if read != config => bail!(
                    "shard {} (`{}`) read VM {} differently than another shard (its config changed between the shard runs): re-run every shard",
                    shard.shard,
                    name(path),
                    vm.vmid
                ),
                Some(_) => {}
                None => live[i].config = Some(config.clone()),
            }
        }
    }
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_specs() {
        assert_eq!(ShardSpec::parse("2/3").ok(), Some(ShardSpec { index: 2, count: 3 }));
        assert_eq!(ShardSpec::parse("1/1").ok(), Some(ShardSpec { index: 1, count: 1 }));
        for bad in ["0/3", "4/3", "3", "a/b", "1/0"] {
            let err = ShardSpec::parse(bad).expect_err(bad);
            assert_eq!(
                err.to_string(),
                format!(
                    "`--shard {bad}` is not a shard: use `--shard I/N` with 1 ≤ I ≤ N, e.g. `--shard 2/3`"
                )
            );
        }
    }
}
