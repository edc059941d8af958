//! No disk is wiped without a gate, through the binary against the example homelab in
//! fakepve: a VM without a recorded system gets an ungated `install` only when nixprox created
//! it; anything else (tagged by hand, adopted, a block from an earlier release) gets a gated
//! `reinstall`, and a block nixprox cannot read leaves the VM untouched.

use serde_json::{Value, json};

use crate::support::cli::{
    actions, homelab_with, kinds, nixprox_in as nixprox, plan_and_apply, plan_hosts as plan,
};

/// `dns` (VM 110) edited into the case a test covers.
fn edit_dns(guest: &mut Value, config: Value) {
    if guest["vmid"] == 110 {
        for (key, value) in config.as_object().expect("an object") {
            guest["config"][key] = value.clone();
        }
    }
}

fn assert_gated_reinstall(plan: &Value, host: &str, reason: &str) {
    let actions = actions(plan, host);
    let reinstall = actions.iter().find(|a| a["kind"] == "reinstall").unwrap_or_else(|| {
        panic!("no reinstall for `{host}`: {actions:#?}");
    });
    assert!(!actions.iter().any(|a| a["kind"] == "install"), "an ungated install: {actions:#?}");
    assert_eq!(reinstall["blocked"]["setting"], "policies.allow_reinstall", "{reinstall:#}");
    let text = reinstall["reason"].as_str().expect("reason");
    assert!(text.contains(reason), "reason `{text}` should say `{reason}`");
}

#[test]
fn a_vm_tagged_by_hand_without_a_block_is_never_installed_ungated() {
    let (fixture, pve) = homelab_with(|g| edit_dns(g, json!({"tags": "nixprox"})));
    let plan = plan(&fixture, &pve, "dns");
    assert_gated_reinstall(&plan, "dns", "no metadata block");
    // The Markdown plan shows it as destructive: the banner.
    let run = nixprox(&fixture, &pve, &["plan", "--format", "markdown", "--hosts", "dns"]);
    assert!(run.stdout.contains("**Destructive changes:** 0 will run on merge, 1 blocked"), "{}", run.stdout);
}

#[test]
fn an_adoption_never_becomes_an_ungated_install() {
    let (fixture, pve) = homelab_with(|_| {});
    let first = plan(&fixture, &pve, "dns");
    assert_eq!(kinds(&first, "dns"), ["adopt", "switch"], "{first:#}");
    // Without an SSH key the adoption cannot read what the VM runs: nothing is written.
    let before = pve.vm(110);
    let run = plan_and_apply(&fixture, &pve, "dns");
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(pve.vm(110)["config"], before["config"], "untouched");
    let second = plan(&fixture, &pve, "dns");
    assert_eq!(kinds(&second, "dns"), ["adopt", "switch"], "{second:#}");
    // What an earlier release's adoption left (tagged, a block without a system) stays gated,
    // and the reason says how to adopt it in place instead.
    let (fixture, pve) = homelab_with(|g| {
        edit_dns(g, json!({"tags": "nixprox", "description": r#"<!-- nixprox:v1 {"host":"dns"} -->"#}))
    });
    let plan = plan(&fixture, &pve, "dns");
    assert_gated_reinstall(&plan, "dns", "nixprox did not create");
    assert_gated_reinstall(&plan, "dns", "`nixprox forget dns` lets the next plan adopt it in place");
}

#[test]
fn a_protected_vm_without_a_system_is_never_reinstalled() {
    let (fixture, pve) = homelab_with(|g| edit_dns(g, json!({"tags": "nixprox", "protection": 1})));
    let plan = plan(&fixture, &pve, "dns");
    let reinstall = actions(&plan, "dns").into_iter().find(|a| a["kind"] == "reinstall").expect("reinstall");
    assert_eq!(reinstall["blocked"]["setting"], Value::Null, "{reinstall:#}");
    assert!(reinstall["blocked"]["reason"].as_str().expect("reason").contains("protected"), "{reinstall:#}");
}

#[test]
fn an_unfinished_install_of_an_earlier_release_is_gated_with_how_to_allow_it() {
    // The previous release wrote `applying` at the clone and nothing that says it created the VM.
    let block = r#"<!-- nixprox:v1 {"host":"dns","applying":"0123456789abcdef"} -->"#;
    let (fixture, pve) = homelab_with(|g| edit_dns(g, json!({"tags": "nixprox", "description": block})));
    let plan = plan(&fixture, &pve, "dns");
    assert_gated_reinstall(&plan, "dns", "earlier nixprox");
    let reason =
        actions(&plan, "dns").into_iter().find(|a| a["kind"] == "reinstall").expect("reinstall")["reason"]
            .clone();
    assert!(reason.as_str().expect("text").contains("policies.allow_reinstall"), "{reason}");
}

#[test]
fn a_block_copied_to_another_vmid_is_not_trusted() {
    // A clone made in the Proxmox UI copies the notes, `created` marker included.
    let block = r#"<!-- nixprox:v1 {"host":"dns","applying":"0123456789abcdef","created":{"vmid":199,"plan":"0123456789abcdef"}} -->"#;
    let (fixture, pve) = homelab_with(|g| edit_dns(g, json!({"tags": "nixprox", "description": block})));
    assert_gated_reinstall(&plan(&fixture, &pve, "dns"), "dns", "VM 199");
}

#[test]
fn a_vm_nixprox_created_gets_its_install_without_a_gate() {
    let block = r#"<!-- nixprox:v1 {"host":"dns","applying":"0123456789abcdef","created":{"vmid":110,"plan":"0123456789abcdef"}} -->"#;
    let (fixture, pve) = homelab_with(|g| edit_dns(g, json!({"tags": "nixprox", "description": block})));
    let plan = plan(&fixture, &pve, "dns");
    assert_eq!(kinds(&plan, "dns"), ["install"], "{plan:#}");
    assert_eq!(actions(&plan, "dns")[0]["blocked"], Value::Null);
}

#[test]
fn unreadable_blocks_leave_the_vm_untouched_and_say_how_to_fix_it() {
    for (block, says) in [
        (
            r#"<!-- nixprox:v2 {"host":"dns","system":"/nix/store/x"} -->"#,
            "upgrade nixprox to one that reads v2",
        ),
        (r#"<!-- nixprox:v1 {"host":"dns",} -->"#, "repair or remove the block"),
        ("<!-- nixprox:v1 -->", "no payload"),
    ] {
        let notes = format!("Pi-hole.\n{block}");
        let (fixture, pve) =
            homelab_with(|g| edit_dns(g, json!({"tags": "nixprox", "description": notes, "cores": 4})));
        let plan = plan(&fixture, &pve, "dns");
        let actions = actions(&plan, "dns");
        assert_eq!(actions.len(), 1, "{actions:#?}");
        assert!(actions[0]["blocked"].is_object(), "{actions:#?}");
        assert_eq!(actions[0]["blocked"]["setting"], Value::Null, "nothing can allow it: {actions:#?}");
        let reason = actions[0]["blocked"]["reason"].as_str().expect("reason");
        assert!(reason.contains("VM 110") && reason.contains(says), "{reason}");
        // Apply leaves it exactly as it is.
        let before = pve.vm(110);
        let run = plan_and_apply(&fixture, &pve, "dns");
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        assert_eq!(pve.vm(110)["config"], before["config"]);
    }
}

#[test]
fn an_orphan_whose_block_cannot_be_read_is_never_pruned() {
    // old-wiki (150) is an orphan that prune_orphans destroys; with a block from a newer
    // release nixprox cannot know what it is, and says so.
    let (fixture, pve) = homelab_with(|g| {
        if g["vmid"] == 150 {
            g["config"]["description"] = json!(r#"<!-- nixprox:v2 {"host":"wiki"} -->"#);
        }
    });
    let plan = plan(&fixture, &pve, "old-wiki");
    let actions = actions(&plan, "old-wiki");
    assert_eq!(actions.len(), 1, "{actions:#?}");
    assert_eq!(actions[0]["kind"], "destroy_vm");
    assert_eq!(actions[0]["blocked"]["setting"], Value::Null, "{actions:#?}");
    let reason = actions[0]["blocked"]["reason"].as_str().expect("reason");
    assert!(reason.contains("cannot be read") && reason.contains("v2"), "{reason}");
    let run = plan_and_apply(&fixture, &pve, "old-wiki");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(pve.vm(150)["name"], "old-wiki", "still there");
}
