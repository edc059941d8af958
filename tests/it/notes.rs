//! The owner's notes survive every write nixprox makes, byte for byte, through the binary
//! against fakepve: update and finish of a VM adopted in place (the adoption itself, install
//! and switch are in `adopt.rs` and `deploy.rs`, which need the SSH test host).

use serde_json::Value;

use crate::support::cli::{actions, homelab_with, kinds, plan_and_apply, plan_hosts};
use crate::support::fakepve::FakePve;
use nixprox::metadata::{Adopted, Metadata, Notes};

const OWNER: &str = "Owner: alice. Backups nightly; do not delete.\n";

fn notes_of(pve: &FakePve, vmid: u32) -> String {
    pve.vm(vmid)["config"]["description"].as_str().unwrap_or_default().to_string()
}

fn assert_kept(pve: &FakePve, owner: &str, when: &str) {
    let notes = Notes::parse(&notes_of(pve, 110));
    assert_eq!(notes.user_text, owner, "{when}: the owner's notes changed");
    let metadata = notes.metadata().unwrap_or_else(|| panic!("{when}: no block in {notes:?}"));
    assert_eq!(metadata.host, "dns");
}

#[test]
fn the_owners_notes_survive_update_and_finish_exactly() {
    for owner in [
        OWNER.to_string(),
        format!("{OWNER}\n\n\n"),
        "Owner: alice.\r\nBackups nightly; do not delete.\r\n\r\n".to_string(),
    ] {
        let (fixture, pve) = homelab_with(|g| {
            if g["vmid"] == 110 {
                g["config"]["description"] = Value::String(owner.clone());
            }
        });
        // `dns` declares no description: the plan never shows a notes change.
        let plan = plan_hosts(&fixture, &pve, "dns");
        assert!(!plan.to_string().contains("\"description\""), "{plan:#}");
        // dns as an adoption in place leaves it: tagged, running the flake's system.
        let switch = actions(&plan, "dns").into_iter().find(|a| a["kind"] == "switch").expect("switch");
        let metadata = Metadata {
            host: "dns".into(),
            system: switch["changes"][0]["after"].as_str().map(str::to_string),
            host_key: Some(
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIdnsxxxxxxxxxxxxxxxxxxxxxxxxxxxxx root@dns".into(),
            ),
            adopted: Some(Adopted { vmid: 110, plan: "0123456789abcdef".into() }),
            ..Metadata::default()
        };
        let notes = Notes::render(&owner, &metadata);
        pve.command(serde_json::json!({"cmd": "set_config", "vmid": 110, "config": {"tags": "nixprox", "description": notes}}));
        assert_eq!(kinds(&plan_hosts(&fixture, &pve, "dns"), "dns"), ["noop"]);

        // An update (another core) rewrites the config and the block, never the owner's text.
        let flake = fixture.dir.path().join("flake.nix");
        let text = std::fs::read_to_string(&flake).expect("flake.nix");
        assert_eq!(text.matches("cores = 1;").count(), 1, "dns is the only host with one core");
        std::fs::write(&flake, text.replace("cores = 1;", "cores = 2;")).expect("write flake.nix");
        let plan = plan_hosts(&fixture, &pve, "dns");
        assert_eq!(kinds(&plan, "dns"), ["update_vm"], "{plan:#}");
        let run = plan_and_apply(&fixture, &pve, "dns");
        assert_eq!(run.code, 0, "update failed:\n{}\n{}", run.stdout, run.stderr);
        let vm = pve.vm(110);
        assert_eq!(vm["pending"]["cores"].to_string().trim_matches('"'), "2", "the update ran: {vm:#}");
        assert_kept(&pve, &owner, "after update and finish");
        // And the next plan still sees nothing to change in the notes.
        let plan = plan_hosts(&fixture, &pve, "dns");
        assert!(!plan.to_string().contains("\"description\""), "{plan:#}");
    }
}

#[test]
fn a_declared_description_replaces_the_notes_only_when_it_differs() {
    let (fixture, pve) = homelab_with(|g| {
        if g["vmid"] == 101 {
            // web declares "Reverse proxy for the lab."; the same text with a trailing newline
            // and in CRLF-free form is no difference.
            let notes = g["config"]["description"].as_str().expect("notes").replacen(
                "Reverse proxy for the lab.",
                "Reverse proxy for the lab.\n",
                1,
            );
            g["config"]["description"] = Value::String(notes);
        }
    });
    let plan = plan_hosts(&fixture, &pve, "web");
    assert_eq!(kinds(&plan, "web"), ["noop"], "{plan:#}");
}
