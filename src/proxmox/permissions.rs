//! What the API token may do, checked before plan and apply act.
//!
//! `GET /access/permissions` (allowed to every token for itself) answers the token's effective
//! privileges: per ACL path, each privilege with its propagate flag, already intersected with
//! the owning user's for a privilege-separated token (pve-access-control `RPCEnvironment.pm`,
//! `get_effective_permissions` and `compile_acl_path`). [`Granted`] reads that answer the way
//! Proxmox checks a path; a [`Need`] is one privilege on one path (what a plan needs is
//! `plan::privileges`); [`MissingPrivileges`] names what is missing and the `pveum` fix. The
//! API still enforces everything itself: this only moves the failure to the start, where
//! nothing is half done.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{Client, ProxmoxError};

/// Reading guest-agent answers (the address of a host without a static one). PVE 9
/// (qemu-server 9.0.3, pve-access-control 9.0.2) replaced `VM.Monitor` with `VM.GuestAgent.*`;
/// a PVE 8 cluster knows only the former and a PVE 9 cluster only the latter, so holding any
/// one of them is right on either version.
pub const AGENT_READ: &[&str] = &["VM.GuestAgent.Audit", "VM.GuestAgent.Unrestricted", "VM.Monitor"];

/// Reading a file in a guest through its agent (`agent/file-read`, qemu-server
/// `API2/Qemu/Agent.pm`): the SSH host key of a VM to adopt or of an image host.
/// `VM.GuestAgent.FileRead` from qemu-server 9.0.3, `VM.Monitor` before;
/// `VM.GuestAgent.Unrestricted` covers it too.
pub const AGENT_FILE_READ: &[&str] = &["VM.GuestAgent.FileRead", "VM.GuestAgent.Unrestricted", "VM.Monitor"];

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
    "Datastore.AllocateTemplate",
    "Permissions.Modify",
    "Pool.Allocate",
    "Sys.Modify",
];

/// A `GET /access/permissions` answer not shaped as Proxmox documents it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermissionsShape {
    #[error("expected an object of ACL paths")]
    NotAnObject,
    #[error("`{0}` has no privilege map")]
    NoPrivilegeMap(String),
}

/// The token's privileges per ACL path, with their propagate flag, as Proxmox reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Granted {
    paths: BTreeMap<String, BTreeMap<String, bool>>,
}

impl Granted {
    /// Reads `GET /access/permissions`: `{path: {privilege: propagate}}`, propagate `1`/`0`.
    pub fn parse(answer: &Value) -> Result<Granted, PermissionsShape> {
        let paths = answer.as_object().ok_or(PermissionsShape::NotAnObject)?;
        let mut granted = Granted::default();
        for (path, privileges) in paths {
            let privileges =
                privileges.as_object().ok_or_else(|| PermissionsShape::NoPrivilegeMap(path.clone()))?;
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

    /// A NIC's bridge is checked on `/sdn/zones/localnetwork/<bridge>` when it is a plain
    /// Linux bridge, but on `/sdn/zones/<zone>/<bridge>` when it is an SDN VNet of `<zone>`
    /// (qemu-server `check_bridge_access`). Which one it is takes reading the SDN config, so
    /// the same bridge under every zone the token has an ACL in counts too: a grant that does
    /// not apply shows up as Proxmox's 403 at that step, never as a wrong refusal here.
    fn other_zone_paths(&self, path: &str) -> Vec<String> {
        const LOCAL: &str = "/sdn/zones/localnetwork/";
        let Some(bridge) = path.strip_prefix(LOCAL) else {
            return Vec::new();
        };
        let zones: BTreeSet<&str> = self
            .paths
            .keys()
            .filter_map(|p| p.strip_prefix("/sdn/zones/"))
            .filter_map(|rest| rest.split('/').next())
            .filter(|zone| !zone.is_empty() && *zone != "localnetwork")
            .collect();
        zones.into_iter().map(|zone| format!("/sdn/zones/{zone}/{bridge}")).collect()
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
    Granted::parse(&answer).map_err(|shape| ProxmoxError::Decode {
        method: reqwest::Method::GET,
        path: PATH.into(),
        detail: shape.to_string(),
        body: answer.to_string(),
    })
}

/// The cluster's major version from `GET /version` (allowed to every token), for naming the
/// guest-agent privileges; `None` when it cannot be had (the message then names both).
pub async fn cluster_major(client: &Client) -> Option<u32> {
    match client.get("/version", &[]).await {
        Ok(data) => super::import::PveVersion::from_data(&data).map(|v| v.major),
        Err(err) => {
            tracing::debug!("could not read the cluster's version ({err})");
            None
        }
    }
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
    pub fn new(
        privileges: &'static [&'static str],
        path: String,
        pool: Option<String>,
        host: &str,
        what: &str,
    ) -> Need {
        Need { privileges, path, pool, why: format!("`{host}`: {what}") }
    }

    fn holds(&self, granted: &Granted) -> bool {
        std::iter::once(&self.path)
            .chain(self.pool.as_ref())
            .chain(granted.other_zone_paths(&self.path).iter())
            .any(|path| self.privileges.iter().any(|p| granted.holds(path, p)))
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
    /// The cluster's major version (`GET /version`), when known: the guest-agent privileges
    /// are named as that version knows them (`pveum` rejects the other version's names).
    pub pve_major: Option<u32>,
}

/// The first release whose privileges name the guest agent's rights `VM.GuestAgent.*`
/// (pve-access-control 9.0.2); before it, `VM.Monitor` covers them.
const GUEST_AGENT_PRIVILEGES_SINCE: u32 = 9;

impl Need {
    /// Whether this need is one of the guest agent's, whose privilege depends on the version.
    pub fn is_agent(&self) -> bool {
        self.privileges == AGENT_READ || self.privileges == AGENT_FILE_READ
    }
}

impl MissingPrivileges {
    /// The privilege to grant for `need` on a cluster of `pve_major`: the agent's by version
    /// (both names when the version is not known), otherwise the need's first privilege.
    fn grant_name(&self, need: &Need) -> &'static str {
        match (need.is_agent(), self.pve_major) {
            (true, Some(major)) if major < GUEST_AGENT_PRIVILEGES_SINCE => "VM.Monitor",
            _ => need.privileges[0],
        }
    }

    fn render(&self) -> String {
        let mut grouped: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for need in &self.missing {
            let label = match (need.is_agent(), self.pve_major) {
                (true, Some(major)) => format!("{} (Proxmox VE {major})", self.grant_name(need)),
                (true, None) => format!("{} (VM.Monitor on PVE 8)", need.privileges[0]),
                (false, _) => need.privileges.join(" or "),
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
            privileges.insert(self.grant_name(need));
        }
        let list: Vec<&str> = privileges.into_iter().collect();
        text.push_str(&format!(
            "\nor add them to the role you use: pveum role modify <role> --append 1 --privs '{}'",
            list.join(",")
        ));
        let old_agent = self.pve_major.is_some_and(|major| major < GUEST_AGENT_PRIVILEGES_SINCE);
        if old_agent && self.role == PLAN_ROLE && self.missing.iter().any(Need::is_agent) {
            text.push_str(
                "
on Proxmox VE 8 no read-only role holds VM.Monitor, which can also change a running VM: rather give these hosts a static `nixprox.address`",
            );
        }
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
