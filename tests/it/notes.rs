//! The owner's notes survive every write nixprox makes, byte for byte, through the binary
//! against fakepve: adopt, update and finish (install and switch in `deploy.rs`).

use serde_json::Value;

use crate::support::cli::{homelab_with, kinds, plan_and_apply, plan_hosts};
use crate::support::fakepve::FakePve;
use nixprox::metadata::Notes;

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
fn the_owners_notes_survive_adopt_update_and_finish_exactly() {
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
        let run = plan_and_apply(&fixture, &pve, "dns");
        assert_eq!(run.code, 0, "adopt failed:\n{}\n{}", run.stdout, run.stderr);
        assert_kept(&pve, &owner, "after adopt and finish");

        // An update (another core) rewrites the config and the block, never the owner's text.
        let flake = fixture.dir.path().join("flake.nix");
        let text = std::fs::read_to_string(&flake).expect("flake.nix");
        assert_eq!(text.matches("cores = 1;").count(), 1, "dns is the only host with one core");
        std::fs::write(&flake, text.replace("cores = 1;", "cores = 2;")).expect("write flake.nix");
        let plan = plan_hosts(&fixture, &pve, "dns");
        assert_eq!(kinds(&plan, "dns"), ["update_vm", "reinstall"], "{plan:#}");
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
