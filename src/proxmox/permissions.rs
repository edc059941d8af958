//! What the API token may do, checked before plan and apply act.
//!
//! `GET /access/permissions` (allowed to every token for itself) answers the token's effective
//! privileges: per ACL path, each privilege with its propagate flag, already intersected with
//! the owning user's for a privilege-separated token (pve-access-control `RPCEnvironment.pm`,
//! `get_effective_permissions` and `compile_acl_path`). [`Granted`] reads that answer the way
//! Proxmox checks a path; [`needs_to_read`] and [`needs_to_apply`] say which privileges a plan
//! needs on which paths, from the `permissions` checks of qemu-server (`API2/Qemu.pm`,
//! `API2/Qemu/Agent.pm`), pve-manager (`API2/Pool.pm`), pve-guest-common (`GuestHelpers.pm`)
//! and pve-storage (`Storage.pm::check_volume_access`); the table in docs/guide.md cites each.
//! A missing one stops the run before anything happens, naming the privilege, the path and
//! the `pveum` fix. The API still enforces everything itself: this only moves the failure to
//! the start, where nothing is half done.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{Client, LiveVm, ProxmoxError, find_template};
use crate::flake::DesiredHost;
use crate::flake::host::{Bootstrap, TemplateRef};
use crate::install::KEXEC_MIN_MEMORY_MIB;
use crate::plan::{ActionKind, HostPlan, Plan};

/// Reading guest-agent answers (the address of a host without a static one). PVE 9
/// (qemu-server 9.0.3, pve-access-control 9.0.2) replaced `VM.Monitor` with `VM.GuestAgent.*`;
/// a PVE 8 cluster knows only the former and a PVE 9 cluster only the latter, so holding any
/// one of them is right on either version.
pub const AGENT_READ: &[&str] = &["VM.GuestAgent.Audit", "VM.GuestAgent.Unrestricted", "VM.Monitor"];

/// The role docs/guide.md creates for the apply token.
pub const APPLY_ROLE: &str = "NixproxApply";
/// The built-in read-only role docs/guide.md gives the plan token.
pub const PLAN_ROLE: &str = "PVEAuditor";

/// Privileges that change or create VMs, storage or access, or reach into a guest: none of
/// them is needed to plan. `VM.Monitor` (PVE 8) opens the QEMU monitor, which can change a
/// running VM.
const WRITE_PRIVILEGES: &[&str] = &[
    "VM.Allocate",
    "VM.Clone",
    "VM.Config.CDROM",
    "VM.Config.CPU",
    "VM.Config.Cloudinit",
    "VM.Config.Disk",
    "VM.Config.HWType",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.Options",
    "VM.Console",
    "VM.GuestAgent.FileWrite",
    "VM.GuestAgent.Unrestricted",
    "VM.Migrate",
    "VM.Monitor",
    "VM.PowerMgmt",
    "VM.Snapshot",
    "VM.Snapshot.Rollback",
    "Datastore.Allocate",
    "Datastore.AllocateSpace",
    "Permissions.Modify",
    "Pool.Allocate",
    "Sys.Modify",
];

/// The token's privileges per ACL path, with their propagate flag, as Proxmox reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Granted {
    paths: BTreeMap<String, BTreeMap<String, bool>>,
}

impl Granted {
    /// Reads `GET /access/permissions`: `{path: {privilege: propagate}}`, propagate `1`/`0`.
    pub fn parse(answer: &Value) -> Result<Granted, String> {
        let paths = answer.as_object().ok_or("expected an object of ACL paths")?;
        let mut granted = Granted::default();
        for (path, privileges) in paths {
            let privileges =
                privileges.as_object().ok_or_else(|| format!("`{path}` has no privilege map"))?;
            let map = privileges
                .iter()
                .map(|(name, flag)| {
                    (name.clone(), flag.as_u64().map_or(flag == &Value::Bool(true), |n| n != 0))
                })
                .collect();
            granted.paths.insert(path.clone(), map);
        }
        Ok(granted)
    }

    /// Whether `privilege` holds on `path`. Proxmox lists every path that has an ACL (and the
    /// top-level ones) with the privileges that hold there after inheritance, so the nearest
    /// listed path decides: the path itself, or an ancestor whose privilege propagates. A path
    /// ending in `/*` stands for any child of the part before it (a VM whose id is not known).
    pub fn holds(&self, path: &str, privilege: &str) -> bool {
        for (depth, candidate) in ancestors(path).enumerate() {
            if let Some(privileges) = self.paths.get(candidate) {
                return privileges.get(privilege).is_some_and(|&propagate| depth == 0 || propagate);
            }
        }
        false
    }

    /// `(path, privilege)` pairs that could change the cluster, sorted.
    pub fn write_privileges(&self) -> Vec<(String, String)> {
        let mut found = Vec::new();
        for (path, privileges) in &self.paths {
            for privilege in WRITE_PRIVILEGES {
                if privileges.contains_key(*privilege) {
                    found.push((path.clone(), (*privilege).to_string()));
                }
            }
        }
        found.sort();
        found
    }
}

/// `path`, then its parents up to `/`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(path);
    std::iter::from_fn(move || {
        let current = next?;
        next = match current.rfind('/') {
            _ if current == "/" => None,
            Some(0) => Some("/"),
            Some(i) => Some(&current[..i]),
            None => None,
        };
        Some(current)
    })
}

/// `GET /access/permissions` for the token itself.
pub async fn fetch(client: &Client) -> Result<Granted, ProxmoxError> {
    const PATH: &str = "/access/permissions";
    let answer = client.get(PATH, &[]).await?;
    Granted::parse(&answer).map_err(|detail| ProxmoxError::Decode {
        method: reqwest::Method::GET,
        path: PATH.into(),
        detail,
        body: answer.to_string(),
    })
}

/// One privilege a run needs on one path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Need {
    /// Any one of these is enough (usually just one).
    pub privileges: &'static [&'static str],
    /// The ACL path Proxmox checks: `/vms/101`, `/storage/local-lvm`; `/vms/*` for a VM whose
    /// id is not known yet (an ACL on `/vms` must propagate to it).
    pub path: String,
    /// The pool a new VM goes into: Proxmox accepts the privilege on `/pool/<name>` as well.
    pub pool: Option<String>,
    /// The host and the step: "`web`: clone".
    pub why: String,
}

impl Need {
    fn holds(&self, granted: &Granted) -> bool {
        std::iter::once(&self.path)
            .chain(self.pool.as_ref())
            .any(|path| self.privileges.iter().any(|p| granted.holds(path, p)))
    }
}

/// What `plan` (and `drift`) need: `VM.Audit` on every VM (a VM the token cannot see would
/// be planned as missing and created twice), `Pool.Audit` on declared pools (without it
/// Proxmox leaves the pool out of the resource list), and with `--probe` the agent read on
/// installed hosts without a static address.
pub fn needs_to_read(plan: &Plan, desired: &[DesiredHost], probe: bool) -> Vec<Need> {
    let mut needs = vec![Need {
        privileges: &["VM.Audit"],
        path: "/vms/*".into(),
        pool: None,
        why: "reading the cluster's VMs".into(),
    }];
    for host in desired {
        if let Some(pool) = &host.spec.pool {
            needs.push(need(&["Pool.Audit"], format!("/pool/{pool}"), None, &host.host, "its pool"));
        }
    }
    if probe {
        for planned in &plan.hosts {
            let declared = desired.iter().find(|d| d.host == planned.host);
            if let (Some(host), Some(vmid)) = (declared, planned.vm.vmid)
                && host.address.is_none()
                && host.spec.agent
            {
                let why = "its address for --probe (guest agent)";
                needs.push(need(AGENT_READ, format!("/vms/{vmid}"), None, &host.host, why));
            }
        }
    }
    needs
}

/// What `apply` needs for the runnable actions of `plan`. `deploying`: install and switch
/// will run (an SSH key is configured), which asks the guest agent for addresses and
/// records the result in the notes.
pub fn needs_to_apply(plan: &Plan, desired: &[DesiredHost], live: &[LiveVm], deploying: bool) -> Vec<Need> {
    let mut needs = Vec::new();
    for planned in &plan.hosts {
        let host = desired.iter().find(|d| d.host == planned.host).filter(|_| !planned.orphan);
        host_needs(planned, host, live, deploying, &mut needs);
    }
    needs
}

fn need(
    privileges: &'static [&'static str],
    path: String,
    pool: Option<String>,
    host: &str,
    what: &str,
) -> Need {
    Need { privileges, path, pool, why: format!("`{host}`: {what}") }
}

/// The privileges of one host's runnable actions, step by step as the executor takes them.
/// Long because it mirrors the executor's sequence in one place, which keeps the two easy
/// to compare.
fn host_needs(
    planned: &HostPlan,
    host: Option<&DesiredHost>,
    live: &[LiveVm],
    deploying: bool,
    needs: &mut Vec<Need>,
) {
    let kinds: BTreeSet<ActionKind> = planned
        .actions
        .iter()
        .filter(|a| a.blocked.is_none() && a.kind != ActionKind::Noop)
        .map(|a| a.kind)
        .collect();
    if kinds.is_empty() {
        return;
    }
    let has = |kind| kinds.contains(&kind);
    let name = planned.host.as_str();
    let current = planned.vm.vmid.map_or_else(|| "/vms/*".to_string(), |id| format!("/vms/{id}"));
    let mut add = |privileges, path: &str, pool: Option<&String>, what: &str| {
        needs.push(need(privileges, path.to_string(), pool.cloned(), name, what));
    };
    if has(ActionKind::DestroyVm) || has(ActionKind::ReplaceVm) {
        add(&["VM.Allocate"], &current, None, "destroy");
        let running = planned.vm.vmid.and_then(|id| live.iter().find(|vm| vm.vmid == id));
        if running.is_some_and(|vm| vm.status == "running") {
            add(&["VM.PowerMgmt"], &current, None, "shut down before destroying");
        }
    }
    let Some(host) = host else { return };
    if kinds == BTreeSet::from([ActionKind::DestroyVm]) {
        return;
    }
    let creating = has(ActionKind::CreateVm) || has(ActionKind::ReplaceVm);
    let vm = match (creating, host.vmid) {
        (true, Some(id)) => format!("/vms/{id}"),
        (true, None) => "/vms/*".to_string(),
        (false, _) => current,
    };
    // Proxmox accepts a new VM's privileges on the pool it is created in.
    let pool = host.spec.pool.as_ref().filter(|_| creating).map(|p| format!("/pool/{p}"));
    let pool = pool.as_ref();
    if creating {
        create_needs(host, live, &vm, pool, &mut add);
    } else if has(ActionKind::Adopt) || has(ActionKind::UpdateVm) {
        add(&["VM.Config.Options"], &vm, None, "tag and metadata block");
        update_needs(planned, host, &vm, &mut add);
    }
    if has(ActionKind::ResizeDisk) && !creating {
        add(&["VM.Config.Disk"], &vm, None, "grow disks");
        for disk in host.spec.disks.values() {
            add(&["Datastore.AllocateSpace"], &format!("/storage/{}", disk.storage), None, "grow disks");
        }
    }
    let deploys = [ActionKind::Install, ActionKind::Reinstall, ActionKind::Switch].into_iter().any(has);
    if (creating || (deploying && deploys)) && host.address.is_none() && host.spec.agent {
        add(AGENT_READ, &vm, pool, "its address (guest agent)");
    }
    let installs = has(ActionKind::Install) || has(ActionKind::Reinstall);
    if deploying && installs && host.spec.memory_mib < KEXEC_MIN_MEMORY_MIB {
        add(&["VM.Config.Memory"], &vm, pool, "memory for the kexec installer");
        if host.deploy.allow_reboot {
            add(&["VM.PowerMgmt"], &vm, pool, "reboot for the kexec memory");
        }
    }
    if deploying || !deploys {
        add(&["VM.Config.Options"], &vm, pool, "record the result in the notes");
    }
}

/// A new VM: clone or create, configure, resize, start.
fn create_needs(
    host: &DesiredHost,
    live: &[LiveVm],
    vm: &str,
    pool: Option<&String>,
    add: &mut impl FnMut(&'static [&'static str], &str, Option<&String>, &str),
) {
    add(&["VM.Allocate"], vm, pool, "create the VM");
    match &host.bootstrap {
        Bootstrap::Template { template, .. } => {
            let wanted = match template {
                TemplateRef::Id(id) => id.to_string(),
                TemplateRef::Name(name) => name.clone(),
            };
            // A missing template is the plan's and the clone's error to report, not this one.
            if let Ok(source) = find_template(live, &wanted, Some(&host.node)) {
                add(&["VM.Clone"], &format!("/vms/{}", source.vmid), None, "clone the template");
            }
            let target = crate::apply::params::first_storage(host);
            add(&["Datastore.AllocateSpace"], &format!("/storage/{target}"), None, "the clone's disks");
            add(&["VM.Config.Cloudinit", "VM.Config.Network"], vm, pool, "cloud-init settings");
        }
        Bootstrap::Iso { iso } => {
            if let Some((storage, _)) = iso.split_once(':') {
                let path = format!("/storage/{storage}");
                add(&["Datastore.AllocateSpace", "Datastore.Audit"], &path, None, "the installer ISO");
            }
            add(&["VM.Config.HWType"], vm, pool, "SCSI controller");
            add(&["VM.Config.Disk"], vm, pool, "boot order");
        }
    }
    for privilege in [&["VM.Config.CPU"], &["VM.Config.Memory"], &["VM.Config.Options"], &["VM.Config.Disk"]]
    {
        add(privilege, vm, pool, "configure");
    }
    if host.spec.machine.is_some() {
        add(&["VM.Config.HWType"], vm, pool, "machine type");
    }
    for disk in host.spec.disks.values() {
        add(&["Datastore.AllocateSpace"], &format!("/storage/{}", disk.storage), None, "disks");
    }
    for net in host.spec.networks.values() {
        add(&["VM.Config.Network"], vm, pool, "network");
        add(&["SDN.Use"], &bridge_path(&net.bridge, net.vlan), None, "network");
    }
    add(&["VM.PowerMgmt"], vm, pool, "start");
}

/// An existing VM's config changes, by the field the plan names.
fn update_needs(
    planned: &HostPlan,
    host: &DesiredHost,
    vm: &str,
    add: &mut impl FnMut(&'static [&'static str], &str, Option<&String>, &str),
) {
    let changes = planned
        .actions
        .iter()
        .filter(|a| a.blocked.is_none() && matches!(a.kind, ActionKind::UpdateVm | ActionKind::Adopt))
        .flat_map(|a| &a.changes);
    let mut reboot = false;
    for change in changes {
        reboot |= change.effect == Some(crate::plan::Effect::NeedsReboot);
        let field = change.field.as_str();
        let top = field.split('.').next().unwrap_or(field);
        let privilege: &'static [&'static str] = match top {
            "cores" | "sockets" | "cpuType" => &["VM.Config.CPU"],
            "memory" | "balloon" => &["VM.Config.Memory"],
            "machine" => &["VM.Config.HWType"],
            "disks" => &["VM.Config.Disk"],
            "networks" => &["VM.Config.Network"],
            "pool" => {
                pool_needs(change, vm, add);
                continue;
            }
            _ => &["VM.Config.Options"],
        };
        add(privilege, vm, None, field);
        let slot = field.split('.').nth(1).unwrap_or_default();
        if top == "disks"
            && let Some(disk) = host.spec.disks.get(slot)
        {
            add(&["Datastore.AllocateSpace"], &format!("/storage/{}", disk.storage), None, field);
        }
        if top == "networks"
            && let Some(net) = host.spec.networks.get(slot)
        {
            add(&["SDN.Use"], &bridge_path(&net.bridge, net.vlan), None, field);
        }
    }
    if reboot && host.deploy.allow_reboot {
        add(&["VM.PowerMgmt"], vm, None, "reboot for pending changes");
    }
}

/// `PUT /pools`: `Pool.Allocate` on the pool joined and the pool left, and the right to
/// change the VM's permissions (`VM.Allocate` or `Permissions.Modify`).
fn pool_needs(
    change: &crate::plan::Change,
    vm: &str,
    add: &mut impl FnMut(&'static [&'static str], &str, Option<&String>, &str),
) {
    for pool in [&change.before, &change.after].into_iter().flatten().filter_map(Value::as_str) {
        add(&["Pool.Allocate"], &format!("/pool/{pool}"), None, "pool membership");
    }
    add(&["VM.Allocate", "Permissions.Modify"], vm, None, "pool membership");
}

/// The SDN path Proxmox checks for a NIC on a plain Linux bridge (zone `localnetwork`),
/// with the VLAN as a child when the NIC is tagged.
fn bridge_path(bridge: &str, vlan: Option<u16>) -> String {
    match vlan {
        Some(tag) => format!("/sdn/zones/localnetwork/{bridge}/{tag}"),
        None => format!("/sdn/zones/localnetwork/{bridge}"),
    }
}

/// The needs `granted` does not cover, each (privilege, path) once.
pub fn missing(granted: &Granted, needs: Vec<Need>) -> Vec<Need> {
    let mut out: Vec<Need> = needs.into_iter().filter(|need| !need.holds(granted)).collect();
    out.sort();
    out
}

/// The token lacks privileges the run needs; nothing was done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct MissingPrivileges {
    /// `user@realm!tokenid`.
    pub token: String,
    /// The role docs/guide.md gives this kind of token.
    pub role: &'static str,
    /// What the token does not hold.
    pub missing: Vec<Need>,
}

impl MissingPrivileges {
    fn render(&self) -> String {
        let mut grouped: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for need in &self.missing {
            let label = if need.privileges == AGENT_READ {
                "VM.GuestAgent.Audit (VM.Monitor on PVE 8)".to_string()
            } else {
                need.privileges.join(" or ")
            };
            let path = match need.path.strip_suffix("/*") {
                Some(parent) => format!("{parent} (propagated)"),
                None => need.path.clone(),
            };
            let whys = grouped.entry(format!("{label} on {path}")).or_default();
            if !whys.contains(&need.why.as_str()) {
                whys.push(&need.why);
            }
        }
        let mut text = format!(
            "the Proxmox token `{}` lacks privileges this run needs; nothing was changed:",
            self.token
        );
        for (what, whys) in &grouped {
            let shown: Vec<&str> = whys.iter().take(3).copied().collect();
            let more = if whys.len() > 3 { format!(", and {} more", whys.len() - 3) } else { String::new() };
            text.push_str(&format!("\n  {what} ({}{more})", shown.join("; ")));
        }
        let user = self.token.split('!').next().unwrap_or(&self.token);
        let acl_paths: BTreeSet<&str> = self.missing.iter().map(|n| acl_path(&n.path)).collect();
        text.push_str(&format!(
            "\ngrant the role `{}` (docs/guide.md#proxmox-tokens) on these paths to the token and its user (a privilege-separated token holds only what both hold):",
            self.role
        ));
        for path in &acl_paths {
            text.push_str(&format!(
                "\n  pveum acl modify {path} --users '{user}' --tokens '{}' --roles {}",
                self.token, self.role
            ));
        }
        let mut privileges: BTreeSet<&str> = BTreeSet::new();
        for need in &self.missing {
            privileges.insert(need.privileges[0]);
        }
        let list: Vec<&str> = privileges.into_iter().collect();
        text.push_str(&format!(
            "\nor add them to the role you use: pveum role modify <role> --append 1 --privs '{}'",
            list.join(",")
        ));
        text
    }
}

/// The path an operator grants on: VMs as a whole, one storage, the local bridges, one pool.
fn acl_path(path: &str) -> &str {
    if path.starts_with("/vms") {
        "/vms"
    } else if path.starts_with("/sdn/zones/localnetwork") {
        "/sdn/zones/localnetwork"
    } else {
        path
    }
}

#[cfg(test)]
mod tests;
