//! The `nix` command line: one builder ([`NixCommand`]) whose exact argument list is unit-tested,
//! the version probe ([`NixVersion`]), and the trimming of nix's stderr into an error message.
//!
//! A pull request's flake is untrusted input, so every evaluation is pure (never `--impure`)
//! and refuses import-from-derivation: evaluating a PR must never build or run anything.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;

use serde::de::DeserializeOwned;
use tokio::process::Command;

/// The features nixprox needs; passed as `--extra-experimental-features` because Nix before
/// 2.19-ish (and Debian's 2.8) does not enable them by default.
pub const EXPERIMENTAL_FEATURES: &str = "nix-command flakes";

/// An input replaced on the command line (`--override-input NAME REF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideInput {
    pub name: String,
    pub flake_ref: String,
}

impl OverrideInput {
    pub fn new(name: impl Into<String>, flake_ref: impl Into<String>) -> OverrideInput {
        OverrideInput { name: name.into(), flake_ref: flake_ref.into() }
    }
}

/// Where `nix` is and the environment it runs with. Shared by every invocation so tests can
/// point at a specific binary and set `NIX_CONFIG` without touching the process environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nix {
    pub program: PathBuf,
    pub env: Vec<(OsString, OsString)>,
}

impl Default for Nix {
    fn default() -> Self {
        Nix { program: PathBuf::from("nix"), env: Vec::new() }
    }
}

impl Nix {
    /// Adds an environment variable for every command this handle runs.
    pub fn with_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Nix {
        self.env.push((key.into(), value.into()));
        self
    }

    /// `nix eval --json INSTALLABLE`.
    pub fn eval(&self, installable: impl Into<String>) -> NixCommand {
        NixCommand {
            nix: self.clone(),
            subcommand: "eval",
            installable: installable.into(),
            apply: None,
            override_inputs: Vec::new(),
            options: Vec::new(),
        }
    }

    /// Runs `nix --version` and parses it.
    pub async fn version(&self) -> Result<NixVersion, NixError> {
        let output = Command::new(&self.program)
            .arg("--version")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|source| NixError::Spawn { program: self.program.clone(), source })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(NixError::Failed {
                command: format!("{} --version", self.program.display()),
                message: trim_stderr(&String::from_utf8_lossy(&output.stderr)),
            });
        }
        NixVersion::parse(&stdout).ok_or_else(|| NixError::Version { output: stdout.trim().to_string() })
    }
}

/// Version of the `nix` binary, e.g. `2.8.0` from `nix (Nix) 2.8.0` or `2.91.1` from Lix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NixVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// The whole first line of `nix --version`, which names the implementation (Nix, Lix, …).
    pub raw: String,
}

impl NixVersion {
    /// Flakes and `nix eval --apply` exist from 2.4 on.
    pub const MINIMUM: (u32, u32) = (2, 4);

    /// Parses the first line of `nix --version`: the last word that starts with a digit.
    pub fn parse(text: &str) -> Option<NixVersion> {
        let line = text.lines().next()?.trim();
        let word = line.split_whitespace().rev().find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
        let mut parts = word.split(['.', '-', '+', 'p']).map(|p| p.parse::<u32>().ok());
        let major = parts.next()??;
        let minor = parts.next()??;
        let patch = parts.next().flatten().unwrap_or(0);
        Some(NixVersion { major, minor, patch, raw: line.to_string() })
    }

    pub fn is_supported(&self) -> bool {
        (self.major, self.minor) >= NixVersion::MINIMUM
    }
}

impl std::fmt::Display for NixVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// One `nix` invocation. Build it, check [`NixCommand::argv`], run it with
/// [`NixCommand::run_json`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NixCommand {
    nix: Nix,
    subcommand: &'static str,
    installable: String,
    apply: Option<String>,
    override_inputs: Vec<OverrideInput>,
    options: Vec<(String, String)>,
}

impl NixCommand {
    /// `--apply EXPR`: a function applied to the installable's value before printing.
    pub fn apply(mut self, expr: impl Into<String>) -> NixCommand {
        self.apply = Some(expr.into());
        self
    }

    pub fn override_inputs(mut self, inputs: &[OverrideInput]) -> NixCommand {
        self.override_inputs.extend(inputs.iter().cloned());
        self
    }

    /// An extra `--option NAME VALUE` (e.g. `sandbox false` for a build).
    pub fn option(mut self, name: impl Into<String>, value: impl Into<String>) -> NixCommand {
        self.options.push((name.into(), value.into()));
        self
    }

    /// The full command line, program first.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = vec![
            self.nix.program.display().to_string(),
            "--extra-experimental-features".into(),
            EXPERIMENTAL_FEATURES.into(),
            "--option".into(),
            "allow-import-from-derivation".into(),
            "false".into(),
        ];
        for (name, value) in &self.options {
            argv.extend(["--option".into(), name.clone(), value.clone()]);
        }
        argv.extend([self.subcommand.to_string(), "--json".into(), self.installable.clone()]);
        if let Some(expr) = &self.apply {
            argv.extend(["--apply".into(), expr.clone()]);
        }
        for input in &self.override_inputs {
            argv.extend(["--override-input".into(), input.name.clone(), input.flake_ref.clone()]);
        }
        argv.push("--no-write-lock-file".into());
        argv
    }

    /// How the command is named in errors: the subcommand and the installable, not the
    /// (long) `--apply` expression.
    pub fn describe(&self) -> String {
        format!("nix {} {}", self.subcommand, self.installable)
    }

    /// Runs the command and decodes its JSON stdout. A failure carries nix's trimmed stderr.
    pub async fn run_json<T: DeserializeOwned>(&self) -> Result<T, NixError> {
        let argv = self.argv();
        tracing::debug!(command = %self.describe(), "running nix");
        let output = Command::new(&argv[0])
            .args(&argv[1..])
            .envs(self.nix.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| NixError::Spawn { program: self.nix.program.clone(), source })?;
        if !output.status.success() {
            return Err(NixError::Failed {
                command: self.describe(),
                message: trim_stderr(&String::from_utf8_lossy(&output.stderr)),
            });
        }
        serde_json::from_slice(&output.stdout)
            .map_err(|source| NixError::Decode { command: self.describe(), source })
    }
}

/// A `nix` invocation that did not produce what was asked.
#[derive(Debug, thiserror::Error)]
pub enum NixError {
    #[error("failed to run `{}`: {source} (install Nix 2.4 or later, or put `nix` on PATH)", program.display())]
    Spawn { program: PathBuf, source: std::io::Error },
    #[error("failed to read the nix version from `{output}` (expected `nix (Nix) 2.x.y`)")]
    Version { output: String },
    #[error("`{command}` failed: {message}")]
    Failed { command: String, message: String },
    #[error(
        "failed to decode the output of `{command}`: {source} (is the nixprox module of the flake the same version as this nixprox?)"
    )]
    Decode { command: String, source: serde_json::Error },
}

impl NixError {
    /// nix's own message, when nix ran and failed.
    pub fn nix_message(&self) -> Option<&str> {
        match self {
            NixError::Failed { message, .. } => Some(message),
            _ => None,
        }
    }
}

/// Keeps what matters of nix's stderr: from the first `error:` line on, without ANSI colours,
/// the `--show-trace` hint and blank lines. Without an `error:` line, everything but warnings
/// and lock-file chatter.
pub fn trim_stderr(stderr: &str) -> String {
    let plain = strip_ansi(stderr);
    let lines: Vec<&str> = plain.lines().collect();
    let kept: Vec<&str> = match lines.iter().position(|l| l.trim_start().starts_with("error:")) {
        Some(start) => lines[start..].to_vec(),
        None => lines
            .iter()
            .copied()
            .filter(|l| {
                let t = l.trim_start();
                !(t.starts_with("warning:") || t.starts_with('•') || l.starts_with("    "))
            })
            .collect(),
    };
    kept.into_iter()
        .filter(|l| !l.trim().is_empty() && !l.contains("use '--show-trace' to show detailed location"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Quotes `text` as a Nix string literal, so host names can be embedded in `--apply`.
pub fn nix_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '$' => out.push_str("\\$"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_argv_is_pure_json_and_never_writes_the_lock_file() {
        let command = Nix { program: "/usr/bin/nix".into(), env: vec![] }
            .eval("path:/src#nixosConfigurations")
            .apply("c: builtins.attrNames c")
            .override_inputs(&[
                OverrideInput::new("nixpkgs-lib", "path:/shared/nixpkgs-lib"),
                OverrideInput::new("nixprox", "path:/tmp/nixprox"),
            ]);
        assert_eq!(
            command.argv(),
            [
                "/usr/bin/nix",
                "--extra-experimental-features",
                "nix-command flakes",
                "--option",
                "allow-import-from-derivation",
                "false",
                "eval",
                "--json",
                "path:/src#nixosConfigurations",
                "--apply",
                "c: builtins.attrNames c",
                "--override-input",
                "nixpkgs-lib",
                "path:/shared/nixpkgs-lib",
                "--override-input",
                "nixprox",
                "path:/tmp/nixprox",
                "--no-write-lock-file",
            ]
        );
        assert!(!command.argv().iter().any(|a| a == "--impure"));
        assert_eq!(command.describe(), "nix eval path:/src#nixosConfigurations");
    }

    #[test]
    fn extra_options_come_before_the_subcommand() {
        let argv = Nix::default().eval(".#x").option("substituters", "").argv();
        assert_eq!(
            argv,
            [
                "nix",
                "--extra-experimental-features",
                "nix-command flakes",
                "--option",
                "allow-import-from-derivation",
                "false",
                "--option",
                "substituters",
                "",
                "eval",
                "--json",
                ".#x",
                "--no-write-lock-file"
            ]
        );
    }

    #[test]
    fn versions_of_nix_lix_and_determinate() {
        let v = NixVersion::parse("nix (Nix) 2.8.0\n").expect("nix");
        assert_eq!((v.major, v.minor, v.patch), (2, 8, 0));
        assert_eq!(v.raw, "nix (Nix) 2.8.0");
        assert_eq!(v.to_string(), "2.8.0");
        let v = NixVersion::parse("nix (Lix, like Nix) 2.91.1").expect("lix");
        assert_eq!((v.major, v.minor, v.patch), (2, 91, 1));
        let v = NixVersion::parse("nix (Determinate Nix 3.6.2) 2.29.0").expect("determinate");
        assert_eq!((v.major, v.minor, v.patch), (2, 29, 0));
        let v = NixVersion::parse("nix (Nix) 2.25pre20241101_dirty").expect("pre");
        assert_eq!((v.major, v.minor), (2, 25));
        assert!(v.is_supported());
        assert!(!NixVersion::parse("nix (Nix) 2.3.16").expect("old").is_supported());
        assert_eq!(NixVersion::parse("no version here"), None);
    }

    #[test]
    fn stderr_keeps_the_error_and_drops_the_noise() {
        let stderr = "warning: Git tree '/src' is dirty\nwarning: not writing modified lock file of flake 'path:/x':\n• Added input 'nixprox':\n    'path:/tmp/p' (2026-11-25)\n\u{1b}[31;1merror:\u{1b}[0m The option `nixprox.vm.corse' does not exist. Definition values:\n       - In `/nix/store/abc-source/flake.nix': 4\n\n(use '--show-trace' to show detailed location information)\n";
        assert_eq!(
            trim_stderr(stderr),
            "error: The option `nixprox.vm.corse' does not exist. Definition values:\n       - In `/nix/store/abc-source/flake.nix': 4"
        );
        assert_eq!(trim_stderr("warning: dirty\nsomething odd\n"), "something odd");
    }

    #[test]
    fn nix_strings_are_escaped() {
        assert_eq!(nix_string("web"), "\"web\"");
        assert_eq!(nix_string("a\"b\\c${x}"), "\"a\\\"b\\\\c\\${x}\"");
    }
}
