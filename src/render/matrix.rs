//! The matrix rendering: a plan's changed hosts split into shards, printed as a GitHub/Forgejo
//! Actions matrix (`{"include":[{"shard":"1-of-2","hosts":"a,b","nodes":"pve1"}, …]}`) so a
//! workflow fans `nixprox apply --hosts …` out over several runners with `strategy.matrix`.
//!
//! A fleet outgrows one runner, and the CI already knows how to run jobs in parallel; this
//! only decides which hosts go together. The rule that matters: every host touching a Proxmox
//! node lands in the same shard, so `concurrency.per_node` (how many operations one node takes
//! at once) still holds when shards run side by side. A host whose VM moves between nodes
//! ties both nodes together. Hosts without changes are left out: a shard applies work.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::plan::{HostPlan, Plan};

/// Default number of changed hosts per shard when `--shards` is not given.
pub const HOSTS_PER_SHARD: usize = 25;

/// One matrix entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shard {
    /// `1-of-3`: usable in job names and artifact names (no `/`).
    pub shard: String,
    /// Comma-separated host names, as `nixprox apply --hosts` takes them.
    pub hosts: String,
    /// Comma-separated Proxmox nodes the shard touches (for display and logs).
    pub nodes: String,
}

#[derive(Debug, Serialize)]
struct Matrix<'a> {
    include: &'a [Shard],
}

/// The shards: `wanted` of them (default: one per [`HOSTS_PER_SHARD`] changed hosts), never
/// more than there are independent node groups, and none when nothing changes.
///
/// Node groups are placed largest first, each into the shard with the fewest hosts so far
/// (ties: the lower shard), which keeps shards even and the result deterministic.
pub fn shards(plan: &Plan, wanted: Option<usize>) -> Vec<Shard> {
    let changed: Vec<&HostPlan> = plan.hosts.iter().filter(|h| h.has_changes()).collect();
    if changed.is_empty() {
        return Vec::new();
    }
    let groups = node_groups(&changed);
    let count = wanted.unwrap_or_else(|| changed.len().div_ceil(HOSTS_PER_SHARD)).clamp(1, groups.len());

    let mut order: Vec<&Group> = groups.iter().collect();
    order.sort_by(|a, b| b.hosts.len().cmp(&a.hosts.len()).then_with(|| a.nodes.cmp(&b.nodes)));
    let mut bins: Vec<(Vec<&str>, Vec<&str>)> = vec![(Vec::new(), Vec::new()); count];
    for group in order {
        let bin = (0..count).min_by_key(|&i| (bins[i].0.len(), i)).unwrap_or(0);
        bins[bin].0.extend(group.hosts.iter().copied());
        bins[bin].1.extend(group.nodes.iter().map(String::as_str));
    }
    bins.into_iter()
        .enumerate()
        .map(|(i, (mut hosts, mut nodes))| {
            hosts.sort_unstable();
            nodes.sort_unstable();
            Shard { shard: format!("{}-of-{count}", i + 1), hosts: hosts.join(","), nodes: nodes.join(",") }
        })
        .collect()
}

/// The matrix as one line of JSON (a step output must be a single line) and a newline.
pub fn render(plan: &Plan, wanted: Option<usize>) -> String {
    let shards = shards(plan, wanted);
    // Plain strings always serialise.
    let mut text = serde_json::to_string(&Matrix { include: &shards }).unwrap_or_default();
    text.push('\n');
    text
}

/// Hosts tied together through the nodes they touch.
#[derive(Debug)]
struct Group<'a> {
    nodes: Vec<String>,
    hosts: Vec<&'a str>,
}

/// Connected components of the host–node graph (union-find over node names).
fn node_groups<'a>(changed: &[&'a HostPlan]) -> Vec<Group<'a>> {
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    let mut parent: Vec<usize> = Vec::new();
    let mut id = |node: &'a str, parent: &mut Vec<usize>| {
        *index.entry(node).or_insert_with(|| {
            parent.push(parent.len());
            parent.len() - 1
        })
    };
    let mut host_node = Vec::with_capacity(changed.len());
    for host in changed {
        let first = id(host.vm.node.as_str(), &mut parent);
        for target in moves_to(host) {
            let other = id(target, &mut parent);
            let (a, b) = (find(&mut parent, first), find(&mut parent, other));
            parent[a.max(b)] = a.min(b);
        }
        host_node.push(first);
    }
    let mut groups: BTreeMap<usize, Group<'a>> = BTreeMap::new();
    for (&node, &i) in &index {
        let root = find(&mut parent, i);
        groups
            .entry(root)
            .or_insert_with(|| Group { nodes: Vec::new(), hosts: Vec::new() })
            .nodes
            .push(node.into());
    }
    for (host, node) in changed.iter().zip(host_node) {
        let root = find(&mut parent, node);
        if let Some(group) = groups.get_mut(&root) {
            group.hosts.push(host.host.as_str());
        }
    }
    groups.into_values().collect()
}

/// The node a host's VM moves to (a `node` change), if any.
fn moves_to(host: &HostPlan) -> impl Iterator<Item = &str> {
    host.actions
        .iter()
        .flat_map(|a| &a.changes)
        .filter(|c| c.field == "node")
        .filter_map(|c| c.after.as_ref().and_then(|v| v.as_str()))
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::model::SCHEMA_VERSION;
    use crate::plan::{Action, ActionKind, Change, Summary, VmRef};
    use serde_json::json;

    fn host(name: &str, node: &str, kind: ActionKind) -> HostPlan {
        HostPlan {
            drift: None,
            host: name.into(),
            vm: VmRef { node: node.into(), vmid: Some(100) },
            kind: crate::spec::GuestKind::Vm,
            orphan: false,
            actions: vec![Action { kind, reason: String::new(), changes: Vec::new(), blocked: None }],
            nixos_changes: None,
            pool_move: None,
            pending_reboot: None,
        }
    }

    fn plan(hosts: Vec<HostPlan>) -> Plan {
        Plan {
            version: SCHEMA_VERSION,
            plan_id: "p".into(),
            summary: Summary::default(),
            hosts,
            probe: None,
            unreferenced_images: Vec::new(),
        }
    }

    fn entries(plan: &Plan, wanted: Option<usize>) -> Vec<(String, String, String)> {
        shards(plan, wanted).into_iter().map(|s| (s.shard, s.hosts, s.nodes)).collect()
    }

    fn s(shard: &str, hosts: &str, nodes: &str) -> (String, String, String) {
        (shard.into(), hosts.into(), nodes.into())
    }

    #[test]
    fn nothing_to_do_is_an_empty_matrix() {
        let p = plan(vec![host("a", "pve1", ActionKind::Noop)]);
        assert_eq!(render(&p, None), "{\"include\":[]}\n");
        assert_eq!(render(&plan(vec![]), Some(3)), "{\"include\":[]}\n");
    }

    #[test]
    fn unchanged_hosts_are_left_out_and_a_node_never_splits() {
        let p = plan(vec![
            host("a", "pve1", ActionKind::UpdateVm),
            host("b", "pve2", ActionKind::Switch),
            host("c", "pve1", ActionKind::Noop),
            host("d", "pve1", ActionKind::CreateVm),
            host("e", "pve3", ActionKind::Switch),
        ]);
        assert_eq!(entries(&p, Some(2)), [s("1-of-2", "a,d", "pve1"), s("2-of-2", "b,e", "pve2,pve3")]);
        // More shards than node groups: one shard per node.
        assert_eq!(
            entries(&p, Some(10)),
            [s("1-of-3", "a,d", "pve1"), s("2-of-3", "b", "pve2"), s("3-of-3", "e", "pve3")]
        );
        assert_eq!(entries(&p, Some(0)), [s("1-of-1", "a,b,d,e", "pve1,pve2,pve3")]);
    }

    #[test]
    fn default_is_one_shard_per_25_changed_hosts_balanced_by_size() {
        let hosts: Vec<HostPlan> = (0..60)
            .map(|i| host(&format!("h{i:02}"), &format!("pve{}", i % 6), ActionKind::Switch))
            .collect();
        let shards = shards(&plan(hosts), None);
        assert_eq!(shards.len(), 3);
        let sizes: Vec<usize> = shards.iter().map(|s| s.hosts.split(',').count()).collect();
        assert_eq!(sizes, [20, 20, 20]);
        assert_eq!(shards[0].nodes, "pve0,pve3");
    }

    #[test]
    fn a_vm_moving_between_nodes_ties_them_together() {
        let mut moving = host("m", "pve1", ActionKind::ReplaceVm);
        moving.actions[0].changes.push(Change {
            field: "node".into(),
            before: Some(json!("pve1")),
            after: Some(json!("pve2")),
            effect: None,
        });
        let p =
            plan(vec![moving, host("x", "pve2", ActionKind::Switch), host("y", "pve3", ActionKind::Switch)]);
        assert_eq!(entries(&p, Some(3)), [s("1-of-2", "m,x", "pve1,pve2"), s("2-of-2", "y", "pve3")]);
    }

    #[test]
    fn renders_one_line_of_json() {
        let p = plan(vec![host("web", "pve1", ActionKind::Switch)]);
        assert_eq!(
            render(&p, None),
            "{\"include\":[{\"shard\":\"1-of-1\",\"hosts\":\"web\",\"nodes\":\"pve1\"}]}\n"
        );
    }
}
