//! Planner unit tests: every action kind and every blocked case.

use std::collections::BTreeSet;

use serde_json::json;

use super::model::{ActionKind as K, Effect};
use super::testkit::*;
use super::{Plan, PlanInput, Probe, plan};
use crate::config::Policies;
use crate::flake::DesiredHost;
use crate::flake::host::DeployStrategy;
use crate::metadata::Created;
use crate::proxmox::LiveVm;

fn probed(
    desired: &[DesiredHost],
    live: &[LiveVm],
    probes: &std::collections::BTreeMap<String, Probe>,
) -> Plan {
    plan(PlanInput { desired, live, policies: Policies::default(), only: None, probes: Some(probes) })
}

fn run(desired: &[DesiredHost], live: &[LiveVm], policies: Policies) -> Plan {
    plan(PlanInput { desired, live, policies, only: None, probes: None })
}

fn kinds(plan: &Plan, host: &str) -> Vec<(K, bool)> {
    let host = plan.hosts.iter().find(|h| h.host == host).expect("host in plan");
    host.actions.iter().map(|a| (a.kind, a.blocked.is_some())).collect()
}

fn all() -> Policies {
    Policies { prune_orphans: true, allow_reinstall: true, allow_replace: true, allow_detach_disks: true }
}

#[test]
fn in_sync_is_noop() {
    let plan = run(&[host("web")], &[live("web", 101)], Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::Noop, false)]);
    assert!(!plan.has_changes());
    assert_eq!(plan.hosts[0].vm.vmid, Some(101));
}

#[test]
fn missing_vm_is_created_then_installed() {
    let plan = run(&[host("web")], &[], Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::CreateVm, false), (K::Install, false)]);
    let create = &plan.hosts[0].actions[0];
    assert!(
        create
            .changes
            .iter()
            .any(|c| c.field == "disks.scsi0" && c.after == Some(json!("local-lvm,size=20G")))
    );
    assert!(create.changes.iter().all(|c| c.before.is_none()));
    assert_eq!(plan.summary.count(K::CreateVm), 1);
}

#[test]
fn install_on_a_small_vm_says_that_memory_is_raised_for_kexec() {
    let mut small = host("web");
    small.spec.memory_mib = 1024;
    let plan = run(&[small, host("db")], &[], Policies::default());
    let reason = |name: &str| {
        let host = plan.hosts.iter().find(|h| h.host == name).expect("host");
        host.actions.iter().find(|a| a.kind == K::Install).expect("install").reason.clone()
    };
    assert_eq!(
        reason("web"),
        "new VM: install NixOS with nixos-anywhere (memory raised to 1536 MiB for kexec, restored after)"
    );
    assert_eq!(reason("db"), "new VM: install NixOS with nixos-anywhere");
}

fn unmanaged(vmid: u32) -> LiveVm {
    let mut vm = live("web", vmid);
    vm.tags.clear();
    config(&mut vm).metadata = None;
    vm
}

#[test]
fn unmanaged_vm_with_the_hosts_name_is_adopted_in_place_never_duplicated() {
    // The guest agent is on: apply reads the host key through it. Never a reinstall.
    let plan = run(&[host("web")], &[unmanaged(150)], all());
    assert_eq!(kinds(&plan, "web"), [(K::Adopt, false), (K::Switch, false)]);
    let adopt = &plan.hosts[0].actions[0];
    assert!(adopt.reason.contains("its QEMU guest agent reads"), "{}", adopt.reason);
    let switch = &plan.hosts[0].actions[1];
    assert_eq!(
        (switch.changes[0].before.clone(), switch.changes[0].after.clone()),
        (None, Some(json!(format!("{SYSTEM}-web"))))
    );
    assert!(!plan.has_destructive());
    // Declared key, no agent but a static address: the same.
    let mut declared = host("web");
    declared.ssh.host_key = Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIdeclared".into());
    let mut no_agent = unmanaged(150);
    config(&mut no_agent).spec.agent = false;
    let plan = run(&[declared.clone()], std::slice::from_ref(&no_agent), Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::Adopt, false), (K::UpdateVm, false), (K::Switch, false)]);
    assert!(plan.hosts[0].actions[0].reason.contains("the declared `nixprox.ssh.hostKey`"));
    // deploy.strategy = none: adopted, not switched.
    declared.deploy.strategy = DeployStrategy::None;
    let plan = run(&[declared], &[no_agent], Policies::default());
    assert_eq!(kinds(&plan, "web")[0], (K::Adopt, false));
    assert!(!kinds(&plan, "web").contains(&(K::Switch, false)));
}

#[test]
fn a_create_stopped_before_the_tag_is_resumed_not_adopted_even_by_vmid() {
    let mut want = host("web");
    want.vmid = Some(120);
    let mut vm = live("web", 120);
    vm.tags.clear();
    created_uninstalled(&mut vm, 120);
    let plan = run(std::slice::from_ref(&want), std::slice::from_ref(&vm), Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::UpdateVm, false), (K::Install, false)]);
    // A block naming another host: that VMID is not this host's.
    config(&mut vm).metadata.as_mut().expect("metadata").host = "db".into();
    let plan = run(&[want], &[vm], Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::CreateVm, true)]);
}

#[test]
fn an_adoption_without_a_way_to_pin_the_host_key_is_blocked_naming_both() {
    let mut vm = unmanaged(150);
    config(&mut vm).spec.agent = false;
    config(&mut vm).spec.cores = 8;
    let plan = run(&[host("web")], &[vm.clone()], all());
    // Nothing else either: no tag, no update of a VM nixprox cannot adopt.
    assert_eq!(kinds(&plan, "web"), [(K::Adopt, true)]);
    let blocked = plan.hosts[0].actions[0].blocked.as_ref().expect("blocked");
    assert_eq!(blocked.setting, None);
    for says in ["VM 150", "`nixprox.ssh.hostKey`", "QEMU guest agent", "never trusts a key on first use"] {
        assert!(blocked.reason.contains(says), "`{says}` in {}", blocked.reason);
    }
    // A declared key without an address to reach: blocked too, asking for the address.
    let mut declared = host("web");
    declared.ssh.host_key = Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIdeclared".into());
    declared.address = None;
    let plan = run(&[declared], &[vm], all());
    let blocked = plan.hosts[0].actions[0].blocked.as_ref().expect("blocked");
    assert!(blocked.reason.contains("`nixprox.address`"), "{}", blocked.reason);
}

#[test]
fn a_node_change_alone_is_a_migration() {
    let mut want = host("web");
    want.node = "pve2".into();
    let plan = run(&[want.clone()], &[live("web", 101)], Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::MigrateVm, false)]);
    let change = &plan.hosts[0].actions[0].changes[0];
    assert_eq!(
        (change.field.as_str(), change.before.clone(), change.after.clone()),
        ("node", Some(json!("pve1")), Some(json!("pve2")))
    );
    assert_eq!(plan.hosts[0].vm.node, "pve1", "the move starts from where the VM is");
    assert!(!plan.has_destructive());
    // With other changes, in the order apply makes them.
    want.spec.cores = 4;
    let plan = run(&[want], &[live("web", 101)], Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::MigrateVm, false), (K::UpdateVm, false)]);
}

#[test]
fn a_slot_mismatch_is_never_an_update_and_the_boot_disk_is_never_detached() {
    // The flake says scsi0, the VM boots from virtio0.
    let mut vm = live("web", 101);
    let disk = config(&mut vm).spec.disks.remove("scsi0").expect("scsi0");
    config(&mut vm).spec.disks.insert("virtio0".into(), disk);
    config(&mut vm).boot_disks = vec!["virtio0".into()];
    let plan = run(&[host("web")], std::slice::from_ref(&vm), all());
    assert_eq!(kinds(&plan, "web"), [(K::DetachDisk, true)], "{plan:#?}");
    let detach = &plan.hosts[0].actions[0];
    let blocked = detach.blocked.as_ref().expect("blocked");
    assert_eq!(blocked.setting, None, "nothing allows detaching a boot disk");
    assert!(blocked.reason.contains("`virtio0` is the disk VM 101 boots from"), "{}", blocked.reason);
    assert!(
        detach.reason.contains(r#"`virtio0 = { storage = "local-lvm"; size = "20G"; };`"#),
        "{}",
        detach.reason
    );
    assert!(detach.reason.contains("nixprox import 101"), "{}", detach.reason);
    // The disk the flake adds waits with it: shown there, never in an update.
    let fields: Vec<&str> = detach.changes.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(fields, ["disks.virtio0", "disks.scsi0"]);
    assert!(plan.has_destructive());
}

#[test]
fn detaching_another_disk_is_gated_and_never_on_a_protected_vm() {
    let mut vm = live("web", 101);
    let mut data = config(&mut vm).spec.disks["scsi0"].clone();
    data.size_bytes = 100 << 30;
    config(&mut vm).spec.disks.insert("scsi1".into(), data);
    let plan = run(&[host("web")], std::slice::from_ref(&vm), Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::DetachDisk, true)]);
    let detach = &plan.hosts[0].actions[0];
    assert_eq!(
        detach.blocked.as_ref().and_then(|b| b.setting.as_deref()),
        Some("policies.allow_detach_disks")
    );
    assert_eq!(detach.changes[0].field, "disks.scsi1");
    let plan = run(&[host("web")], std::slice::from_ref(&vm), all());
    assert_eq!(kinds(&plan, "web"), [(K::DetachDisk, false)]);
    config(&mut vm).spec.protection = true;
    let mut want = host("web");
    want.spec.protection = true;
    let plan = run(&[want], &[vm], all());
    let blocked = plan.hosts[0].actions[0].blocked.as_ref().expect("blocked");
    assert!(blocked.setting.is_none() && blocked.reason.contains("protected"), "{blocked:?}");
}

#[test]
fn a_kept_host_releases_its_vm_and_never_creates_or_adopts_one() {
    let mut keep = host("web");
    keep.keep = true;
    let plan = run(std::slice::from_ref(&keep), &[live("web", 101)], all());
    assert_eq!(kinds(&plan, "web"), [(K::Release, false)]);
    assert_eq!(plan.hosts[0].vm.vmid, Some(101));
    assert!(!plan.has_destructive());
    assert_eq!(plan.summary.orphans, 0, "a kept VM is no orphan");
    // Released (untagged, no block): nothing more, and never adopted again.
    let plan = run(std::slice::from_ref(&keep), &[unmanaged(101)], all());
    assert_eq!(kinds(&plan, "web"), [(K::Noop, false)]);
    assert!(plan.hosts[0].actions[0].reason.contains("not managed by nixprox"));
    // No VM: none is created.
    let plan = run(std::slice::from_ref(&keep), &[], all());
    assert_eq!(kinds(&plan, "web"), [(K::Noop, false)]);
    // A block nixprox cannot read is not rewritten.
    let mut vm = live("web", 101);
    config(&mut vm).metadata = None;
    config(&mut vm).unreadable_block = Some("the block is version 2".into());
    let plan = run(&[keep], &[vm], all());
    assert_eq!(kinds(&plan, "web"), [(K::Release, true)]);
}

#[test]
fn a_host_without_a_template_or_iso_plans_until_its_vm_must_be_created() {
    let mut bare = host("web");
    bare.bootstrap = crate::flake::host::Bootstrap::Undeclared;
    let plan = run(std::slice::from_ref(&bare), &[live("web", 101)], all());
    assert_eq!(kinds(&plan, "web"), [(K::Noop, false)]);
    let plan = run(std::slice::from_ref(&bare), &[], all());
    assert_eq!(kinds(&plan, "web"), [(K::CreateVm, true)]);
    let blocked = plan.hosts[0].actions[0].blocked.as_ref().expect("blocked");
    assert!(
        blocked.reason.contains("`nixprox.bootstrap.template`") && blocked.setting.is_none(),
        "{blocked:?}"
    );
    bare.spec.bios = crate::spec::Bios::Ovmf;
    let plan = run(&[bare], &[live("web", 101)], all());
    assert_eq!(kinds(&plan, "web"), [(K::ReplaceVm, true)]);
}

#[test]
fn an_adopted_vm_gets_a_gated_reinstall_when_its_disk_layout_changes() {
    let mut vm = live("web", 101);
    config(&mut vm).metadata.as_mut().expect("metadata").adopted =
        Some(crate::metadata::Adopted { vmid: 101, plan: "p".into() });
    let plan = run(&[host("web")], std::slice::from_ref(&vm), Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::Noop, false)]);
    let mut want = host("web");
    want.system.disk_layout_hash = "sha256:new".into();
    let plan = run(&[want], &[vm], Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::Reinstall, true)]);
}

#[test]
fn two_unmanaged_vms_with_the_name_block_adoption() {
    let mut a = live("web", 150);
    a.tags.clear();
    config(&mut a).metadata = None;
    let mut b = live("web", 151);
    b.tags.clear();
    config(&mut b).metadata = None;
    let plan = run(&[host("web")], &[a, b], all());
    assert_eq!(kinds(&plan, "web"), [(K::Adopt, true)]);
    let reason = &plan.hosts[0].actions[0].blocked.as_ref().expect("blocked").reason;
    assert!(reason.contains("VMIDs 150, 151"), "{reason}");
}

#[test]
fn templates_are_never_matched_or_orphaned() {
    let mut template = live("web", 9000);
    template.template = true;
    let plan = run(&[host("web")], &[template], all());
    assert_eq!(kinds(&plan, "web"), [(K::CreateVm, false), (K::Install, false)]);
    assert_eq!(plan.hosts.len(), 1);
}

#[test]
fn settings_changes_are_in_place_updates_marked_by_effect() {
    let mut want = host("web");
    want.spec.cores = 4;
    want.spec.tags = BTreeSet::from(["prod".to_string()]);
    want.spec.networks.get_mut("net0").expect("net0").vlan = Some(20);
    let plan = run(&[want], &[live("web", 101)], Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::UpdateVm, false)]);
    let changes = &plan.hosts[0].actions[0].changes;
    let effect = |field: &str| changes.iter().find(|c| c.field == field).and_then(|c| c.effect);
    assert_eq!(effect("cores"), Some(Effect::NeedsReboot));
    assert_eq!(effect("tags"), Some(Effect::Hotplug));
    assert_eq!(effect("networks.net0.vlan"), Some(Effect::Hotplug));
    assert_eq!(changes.len(), 3);
}

#[test]
fn undeclared_mac_balloon_and_machine_are_not_compared() {
    let mut vm = live("web", 101);
    config(&mut vm).spec.balloon_mib = Some(512);
    config(&mut vm).spec.machine = Some("q35".into());
    let plan = run(&[host("web")], &[vm], Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::Noop, false)]);
}

#[test]
fn a_growing_disk_is_resized() {
    let mut want = host("web");
    want.spec.disks.get_mut("scsi0").expect("scsi0").size_bytes = 32 << 30;
    let plan = run(&[want], &[live("web", 101)], Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::ResizeDisk, false)]);
    let change = &plan.hosts[0].actions[0].changes[0];
    assert_eq!((change.before.clone(), change.after.clone()), (Some(json!("20G")), Some(json!("32G"))));
}

#[test]
fn a_shrinking_disk_is_a_blocked_replacement_unless_allowed() {
    let mut want = host("web");
    want.spec.disks.get_mut("scsi0").expect("scsi0").size_bytes = 10 << 30;
    let plan = run(&[want.clone()], &[live("web", 101)], Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::ReplaceVm, true)]);
    let blocked = plan.hosts[0].actions[0].blocked.as_ref().expect("blocked");
    assert_eq!(blocked.setting.as_deref(), Some("policies.allow_replace"));
    assert!(plan.has_destructive());
    let plan = run(&[want], &[live("web", 101)], all());
    assert_eq!(kinds(&plan, "web"), [(K::ReplaceVm, false), (K::Install, false)]);
}

#[test]
fn bios_and_node_changes_need_replacement() {
    let mut want = host("web");
    want.spec.bios = crate::spec::Bios::Ovmf;
    want.node = "pve2".into();
    let plan = run(&[want], &[live("web", 101)], Policies::default());
    let replace = &plan.hosts[0].actions[0];
    assert_eq!(replace.kind, K::ReplaceVm);
    let fields: Vec<&str> = replace.changes.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(fields, ["node", "bios"]);
}

#[test]
fn protected_vms_are_never_replaced_even_when_allowed() {
    let mut want = host("web");
    want.spec.bios = crate::spec::Bios::Ovmf;
    want.spec.protection = true;
    let mut vm = live("web", 101);
    config(&mut vm).spec.protection = true;
    let plan = run(&[want], &[vm], all());
    let blocked = plan.hosts[0].actions[0].blocked.as_ref().expect("blocked");
    assert_eq!(blocked.setting, None);
    assert!(blocked.reason.contains("protected"));
}

/// Marks the VM as created by nixprox (as VMID `vmid`) and not installed.
fn created_uninstalled(vm: &mut LiveVm, vmid: u32) {
    let metadata = config(vm).metadata.as_mut().expect("metadata");
    metadata.system = None;
    metadata.created = Some(Created { vmid, plan: "p".into(), image: None });
}

#[test]
fn a_vm_nixprox_created_and_did_not_install_gets_installed() {
    let mut vm = live("web", 101);
    created_uninstalled(&mut vm, 101);
    let plan = run(&[host("web")], &[vm], Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::Install, false)]);
}

#[test]
fn any_other_vm_without_a_system_gets_a_gated_reinstall() {
    let mut no_marker = live("web", 101);
    config(&mut no_marker).metadata.as_mut().expect("metadata").system = None;
    let mut no_block = live("web", 101);
    config(&mut no_block).metadata = None;
    let mut copied = live("web", 101);
    created_uninstalled(&mut copied, 150);
    for vm in [no_marker, no_block, copied] {
        let plan = run(&[host("web")], std::slice::from_ref(&vm), Policies::default());
        assert_eq!(kinds(&plan, "web"), [(K::Reinstall, true)], "{vm:?}");
        let blocked = plan.hosts[0].actions[0].blocked.as_ref().expect("blocked");
        assert_eq!(blocked.setting.as_deref(), Some("policies.allow_reinstall"));
        let plan = run(&[host("web")], std::slice::from_ref(&vm), all());
        assert_eq!(kinds(&plan, "web"), [(K::Reinstall, false)], "allowed: {vm:?}");
    }
}

#[test]
fn a_vm_whose_block_cannot_be_read_is_left_alone() {
    let mut vm = live("web", 101);
    config(&mut vm).metadata = None;
    config(&mut vm).unreadable_block = Some("the block is version 2".into());
    config(&mut vm).spec.cores = 8;
    let plan = run(&[host("web")], std::slice::from_ref(&vm), all());
    assert_eq!(kinds(&plan, "web"), [(K::UpdateVm, true)]);
    let blocked = plan.hosts[0].actions[0].blocked.as_ref().expect("blocked");
    assert_eq!(blocked.setting, None);
    assert!(blocked.reason.contains("VM 101") && blocked.reason.contains("version 2"), "{}", blocked.reason);
    // The same VM as an orphan is never destroyed, even with pruning on.
    let plan = run(&[], &[vm], all());
    assert_eq!(kinds(&plan, "web"), [(K::DestroyVm, true)]);
    assert_eq!(plan.hosts[0].actions[0].blocked.as_ref().expect("blocked").setting, None);
}

#[test]
fn a_changed_toplevel_is_switched_unless_strategy_none() {
    let mut vm = live("web", 101);
    config(&mut vm).metadata.as_mut().expect("metadata").system = Some("/nix/store/old".into());
    let plan = run(&[host("web")], std::slice::from_ref(&vm), Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::Switch, false)]);
    let mut want = host("web");
    want.deploy.strategy = DeployStrategy::None;
    let plan = run(&[want], &[vm], Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::Noop, false)]);
}

#[test]
fn a_changed_disk_layout_is_a_gated_reinstall_without_switch() {
    let mut vm = live("web", 101);
    let metadata = config(&mut vm).metadata.as_mut().expect("metadata");
    metadata.disk_layout = Some("sha256:old".into());
    metadata.system = Some("/nix/store/old".into());
    let plan = run(&[host("web")], std::slice::from_ref(&vm), Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::Reinstall, true)]);
    assert_eq!(
        plan.hosts[0].actions[0].blocked.as_ref().and_then(|b| b.setting.as_deref()),
        Some("policies.allow_reinstall")
    );
    let plan = run(&[host("web")], &[vm], all());
    assert_eq!(kinds(&plan, "web"), [(K::Reinstall, false)]);
}

#[test]
fn orphans_are_reported_destroyed_only_when_pruning_and_never_when_protected() {
    let orphan = live("old", 120);
    let mut protected = live("keep", 121);
    config(&mut protected).spec.protection = true;
    let vms = [orphan, protected];
    let plan = run(&[], &vms, Policies::default());
    assert_eq!(kinds(&plan, "old"), [(K::DestroyVm, true)]);
    assert_eq!(plan.summary.orphans, 2);
    assert_eq!(plan.summary.count(K::DestroyVm), 0);
    let plan = run(&[], &vms, all());
    assert_eq!(kinds(&plan, "old"), [(K::DestroyVm, false)]);
    assert_eq!(kinds(&plan, "keep"), [(K::DestroyVm, true)]);
    assert_eq!(plan.summary.count(K::DestroyVm), 1);
    assert_eq!(plan.summary.blocked, 1);
}

#[test]
fn unmanaged_vms_are_left_alone() {
    let mut other = live("grafana", 130);
    other.tags.clear();
    let plan = run(&[], &[other], all());
    assert!(plan.hosts.is_empty());
}

#[test]
fn declared_vmid_taken_by_another_vm_blocks_the_create() {
    let mut want = host("web");
    want.vmid = Some(130);
    let mut other = live("grafana", 130);
    other.tags.clear();
    let plan = run(&[want], &[other], all());
    assert_eq!(kinds(&plan, "web"), [(K::CreateVm, true)]);
}

#[test]
fn renamed_vm_is_found_by_its_recorded_host() {
    let mut want = host("web");
    want.spec.name = "web-new".into();
    let plan = run(&[want], &[live("web", 101)], Policies::default());
    let changes = &plan.hosts[0].actions[0].changes;
    assert_eq!(kinds(&plan, "web"), [(K::UpdateVm, false)]);
    assert_eq!(changes[0].field, "name");
}

#[test]
fn plan_id_ignores_volatile_data_and_order_but_not_meaning() {
    let desired = [host("a"), host("b")];
    let mut vms = vec![live("a", 101), live("b", 102)];
    let first = run(&desired, &vms, Policies::default()).plan_id;
    vms.reverse();
    vms[0].status = "stopped".into();
    config(&mut vms[0]).digest = "other".into();
    let reversed_desired = [host("b"), host("a")];
    assert_eq!(run(&reversed_desired, &vms, Policies::default()).plan_id, first);
    let mut changed = host("a");
    changed.spec.cores = 8;
    assert_ne!(run(&[changed, host("b")], &vms, Policies::default()).plan_id, first);
    assert_ne!(run(&desired, &vms, all()).plan_id, first);
}

#[test]
fn host_filter_restricts_the_plan() {
    let only = BTreeSet::from(["b".to_string()]);
    let plan = plan(PlanInput {
        desired: &[host("a"), host("b")],
        live: &[],
        policies: all(),
        only: Some(&only),
        probes: None,
    });
    assert_eq!(plan.hosts.len(), 1);
    assert_eq!(plan.hosts[0].host, "b");
}

#[test]
fn an_untagged_vm_whose_notes_name_the_host_is_resumed_not_adopted() {
    let mut vm = live("web", 101);
    vm.tags.clear();
    created_uninstalled(&mut vm, 101);
    let plan = run(&[host("web")], &[vm], Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::UpdateVm, false), (K::Install, false)]);
    assert_eq!(plan.hosts[0].actions[0].changes[0].field, "managed");
}

#[test]
fn probe_finds_a_system_changed_outside_nixprox_and_switches_back() {
    let running = Probe::Running { system: "/nix/store/hand-made".into() };
    let probes = std::collections::BTreeMap::from([("web".to_string(), running)]);
    let plan = probed(&[host("web")], &[live("web", 101)], &probes);
    assert_eq!(kinds(&plan, "web"), [(K::Switch, false)]);
    let switch = &plan.hosts[0].actions[0];
    assert!(switch.reason.contains("changed outside nixprox"), "{}", switch.reason);
    assert_eq!(switch.changes[0].before, Some(json!("/nix/store/hand-made")));
    let drift = plan.hosts[0].drift.as_ref().expect("drift");
    assert_eq!(drift.running, "/nix/store/hand-made");
    let report = plan.probe.as_ref().expect("probe report");
    assert_eq!((report.probed, report.changed.clone()), (1, vec!["web".to_string()]));
}

#[test]
fn probe_of_a_host_in_sync_and_an_unreachable_host_changes_nothing() {
    let probes = std::collections::BTreeMap::from([
        ("a".to_string(), Probe::Running { system: host("a").system.toplevel }),
        ("b".to_string(), Probe::Unreachable { reason: "connection refused".into() }),
    ]);
    let plan = probed(&[host("a"), host("b")], &[live("a", 101), live("b", 102)], &probes);
    assert!(!plan.has_changes());
    let report = plan.probe.as_ref().expect("probe report");
    assert_eq!(report.probed, 2);
    assert!(report.changed.is_empty());
    assert_eq!(report.unreachable[0].host, "b");
}

#[test]
fn nixos_changes_never_enter_the_plan_id() {
    use crate::nixos_changes::NixosChanges;
    let desired = [host("web")];
    let mut changed = run(&desired, &[], Policies::default());
    let id = changed.plan_id.clone();
    changed.hosts[0].nixos_changes = Some(NixosChanges::NewHost);
    assert_eq!(super::id::plan_id(&changed.hosts, &desired, Policies::default()), id);
}

/// A VM whose memory change waits for a reboot (applied with `deploy.allowReboot` off): the
/// config it will start with matches the flake, so nothing is planned, but the plan keeps the
/// change in view as a state with how to make it take effect; the plan id does not depend on it.
fn waiting_for_a_reboot(name: &str, vmid: u32) -> LiveVm {
    let mut vm = live(name, vmid);
    let mut old = config(&mut vm).spec.clone();
    old.memory_mib = 2048;
    config(&mut vm).spec.memory_mib = 4096;
    config(&mut vm).running = Some(old);
    config(&mut vm).pending = BTreeSet::from(["memory".to_string()]);
    vm
}

#[test]
fn a_change_waiting_for_a_reboot_stays_in_view_as_a_state_not_an_action() {
    let mut web = host("web");
    web.spec.memory_mib = 4096;
    let plan = run(&[web.clone()], &[waiting_for_a_reboot("web", 101)], Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::Noop, false)], "nothing to write again");
    assert!(!plan.has_changes());
    assert!(plan.has_pending());
    assert_eq!(plan.summary.pending_reboot, 1);
    let pending = plan.hosts[0].pending_reboot.as_ref().expect("pending");
    assert_eq!(pending.keys, ["memory"]);
    assert_eq!(pending.changes.len(), 1, "{pending:?}");
    assert_eq!(pending.changes[0].field, "memory");
    assert_eq!(
        (pending.changes[0].before.clone(), pending.changes[0].after.clone()),
        (Some(json!(2048)), Some(json!(4096)))
    );
    assert_eq!(
        pending.how,
        "the VM still runs the old values: reboot VM 101 to make them take effect (Reboot in the Proxmox UI, or `qm reboot 101` on node `pve1`), or set `nixprox.deploy.allowReboot = true` for host `web` so that apply reboots it whenever it changes the VM"
    );

    // The same plan once the VM rebooted: same id (a reboot between review and merge must not
    // refuse the reviewed plan), nothing pending any more.
    let mut rebooted = live("web", 101);
    config(&mut rebooted).spec.memory_mib = 4096;
    let after = run(&[web], &[rebooted], Policies::default());
    assert_eq!(after.hosts[0].pending_reboot, None);
    assert_eq!(after.plan_id, plan.plan_id);
}

#[test]
fn with_allow_reboot_and_an_update_the_apply_of_the_plan_reboots_into_what_is_pending() {
    let mut web = host("web");
    web.spec.memory_mib = 4096;
    web.spec.cores = 4;
    web.deploy.allow_reboot = true;
    let plan = run(&[web.clone()], &[waiting_for_a_reboot("web", 101)], Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::UpdateVm, false)], "only the new change is written");
    let update = &plan.hosts[0].actions[0];
    assert!(update.changes.iter().all(|c| c.field != "memory"), "{update:?}");
    let pending = plan.hosts[0].pending_reboot.as_ref().expect("pending");
    assert!(pending.how.starts_with("the apply of this plan reboots VM 101"), "{}", pending.how);

    // Nothing else to do: the operator reboots it (nixprox reboots only when it changes the VM).
    web.spec.cores = 2;
    let plan = run(&[web], &[waiting_for_a_reboot("web", 101)], Policies::default());
    let pending = plan.hosts[0].pending_reboot.as_ref().expect("pending");
    assert!(
        pending.how.ends_with("nixprox reboots it itself only when an apply changes the VM"),
        "{}",
        pending.how
    );
}

fn with_os(mut vm: LiveVm, os: crate::proxmox::guest::GuestOs) -> LiveVm {
    config(&mut vm).guest_os = Some(os);
    vm
}

fn debian() -> crate::proxmox::guest::GuestOs {
    crate::proxmox::guest::GuestOs::Read { id: "debian".into(), pretty_name: "Debian GNU/Linux 12".into() }
}

#[test]
fn a_vm_whose_agent_reports_another_os_is_converted_never_switched() {
    let vm = with_os(unmanaged(150), debian());
    // Nothing allows the reinstall: both blocked, with the host's own option named.
    let plan = run(&[host("web")], std::slice::from_ref(&vm), Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::Adopt, true), (K::Reinstall, true)]);
    let reinstall = &plan.hosts[0].actions[1];
    assert_eq!(
        reinstall.blocked.as_ref().and_then(|b| b.setting.as_deref()),
        Some("nixprox.allow.reinstall")
    );
    let adopt = &plan.hosts[0].actions[0];
    assert_eq!(adopt.changes[1].field, "os");
    assert_eq!(
        (adopt.changes[1].before.clone(), adopt.changes[1].after.clone()),
        (Some(json!("debian")), Some(json!("nixos")))
    );
    assert!(plan.has_destructive());
    // The host's opt-in opens it, and says so; the global policy does too, silently.
    let mut allowed = host("web");
    allowed.allow.reinstall = true;
    let plan = run(&[allowed], std::slice::from_ref(&vm), Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::Adopt, false), (K::Reinstall, false)]);
    assert!(
        plan.hosts[0].actions[1]
            .reason
            .ends_with("(allowed for this host alone by `nixprox.allow.reinstall = true`)")
    );
    let plan = run(&[host("web")], std::slice::from_ref(&vm), all());
    assert_eq!(kinds(&plan, "web"), [(K::Adopt, false), (K::Reinstall, false)]);
    assert!(!plan.hosts[0].actions[1].reason.contains("for this host alone"));
    // Another host's opt-in opens nothing here.
    let mut other = host("db");
    other.allow.reinstall = true;
    let plan = run(&[host("web"), other], std::slice::from_ref(&vm), Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::Adopt, true), (K::Reinstall, true)]);
    // No layout to install with, or a protected VM: blocked whatever allows it, no setting.
    let mut no_disko = host("web");
    no_disko.system.disk_layout_hash = crate::flake::host::NO_DISK_LAYOUT.into();
    let plan = run(&[no_disko], std::slice::from_ref(&vm), all());
    let blocked = plan.hosts[0].actions[1].blocked.clone().expect("blocked");
    assert!(
        blocked.reason.contains("declares no `disko.devices`") && blocked.setting.is_none(),
        "{blocked:?}"
    );
    // The new system's key declared without its private half: the install could not put it
    // in place, so nothing starts.
    let mut declared = host("web");
    declared.ssh.host_key = Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAInew".into());
    let plan = run(&[declared], std::slice::from_ref(&vm), all());
    let blocked = plan.hosts[0].actions[1].blocked.clone().expect("blocked");
    assert!(blocked.reason.contains("`nixprox.install.hostKeyFile`"), "{blocked:?}");
    let mut protected = vm.clone();
    config(&mut protected).spec.protection = true;
    let plan = run(&[host("web")], &[protected], all());
    assert_eq!(kinds(&plan, "web"), [(K::Adopt, true), (K::Reinstall, true)]);
}

#[test]
fn nixos_and_an_unread_os_plan_the_same_adoption_and_plan_id() {
    use crate::proxmox::guest::GuestOs;
    let nixos =
        with_os(unmanaged(150), GuestOs::Read { id: "nixos".into(), pretty_name: "NixOS 24.11".into() });
    let unknown = with_os(unmanaged(150), GuestOs::Unknown { reason: "403".into() });
    let a = run(&[host("web")], &[nixos], Policies::default());
    let b = run(&[host("web")], &[unknown], Policies::default());
    let c = run(&[host("web")], &[unmanaged(150)], Policies::default());
    assert_eq!(kinds(&a, "web"), [(K::Adopt, false), (K::Switch, false)]);
    assert_eq!((a.plan_id.clone(), b.plan_id.clone()), (c.plan_id.clone(), c.plan_id.clone()));
    // Debian 12 or 13: the same plan id (only the os-release ID enters it).
    let twelve = run(&[host("web")], &[with_os(unmanaged(150), debian())], Policies::default());
    let thirteen = GuestOs::Read { id: "debian".into(), pretty_name: "Debian GNU/Linux 13".into() };
    let thirteen = run(&[host("web")], &[with_os(unmanaged(150), thirteen)], Policies::default());
    assert_eq!(twelve.plan_id, thirteen.plan_id);
    assert_ne!(twelve.plan_id, c.plan_id);
}

#[test]
fn a_host_without_disko_never_reinstalls_for_its_layout_until_it_declares_one() {
    let mut vm = live("web", 101);
    config(&mut vm).metadata.as_mut().expect("block").disk_layout =
        Some(crate::metadata::LAYOUT_NOT_MANAGED.into());
    let mut no_disko = host("web");
    no_disko.system.disk_layout_hash = crate::flake::host::NO_DISK_LAYOUT.into();
    let plan = run(std::slice::from_ref(&no_disko), std::slice::from_ref(&vm), all());
    assert_eq!(kinds(&plan, "web"), [(K::Noop, false)]);
    // A layout recorded earlier, and the host drops disko: still never a reinstall.
    let plan = run(&[no_disko], &[live("web", 101)], all());
    assert_eq!(kinds(&plan, "web"), [(K::Noop, false)]);
    // Declared now: a gated reinstall that says the disks were not nixprox's.
    let plan = run(&[host("web")], &[vm], Policies::default());
    assert_eq!(kinds(&plan, "web"), [(K::Reinstall, true)]);
    assert!(plan.hosts[0].actions[0].reason.contains("layout not managed"));
}

#[test]
fn per_host_opt_ins_open_replace_and_detach_for_that_host_alone() {
    let mut vm = live("web", 101);
    config(&mut vm).spec.bios = crate::spec::Bios::Ovmf;
    let mut allowed = host("web");
    allowed.allow.replace = true;
    allowed.bootstrap = crate::flake::host::Bootstrap::Iso { iso: "local:iso/nixos.iso".into() };
    let plan = run(&[allowed], &[vm], Policies::default());
    let replace = plan.hosts[0].actions.iter().find(|a| a.kind == K::ReplaceVm).expect("replace");
    assert!(replace.blocked.is_none(), "{replace:?}");
    assert!(replace.reason.ends_with("(allowed for this host alone by `nixprox.allow.replace = true`)"));
}
