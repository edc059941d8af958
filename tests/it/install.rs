//! Install and switch against the real-sshd test host: closures travel with the real
//! `nix copy`, the test systems' real `switch-to-configuration` runs there, and the install
//! goes through the test nixos-anywhere (which rejects flags the real one lacks).

use std::time::Duration;

use nixprox::install::{
    BuildOn, DiskKeySource, InstallError, InstallRequest, SwitchAction, SwitchError, SwitchRequest,
    SwitchResult, install_host, switch_host,
};
use nixprox::ssh::{ClientKey, generate_host_key};

use crate::support::sshd::{PLAIN_USER, TestHost, systems, write_fake_nixos_anywhere};

fn install_request(host: &TestHost, flake: &str, toplevel: &str, command: Vec<String>) -> InstallRequest {
    InstallRequest {
        host: "web".into(),
        address: host.address.clone(),
        port: host.port,
        user: "root".into(),
        key: ClientKey::File(host.client_key.clone()),
        host_key: generate_host_key("web").expect("host key"),
        flake: flake.into(),
        toplevel: toplevel.into(),
        command,
        build_on: BuildOn::Local,
        kexec_image: None,
        disk_encryption_keys: Vec::new(),
        extra_files: None,
        install_timeout: Duration::from_secs(120),
        connect_timeout: Duration::from_secs(30),
        pinned_host_key: None,
    }
}

fn switch_request(host: &TestHost, toplevel: &str) -> SwitchRequest {
    SwitchRequest {
        host: "web".into(),
        address: host.address.clone(),
        port: host.port,
        user: "root".into(),
        key: ClientKey::File(host.client_key.clone()),
        host_key: host.host_public(),
        toplevel: toplevel.into(),
        action: SwitchAction::Switch,
        rollback: true,
        confirm_timeout: Duration::from_secs(3),
        allow_failed_units: false,
        check_sigs: false,
        connect_timeout: Duration::from_secs(10),
        copy_timeout: Duration::from_secs(120),
        activation_timeout: Duration::from_secs(60),
    }
}

/// A host that is already installed and runs `system` (copied with nix copy, switched for real).
async fn installed(host: &TestHost, name: &str) -> String {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("nixprox=debug").try_init();
    let system = systems::build(name, &host.client_public, 0);
    let outcome = switch_host(&switch_request(host, &system)).await.expect("first switch");
    assert_eq!(outcome.result, SwitchResult::Switched, "{}", outcome.log);
    system
}

#[tokio::test]
async fn install_happy_path_pins_the_generated_host_key() {
    let host = TestHost::start();
    let bootstrap = host.host_public();
    let work = tempfile::tempdir().expect("tempdir");
    systems::write_flake(work.path(), "web", &host.client_public, false);
    let flake = format!("path:{}", work.path().display());
    let toplevel = systems::build_flake(&flake, "web");
    let fake = write_fake_nixos_anywhere(work.path());
    let request = install_request(&host, &flake, &toplevel, vec![fake.display().to_string()]);
    let outcome = install_host(&request).await.expect("install");
    assert_eq!(outcome.system, toplevel);
    assert_eq!(outcome.host_key, request.host_key.public);
    // The host now answers with the generated key, not the bootstrap one.
    assert_eq!(host.host_public(), request.host_key.public);
    assert_ne!(host.host_public(), bootstrap);
    assert_eq!(host.current_system().as_deref(), Some(toplevel.as_str()));
    assert!(host.has_store_path(&toplevel));
    assert_eq!(host.switch_calls(), vec![format!("{toplevel} boot")]);
    assert!(outcome.log_tail.iter().any(|l| l == "### Done! ###"), "{:?}", outcome.log_tail);
    let metadata = outcome.metadata(None, Some("abc".into()), "2026-01-01T00:00:00Z".into());
    assert_eq!(metadata.host_key.as_deref(), Some(request.host_key.public.as_str()));
    assert_eq!(metadata.system.as_deref(), Some(toplevel.as_str()));
}

#[tokio::test]
async fn failed_install_carries_its_output_and_a_second_run_resumes() {
    let host = TestHost::start();
    let work = tempfile::tempdir().expect("tempdir");
    systems::write_flake(work.path(), "web", &host.client_public, true);
    let flake = format!("path:{}", work.path().display());
    let fake = write_fake_nixos_anywhere(work.path());
    let request = install_request(&host, &flake, "/nix/store/unknown", vec![fake.display().to_string()]);
    let err = install_host(&request).await.expect_err("build fails");
    let text = err.to_string();
    assert!(matches!(err, InstallError::Installer { .. }), "{text}");
    assert!(
        text.starts_with("nixos-anywhere failed for `web`: exit code 1; last lines of its output:"),
        "{text}"
    );
    assert!(text.contains("the test system fails to build on purpose"), "{text}");
    assert!(text.contains("run apply again to resume"), "{text}");
    assert_eq!(host.current_system(), None);
    // The flake is fixed; the same host is installed by the next run.
    systems::write_flake(work.path(), "web", &host.client_public, false);
    let toplevel = systems::build_flake(&flake, "web");
    let request = InstallRequest { toplevel: toplevel.clone(), ..request };
    let outcome = install_host(&request).await.expect("resumed install");
    assert_eq!(outcome.system, toplevel);
}

#[tokio::test]
async fn a_reinstall_goes_only_to_the_machine_presenting_the_pinned_key() {
    let host = TestHost::start();
    let before = host.host_public();
    let work = tempfile::tempdir().expect("tempdir");
    systems::write_flake(work.path(), "web", &host.client_public, false);
    let flake = format!("path:{}", work.path().display());
    let toplevel = systems::build_flake(&flake, "web");
    let fake = write_fake_nixos_anywhere(work.path());
    let secret = work.path().join("disk.key");
    std::fs::write(&secret, "correct horse").expect("write disk key");
    let request = InstallRequest {
        disk_encryption_keys: vec![("/run/disk.key".into(), DiskKeySource::File(secret))],
        ..install_request(&host, &flake, &toplevel, vec![fake.display().to_string()])
    };
    // Another machine answers at the address: its key is not the one pinned for the VM.
    let pinned = generate_host_key("the-real-web").expect("key").public;
    let refused = InstallRequest { pinned_host_key: Some(pinned), ..request.clone() };
    let err = install_host(&refused).await.expect_err("refused");
    let text = err.to_string();
    assert!(matches!(err, InstallError::Unverified { .. }), "{text}");
    assert!(text.starts_with("refusing to install `web`"), "{text}");
    assert!(
        text.contains("nothing was sent to it") && text.contains("does not match the pinned key"),
        "{text}"
    );
    // Nothing reached the machine: no disk key, no closure, no new host key.
    assert!(!host.root().join("run/disk.key").exists());
    assert!(!host.has_store_path(&toplevel));
    assert_eq!(host.host_public(), before);

    // The machine that presents the pinned key gets the install.
    let verified = InstallRequest { pinned_host_key: Some(before.clone()), ..request };
    let outcome = install_host(&verified).await.expect("install");
    assert_eq!(outcome.system, toplevel);
    assert_eq!(std::fs::read(host.root().join("run/disk.key")).expect("disk key"), b"correct horse");
    assert_ne!(host.host_public(), before);
}

#[tokio::test]
async fn installer_flags_are_accepted_by_the_test_nixos_anywhere_only_if_real() {
    // The fake rejects options the real CLI lacks; one extra bogus flag through `command`.
    let host = TestHost::start();
    let work = tempfile::tempdir().expect("tempdir");
    let fake = write_fake_nixos_anywhere(work.path());
    let request = install_request(
        &host,
        "path:/nonexistent",
        "/nix/store/x",
        vec![fake.display().to_string(), "--no-such-flag".into()],
    );
    let err = install_host(&request).await.expect_err("rejected");
    assert!(err.to_string().contains("unknown option --no-such-flag"), "{err}");
}

#[tokio::test]
async fn switch_happy_path_copies_and_activates() {
    let host = TestHost::start();
    let first = installed(&host, "nixos-system-web-1").await;
    let second = systems::build("nixos-system-web-2", &host.client_public, 0);
    assert!(!host.has_store_path(&second));
    let outcome = switch_host(&switch_request(&host, &second)).await.expect("switch");
    assert_eq!(outcome.result, SwitchResult::Switched, "{}", outcome.log);
    assert!(!outcome.is_failure() && outcome.switched());
    assert!(host.has_store_path(&second), "closure copied with nix copy");
    assert_eq!(host.current_system().as_deref(), Some(second.as_str()));
    assert_eq!(host.switch_calls(), vec![format!("{first} switch"), format!("{second} switch")]);
}

#[tokio::test]
async fn a_user_with_passwordless_sudo_switches_and_probes() {
    let host = TestHost::start();
    let user = host.sudo_user();
    let first = installed(&host, "nixos-system-web-sudo-1").await;
    let second = systems::build("nixos-system-web-sudo-2", &host.client_public, 0);
    let request = SwitchRequest { user: user.into(), ..switch_request(&host, &second) };
    let outcome = switch_host(&request).await.expect("switch as the sudo user");
    assert_eq!(outcome.result, SwitchResult::Switched, "{}", outcome.log);
    assert!(host.has_store_path(&second), "closure copied through `sudo -n nix-daemon`");
    assert_eq!(host.current_system().as_deref(), Some(second.as_str()));
    assert_eq!(host.switch_calls(), vec![format!("{first} switch"), format!("{second} switch")]);
    // The switch's state is root's: the user reached it only through sudo.
    let state =
        std::fs::read_dir(host.root().join("run/nixprox")).expect("state dir").next().expect("one switch");
    let mode = std::os::unix::fs::MetadataExt::mode(&state.expect("entry").metadata().expect("metadata"));
    assert_eq!(mode & 0o777, 0o700);
    // `plan --probe` reads /run/current-system as the same user, no sudo needed.
    let target = nixprox::ssh::SshTarget {
        host: "web".into(),
        address: host.address.clone(),
        port: host.port,
        user: user.into(),
    };
    let key = ClientKey::File(host.client_key.clone()).materialize().expect("key").load().expect("load");
    let policy = nixprox::ssh::HostKeyPolicy::pinned(&host.host_public()).expect("policy");
    let running = nixprox::ssh::probe_system(&target, &key, &policy, Duration::from_secs(15)).await;
    assert_eq!(running.expect("probe"), second);
}

#[tokio::test]
async fn a_user_without_sudo_gets_sudos_answer_and_nothing_changes() {
    let host = TestHost::start();
    host.sudo_user();
    let first = installed(&host, "nixos-system-web-nosudo-1").await;
    let second = systems::build("nixos-system-web-nosudo-2", &host.client_public, 0);
    let request = SwitchRequest { user: PLAIN_USER.into(), ..switch_request(&host, &second) };
    let err = switch_host(&request).await.expect_err("no sudo, no switch");
    let text = err.to_string();
    assert!(matches!(err, SwitchError::Copy { .. }), "{text}");
    assert!(text.contains("sudo: a password is required"), "{text}");
    assert_eq!(host.current_system().as_deref(), Some(first.as_str()));
}

#[tokio::test]
async fn switch_that_breaks_connectivity_rolls_back_and_fails() {
    let host = TestHost::start();
    let first = installed(&host, "nixos-system-web-good").await;
    // This system drops the client key from authorized_keys: nixprox cannot log in to confirm.
    let broken = systems::build("nixos-system-web-broken", "", 0);
    let outcome = switch_host(&switch_request(&host, &broken)).await.expect("outcome");
    assert_eq!(
        outcome.result,
        SwitchResult::RolledBack { reason: "no confirmation from nixprox within 3s".into() },
        "{}",
        outcome.log
    );
    assert!(outcome.is_failure());
    assert_eq!(host.current_system().as_deref(), Some(first.as_str()));
    assert_eq!(
        host.switch_calls(),
        vec![format!("{first} switch"), format!("{broken} switch"), format!("{first} switch")]
    );
}

#[tokio::test]
async fn exit_code_4_is_switched_with_failed_units() {
    let host = TestHost::start();
    installed(&host, "nixos-system-web-base").await;
    let degraded = systems::build("nixos-system-web-degraded", &host.client_public, 4);
    let outcome = switch_host(&switch_request(&host, &degraded)).await.expect("switch");
    assert_eq!(outcome.result, SwitchResult::SwitchedUnitsFailed { allowed: false });
    assert_eq!(outcome.summary(), "switched, some units failed");
    assert!(outcome.is_failure() && outcome.switched());
    assert_eq!(host.current_system().as_deref(), Some(degraded.as_str()));
}

#[tokio::test]
async fn failing_nix_copy_is_reported_with_its_output() {
    let host = TestHost::start();
    // The host's Nix database is a file, not a directory: its nix-daemon cannot accept paths.
    std::fs::write(host.root().join("nix/var/nix/db"), "broken").expect("write");
    let system = systems::build("nixos-system-web-nocopy", &host.client_public, 0);
    let err = switch_host(&switch_request(&host, &system)).await.expect_err("copy fails");
    let text = err.to_string();
    assert!(matches!(err, SwitchError::Copy { .. }), "{text}");
    assert!(
        text.starts_with(&format!(
            "failed to copy `{system}` to `web` with nix copy: exit code 1; last lines of its output:"
        )),
        "{text}"
    );
    assert_eq!(host.current_system(), None);
    assert!(host.switch_calls().is_empty());
}
