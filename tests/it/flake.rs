//! Integration tests of the flake inventory against the real `nix` binary.

use std::collections::BTreeMap;

use nixprox::config::Settings;
use nixprox::flake::host::{Bootstrap, TemplateRef};
use nixprox::flake::{EvalRequest, FlakeError, HostDecl, Hosts, Inventory, evaluate, resolve_all};
use nixprox::metadata::Notes;
use sha2::{Digest, Sha256};

use crate::support::fleet::Fleet;
use crate::support::nix::{Fixture, nix, override_inputs, repo};

async fn eval(request: &EvalRequest) -> Inventory {
    match evaluate(request).await {
        Ok(inventory) => inventory,
        Err(err) => panic!("evaluation of `{}` failed: {err}", request.flake),
    }
}

async fn eval_err(request: &EvalRequest) -> FlakeError {
    match evaluate(request).await {
        Ok(inventory) => panic!("evaluation of `{}` succeeded: {inventory:?}", request.flake),
        Err(err) => err,
    }
}

fn sha256(text: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

#[tokio::test]
async fn homelab_inventory_has_every_managed_host_as_declared() {
    let fixture = Fixture::copy("homelab");
    let inventory = eval(&fixture.request()).await;

    assert!(inventory.nix_version.major >= 2, "{:?}", inventory.nix_version);
    assert_eq!(inventory.skipped, ["laptop", "router"]);
    let attrs: Vec<&str> = inventory.hosts.iter().map(|h| h.attr.as_str()).collect();
    assert_eq!(
        attrs,
        ["cache", "ci", "db", "dns", "forge", "matrix", "media", "monitor", "nas", "vault", "web"]
    );
    let host = |attr: &str| -> &HostDecl {
        &inventory.hosts.iter().find(|h| h.attr == attr).expect("host in inventory").decl
    };

    // One host in full: exactly what the module's options and the flake say.
    let expected: HostDecl = serde_json::from_value(serde_json::json!({
        "address": "127.0.0.11",
        "bootstrap": {"ipConfig": "ip=dhcp", "iso": null, "template": null, "user": "root",
                      "sshKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDnixproxExampleKeyOnlyForTheFixture ops@homelab"]},
        "deploy": {"allowFailedUnits": false, "allowReboot": false, "confirmTimeout": 60, "rollback": true, "strategy": "switch"},
        "install": {"buildOn": "auto", "diskEncryptionKeys": {}, "extraFiles": null, "hostKeyFile": null, "kexecImage": null},
        "ssh": {"port": 22, "user": "root"},
        "vm": {
            "agent": true, "balloon": null, "bios": "seabios", "cores": 2, "cpuType": "x86-64-v2-AES",
            "description": "Reverse proxy for the lab.", "id": 101, "machine": null, "memory": 2048, "name": "web",
            "disks": {"scsi0": {"discard": false, "iothread": false, "serial": null, "size": "20G", "ssd": false, "storage": null}},
            "networks": {"net0": {"bridge": null, "firewall": false, "macAddress": null, "model": "virtio", "vlan": null}},
            "node": null, "onBoot": true, "pool": null, "protection": false, "sockets": 1, "tags": ["web"]
        }
    }))
    .expect("expected decl");
    assert_eq!(host("web"), &expected);

    // VM names: explicit hostName wins over the attribute name; none set → attribute name.
    assert_eq!(host("forge").vm.name, "git");
    assert_eq!(host("monitor").vm.name, "monitor");
    assert_eq!((host("db").vm.cores, host("db").vm.memory), (4, 8192));
    assert_eq!(host("db").vm.tags, ["db", "prod"]);
    assert_eq!(host("forge").vm.disks["scsi0"].size, "64G");
    assert_eq!(host("nas").vm.disks["scsi1"].serial.as_deref(), Some("data"));
    assert_eq!(host("vault").vm.bios, nixprox::spec::Bios::Ovmf);
    assert_eq!(host("dns").vm.networks["net0"].vlan, Some(20));
    assert_eq!(host("dns").vm.networks["net0"].mac_address.as_deref(), Some("bc:24:11:00:00:18"));
    assert_eq!(host("media").bootstrap.iso.as_deref(), Some("local:iso/nixos-minimal.iso"));
    assert_eq!(host("media").ssh.port, 2222);
    assert_eq!(host("media").vm.disks["virtio0"].size, "100");
    assert_eq!(host("cache").deploy.confirm_timeout, 120);
    for h in &inventory.hosts {
        let address = h.decl.address.as_deref().expect("every homelab host has an address");
        assert!(address.starts_with("127.0.0."), "{}: {address}", h.attr);
    }

    // Systems: one distinct store path per host; only `nas` has a disk layout.
    let mut toplevels: Vec<&str> = inventory.hosts.iter().map(|h| h.system.toplevel.as_str()).collect();
    for (h, toplevel) in inventory.hosts.iter().zip(&toplevels) {
        assert!(toplevel.starts_with("/nix/store/"), "{toplevel}");
        let suffix = if h.attr == "monitor" { "nixos".to_string() } else { h.decl.vm.name.clone() };
        assert!(toplevel.ends_with(&format!("-nixos-system-{suffix}")), "{}: {toplevel}", h.attr);
        let layout = &h.system.disk_layout_hash;
        if h.attr == "nas" || h.attr == "ci" {
            assert_ne!(layout, &sha256("null"));
            assert!(layout.starts_with("sha256:") && layout.len() == 71, "{layout}");
        } else {
            assert_eq!(layout, &sha256("null"), "{}", h.attr);
        }
    }
    toplevels.sort();
    toplevels.dedup();
    assert_eq!(toplevels.len(), inventory.hosts.len());

    // And the example's settings resolve every host.
    let settings =
        Settings::load(&repo().join("fixtures/homelab/nixprox.yaml"), true).expect("homelab nixprox.yaml");
    let desired = resolve_all(&inventory.hosts, &settings.defaults).expect("homelab resolves");
    let media = desired.iter().find(|d| d.host == "media").expect("media");
    assert_eq!(media.bootstrap, Bootstrap::Iso { iso: "local:iso/nixos-minimal.iso".into() });
    assert_eq!(media.spec.disks["virtio0"].size_bytes, 100 << 30);
    let matrix = desired.iter().find(|d| d.host == "matrix").expect("matrix");
    assert!(
        matches!(&matrix.bootstrap, Bootstrap::Template { template: TemplateRef::Name(t), .. } if t == "nixos-bootstrap")
    );
    assert_eq!(matrix.node, "pve1");
    // ci boots from disko's images: the package, its image's declared size, the default storage.
    let ci = desired.iter().find(|d| d.host == "ci").expect("ci");
    let Bootstrap::Image(image) = &ci.bootstrap else { panic!("ci is an image host: {:?}", ci.bootstrap) };
    assert_eq!(image.storage, "images");
    assert!(image.package.out_path.ends_with("-ci-disko-images"), "{}", image.package.out_path);
    assert_eq!(image.package.image_sizes, BTreeMap::from([("scsi0".to_string(), "8G".to_string())]));
    assert_eq!(
        desired.iter().find(|d| d.host == "dns").expect("dns").spec.networks["net0"].mac.as_deref(),
        Some("BC:24:11:00:00:18")
    );
}

/// Hosts whose recorded system (and disk layout) must equal the evaluated one in cluster.json;
/// `cache` must differ in system (switch), `nas` in disk layout (reinstall).
const IN_SYNC: [&str; 5] = ["web", "db", "forge", "nas", "vault"];

/// cluster.json embeds evaluated store paths. When the fixture lib, the module or a homelab host
/// changes, they go stale: this test says so, and `NIXPROX_UPDATE_FIXTURES=1` rewrites them.
#[tokio::test]
async fn homelab_cluster_json_matches_the_evaluated_flake() {
    let fixture = Fixture::copy("homelab");
    let inventory = eval(&fixture.request()).await;
    let systems: BTreeMap<&str, _> = inventory.hosts.iter().map(|h| (h.attr.as_str(), &h.system)).collect();
    let path = repo().join("fixtures/homelab/cluster.json");
    let text = std::fs::read_to_string(&path).expect("read cluster.json");
    let mut cluster: serde_json::Value = serde_json::from_str(&text).expect("cluster.json is JSON");
    let update = std::env::var_os("NIXPROX_UPDATE_FIXTURES").is_some();
    let mut stale = Vec::new();
    let mut seen = Vec::new();
    for guest in cluster["guests"].as_array_mut().expect("guests") {
        let Some(description) = guest["config"]["description"].as_str() else { continue };
        let notes = Notes::parse(description);
        let Some(metadata) = notes.metadata() else { continue };
        let host = metadata.host.clone();
        seen.push(host.clone());
        let Some(system) = systems.get(host.as_str()) else { continue };
        let mut metadata = metadata.clone();
        match host.as_str() {
            "cache" => {
                assert_ne!(metadata.system.as_deref(), Some(system.toplevel.as_str()), "cache must switch")
            }
            "monitor" => assert_eq!(metadata.system, None, "monitor must need an install"),
            _ => {}
        }
        if host == "nas" {
            assert_ne!(
                metadata.disk_layout.as_deref(),
                Some(system.disk_layout_hash.as_str()),
                "nas must reinstall"
            );
        }
        if IN_SYNC.contains(&host.as_str()) && metadata.system.as_deref() != Some(system.toplevel.as_str()) {
            stale.push(format!("{host}: system {:?} != {}", metadata.system, system.toplevel));
            metadata.system = Some(system.toplevel.clone());
        }
        if IN_SYNC.contains(&host.as_str())
            && host != "nas"
            && metadata.disk_layout.as_deref() != Some(system.disk_layout_hash.as_str())
        {
            stale.push(format!(
                "{host}: disk_layout {:?} != {}",
                metadata.disk_layout, system.disk_layout_hash
            ));
            metadata.disk_layout = Some(system.disk_layout_hash.clone());
        }
        guest["config"]["description"] = Notes::render(&notes.user_text, &metadata).into();
    }
    for host in IN_SYNC.iter().chain(&["cache", "monitor"]) {
        assert!(seen.iter().any(|s| s == host), "cluster.json has no metadata for `{host}`");
    }
    if update && !stale.is_empty() {
        let text = serde_json::to_string_pretty(&cluster).expect("serialise") + "\n";
        std::fs::write(&path, text).expect("write cluster.json");
        return;
    }
    assert!(
        stale.is_empty(),
        "fixtures/homelab/cluster.json is stale (rerun with NIXPROX_UPDATE_FIXTURES=1 to rewrite it):\n{}",
        stale.join("\n")
    );
}

#[tokio::test]
async fn eval_error_names_the_host_and_keeps_nix_message() {
    let fixture = Fixture::copy("eval-error");
    let err = eval_err(&fixture.request()).await;
    let FlakeError::Host { host, message, .. } = &err else { panic!("not a host error: {err}") };
    assert_eq!(host, "broken");
    assert!(message.starts_with("error:"), "{message}");
    assert!(message.contains("attribute 'services' missing"), "{message}");
    assert!(
        err.to_string().starts_with(&format!(
            "failed to evaluate host `broken` of flake `{}`: error:",
            fixture.flake_ref()
        )),
        "{err}"
    );

    // A host whose options evaluate but whose system does not: named as well.
    let mut request = fixture.request();
    request.hosts = Hosts::Only(vec!["good".into(), "broken-system".into()]);
    let err = eval_err(&request).await;
    let FlakeError::Host { host, message, .. } = &err else { panic!("not a host error: {err}") };
    assert_eq!(host, "broken-system");
    assert!(message.contains("no revision: the flake is not a git checkout"), "{message}");

    // `--hosts` leaves the broken ones out entirely.
    request.hosts = Hosts::Only(vec!["good".into()]);
    let inventory = eval(&request).await;
    assert_eq!(inventory.hosts.len(), 1);
    assert_eq!(inventory.hosts[0].attr, "good");
}

#[tokio::test]
async fn unknown_hosts_in_the_filter_are_errors() {
    let fixture = Fixture::copy("eval-error");
    let mut request = fixture.request();
    request.hosts = Hosts::Only(vec!["good".into(), "nope".into()]);
    let err = eval_err(&request).await;
    assert_eq!(
        err.to_string(),
        format!(
            "host `nope`: not in `nixosConfigurations` of flake `{}` (check `--hosts`)",
            fixture.flake_ref()
        )
    );
}

#[tokio::test]
async fn import_from_derivation_is_refused() {
    let fixture = Fixture::copy("ifd");
    let err = eval_err(&fixture.request()).await;
    let FlakeError::Host { host, message, .. } = &err else { panic!("not a host error: {err}") };
    assert_eq!(host, "ifd");
    assert!(message.contains("because the option 'allow-import-from-derivation' is disabled"), "{message}");
}

#[tokio::test]
async fn typo_in_an_option_names_the_option_path() {
    let fixture = Fixture::copy("typo");
    let err = eval_err(&fixture.request()).await;
    let FlakeError::Host { host, message, .. } = &err else { panic!("not a host error: {err}") };
    assert_eq!(host, "typo");
    assert!(message.contains("The option `nixprox.vm.corse' does not exist"), "{message}");
}

#[tokio::test]
async fn bad_type_names_the_option_and_the_type() {
    let fixture = Fixture::copy("bad-type");
    let err = eval_err(&fixture.request()).await;
    let FlakeError::Host { host, message, .. } = &err else { panic!("not a host error: {err}") };
    assert_eq!(host, "bad-type");
    assert!(
        message.contains(
            "A definition for option `nixprox.vm.memory' is not of type `integer between 16 and 4194304"
        ),
        "{message}"
    );
}

/// An evaluation request for a generated fleet with the test inputs.
fn fleet_request(fleet: &Fleet) -> EvalRequest {
    EvalRequest {
        nix: nix(),
        override_inputs: override_inputs(),
        eval_jobs: 2,
        ..EvalRequest::new(fleet.flake_ref())
    }
}

/// However the scheduler splits the work (one worker, two, one host per process, a memory bound
/// so tight that workers restart and reservations double), every host's module system is
/// evaluated to the same declaration, system and disk layout, and so is the one plain `nix eval`
/// the benchmark uses as its reference.
#[tokio::test]
async fn every_evaluation_strategy_gives_the_same_inventory() {
    let fleet = Fleet::generate_heavy(6, 200);
    let reference = eval(&fleet_request(&fleet)).await;
    assert_eq!(reference.hosts.len(), 6);
    assert!(reference.hosts.iter().all(|h| h.extra.is_none()));

    let one_worker = eval(&EvalRequest { eval_jobs: 1, ..fleet_request(&fleet) }).await;
    assert_eq!(one_worker.hosts, reference.hosts);
    assert_eq!(one_worker.stats.processes, 1, "{:?}", one_worker.stats);

    let per_host = eval(&EvalRequest { batch: 1, ..fleet_request(&fleet) }).await;
    assert_eq!(per_host.hosts, reference.hosts);
    assert!(per_host.stats.processes >= 6, "one process per host: {:?}", per_host.stats);

    let bounded = eval(&EvalRequest { eval_jobs: 3, max_memory: 128 << 20, ..fleet_request(&fleet) }).await;
    assert_eq!(bounded.hosts, reference.hosts);
    assert!(bounded.stats.restarts > 0, "a 128 MiB bound replaces workers: {:?}", bounded.stats);
    assert!(bounded.stats.processes > 3, "{:?}", bounded.stats);

    #[derive(serde::Deserialize)]
    struct Single {
        hosts: Vec<serde_json::Value>,
        missing: Vec<String>,
    }
    let single: Single =
        fleet_request(&fleet).single_process_command().run_json().await.expect("one nix eval");
    assert!(single.missing.is_empty());
    let toplevels: Vec<&str> =
        single.hosts.iter().map(|h| h["system"]["toplevel"].as_str().expect("toplevel")).collect();
    let expected: Vec<&str> = reference.hosts.iter().map(|h| h.system.toplevel.as_str()).collect();
    assert_eq!(toplevels, expected);
}

/// A shard evaluates every N-th host; the shards together are the whole inventory.
#[tokio::test]
async fn shards_partition_the_hosts() {
    let fleet = Fleet::generate(7);
    let all = eval(&fleet_request(&fleet)).await;
    let mut union = Vec::new();
    for index in 0..3 {
        let shard =
            eval(&EvalRequest { hosts: Hosts::Shard { index, count: 3 }, ..fleet_request(&fleet) }).await;
        let attrs: Vec<&str> = shard.hosts.iter().map(|h| h.attr.as_str()).collect();
        let expected: Vec<String> = (index..7).step_by(3).map(|i| format!("h{i:04}")).collect();
        assert_eq!(attrs, expected);
        union.extend(shard.hosts);
    }
    union.sort_by(|a, b| a.attr.cmp(&b.attr));
    assert_eq!(union, all.hosts);
}

/// The caller's extra attributes come from the same evaluation, for managed hosts only.
#[tokio::test]
async fn extra_attributes_are_evaluated_with_the_host() {
    let fixture = Fixture::copy("homelab");
    let request = EvalRequest {
        extra: Some(
            "attr: host: { inherit attr; revision = host.config.system.configurationRevision; }".into(),
        ),
        ..fixture.request()
    };
    let inventory = eval(&request).await;
    assert_eq!(inventory.skipped, ["laptop", "router"]);
    for host in &inventory.hosts {
        let extra = host.extra.as_ref().expect("extra for every managed host");
        assert_eq!(extra["attr"], host.attr.as_str());
        assert!(extra.get("revision").is_some(), "{extra}");
    }
}

/// An `extra` that fails in a way `tryEval` cannot catch (a missing attribute) costs only its
/// host's `extra`: the host is evaluated again without it, and every other host keeps its own,
/// whatever worker it shared and whatever the batch. A host whose system fails still fails.
#[tokio::test]
async fn an_extra_that_fails_costs_only_its_host_extra() {
    let fixture = Fixture::copy("homelab");
    let extra = r#"attr: host: if attr == "dns" then host.config.no.such.option else { inherit attr; }"#;
    for batch in [0, 2] {
        let request = EvalRequest { extra: Some(extra.into()), batch, eval_jobs: 1, ..fixture.request() };
        let inventory = eval(&request).await;
        let plain = eval(&EvalRequest { extra: None, ..request.clone() }).await;
        assert_eq!(inventory.hosts.len(), plain.hosts.len(), "batch {batch}");
        for (host, plain) in inventory.hosts.iter().zip(&plain.hosts) {
            assert_eq!(host.system, plain.system, "{}: the system is evaluated either way", host.attr);
            if host.attr == "dns" {
                assert_eq!(host.extra, None);
                let error = host.extra_error.as_deref().expect("dns's extra failed");
                assert!(error.contains("attribute 'no' missing"), "{error}");
            } else {
                assert_eq!(host.extra.as_ref().expect("extra")["attr"], host.attr.as_str(), "batch {batch}");
                assert_eq!(host.extra_error, None);
            }
        }
    }

    let fixture = Fixture::copy("eval-error");
    let request = EvalRequest { extra: Some("attr: host: { }".into()), ..fixture.request() };
    let err = eval_err(&request).await;
    assert!(matches!(err, FlakeError::Host { ref host, .. } if host == "broken"), "{err}");
}

/// `evaluate_extra` (the NixOS changes' base) reports each host's `extra`, the hosts that fail
/// and the names the flake lacks, and evaluates no declaration or system.
#[tokio::test]
async fn extra_only_evaluations_report_failures_and_missing_hosts_per_host() {
    let fixture = Fixture::copy("eval-error");
    let request = EvalRequest {
        extra: Some(r#"attr: host: { inherit attr; }"#.into()),
        hosts: Hosts::Only(vec!["broken-system".into(), "nope".into(), "broken".into(), "good".into()]),
        ..fixture.request()
    };
    let extras = nixprox::flake::evaluate_extra(&request).await.expect("per-host answers");
    assert_eq!(extras.missing, ["nope"]);
    // The system and the declaration are never evaluated: both broken hosts answer.
    for attr in ["broken", "broken-system", "good"] {
        assert_eq!(extras.values[attr]["attr"], attr, "{extras:?}");
    }
    let request = EvalRequest {
        extra: Some(r#"attr: host: if attr == "good" then throw "no probes here" else attr"#.into()),
        ..request
    };
    let extras = nixprox::flake::evaluate_extra(&request).await.expect("per-host answers");
    assert!(extras.failed["good"].contains("no probes here"), "{extras:?}");
    assert_eq!(extras.values["broken"], "broken");
    assert_eq!(extras.values["broken-system"], "broken-system");
}

/// A flake's own `builtins.trace` output, even one that looks like nixprox's reports, neither
/// breaks the evaluation nor adds hosts: the report marker is random per run.
#[tokio::test]
async fn traces_of_the_flake_are_not_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("lib")).expect("mkdir lib");
    for file in ["mkHost.nix", "standin.nix"] {
        std::fs::copy(repo().join("fixtures/lib").join(file), dir.path().join("lib").join(file))
            .expect("copy lib");
    }
    std::fs::write(
        dir.path().join("flake.nix"),
        r#"{
  inputs.nixpkgs-lib.url = "github:nix-community/nixpkgs.lib/de42d44212d207476489bce163375d8306a26d59";
  inputs.nixprox.url = "github:nixprox/nixprox";
  inputs.nixprox.inputs.nixpkgs.follows = "nixpkgs-lib";
  outputs = { nixpkgs-lib, nixprox, ... }:
    let
      mkHost = import ./lib/mkHost.nix { inherit (nixpkgs-lib) lib; nixproxModule = nixprox.nixosModules.default; };
      noisy = builtins.trace ''nixprox-0000000000000000:{"host":"forged","skipped":true}'';
    in {
      nixosConfigurations.web = mkHost {
        name = "web";
        modules = [ { nixprox.enable = true; nixprox.vm.node = noisy (builtins.trace "plain trace" "pve1"); } ];
      };
    };
}
"#,
    )
    .expect("write flake");
    let request = EvalRequest {
        nix: nix(),
        override_inputs: override_inputs(),
        ..EvalRequest::new(format!("path:{}", dir.path().display()))
    };
    let inventory = eval(&request).await;
    let attrs: Vec<&str> = inventory.hosts.iter().map(|h| h.attr.as_str()).collect();
    assert_eq!(attrs, ["web"]);
    assert!(inventory.skipped.is_empty(), "{:?}", inventory.skipped);
    assert_eq!(inventory.hosts[0].decl.vm.node.as_deref(), Some("pve1"));
}

/// One pin of nixpkgs-lib everywhere: every fixture flake's input, the offline guard of
/// `scripts/test` and the CI checkout of the snapshot name the revision (and the NAR hash)
/// `tests/support/nix.rs` fetches, so online and offline runs evaluate the same bytes.
#[test]
fn every_fixture_pins_the_nixpkgs_lib_the_tests_use() {
    use crate::support::nix::{NIXPKGS_LIB_LAST_MODIFIED, NIXPKGS_LIB_NAR_HASH, NIXPKGS_LIB_REV};
    let pinned = format!("inputs.nixpkgs-lib.url = \"github:nix-community/nixpkgs.lib/{NIXPKGS_LIB_REV}\";");
    let mut fixtures = 0;
    for entry in std::fs::read_dir(repo().join("fixtures")).expect("fixtures/") {
        let flake = entry.expect("fixture").path().join("flake.nix");
        let Ok(text) = std::fs::read_to_string(&flake) else { continue };
        fixtures += 1;
        assert!(text.contains(&pinned), "{} does not pin nixpkgs-lib: want `{pinned}`", flake.display());
    }
    assert!(fixtures >= 10, "the fixture flakes were found: {fixtures}");
    let script = std::fs::read_to_string(repo().join("scripts/test")).expect("scripts/test");
    for value in [NIXPKGS_LIB_REV, NIXPKGS_LIB_NAR_HASH, &NIXPKGS_LIB_LAST_MODIFIED.to_string()] {
        assert!(script.contains(value), "scripts/test names {value}");
    }
    let ci = std::fs::read_to_string(repo().join(".github/workflows/ci.yml")).expect("ci.yml");
    assert!(ci.contains(&format!("ref: {NIXPKGS_LIB_REV}")), "the CI checks out the pinned nixpkgs.lib");
}

/// The snapshot (or fetched copy) the tests use is the pinned tree: its NAR hash, as nix computes
/// it, is the one the lock entries and `builtins.fetchTree` check.
#[test]
fn the_nixpkgs_lib_in_use_has_the_pinned_nar_hash() {
    let output = std::process::Command::new("nix")
        .args(["--extra-experimental-features", "nix-command flakes", "hash", "path"])
        .arg(crate::support::nix::nixpkgs_lib())
        .output()
        .expect("run nix");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), crate::support::nix::NIXPKGS_LIB_NAR_HASH);
}
