//! A real git repository for tests that need history: the NixOS changes compare a pull
//! request's head with its base commit.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `git` in one directory, with a fixed identity and no user or system configuration.
#[derive(Debug, Clone)]
pub struct Git {
    pub dir: PathBuf,
}

impl Git {
    /// `git init` in `dir` (branch `main`). Panics with the fix when git is missing.
    pub fn init(dir: &Path) -> Git {
        let git = Git { dir: dir.to_path_buf() };
        git.run(&["init", "--quiet", "--initial-branch=main"]);
        git
    }

    /// Runs git and returns its trimmed stdout; panics with stderr when it fails.
    pub fn run(&self, args: &[&str]) -> String {
        let output = Command::new("git")
            .arg("-C")
            .arg(&self.dir)
            .args(["-c", "user.name=nixprox-test", "-c", "user.email=test@nixprox.invalid"])
            .args(["-c", "commit.gpgsign=false", "-c", "protocol.file.allow=always"])
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .unwrap_or_else(|e| panic!("failed to run git ({e}): install git (`apt-get install git`)"));
        assert!(
            output.status.success(),
            "git {args:?} failed in {}: {}",
            self.dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Commits everything in the work tree; returns the commit's SHA.
    pub fn commit_all(&self, message: &str) -> String {
        self.run(&["add", "--all"]);
        self.run(&["commit", "--quiet", "--allow-empty", "-m", message]);
        self.run(&["rev-parse", "HEAD"])
    }
}
