//! The SSH test host: a real OpenSSH `sshd` on its own loopback address, inside a private
//! mount namespace whose `/nix`, `/run`, `/etc/ssh` and `/mnt` are per-test directories, so
//! over SSH it has its own store, system profile and `/run/current-system` like an installed
//! NixOS. A "reboot" (requested by the test installer, or by fakepve for a VM's reboot, see
//! [`TestHost::reboot_file`], touching `/run/nixprox-test-reboot`) restarts sshd with the host
//! key the install placed under `/mnt` and boots the system profile's system. Drop kills every process
//! in the namespace.
//!
//! The namespace also sees its own `/etc/passwd`, `/etc/group`, `/etc/shadow` and (with sudo
//! installed) `/etc/sudoers`: copies of the machine's with one more user, [`SUDO_USER`], who
//! logs in with the same client key and has passwordless sudo, as a deploy user of colmena or
//! deploy-rs has. The machine's own files are never touched.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nixprox::ssh::{GeneratedHostKey, generate_host_key};
use secrecy::ExposeSecret;

const SSHD: &str = "/usr/sbin/sshd";
const SUDO: &str = "/usr/bin/sudo";
/// The test host's user other than root, with passwordless sudo (`ALL=(root) NOPASSWD: ALL`).
pub const SUDO_USER: &str = "deploy";
/// Its uid and gid, far from Debian's system and user ranges.
const SUDO_UID: u32 = 64242;
/// A user who logs in like [`SUDO_USER`] but has no sudo rights.
pub const PLAIN_USER: &str = "plain";
const PLAIN_UID: u32 = 64243;
static NEXT: AtomicU32 = AtomicU32::new(0);

/// One test host; see the module docs.
pub struct TestHost {
    pub dir: tempfile::TempDir,
    pub address: String,
    pub port: u16,
    /// The client key authorized on the host (file, 0600) and its public line.
    pub client_key: PathBuf,
    pub client_public: String,
    /// The key the host currently answers with (the "bootstrap" key at start).
    pub host_key: Arc<Mutex<GeneratedHostKey>>,
    sshd: Arc<Mutex<Option<Child>>>,
    stop: Arc<AtomicBool>,
    watcher: Option<std::thread::JoinHandle<()>>,
}

impl TestHost {
    /// Starts the host and waits until its port answers. Fails with install hints when sshd
    /// or unshare are missing.
    pub fn start() -> TestHost {
        assert!(
            Path::new(SSHD).exists(),
            "`{SSHD}` not found: install Debian's openssh-server (apt-get install openssh-server)"
        );
        assert!(
            Command::new("unshare").arg("--version").output().is_ok(),
            "`unshare` not found: install Debian's util-linux"
        );
        let dir = tempfile::Builder::new().prefix("nixprox-sshd-").tempdir().expect("tempdir");
        let root = dir.path();
        for sub in ["nix/store", "nix/var/nix", "run/sshd", "etc-ssh", "mnt"] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        std::fs::set_permissions(root.join("run/sshd"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let address = format!("127.0.{}.{}", 100 + (std::process::id() % 100), 2 + n % 250);
        let port = std::net::TcpListener::bind((address.as_str(), 0))
            .expect("bind a loopback port")
            .local_addr()
            .expect("addr")
            .port();
        let client = generate_host_key("nixprox-test-client").expect("client key");
        let client_key = root.join("client_key");
        write_private(&client_key, client.private_openssh.expose_secret());
        std::fs::write(root.join("etc-ssh/authorized_keys"), format!("{}\n", client.public)).expect("write");
        write_accounts(root);
        let host_key = generate_host_key("bootstrap").expect("host key");
        write_private(&root.join("etc-ssh/ssh_host_ed25519_key"), host_key.private_openssh.expose_secret());
        std::fs::write(
            root.join("sshd_config"),
            format!(
                "ListenAddress {address}:{port}\nHostKey /etc/ssh/ssh_host_ed25519_key\n\
                 AuthorizedKeysFile /etc/ssh/authorized_keys\nUsePAM no\nPidFile none\n\
                 PermitRootLogin prohibit-password\nStrictModes no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nLogLevel VERBOSE\n"
            ),
        )
        .expect("write sshd_config");
        let mut host = TestHost {
            dir,
            address,
            port,
            client_key,
            client_public: client.public,
            host_key: Arc::new(Mutex::new(host_key)),
            sshd: Arc::new(Mutex::new(None)),
            stop: Arc::new(AtomicBool::new(false)),
            watcher: None,
        };
        start_sshd(host.dir.path(), &host.address, host.port, &host.sshd);
        let (root, address, port, sshd, stop, key) = (
            host.dir.path().to_path_buf(),
            host.address.clone(),
            host.port,
            host.sshd.clone(),
            host.stop.clone(),
            host.host_key.clone(),
        );
        host.watcher = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if root.join("run/nixprox-test-reboot").exists() {
                    reboot(&root, &address, port, &sshd, &key);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
        host
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// [`SUDO_USER`]; fails with the fix when sudo is not installed on this machine.
    pub fn sudo_user(&self) -> &'static str {
        assert!(
            Path::new(SUDO).exists(),
            "`{SUDO}` not found: the test host's non-root user needs it; install Debian's sudo (apt-get install sudo, or scripts/setup)"
        );
        SUDO_USER
    }

    pub fn host_public(&self) -> String {
        self.host_key.lock().expect("lock").public.clone()
    }

    /// A "reboot" into a new host key: sshd stops and starts again with `key`.
    pub fn restart_with_host_key(&self, key: &GeneratedHostKey) {
        kill_namespace(&self.sshd);
        write_private(&self.root().join("etc-ssh/ssh_host_ed25519_key"), key.private_openssh.expose_secret());
        *self.host_key.lock().expect("lock") = key.clone();
        start_sshd(self.root(), &self.address, self.port, &self.sshd);
    }

    /// Stops sshd (the host "goes away") without removing its files.
    pub fn stop_sshd(&self) {
        kill_namespace(&self.sshd);
    }

    /// The file whose creation "reboots" the host (fakepve's `on_reboot` creates it).
    pub fn reboot_file(&self) -> PathBuf {
        self.root().join("run/nixprox-test-reboot")
    }

    /// Where `/run/booted-system` points on the host (inside its namespace).
    pub fn booted_system(&self) -> Option<String> {
        std::fs::read_link(self.root().join("run/booted-system")).ok().map(|p| p.display().to_string())
    }

    /// Where `/run/current-system` points on the host (inside its namespace).
    pub fn current_system(&self) -> Option<String> {
        std::fs::read_link(self.root().join("run/current-system")).ok().map(|p| p.display().to_string())
    }

    /// `switch-to-configuration` calls recorded by the test systems: `<system> <action>` lines.
    pub fn switch_calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.root().join("run/nixprox-test/switch-calls"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// Whether the host's own store holds `path` (a path under `/nix/store`).
    pub fn has_store_path(&self, path: &str) -> bool {
        self.root().join(path.trim_start_matches('/')).exists()
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
        kill_namespace(&self.sshd);
    }
}

fn write_private(path: &Path, text: &str) {
    let _ = std::fs::remove_file(path);
    std::fs::write(path, format!("{}\n", text.trim_end())).expect("write key");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
}

/// The namespace's account files: the machine's, plus [`SUDO_USER`] and [`PLAIN_USER`]
/// (password `*`: no password, not locked, so sshd lets the key in) and a sudoers file giving
/// the first passwordless sudo.
fn write_accounts(root: &Path) {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let user = SUDO_USER;
    let add = |name: &str, base: &str, line: String, mode: u32| {
        let path = root.join(name);
        std::fs::write(&path, format!("{}{line}\n", read(base))).expect("write account file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    let plain = PLAIN_USER;
    add(
        "etc-passwd",
        "/etc/passwd",
        format!(
            "{user}:x:{SUDO_UID}:{SUDO_UID}:nixprox test deployer:/run:/bin/sh\n{plain}:x:{PLAIN_UID}:{PLAIN_UID}:no sudo:/run:/bin/sh"
        ),
        0o644,
    );
    add("etc-group", "/etc/group", format!("{user}:x:{SUDO_UID}:\n{plain}:x:{PLAIN_UID}:"), 0o644);
    add(
        "etc-shadow",
        "/etc/shadow",
        format!("{user}:*:19000:0:99999:7:::\n{plain}:*:19000:0:99999:7:::"),
        0o640,
    );
    let sudoers = root.join("etc-sudoers");
    std::fs::write(
        &sudoers,
        format!("Defaults env_reset\nroot ALL=(ALL:ALL) ALL\n{user} ALL=(root) NOPASSWD: ALL\n"),
    )
    .expect("write sudoers");
    // sudo refuses a sudoers file that others can write.
    std::fs::set_permissions(&sudoers, std::fs::Permissions::from_mode(0o440)).expect("chmod sudoers");
}

fn start_sshd(root: &Path, address: &str, port: u16, slot: &Mutex<Option<Child>>) {
    let t = root.display();
    // Without sudo on the machine there is no /etc/sudoers to cover (and no sudo to use).
    let sudoers = if Path::new("/etc/sudoers").exists() {
        format!("mount --bind {t}/etc-sudoers /etc/sudoers && ")
    } else {
        String::new()
    };
    let script = format!(
        "mount --bind {t}/nix /nix && mount --bind {t}/run /run && mount --bind {t}/etc-ssh /etc/ssh && \
         mount --bind {t}/mnt /mnt && mount --bind {t}/etc-passwd /etc/passwd && \
         mount --bind {t}/etc-group /etc/group && mount --bind {t}/etc-shadow /etc/shadow && \
         {sudoers}exec {SSHD} -D -e -f {t}/sshd_config"
    );
    let log = std::fs::OpenOptions::new().create(true).append(true).open(root.join("sshd.log")).expect("log");
    let child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start sshd in a mount namespace (unshare needs root)");
    *slot.lock().expect("lock") = Some(child);
    let started = Instant::now();
    while std::net::TcpStream::connect((address, port)).is_err() {
        let log = std::fs::read_to_string(root.join("sshd.log")).unwrap_or_default();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "sshd did not come up on {address}:{port}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills sshd and every process left in its mount namespace (detached activations, sessions).
fn kill_namespace(slot: &Mutex<Option<Child>>) {
    let Some(mut child) = slot.lock().expect("lock").take() else { return };
    let pid = child.id();
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let mut pids = vec![pid];
    if let Some(ns) = &ns {
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(other) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            if other != pid && std::fs::read_link(format!("/proc/{other}/ns/mnt")).ok().as_ref() == Some(ns) {
                pids.push(other);
            }
        }
    }
    for pid in &pids {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    let _ = child.wait();
}

/// What a reboot does: the new root's host key (from `/mnt`, after an install) becomes the
/// host's, the system profile's system becomes `/run/current-system` and `/run/booted-system`
/// (as NixOS's stage 2 sets both), sshd comes back.
fn reboot(root: &Path, address: &str, port: u16, sshd: &Mutex<Option<Child>>, key: &Mutex<GeneratedHostKey>) {
    kill_namespace(sshd);
    let _ = std::fs::remove_file(root.join("run/nixprox-test-reboot"));
    let placed = root.join("mnt/etc/ssh/ssh_host_ed25519_key");
    if let Ok(text) = std::fs::read_to_string(&placed) {
        write_private(&root.join("etc-ssh/ssh_host_ed25519_key"), &text);
        if let Ok(parsed) = GeneratedHostKey::from_private_openssh(&text) {
            *key.lock().expect("lock") = parsed;
        }
    }
    // profiles/system -> system-N-link -> /nix/store/… (a path inside the namespace).
    let profiles = root.join("nix/var/nix/profiles");
    if let Ok(generation) = std::fs::read_link(profiles.join("system"))
        && let Ok(system) = std::fs::read_link(profiles.join(generation))
    {
        for name in ["run/current-system", "run/booted-system"] {
            let link = root.join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&system, link).expect("set current-system and booted-system");
        }
    }
    start_sshd(root, address, port, sshd);
}

/// The fake nixos-anywhere, written executable into `dir`, knowing the real CLI's flags.
pub fn write_fake_nixos_anywhere(dir: &Path) -> PathBuf {
    let script =
        include_str!("nixos-anywhere-fake.sh").replace("@FLAGS@", &nixprox::install::CLI_FLAGS.join(" "));
    let path = dir.join("nixos-anywhere");
    std::fs::write(&path, script).expect("write fake");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod fake");
    path
}

/// Test systems built from `fixtures/ssh/system.nix` with the real `nix`.
pub mod systems {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    pub fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ssh/system.nix")
    }

    fn nix() -> Command {
        let mut command = Command::new("nix");
        command
            .env("NIX_CONFIG", "substituters =")
            .args(["--extra-experimental-features", "nix-command flakes"]);
        command
    }

    /// Builds a test system; returns its store path.
    pub fn build(name: &str, authorized_keys: &str, exit_code: u32) -> String {
        let output = nix()
            .args(["build", "--json", "--no-link", "--option", "sandbox", "false", "-f"])
            .arg(fixture())
            .args(["--argstr", "name", name, "--argstr", "system", &current_system()])
            .args([
                "--argstr",
                "authorizedKeys",
                authorized_keys,
                "--arg",
                "exitCode",
                &exit_code.to_string(),
            ])
            .output()
            .expect("run nix (install Debian's nix-bin)");
        assert!(output.status.success(), "nix build failed: {}", String::from_utf8_lossy(&output.stderr));
        nixprox::flake::parse_build_json(&String::from_utf8_lossy(&output.stdout)).expect("nix build json")
    }

    /// `x86_64-linux` etc.
    pub fn current_system() -> String {
        let output = nix()
            .args(["eval", "--impure", "--raw", "--expr", "builtins.currentSystem"])
            .output()
            .expect("nix");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Writes a flake in `dir` whose `nixosConfigurations.<host>` toplevel is a test system.
    pub fn write_flake(dir: &Path, host: &str, authorized_keys: &str, fail_build: bool) {
        std::fs::copy(fixture(), dir.join("system.nix")).expect("copy fixture");
        let flake = format!(
            "{{ outputs = {{ self }}: {{ nixosConfigurations.{host}.config.system.build.toplevel = import ./system.nix {{ name = \"nixos-system-{host}\"; system = \"{}\"; authorizedKeys = \"{authorized_keys}\"; failBuild = {fail_build}; }}; }}; }}\n",
            current_system()
        );
        std::fs::write(dir.join("flake.nix"), flake).expect("write flake");
    }

    /// Builds the flake's toplevel the way the executor would (the library's argv builder).
    pub fn build_flake(flake: &str, host: &str) -> String {
        let build = nixprox::install::build_toplevel(&nixprox::flake::Nix::default(), flake, host, &[])
            .option("sandbox", "false");
        let argv = build.argv();
        let output = Command::new(&argv[0])
            .args(&argv[1..])
            .env("NIX_CONFIG", "substituters =")
            .output()
            .expect("run nix");
        assert!(output.status.success(), "nix build failed: {}", String::from_utf8_lossy(&output.stderr));
        nixprox::flake::parse_build_json(&String::from_utf8_lossy(&output.stdout)).expect("json")
    }
}
