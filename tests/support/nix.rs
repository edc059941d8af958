//! The real `nix` binary for tests: finds it, isolates it from the binary cache, and prepares the
//! inputs fixture flakes are evaluated with (`nixpkgs-lib` from `../shared` or the pinned revision
//! nix fetches, `nixprox` from a copy of this repository's `flake.nix` and `nix/`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nixprox::flake::{EvalRequest, Nix, OverrideInput};
use sha2::{Digest, Sha256};

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `nix` from PATH with `NIX_CONFIG="substituters ="` (on a closed network nix otherwise retries
/// the public cache). Panics with the fix when nix is missing.
pub fn nix() -> Nix {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    let program = FOUND.get_or_init(|| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path).map(|dir| dir.join("nix")).find(|p| p.is_file()).unwrap_or_else(|| {
            panic!("`nix` is not on PATH: install Debian's nix-bin (`apt-get install nix-bin`) or Nix 2.4+")
        })
    });
    Nix { program: program.clone(), env: vec![] }.with_env("NIX_CONFIG", "substituters =")
}

/// The nixpkgs.lib revision every fixture flake pins (`inputs.nixpkgs-lib.url`), the one
/// `shared/nixpkgs-lib` is a snapshot of (`shared/README.md`), and its NAR hash: the same bytes
/// online and offline. `scripts/test`, the fixtures and the project's `flake.lock` name the same
/// pair; `tests/it/flake.rs` checks that they agree.
pub const NIXPKGS_LIB_REV: &str = "de42d44212d207476489bce163375d8306a26d59";
pub const NIXPKGS_LIB_NAR_HASH: &str = "sha256-0iaTCZDEORJeWamOjfDZaoZZx686f7QO5oL3ynmj+ew=";
/// The revision's commit time: with it and the NAR hash, nix takes the source from the store
/// when it is there (no download at all).
pub const NIXPKGS_LIB_LAST_MODIFIED: u64 = 1_781_405_675;

/// What a contributor does when no nixpkgs-lib can be had: the one line every test (and
/// `scripts/test`, before any test runs) stops with.
pub const NO_NIXPKGS_LIB: &str = "no nixpkgs-lib for the fixture flakes: no `shared/nixpkgs-lib` beside the checkout, NIXPROX_SHARED_DIR unset, and nix could not fetch github:nix-community/nixpkgs.lib/de42d44212d207476489bce163375d8306a26d59 (offline?); connect to the internet once (nix keeps it), or set NIXPROX_SHARED_DIR to a folder holding nixpkgs-lib/ (README.md#tests)";

/// nixpkgs-lib as a directory, for `--override-input nixpkgs-lib path:…` and `import …/lib`:
/// `$NIXPROX_SHARED_DIR/nixpkgs-lib`, else the nearest `shared/nixpkgs-lib` beside an ancestor
/// of the repository (`<repo>/../shared` for the main checkout, further up for worktrees), else
/// the pinned revision fetched by nix (`builtins.fetchTree` with its NAR hash: checked, and kept
/// in the store, so later runs need no network). Nothing found: every test stops with
/// [`NO_NIXPKGS_LIB`] instead of a nix error of its own.
pub fn nixpkgs_lib() -> PathBuf {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match FOUND.get_or_init(find_nixpkgs_lib) {
        Ok(dir) => dir.clone(),
        Err(line) => panic!("{line}"),
    }
}

fn find_nixpkgs_lib() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("NIXPROX_SHARED_DIR") {
        let lib = PathBuf::from(dir).join("nixpkgs-lib");
        return match lib.join("flake.nix").is_file() {
            true => Ok(lib),
            false => Err(format!(
                "NIXPROX_SHARED_DIR names no nixpkgs-lib: `{}` has no flake.nix (point it at the folder holding nixpkgs-lib/, or unset it to fetch the pinned revision)",
                lib.display()
            )),
        };
    }
    let beside = repo()
        .ancestors()
        .skip(1)
        .map(|dir| dir.join("shared/nixpkgs-lib"))
        .find(|p| p.join("flake.nix").is_file());
    if let Some(lib) = beside {
        return Ok(lib);
    }
    fetch_pinned_nixpkgs_lib().ok_or_else(|| NO_NIXPKGS_LIB.to_string())
}

/// The pinned nixpkgs-lib through nix's fetcher: from the store when an earlier run (or
/// `scripts/test`) fetched it, else from GitHub, in one attempt (offline fails at once).
fn fetch_pinned_nixpkgs_lib() -> Option<PathBuf> {
    let expr = format!(
        "(builtins.fetchTree {{ type = \"github\"; owner = \"nix-community\"; repo = \"nixpkgs.lib\"; rev = \"{NIXPKGS_LIB_REV}\"; lastModified = {NIXPKGS_LIB_LAST_MODIFIED}; narHash = \"{NIXPKGS_LIB_NAR_HASH}\"; }}).outPath"
    );
    let output = std::process::Command::new("nix")
        .env("NIX_CONFIG", "substituters =")
        .args(["--extra-experimental-features", "nix-command flakes", "--option", "download-attempts", "1"])
        .args(["eval", "--impure", "--raw", "--expr", &expr])
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    (output.status.success() && dir.join("flake.nix").is_file()).then_some(dir)
}

/// `--override-input` pairs for fixture flakes. The nixprox input is a copy of only `flake.nix`
/// and the modules in `nix/` (a `path:` input of the repository would copy `target/` into the store), made
/// once per content under the target's tmp dir, so parallel test processes share it safely.
pub fn override_inputs() -> Vec<OverrideInput> {
    static INPUT: OnceLock<PathBuf> = OnceLock::new();
    let input = INPUT.get_or_init(|| {
        let mut modules: Vec<PathBuf> = std::fs::read_dir(repo().join("nix"))
            .expect("read nix/")
            .map(|entry| entry.expect("nix/ entry").path())
            .filter(|path| path.extension().is_some_and(|e| e == "nix"))
            .collect();
        modules.sort();
        let files: Vec<PathBuf> = std::iter::once(repo().join("flake.nix")).chain(modules).collect();
        let mut hash = Sha256::new();
        for file in &files {
            hash.update(file.file_name().expect("file name").as_encoded_bytes());
            hash.update(std::fs::read(file).expect("read flake input file"));
        }
        let digest = hex::encode(hash.finalize());
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let dest = base.join(format!("nixprox-input-{}", &digest[..16]));
        if !dest.join("nix/module.nix").is_file() {
            let staging = tempfile::tempdir_in(base).expect("staging dir");
            std::fs::create_dir(staging.path().join("nix")).expect("mkdir nix");
            std::fs::copy(&files[0], staging.path().join("flake.nix")).expect("copy flake.nix");
            for module in &files[1..] {
                let name = module.file_name().expect("file name");
                std::fs::copy(module, staging.path().join("nix").join(name)).expect("copy module");
            }
            // Another process may have won the race; its copy is identical.
            let _ = std::fs::rename(staging.keep(), &dest);
        }
        dest
    });
    vec![
        OverrideInput::new("nixpkgs-lib", format!("path:{}", nixpkgs_lib().display())),
        OverrideInput::new("nixprox", format!("path:{}", input.display())),
    ]
}

/// A fixture flake copied to a temporary directory with `lib` (a symlink to `../lib` in the
/// repository) dereferenced, so it can be evaluated as a self-contained `path:` flake.
#[derive(Debug)]
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn copy(name: &str) -> Fixture {
        Fixture::copy_in(name, &std::env::temp_dir())
    }

    /// [`Fixture::copy`] into a new directory below `parent` (e.g. a repository's work tree).
    pub fn copy_in(name: &str, parent: &Path) -> Fixture {
        let dir =
            tempfile::Builder::new().prefix(&format!("fixture-{name}-")).tempdir_in(parent).expect("tempdir");
        copy_dir(&repo().join("fixtures").join(name), dir.path());
        Fixture { dir }
    }

    pub fn flake_ref(&self) -> String {
        format!("path:{}", self.dir.path().display())
    }

    /// `nix flake lock` with the offline test inputs, so the fixture evaluates without
    /// `--override-input` (as nixos-anywhere and a user's own `nix build` evaluate it).
    pub fn lock(&self) {
        let mut command = std::process::Command::new("nix");
        command
            .env("NIX_CONFIG", "substituters =")
            .args(["--extra-experimental-features", "nix-command flakes", "flake", "lock"])
            .arg(self.flake_ref());
        for input in override_inputs() {
            command.args(["--override-input", &input.name, &input.flake_ref]);
        }
        let output = command.output().expect("run nix (install Debian's nix-bin)");
        assert!(
            output.status.success(),
            "nix flake lock failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(self.dir.path().join("flake.lock").is_file(), "nix flake lock wrote no flake.lock");
    }

    /// An evaluation request for this fixture with the test inputs and two eval jobs.
    pub fn request(&self) -> EvalRequest {
        EvalRequest {
            nix: nix(),
            override_inputs: override_inputs(),
            eval_jobs: 2,
            ..EvalRequest::new(self.flake_ref())
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        // `metadata` follows symlinks: the `lib` link becomes a real directory.
        let meta = std::fs::metadata(entry.path()).expect("metadata");
        if meta.is_dir() {
            std::fs::create_dir(&target).expect("mkdir");
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}
