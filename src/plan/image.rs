//! Image hosts in the plan (`nixprox.bootstrap.image`). The planner plans every host alike;
//! this pass then turns an image host's way to a first boot into what apply does for it:
//!
//! - a new VM (or a replaced one) gets `upload_image` before its `create_vm`: which image files
//!   go to which storage and node, or that they are there already (their names come from the
//!   package's store hash, so hosts that share a package share the upload), and no `install`:
//!   the VM boots into its system;
//! - a VM nixprox created from an image but has not checked yet (an interrupted apply) owes a
//!   `switch`, not an install: apply reads its host key through the guest agent, checks over
//!   SSH which system it runs, and switches only when that is not the host's. How the VM was
//!   created is read from its notes, not from the host's bootstrap option, which may have
//!   changed since: a VM cloned from a template keeps its install even when the host now
//!   boots from an image, and one created from an image keeps its check when it no longer does.
//!
//! Whether the cluster and the storage can take the upload is a fact read before planning
//! ([`ImageStores`]); when they cannot, the upload and the create are blocked with the fix.
//! Which files are there changes only the reason, never the changes: an upload that was
//! interrupted halfway leaves the reviewed actions as they were, so a re-run is accepted.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::model::{Action, ActionKind, Blocked, Change, HostPlan, Plan};
use crate::flake::DesiredHost;
use crate::flake::host::{Bootstrap, ImageSource};
use crate::image::import_file_name;
use crate::proxmox::LiveVm;
use crate::proxmox::import::{ImageStores, import_volid};

/// Where one upload goes: a shared storage once for all nodes, else per node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Target {
    /// `None` for a shared storage.
    node: Option<String>,
    storage: String,
    package: String,
}

/// The `(node, storage)` pairs whose status and files a plan with `upload_image` actions
/// needs to know ([`crate::proxmox::import::read_image_stores`]).
pub fn image_stores_to_read(plan: &Plan, desired: &[DesiredHost]) -> BTreeSet<(String, String)> {
    plan.hosts
        .iter()
        .filter(|h| !h.orphan && h.actions.iter().any(|a| a.kind == ActionKind::UploadImage))
        .filter_map(|h| desired.iter().find(|d| d.host == h.host))
        .filter_map(|d| match &d.bootstrap {
            Bootstrap::Image(source) => Some((d.node.clone(), source.storage.clone())),
            _ => None,
        })
        .collect()
}

/// Rewrites the actions of the image hosts among `hosts` (see the module docs).
pub(super) fn amend(hosts: &mut [HostPlan], desired: &[DesiredHost], live: &[LiveVm], stores: &ImageStores) {
    let image_of = |name: &str| {
        desired.iter().find(|d| d.host == name).and_then(|d| match &d.bootstrap {
            Bootstrap::Image(source) => Some((d, source)),
            _ => None,
        })
    };
    // Which hosts share each upload, to say so in every one of their reasons.
    let mut sharing: BTreeMap<Target, Vec<String>> = BTreeMap::new();
    for plan in hosts.iter().filter(|h| !h.orphan) {
        if let Some((host, source)) = image_of(&plan.host)
            && creates(plan)
        {
            sharing.entry(target(host, source, stores)).or_default().push(host.host.clone());
        }
    }
    for plan in hosts.iter_mut().filter(|h| !h.orphan) {
        let image = image_of(&plan.host);
        if let Some((host, source)) = image
            && creates(plan)
        {
            let others = &sharing[&target(host, source, stores)];
            plan_upload(plan, host, source, stores, others);
        } else if created_from_image_unchecked(plan, live) {
            finish_created(plan);
        }
    }
}

/// Whether the host's VM is one nixprox created from an image and has not checked yet (its
/// notes say so).
pub(super) fn created_from_image_unchecked(plan: &HostPlan, live: &[LiveVm]) -> bool {
    let Some(vmid) = plan.vm.vmid else { return false };
    live.iter()
        .find(|vm| vm.vmid == vmid)
        .and_then(|vm| vm.config.as_ref()?.metadata.as_ref())
        .is_some_and(|m| m.created_from_image_unchecked(vmid))
}

/// Whether the host's VM is (re)created: a `create_vm`, planned or blocked, or a runnable
/// `replace_vm`.
fn creates(plan: &HostPlan) -> bool {
    plan.actions
        .iter()
        .any(|a| a.kind == ActionKind::CreateVm || (a.kind == ActionKind::ReplaceVm && a.blocked.is_none()))
}

fn target(host: &DesiredHost, source: &ImageSource, stores: &ImageStores) -> Target {
    let shared = stores.store(&host.node, &source.storage).is_some_and(|s| s.shared);
    Target {
        node: (!shared).then(|| host.node.clone()),
        storage: source.storage.clone(),
        package: source.package.out_path.clone(),
    }
}

/// `upload_image` before the create (or replace), the `install` dropped, and the system the
/// VM boots shown on the create.
fn plan_upload(
    plan: &mut HostPlan,
    host: &DesiredHost,
    source: &ImageSource,
    stores: &ImageStores,
    sharing: &[String],
) {
    plan.actions.retain(|a| a.kind != ActionKind::Install);
    let Some(at) =
        plan.actions.iter().position(|a| matches!(a.kind, ActionKind::CreateVm | ActionKind::ReplaceVm))
    else {
        return;
    };
    let mut upload = upload_action(host, source, stores, sharing);
    let system = Change {
        field: "system".into(),
        before: None,
        after: Some(json!(host.system.toplevel)),
        effect: None,
    };
    let create = &mut plan.actions[at];
    create.changes.push(system);
    if create.kind == ActionKind::CreateVm {
        create.reason =
            "no VM exists for this host; new VM whose disks are imported from its image, booting straight into its system (no installer)".into();
    }
    match (&create.blocked, &upload.blocked) {
        (Some(_), None) => {
            let what = create.kind.as_str();
            upload.blocked = Some(Blocked {
                reason: format!("the VM it is for cannot be created (see `{what}`)"),
                setting: None,
            });
        }
        (None, Some(_)) => {
            create.blocked = Some(Blocked {
                reason: "its image cannot be uploaded (see `upload_image`)".into(),
                setting: None,
            });
        }
        _ => {}
    }
    plan.actions.insert(at, upload);
}

/// The `upload_image` action: one change per disk (its import file), the reason saying where
/// the files go and which are there already.
fn upload_action(
    host: &DesiredHost,
    source: &ImageSource,
    stores: &ImageStores,
    sharing: &[String],
) -> Action {
    let storage = &source.storage;
    let mut changes = Vec::new();
    let mut present = 0;
    for slot in host.spec.disks.keys() {
        // Resolving refused packages that are not store paths; this only guards the type.
        let Ok(name) = import_file_name(&source.package.out_path, slot, source.format) else { continue };
        present += usize::from(stores.has_file(&host.node, storage, &name));
        changes.push(Change {
            field: format!("image.{slot}"),
            before: None,
            after: Some(json!(import_volid(storage, &name))),
            effect: None,
        });
    }
    let shared = stores.store(&host.node, storage).is_some_and(|s| s.shared);
    let place = if shared {
        format!("the shared storage `{storage}` (one upload serves every node)")
    } else {
        format!("storage `{storage}` on node `{}`", host.node)
    };
    let package = &source.package.out_path;
    let mut reason = match present {
        0 => format!("build the image `{package}` on the runner and upload it to {place}"),
        n if n == changes.len() => format!(
            "the image `{package}` is on {place} already: nothing to upload unless a file is incomplete (apply compares sizes once it has built the image)"
        ),
        n => format!(
            "build the image `{package}` on the runner and upload what is missing to {place} ({n} of {} files are there already)",
            changes.len()
        ),
    };
    if sharing.len() > 1 {
        let names: Vec<String> = sharing.iter().map(|h| format!("`{h}`")).collect();
        reason.push_str(&format!("; one upload for hosts {}", names.join(", ")));
    }
    let blocked =
        stores.refusal(&host.node, storage).map(|why| Blocked { reason: why.to_string(), setting: None });
    Action { kind: ActionKind::UploadImage, reason, changes, blocked }
}

/// The install the planner gives a VM nixprox created and has not installed becomes, for an
/// image host, the check of what its image booted (a switch when it is not the host's system).
fn finish_created(plan: &mut HostPlan) {
    for action in plan.actions.iter_mut().filter(|a| a.kind == ActionKind::Install) {
        action.kind = ActionKind::Switch;
        action.reason = "nixprox created this VM from its image and has not checked it yet: apply reads its host key through the guest agent, checks over SSH that it runs this system, and switches to it if not".into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Policies;
    use crate::flake::host::ImageEval;
    use crate::metadata::Created;
    use crate::plan::testkit::{config, host, live};
    use crate::plan::{PlanInput, plan_with_images};
    use crate::proxmox::import::{ImageStore, ImportFile};
    use crate::spec::ImageFormat;

    const PACKAGE: &str = "/nix/store/0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ai2-shared-images";
    const FILE: &str = "nixprox-0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ai2-scsi0.qcow2";

    fn image_host(name: &str) -> DesiredHost {
        let mut host = host(name);
        host.bootstrap = Bootstrap::Image(ImageSource {
            package: ImageEval { out_path: PACKAGE.into(), drv_path: None, image_sizes: BTreeMap::new() },
            format: ImageFormat::Qcow2,
            storage: "images".into(),
        });
        host
    }

    fn store(shared: bool, files: &[&str]) -> ImageStores {
        let files = files
            .iter()
            .map(|name| ImportFile {
                volid: import_volid("images", name),
                name: name.to_string(),
                size: 1000,
                format: "qcow2".into(),
            })
            .collect();
        ImageStores {
            refused: None,
            stores: BTreeMap::from([(("pve1".into(), "images".into()), Ok(ImageStore { shared, files }))]),
        }
    }

    fn run(desired: &[DesiredHost], live: &[LiveVm], stores: &ImageStores) -> Plan {
        let input = PlanInput { desired, live, policies: Policies::default(), only: None, probes: None };
        plan_with_images(input, stores)
    }

    fn actions<'a>(plan: &'a Plan, name: &str) -> &'a [Action] {
        &plan.hosts.iter().find(|h| h.host == name).expect("host in the plan").actions
    }

    fn kinds(plan: &Plan, name: &str) -> Vec<(ActionKind, bool)> {
        actions(plan, name).iter().map(|a| (a.kind, a.blocked.is_some())).collect()
    }

    #[test]
    fn a_new_image_host_uploads_then_creates_and_installs_nothing() {
        let web = image_host("web");
        let plan = run(std::slice::from_ref(&web), &[], &store(false, &[]));
        assert_eq!(kinds(&plan, "web"), [(ActionKind::UploadImage, false), (ActionKind::CreateVm, false)]);
        let [upload, create] = actions(&plan, "web") else { panic!("two actions") };
        assert_eq!(
            upload.reason,
            format!(
                "build the image `{PACKAGE}` on the runner and upload it to storage `images` on node `pve1`"
            )
        );
        assert_eq!(upload.changes.len(), 1);
        assert_eq!(upload.changes[0].field, "image.scsi0");
        assert_eq!(upload.changes[0].after, Some(json!(format!("images:import/{FILE}"))));
        assert!(create.reason.contains("booting straight into its system"), "{}", create.reason);
        let system = create.changes.last().expect("changes");
        assert_eq!((system.field.as_str(), &system.after), ("system", &Some(json!(web.system.toplevel))));
        assert_eq!(plan.summary.count(ActionKind::UploadImage), 1);
        assert_eq!(plan.summary.count(ActionKind::Install), 0);
        assert_eq!(image_stores_to_read(&plan, &[web]), BTreeSet::from([("pve1".into(), "images".into())]));
    }

    #[test]
    fn what_is_on_the_storage_changes_the_reason_never_the_changes() {
        let desired = [image_host("web")];
        let empty = run(&desired, &[], &store(false, &[]));
        let present = run(&desired, &[], &store(false, &[FILE]));
        assert!(actions(&present, "web")[0].reason.contains("is on storage `images` on node `pve1` already"));
        // An interrupted upload must not turn the reviewed actions into other ones.
        assert_eq!(actions(&present, "web")[0].changes, actions(&empty, "web")[0].changes);
        let shared = run(&desired, &[], &store(true, &[]));
        assert!(
            actions(&shared, "web")[0]
                .reason
                .ends_with("to the shared storage `images` (one upload serves every node)"),
            "{}",
            actions(&shared, "web")[0].reason
        );
    }

    #[test]
    fn hosts_sharing_a_package_share_one_upload() {
        let desired = [image_host("web"), image_host("cache"), host("plain")];
        let plan = run(&desired, &[], &store(false, &[]));
        for name in ["web", "cache"] {
            assert!(
                actions(&plan, name)[0].reason.ends_with("; one upload for hosts `cache`, `web`"),
                "{}",
                actions(&plan, name)[0].reason
            );
        }
        assert_eq!(kinds(&plan, "plain"), [(ActionKind::CreateVm, false), (ActionKind::Install, false)]);
    }

    #[test]
    fn a_storage_or_cluster_that_cannot_take_images_blocks_upload_and_create() {
        let desired = [image_host("web")];
        let mut refused = store(false, &[]);
        refused.stores.insert(
            ("pve1".into(), "images".into()),
            Err("storage `images` does not allow `import` content (fix)".into()),
        );
        let plan = run(&desired, &[], &refused);
        assert_eq!(kinds(&plan, "web"), [(ActionKind::UploadImage, true), (ActionKind::CreateVm, true)]);
        let blocked = actions(&plan, "web")[0].blocked.as_ref().expect("blocked");
        assert_eq!(blocked.reason, "storage `images` does not allow `import` content (fix)");
        assert_eq!(blocked.setting, None);
        let old =
            ImageStores { refused: Some("Proxmox VE 8.3 is too old (fix)".into()), ..store(false, &[]) };
        let plan = run(&desired, &[], &old);
        assert_eq!(
            actions(&plan, "web")[0].blocked.as_ref().map(|b| b.reason.as_str()),
            Some("Proxmox VE 8.3 is too old (fix)")
        );
        assert_eq!(plan.summary.blocked, 2);
    }

    #[test]
    fn a_create_that_is_blocked_uploads_nothing() {
        let mut web = image_host("web");
        web.vmid = Some(120);
        let mut other = live("other", 120);
        other.name = "other".into();
        let plan = run(&[web], &[other], &store(false, &[]));
        assert_eq!(kinds(&plan, "web"), [(ActionKind::UploadImage, true), (ActionKind::CreateVm, true)]);
    }

    /// A VM nixprox created (and has not installed or checked yet), from `image` or, when
    /// `None`, cloned from a template.
    fn created_vm(image: Option<&str>) -> LiveVm {
        let mut vm = live("web", 120);
        let metadata = config(&mut vm).metadata.as_mut().expect("metadata");
        metadata.system = None;
        metadata.created = Some(Created { vmid: 120, plan: "p".into(), image: image.map(String::from) });
        vm
    }

    #[test]
    fn a_vm_created_from_its_image_but_not_checked_gets_a_switch() {
        let web = image_host("web");
        let plan = run(std::slice::from_ref(&web), &[created_vm(Some(PACKAGE))], &ImageStores::default());
        assert_eq!(kinds(&plan, "web"), [(ActionKind::Switch, false)]);
        assert!(actions(&plan, "web")[0].reason.contains("reads its host key through the guest agent"));
        assert!(image_stores_to_read(&plan, &[web]).is_empty(), "nothing to upload for an existing VM");

        // An installed image host's changes are ordinary switches: no new image.
        let mut installed = image_host("web");
        installed.system.toplevel.push_str("-2");
        let plan = run(&[installed], &[live("web", 120)], &ImageStores::default());
        assert_eq!(kinds(&plan, "web"), [(ActionKind::Switch, false)]);
    }

    #[test]
    fn how_an_unfinished_vm_is_finished_follows_how_it_was_created_not_the_bootstrap_now() {
        // Cloned from a template by a run that stopped before nixos-anywhere; the host boots
        // from an image now: the clone is not the image's system, so it is installed.
        let plan = run(&[image_host("web")], &[created_vm(None)], &ImageStores::default());
        assert_eq!(kinds(&plan, "web"), [(ActionKind::Install, false)]);
        // Created from an image by a run that stopped before its check; the host is cloned
        // from a template now: the VM runs NixOS already and is checked, never reinstalled.
        let plan = run(&[host("web")], &[created_vm(Some(PACKAGE))], &ImageStores::default());
        assert_eq!(kinds(&plan, "web"), [(ActionKind::Switch, false)]);
    }
}
