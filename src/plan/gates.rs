//! Per-host gates: a host's own opt-in to a destructive action (`nixprox.allow.reinstall`,
//! `.replace`, `.detachDisks`) beside the global `policies`. A pull request that converts one
//! VM opens that host's reinstall in the host's module, where the reviewer sees it in the diff,
//! without opening every host's. Either one allows the action; nothing allows it on a protected
//! VM or a boot disk. The plan says next to the action which host option allowed it.

use crate::config::Policies;
use crate::flake::DesiredHost;

use super::model::{Action, ActionKind};

/// The policies that apply to `host`: the global ones, opened further by its own opt-ins.
/// `prune_orphans` stays global: an orphan has no host module.
pub(super) fn for_host(policies: Policies, host: &DesiredHost) -> Policies {
    Policies {
        prune_orphans: policies.prune_orphans,
        allow_reinstall: policies.allow_reinstall || host.allow.reinstall,
        allow_replace: policies.allow_replace || host.allow.replace,
        allow_detach_disks: policies.allow_detach_disks || host.allow.detach_disks,
    }
}

/// The host option that allows `kind` for this host alone, and whether the global policy
/// already does.
fn opt_in(kind: ActionKind, global: Policies, host: &DesiredHost) -> Option<&'static str> {
    let (by_host, by_policy, option) = match kind {
        ActionKind::Reinstall => (host.allow.reinstall, global.allow_reinstall, "nixprox.allow.reinstall"),
        ActionKind::ReplaceVm => (host.allow.replace, global.allow_replace, "nixprox.allow.replace"),
        ActionKind::DetachDisk => {
            (host.allow.detach_disks, global.allow_detach_disks, "nixprox.allow.detachDisks")
        }
        _ => return None,
    };
    (by_host && !by_policy).then_some(option)
}

/// Says, in the reason of every runnable destructive action that only the host's own opt-in
/// allows, which option that is: the reviewer sees the gate next to what it opens.
pub(super) fn note_opt_ins(actions: &mut [Action], global: Policies, host: &DesiredHost) {
    for action in actions.iter_mut().filter(|a| a.blocked.is_none()) {
        if let Some(option) = opt_in(action.kind, global, host) {
            action.reason.push_str(&format!(" (allowed for this host alone by `{option} = true`)"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::model::Action;
    use crate::plan::testkit;

    #[test]
    fn a_host_opt_in_opens_its_own_gate_and_says_so() {
        let mut host = testkit::host("web");
        let global = Policies::default();
        assert_eq!(for_host(global, &host), global);
        host.allow.reinstall = true;
        let mine = for_host(global, &host);
        assert!(mine.allow_reinstall && !mine.allow_replace && !mine.allow_detach_disks);
        let action = |kind| Action { kind, reason: "r".into(), changes: Vec::new(), blocked: None };
        let mut actions = vec![action(ActionKind::Reinstall), action(ActionKind::ReplaceVm)];
        note_opt_ins(&mut actions, global, &host);
        assert_eq!(actions[0].reason, "r (allowed for this host alone by `nixprox.allow.reinstall = true`)");
        assert_eq!(actions[1].reason, "r");
        // The global policy allows it anyway: nothing to say.
        let mut actions = vec![action(ActionKind::Reinstall)];
        note_opt_ins(&mut actions, Policies { allow_reinstall: true, ..global }, &host);
        assert_eq!(actions[0].reason, "r");
    }
}
