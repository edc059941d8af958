//! Command-line types (clap). They carry no logic: `run` turns them into requests.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// GitOps for NixOS on Proxmox VE: plan and apply a flake's VMs from CI.
#[derive(Debug, Parser)]
#[command(name = "nixprox", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// When to colour terminal output (`NO_COLOR` turns it off in `auto`).
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compare the flake's hosts with the live cluster and print what would change.
    Plan(PlanArgs),
    /// Carry out the reviewed plan: create and update VMs, install and switch NixOS.
    Apply(ApplyArgs),
    /// Plan on a schedule and keep one issue open while the cluster differs from the flake.
    Drift(DriftArgs),
    /// Stop managing a host's VM without destroying it: remove its `nixprox` tag and metadata
    /// block, leave the VM and the rest of its notes as they are.
    Forget(ForgetArgs),
    /// Print the `nixprox.vm` block (Nix) that declares an existing VM as it is, from its live
    /// config: paste it into the host's module.
    Import(ImportArgs),
    /// List the `nixprox-*` image files no host of the flake refers to any more; remove them
    /// with `--delete`.
    GcImages(GcImagesArgs),
}

/// Where the settings come from, for commands that do not evaluate the flake.
#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// The flake whose root holds `nixprox.yaml` (only read for the settings).
    #[arg(long, default_value = ".", env = "NIXPROX_FLAKE")]
    pub flake: String,

    /// Settings file; default `nixprox.yaml` at the flake root (optional there).
    #[arg(long, env = "NIXPROX_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// The host (attribute name under `nixosConfigurations`) whose VM nixprox lets go of.
    pub host: String,

    /// The VM, when the host's name alone does not tell (several VMs carry it).
    #[arg(long)]
    pub vmid: Option<u32>,

    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The VM: its VMID, or its name when no other VM has it.
    pub vm: String,

    /// Write the host module to this new file (its directory is created; an existing file is
    /// never overwritten) instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,

    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// Where nixprox reports in CI; every value is detected from the environment and can be
/// overridden here.
#[derive(Debug, Args)]
pub struct ForgeArgs {
    /// The forge API to talk to (default: detected from the CI environment).
    #[arg(long, value_parser = ["github", "forgejo"])]
    pub forge: Option<String>,

    /// Repository as `owner/name` (default: `GITHUB_REPOSITORY` / `FORGEJO_REPOSITORY`).
    #[arg(long)]
    pub repo: Option<String>,

    /// Pull request number (default: from the event payload).
    #[arg(long)]
    pub pr: Option<u64>,

    /// API base URL (default: `GITHUB_API_URL`, or Forgejo's `…/api/v1`).
    #[arg(long)]
    pub api_url: Option<String>,

    /// Environment variable holding the forge token; always wins over the runner's own
    /// variables (default: `FORGEJO_TOKEN` on Forgejo when set, else `GITHUB_TOKEN`).
    #[arg(long)]
    pub token_env: Option<String>,

    /// Login of the account nixprox comments as, for tokens that cannot tell (a GitHub App's
    /// installation token: `<app-slug>[bot]`). Default: asked from the forge.
    #[arg(long, env = "NIXPROX_BOT_LOGIN")]
    pub bot_login: Option<String>,

    /// Commit to report statuses on (default: the pull request's head, or the pushed commit).
    #[arg(long)]
    pub sha: Option<String>,
}

/// Where the desired state comes from: shared by plan, apply and drift.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Flake reference holding `nixosConfigurations` (a path, `path:…`, `git+file:…`, …).
    #[arg(long, default_value = ".", env = "NIXPROX_FLAKE")]
    pub flake: String,

    /// Settings file; default `nixprox.yaml` at the flake root (optional there).
    #[arg(long, env = "NIXPROX_CONFIG")]
    pub config: Option<PathBuf>,

    /// Override a flake input, as `nix --override-input NAME REF` (repeatable).
    #[arg(long, num_args = 2, value_names = ["NAME", "REF"])]
    pub override_input: Vec<String>,

    /// Only these hosts (comma-separated attribute names; orphan VMs by VM name).
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,

    /// Concurrent `nix eval` processes (default: settings `concurrency.eval_jobs`, else CPUs).
    #[arg(long)]
    pub eval_jobs: Option<usize>,

    /// Most hosts one `nix eval` process evaluates before a fresh one takes over (default: no
    /// limit; `eval.max_memory` decides). 1 is one process per host.
    #[arg(long, value_name = "N")]
    pub eval_batch: Option<usize>,

    /// Concurrent Proxmox API reads (default: settings `concurrency.api`).
    #[arg(long)]
    pub concurrency: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Markdown,
    Json,
    /// A GitHub/Forgejo Actions matrix of the changed hosts, in shards (see docs/ci.md).
    Matrix,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Write the rendering to this file instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// `--format matrix`: number of shards (default: one per 25 changed hosts). The hosts of
    /// one Proxmox node always share a shard, so there are never more shards than nodes.
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,

    /// Exit 2 when the plan has changes, 0 when there is nothing to do (1 is always an error).
    #[arg(long)]
    pub detailed_exitcode: bool,

    /// Post the plan as one sticky pull-request comment (edited in place on later runs) and set
    /// the `nixprox/plan` commit status.
    #[arg(long)]
    pub comment: bool,

    /// Fail when the comment cannot be posted (by default a read-only token only warns).
    #[arg(long, requires = "comment")]
    pub comment_required: bool,

    /// Also read `/run/current-system` of every installed host over SSH (pinned keys) and
    /// report hosts changed outside nixprox. Meant for drift runs on the self-hosted runner.
    #[arg(long)]
    pub probe: bool,

    /// Write the wall time of each phase as JSON to this file (for benchmarks).
    #[arg(long)]
    pub timings: Option<PathBuf>,

    /// Compare the NixOS configuration of every host whose system changes with this base: a
    /// flake reference (`github:…`, `git+file:…`, a path) or a git revision of the local flake
    /// (`main`, a commit). Default in CI: the pull request's base commit.
    #[arg(long, value_name = "REF")]
    pub base: Option<String>,

    /// Do not compare with any base (no NixOS changes in the plan, no extra evaluation).
    #[arg(long, conflicts_with = "base")]
    pub no_base: bool,
    /// Plan only shard I of N (`2/3`): evaluate every N-th host and read the VMs of this
    /// shard's Proxmox nodes, and write a shard file (`--format json --out part-2.json`) for
    /// `--merge`. See docs/ci.md.
    #[arg(long, value_name = "I/N", conflicts_with_all = ["merge", "comment", "probe", "detailed_exitcode"])]
    pub shard: Option<String>,

    /// Merge the shard files of every `--shard I/N` run into the plan one unsharded run would
    /// make (same plan id); refused when a shard is missing or read another commit or cluster.
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with = "probe")]
    pub merge: Vec<PathBuf>,

    #[command(flatten)]
    pub forge: ForgeArgs,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// The id of the reviewed plan (default in CI: from the merged pull request's plan comment).
    #[arg(long, conflicts_with = "reviewed_plan")]
    pub plan_id: Option<String>,

    /// The reviewed plan as `nixprox plan --format json` wrote it: lets a re-run resume
    /// half-done work and explains what changed since review.
    #[arg(long)]
    pub reviewed_plan: Option<PathBuf>,

    /// Apply the recomputed plan even when it differs from the reviewed one.
    #[arg(long)]
    pub allow_new_plan: bool,

    /// Write the report as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,

    /// In CI, post the report on the merged pull request (and set the `nixprox/apply` status).
    #[arg(long)]
    pub comment: bool,

    #[command(flatten)]
    pub forge: ForgeArgs,
}

#[derive(Debug, Args)]
pub struct DriftArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Open (or update) one issue while there are changes, and close it when there are none.
    #[arg(long)]
    pub issue: bool,

    /// Also read `/run/current-system` of every installed host over SSH (see `plan --probe`).
    #[arg(long)]
    pub probe: bool,

    /// Exit 2 when the cluster drifted from the flake.
    #[arg(long)]
    pub detailed_exitcode: bool,

    #[command(flatten)]
    pub forge: ForgeArgs,
}

#[derive(Debug, Args)]
pub struct GcImagesArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Remove the files listed (without it, nothing is deleted).
    #[arg(long)]
    pub delete: bool,

    /// Exit 2 when there are files to remove and `--delete` is not given.
    #[arg(long)]
    pub detailed_exitcode: bool,
}
