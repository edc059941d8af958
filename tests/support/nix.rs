//! The real `nix` binary for tests: finds it, isolates it from the binary cache, and prepares the
//! inputs fixture flakes are evaluated with (`nixpkgs-lib` from `../shared`, `nixprox` from a copy
//! of this repository's `flake.nix` and `nix/`).

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

/// `shared/nixpkgs-lib`: `$NIXPROX_SHARED_DIR`, else the nearest `shared/` beside an ancestor of
/// the repository (`<repo>/../shared` for the main checkout, further up for worktrees).
pub fn nixpkgs_lib() -> PathBuf {
    if let Some(dir) = std::env::var_os("NIXPROX_SHARED_DIR") {
        return PathBuf::from(dir).join("nixpkgs-lib");
    }
    repo()
        .ancestors()
        .skip(1)
        .map(|dir| dir.join("shared/nixpkgs-lib"))
        .find(|p| p.join("flake.nix").is_file())
        .unwrap_or_else(|| {
            panic!(
                "no `shared/nixpkgs-lib` beside the repository: set NIXPROX_SHARED_DIR to the shared/ folder"
            )
        })
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
