//! The `nix` command line: one builder ([`NixCommand`]) for every `nix` invocation nixprox makes
//! (`eval`, `build`, `copy`, `flake metadata`), whose exact argument list is unit-tested without
//! running anything; the one [`OverrideInput`] type; the version probe ([`NixVersion`]); and the
//! trimming of nix's stderr into an error message.
//!
//! A pull request's flake is untrusted input, so every evaluation is pure (never `--impure`)
//! and refuses import-from-derivation: evaluating a PR must never build or run anything. The
//! same options go on `nix build` (apply builds what plan evaluated, so a flake that plan
//! refused never reaches it) and `nix flake metadata`; `nix copy` evaluates nothing.
//! Only forms Nix 2.8 already has (`nix build --json`, not `--print-out-paths`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::process::Command;

/// The features nixprox needs; passed as `--extra-experimental-features` because Nix before
/// 2.19-ish (and Debian's 2.8) does not enable them by default.
pub const EXPERIMENTAL_FEATURES: &str = "nix-command flakes";

/// An input replaced on the command line (`--override-input NAME REF`). Parsed once from the
/// command line ([`OverrideInput::parse_pairs`]) and handed to every evaluation and build, so
/// apply builds exactly what plan evaluated.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OverrideInput {
    pub name: String,
    pub flake_ref: String,
}

/// A malformed `--override-input`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverrideInputError {
    #[error(
        "`--override-input {0}` has no flake reference (it takes two values: `--override-input NAME REF`)"
    )]
    MissingRef(String),
    #[error(
        "`--override-input` has an empty input name (it takes two values: `--override-input NAME REF`, e.g. `--override-input nixpkgs github:NixOS/nixpkgs/nixos-24.11`)"
    )]
    EmptyName,
    #[error(
        "`--override-input {0}` has an empty flake reference (give a flake reference, e.g. `path:/src/nixpkgs`)"
    )]
    EmptyRef(String),
}

impl OverrideInput {
    pub fn new(name: impl Into<String>, flake_ref: impl Into<String>) -> OverrideInput {
        OverrideInput { name: name.into(), flake_ref: flake_ref.into() }
    }

    /// The command line's flat `NAME REF NAME REF …` list as pairs. Every value is checked here,
    /// once, so no command can drop or pass on a malformed one.
    pub fn parse_pairs(values: &[String]) -> Result<Vec<OverrideInput>, OverrideInputError> {
        values
            .chunks(2)
            .map(|pair| match pair {
                [name, ..] if name.trim().is_empty() => Err(OverrideInputError::EmptyName),
                [name, flake_ref] if flake_ref.trim().is_empty() => {
                    Err(OverrideInputError::EmptyRef(name.clone()))
                }
                [name, flake_ref] => Ok(OverrideInput::new(name.clone(), flake_ref.clone())),
                _ => Err(OverrideInputError::MissingRef(pair.concat())),
            })
            .collect()
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

    fn command(&self, subcommand: Subcommand) -> NixCommand {
        NixCommand {
            nix: self.clone(),
            subcommand,
            override_inputs: Vec::new(),
            options: Vec::new(),
            env: Vec::new(),
        }
    }

    /// `nix eval --json INSTALLABLE`.
    pub fn eval(&self, installable: impl Into<String>) -> NixCommand {
        self.command(Subcommand::Eval { installable: installable.into(), apply: None })
    }

    /// `nix build --json --no-link INSTALLABLE`: the out path is read from the JSON
    /// ([`parse_build_json`]), since `--print-out-paths` does not exist in 2.8.
    pub fn build(&self, installable: impl Into<String>) -> NixCommand {
        self.command(Subcommand::Build { installable: installable.into() })
    }

    /// `nix copy --to STORE PATHS…` (`--no-check-sigs` unless [`NixCommand::check_sigs`]).
    pub fn copy_to(&self, store: impl Into<String>, paths: Vec<String>) -> NixCommand {
        self.command(Subcommand::Copy { store: store.into(), paths, check_sigs: false })
    }

    /// `nix flake metadata --json FLAKE`: the locked flake (`locked.narHash`, `locks`).
    pub fn flake_metadata(&self, flake: impl Into<String>) -> NixCommand {
        self.command(Subcommand::FlakeMetadata { flake: flake.into() })
    }

    /// Runs `nix --version` and parses it.
    pub async fn version(&self) -> Result<NixVersion, NixError> {
        let output = Command::new(&self.program)
            .arg("--version")
            .env_clear()
            .envs(scrubbed_env())
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

/// Variables an evaluating `nix` keeps from nixprox's environment, by name.
const KEPT_VARS: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TMPDIR",
    "TMP",
    "TEMP",
    "TZ",
    "LANG",
    "LANGUAGE",
    "TERM",
    "NO_COLOR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "CURL_CA_BUNDLE",
    "GC_INITIAL_HEAP_SIZE",
    "http_proxy",
    "https_proxy",
    "ftp_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "FTP_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
];

/// Prefixes of the variables it keeps: nix's own settings (`NIX_CONFIG`, `NIX_PATH`,
/// `NIX_REMOTE`, `NIX_SSL_CERT_FILE`, …), locales and the XDG directories (nix's cache).
const KEPT_PREFIXES: &[&str] = &["NIX_", "LC_", "XDG_"];

/// The environment a `nix` that evaluates a flake runs with: the variables nix and its
/// fetchers read (search path, home and cache, temporary directory, locale, certificates,
/// proxies, nix's own settings), and nothing else. Tokens (`PROXMOX_API_TOKEN`,
/// `GITHUB_TOKEN`, `FORGEJO_TOKEN`, an SSH key in `NIXPROX_SSH_KEY`, whatever a workflow adds)
/// are not among them: a pull request's flake is evaluated with nothing secret in reach of
/// its evaluation, its fetchers or anything they start. `NIX_CONFIG` is passed on (it is how
/// CI sets substituters); an `access-tokens` setting in it reaches nix, and docs/security.md
/// says to keep it out of the plan job. Reads the process environment: the one other place
/// than `run` that does, so that no caller can forget it.
pub fn scrubbed_env() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(key, _)| {
            key.to_str().is_some_and(|key| {
                KEPT_VARS.contains(&key) || KEPT_PREFIXES.iter().any(|p| key.starts_with(p))
            })
        })
        .collect()
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

/// What a [`NixCommand`] does; each kind has its own words after the common prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Subcommand {
    Eval { installable: String, apply: Option<String> },
    Build { installable: String },
    Copy { store: String, paths: Vec<String>, check_sigs: bool },
    FlakeMetadata { flake: String },
}

impl Subcommand {
    /// Whether the command evaluates a flake: those get the purity options, the overrides and
    /// `--no-write-lock-file` (a plan never writes to the checkout).
    fn evaluates(&self) -> bool {
        !matches!(self, Subcommand::Copy { .. })
    }
}

/// One `nix` invocation. Build it, check [`NixCommand::argv`], run it with
/// [`NixCommand::run_json`] (or hand [`NixCommand::argv`] and [`NixCommand::env`] to a runner
/// that streams the output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NixCommand {
    nix: Nix,
    subcommand: Subcommand,
    override_inputs: Vec<OverrideInput>,
    options: Vec<(String, String)>,
    /// Environment of this command only (e.g. `NIX_SSHOPTS` for a copy).
    env: Vec<(OsString, OsString)>,
}

impl NixCommand {
    /// `--apply EXPR` of an eval: a function applied to the installable's value before printing.
    pub fn apply(mut self, expr: impl Into<String>) -> NixCommand {
        if let Subcommand::Eval { apply, .. } = &mut self.subcommand {
            *apply = Some(expr.into());
        }
        self
    }

    /// Checks signatures on a copy (off by default: the closure was built by this runner).
    pub fn check_sigs(mut self, check: bool) -> NixCommand {
        if let Subcommand::Copy { check_sigs, .. } = &mut self.subcommand {
            *check_sigs = check;
        }
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

    /// An environment variable for this command only.
    pub fn env_var(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> NixCommand {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The full command line, program first: global options, then the subcommand's words, then
    /// the flake options.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = vec![
            self.nix.program.display().to_string(),
            "--extra-experimental-features".into(),
            EXPERIMENTAL_FEATURES.into(),
        ];
        let evaluates = self.subcommand.evaluates();
        if evaluates {
            argv.extend(["--option".into(), "allow-import-from-derivation".into(), "false".into()]);
        }
        for (name, value) in &self.options {
            argv.extend(["--option".into(), name.clone(), value.clone()]);
        }
        match &self.subcommand {
            Subcommand::Eval { installable, apply } => {
                argv.extend(["eval".into(), "--json".into(), installable.clone()]);
                if let Some(expr) = apply {
                    argv.extend(["--apply".into(), expr.clone()]);
                }
            }
            Subcommand::Build { installable } => {
                argv.extend(["build".into(), "--json".into(), "--no-link".into(), installable.clone()]);
            }
            Subcommand::Copy { store, paths, check_sigs } => {
                argv.extend(["copy".into(), "--to".into(), store.clone()]);
                if !check_sigs {
                    argv.push("--no-check-sigs".into());
                }
                argv.extend(paths.iter().cloned());
            }
            Subcommand::FlakeMetadata { flake } => {
                argv.extend(["flake".into(), "metadata".into(), "--json".into(), flake.clone()]);
            }
        }
        if evaluates {
            for input in &self.override_inputs {
                argv.extend(["--override-input".into(), input.name.clone(), input.flake_ref.clone()]);
            }
            argv.push("--no-write-lock-file".into());
        }
        argv
    }

    /// The environment the command runs with: the handle's, then the command's own.
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        self.nix.env.iter().chain(&self.env).cloned().collect()
    }

    /// A process for this command with stdin closed, killed when dropped; the caller picks
    /// what happens to stdout and stderr. A command that evaluates a flake (eval, build, flake
    /// metadata) runs with a scrubbed environment ([`scrubbed_env`]): the flake may be a pull
    /// request's, and no token nixprox holds is any business of it.
    pub fn command(&self) -> Command {
        let argv = self.argv();
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        if self.subcommand.evaluates() {
            command.env_clear().envs(scrubbed_env());
        }
        command.envs(self.env()).stdin(Stdio::null()).kill_on_drop(true);
        command
    }

    /// The program, for spawn errors.
    pub fn program(&self) -> &std::path::Path {
        &self.nix.program
    }

    /// How the command is named in errors: the subcommand and its object, not the (long)
    /// `--apply` expression.
    pub fn describe(&self) -> String {
        match &self.subcommand {
            Subcommand::Eval { installable, .. } => format!("nix eval {installable}"),
            Subcommand::Build { installable } => format!("nix build {installable}"),
            Subcommand::Copy { store, .. } => format!("nix copy --to {store}"),
            Subcommand::FlakeMetadata { flake } => format!("nix flake metadata {flake}"),
        }
    }

    /// Runs the command and decodes its JSON stdout. A failure carries nix's trimmed stderr.
    pub async fn run_json<T: DeserializeOwned>(&self) -> Result<T, NixError> {
        tracing::debug!(command = %self.describe(), "running nix");
        let output = self
            .command()
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

    /// Runs a `nix build` and returns the built `out` path; nix is killed after `timeout`.
    /// A failure keeps nix's stderr (the build log) for the caller to show.
    pub async fn run_build(&self, timeout: Duration) -> Result<String, BuildError> {
        let output = match tokio::time::timeout(timeout, self.command().output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(source)) => return Err(BuildError::Spawn { program: self.nix.program.clone(), source }),
            Err(_) => return Err(BuildError::TimedOut { timeout }),
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            return Err(BuildError::Failed { code: output.status.code(), stderr });
        }
        Ok(parse_build_json(&String::from_utf8_lossy(&output.stdout))?)
    }
}

/// The `out` path of the first result of `nix build --json`
/// (`[{"drvPath": …, "outputs": {"out": …}}]`).
pub fn parse_build_json(stdout: &str) -> Result<String, BuildOutputError> {
    let value: serde_json::Value =
        serde_json::from_str(stdout.trim()).map_err(|err| BuildOutputError::InvalidJson(err.to_string()))?;
    value
        .get(0)
        .and_then(|first| first.get("outputs"))
        .and_then(|outputs| outputs.get("out"))
        .and_then(|out| out.as_str())
        .map(String::from)
        .ok_or_else(|| BuildOutputError::NoOut(stdout.trim().to_string()))
}

/// `nix build --json` succeeded but printed no out path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildOutputError {
    #[error("`nix build --json` printed invalid JSON: {0}")]
    InvalidJson(String),
    #[error("`nix build --json` printed no `outputs.out`: {0}")]
    NoOut(String),
}

/// Lines of a failed build's log that [`BuildError::Failed`] shows.
const BUILD_LOG_LINES: usize = 30;

/// A `nix build` ([`NixCommand::run_build`]) that gave no out path. The image build words the
/// timeout and the failure its own way (with the fix when the builder lacks KVM).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("could not start `{}`: {source}", program.display())]
    Spawn { program: PathBuf, source: std::io::Error },
    #[error("timed out after {}s", timeout.as_secs())]
    TimedOut { timeout: Duration },
    #[error("{}; last lines of its output:\n{}", exit_reason(*code), last_lines(stderr, BUILD_LOG_LINES))]
    Failed { code: Option<i32>, stderr: String },
    #[error(transparent)]
    Output(#[from] BuildOutputError),
}

/// How a process ended, for messages: `exit code N` or `killed by a signal`.
pub fn exit_reason(code: Option<i32>) -> String {
    code.map_or("killed by a signal".to_string(), |c| format!("exit code {c}"))
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
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
mod tests;
