# nixprox's CI runner (exported as `nixosModules.runner`): a Forgejo or GitHub Actions runner
# on a NixOS machine that can reach Proxmox and the VMs, with everything `nixprox plan` and
# `nixprox apply` need:
#
# - nix with flakes, the nixprox package of this flake, and nixos-anywhere from the nixpkgs the
#   runner's own flake locks (pinned, never an unpinned `nix run` at apply time), plus ssh;
# - secrets as files on the runner (the Proxmox API token, the SSH key), handed to the runner
#   service with systemd's LoadCredential and to jobs as PROXMOX_API_TOKEN_FILE and
#   NIXPROX_SSH_KEY_FILE, so they never live in the forge;
# - a label per role (`nixprox-plan`, `nixprox-apply`), in host mode on Forgejo, which the
#   example workflows use;
# - one system user per instance, so a plan and an apply runner can share one machine: the
#   plan user's jobs cannot read the apply instance's credentials (systemd gives each unit's
#   credentials to that unit's user only);
# - on GitHub, a job-started hook the workflow cannot skip: the apply runner runs only pushes
#   to the default branch, the plan runner no pull request from a fork (unless allowed);
# - optionally, outgoing connections of a runner (and its jobs) limited to listed networks
#   (systemd's IPAddressAllow/IPAddressDeny).
#
# It configures NixOS's own `services.gitea-actions-runner` (Forgejo's runner is
# `pkgs.forgejo-runner`) or `services.github-runners`; see docs/guide.md, "The runner".
{ self }:
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption types literalExpression;
  cfg = config.services.nixprox-runner;
  hostName = config.networking.hostName or "nixprox";

  instanceType = types.submodule (
    { name, config, ... }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
          description = "Whether this runner instance runs.";
        };
        forge = mkOption {
          type = types.enum [ "forgejo" "github" ];
          example = "forgejo";
          description = "Which Actions runner: Forgejo's (`services.gitea-actions-runner`) or GitHub's (`services.github-runners`).";
        };
        url = mkOption {
          type = types.str;
          example = "https://git.lab.example";
          description = "The Forgejo instance, or the GitHub repository or organisation the runner registers with.";
        };
        name = mkOption {
          type = types.str;
          default = "${hostName}-nixprox-${name}";
          defaultText = literalExpression ''"''${config.networking.hostName}-nixprox-<instance>"'';
          description = "The runner's name on the forge.";
        };
        tokenFile = mkOption {
          type = types.str;
          example = "/run/agenix/forgejo-runner-token";
          description = ''
            File with the runner registration token: for Forgejo an environment file with
            `TOKEN=<token>`, for GitHub the token (or a fine-grained PAT) alone.
          '';
        };
        role = mkOption {
          type = types.enum [ "plan" "apply" ];
          description = ''
            `plan` runs pull-request jobs (plan, drift) with a read-only Proxmox token; `apply`
            runs the merge job with the write token and the SSH key. Keep them apart: a pull
            request's job must never reach the apply secrets.
          '';
        };
        labels = mkOption {
          type = types.listOf types.str;
          default = [ "nixprox-${config.role}" ];
          defaultText = literalExpression ''[ "nixprox-''${role}" ]'';
          description = "Labels jobs select the runner by (`runs-on`); on Forgejo they run in host mode (`<label>:host`).";
        };
        proxmox = {
          url = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "https://pve1.lab.example:8006";
            description = "`PROXMOX_URL` for jobs; `null` leaves it to `proxmox.url` in nixprox.yaml.";
          };
          caCertFile = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "/etc/nixprox/pve-root-ca.pem";
            description = "`PROXMOX_CA_CERT` for jobs (a copy of a node's /etc/pve/pve-root-ca.pem); `null` leaves it to nixprox.yaml.";
          };
          apiTokenFile = mkOption {
            type = types.str;
            example = "/run/agenix/proxmox-apply-token";
            description = ''
              File holding the API token (`user@realm!tokenid=secret`); jobs get it as
              `PROXMOX_API_TOKEN_FILE`. Read-only for a `plan` runner, the write token for
              `apply` (docs/guide.md, "Proxmox tokens").
            '';
          };
        };
        branch = mkOption {
          type = types.str;
          default = "main";
          description = ''
            The default branch. An `apply` runner on GitHub runs only jobs of a `push` (or
            `workflow_dispatch`) on this branch: a job-started hook
            (`ACTIONS_RUNNER_HOOK_JOB_STARTED`) refuses any other job before its first step,
            so a pull request that edits a workflow to ask for the apply label gets nothing.
            Forgejo's runner has no such hook (docs/ci.md, "What a job on the runner can reach").
          '';
        };
        forkPullRequests = mkOption {
          type = types.bool;
          default = false;
          description = ''
            Whether a `plan` runner on GitHub runs jobs of pull requests from forks. Off: the
            job-started hook refuses a job whose event's pull request comes from another
            repository, before its first step (a fork's code would otherwise run on the machine
            that holds the plan token). Forgejo asks a maintainer to approve fork runs of
            read-only users instead (docs/ci.md).
          '';
        };
        allowedAddresses = mkOption {
          type = types.nullOr (types.listOf types.str);
          default = null;
          example = [
            "10.0.10.0/24"
            "10.0.20.0/24"
          ];
          description = ''
            Where the runner and its jobs may connect, as IP addresses or prefixes (systemd's
            `IPAddressAllow`; everything else is `IPAddressDeny=any`, loopback stays allowed).
            `null`: no limit. For a `plan` runner, list the Proxmox nodes, the forge, and the
            caches and mirrors its jobs fetch from: a pull request's flake can then fetch
            nothing else during evaluation. Fetches the nix daemon makes for the jobs
            (substitutes, builds) are not limited: they run in the daemon's unit.
          '';
        };
        sshKeyFile = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "/run/agenix/nixprox-ssh-key";
          description = ''
            Private SSH key nixprox and nixos-anywhere log in to the VMs with; jobs get it as
            `NIXPROX_SSH_KEY_FILE`. Needed by `apply` (install, switch); on a `plan` runner, the
            probe key of `drift --probe` (docs/ci.md: a key the hosts accept only to print their
            running system), never the deploy key.
          '';
        };
        credentials = mkOption {
          type = types.attrsOf types.str;
          default = { };
          example = {
            host-key-db = "/run/agenix/host-key-db";
          };
          description = ''
            More secret files for the jobs, by name: loaded like the token and readable by the
            instance's user only, at `/run/nixprox-runner/<instance>/<name>` on either forge (a
            link to systemd's `/run/credentials/<unit>.service`). For example the host keys
            `nixprox.install.hostKeyFile` names.
          '';
        };
        environment = mkOption {
          type = types.attrsOf types.str;
          default = { };
          example = {
            NIXPROX_LOG = "info";
          };
          description = "More environment variables for the jobs (never secrets: use files).";
        };
      };
    }
  );

  enabled = lib.filterAttrs (_: instance: instance.enable) cfg.instances;
  ofForge = forge: lib.filterAttrs (_: instance: instance.forge == forge) enabled;

  # The NixOS runner modules' instance names, which are also their systemd units'
  # (`gitea-runner-<name>`, `github-runner-<name>`). `_` needs no escaping in unit names.
  runnerName = name: "nixprox_${name}";
  unitName =
    name: instance:
    (if instance.forge == "forgejo" then "gitea-runner-" else "github-runner-") + runnerName name;

  # What jobs find on PATH. curl: the action's install step downloads the release with it
  # (NixOS's GitHub runner has no curl of its own; Forgejo's host packages do).
  packages = [
    cfg.package
    cfg.nixosAnywhere
    config.nix.package
    pkgs.openssh
    pkgs.gitMinimal
    pkgs.curl
  ] ++ cfg.extraPackages;

  # Each instance's own system user (a systemd dynamic user). NixOS's Forgejo runner module
  # runs every instance as the one user `gitea-runner`, so a job of one instance could read
  # the credentials of another; the GitHub module already names each dynamic user after its
  # unit, which is distinct per instance.
  userName = name: "nixprox-runner-${name}";
  # A Forgejo instance's state: the registration (`.runner`) and the jobs' work directories.
  forgejoHome = name: "/var/lib/nixprox-runner/${name}/${runnerName name}";

  # GitHub's job-started hook (actions/runner runs it with the job's GITHUB_* variables
  # before the first step; a non-zero exit fails the job). The workflow file cannot change it.
  guard =
    name: instance:
    pkgs.writeShellScript "nixprox-runner-guard-${name}.sh" (
      if instance.role == "apply" then
        ''
          event="''${GITHUB_EVENT_NAME:-}"
          ref="''${GITHUB_REF:-}"
          if { [ "$event" != push ] && [ "$event" != workflow_dispatch ]; } || [ "$ref" != ${lib.escapeShellArg "refs/heads/${instance.branch}"} ]; then
            echo "::error::this nixprox apply runner refuses a \`$event\` job on \`$ref\`: it holds the apply token and runs only pushes to \`${instance.branch}\` (services.nixprox-runner.instances.${name}.branch)"
            exit 1
          fi
        ''
      else if instance.forkPullRequests then
        ""
      else
        ''
          if ! head="$(${pkgs.jq}/bin/jq -r '.pull_request.head.repo.full_name // empty' "''${GITHUB_EVENT_PATH:-}")"; then
            echo "::error::this nixprox plan runner cannot read the job's event (GITHUB_EVENT_PATH), so it cannot tell a fork's pull request: refused"
            exit 1
          fi
          if [ -n "$head" ] && [ "$head" != "''${GITHUB_REPOSITORY:-}" ]; then
            echo "::error::this nixprox plan runner refuses a job of a pull request from the fork \`$head\`: it holds the plan token (set services.nixprox-runner.instances.${name}.forkPullRequests to allow forks)"
            exit 1
          fi
        ''
    );

  # The forge-independent link to an instance's credentials directory.
  credentialsLink = name: "/run/nixprox-runner/${name}";

  # Where systemd puts the unit's credentials (systemd.exec(5), "Credentials").
  credential = name: instance: file: "/run/credentials/${unitName name instance}.service/${file}";

  jobEnvironment =
    name: instance:
    {
      PROXMOX_API_TOKEN_FILE = credential name instance "proxmox-api-token";
    }
    // lib.optionalAttrs (instance.sshKeyFile != null) {
      NIXPROX_SSH_KEY_FILE = credential name instance "ssh-key";
    }
    // lib.optionalAttrs (instance.proxmox.url != null) { PROXMOX_URL = instance.proxmox.url; }
    // lib.optionalAttrs (instance.proxmox.caCertFile != null) { PROXMOX_CA_CERT = instance.proxmox.caCertFile; }
    // instance.environment;
in
{
  options.services.nixprox-runner = {
    package = mkOption {
      type = types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      defaultText = literalExpression "nixprox.packages.\${system}.default";
      description = "The nixprox the jobs run: this flake's, at the revision the runner's flake.lock pins.";
    };
    nixosAnywhere = mkOption {
      type = types.package;
      default = pkgs.nixos-anywhere;
      defaultText = literalExpression "pkgs.nixos-anywhere";
      description = ''
        nixos-anywhere on the jobs' PATH (nixprox runs the one it finds there before falling
        back to `nix run`), from the nixpkgs the runner's flake.lock pins.
      '';
    };
    extraPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
      description = "More packages on the jobs' PATH (e.g. `jq` for a sharded matrix on older Forgejo).";
    };
    sshConfig = mkOption {
      type = types.lines;
      default = ''
        Host *
          ServerAliveInterval 15
          ServerAliveCountMax 8
      '';
      description = ''
        Client settings added to /etc/ssh/ssh_config for ssh, `nix copy` and nixos-anywhere
        (keep long installs alive). nixprox's own SSH connections do not read it: the runner
        must reach the VMs directly (no `ProxyJump`).
      '';
    };
    instances = mkOption {
      type = types.attrsOf instanceType;
      default = { };
      example = literalExpression ''
        {
          plan = {
            forge = "forgejo";
            url = "https://git.lab.example";
            tokenFile = "/run/agenix/forgejo-runner-token";
            role = "plan";
            proxmox.apiTokenFile = "/run/agenix/proxmox-plan-token";
          };
        }
      '';
      description = "Runner instances by name (letters, digits and `_`); usually one per role and machine.";
    };
  };

  config = lib.mkIf (enabled != { }) {
    assertions = lib.mapAttrsToList (name: _: {
      assertion = builtins.match "[A-Za-z0-9_]+" name != null;
      message = "services.nixprox-runner.instances.${name}: instance names may hold only letters, digits and `_`";
    }) enabled;
    warnings = lib.concatLists (
      lib.mapAttrsToList (
        name: instance:
        lib.optional (instance.role == "apply" && instance.sshKeyFile == null)
          "services.nixprox-runner.instances.${name}: an apply runner without `sshKeyFile` cannot install or switch hosts (nixprox skips those steps)"
      ) enabled
    );

    nix.settings.experimental-features = [
      "nix-command"
      "flakes"
    ];
    programs.ssh.extraConfig = cfg.sshConfig;

    # Forgejo's own runner (the NixOS module defaults to Gitea's act_runner).
    services.gitea-actions-runner.package = lib.mkIf (ofForge "forgejo" != { }) (
      lib.mkDefault pkgs.forgejo-runner
    );
    services.gitea-actions-runner.instances = lib.mapAttrs' (
      name: instance:
      lib.nameValuePair (runnerName name) {
        enable = true;
        inherit (instance) name url tokenFile;
        labels = map (label: "${label}:host") instance.labels;
        # The NixOS module's defaults, which actions such as checkout need, plus nixprox's.
        hostPackages =
          (with pkgs; [
            bash
            coreutils
            curl
            gawk
            gnused
            nodejs
            wget
          ])
          ++ packages;
        settings.runner.envs = jobEnvironment name instance;
      }
    ) (ofForge "forgejo");

    services.github-runners = lib.mapAttrs' (
      name: instance:
      lib.nameValuePair (runnerName name) {
        enable = true;
        inherit (instance) name url tokenFile;
        extraLabels = instance.labels;
        extraPackages = packages;
        extraEnvironment = jobEnvironment name instance // {
          ACTIONS_RUNNER_HOOK_JOB_STARTED = "${guard name instance}";
        };
      }
    ) (ofForge "github");

    # A path per instance that does not depend on the forge (the unit's name does): hosts name
    # their pre-generated host keys as `/run/nixprox-runner/<instance>/<credential>`
    # (`nixprox.install.hostKeyFile`). The files stay readable by the unit's user only.
    systemd.tmpfiles.rules = lib.mapAttrsToList (
      name: instance: "L+ ${credentialsLink name} - - - - /run/credentials/${unitName name instance}.service"
    ) enabled;

    systemd.services = lib.mapAttrs' (
      name: instance:
      lib.nameValuePair (unitName name instance) (
        {
          serviceConfig = {
            LoadCredential = [
              "proxmox-api-token:${instance.proxmox.apiTokenFile}"
            ]
            ++ lib.optional (instance.sshKeyFile != null) "ssh-key:${instance.sshKeyFile}"
            ++ lib.mapAttrsToList (file: path: "${file}:${path}") instance.credentials;
          }
          // lib.optionalAttrs (instance.allowedAddresses != null) {
            IPAddressDeny = "any";
            IPAddressAllow = [ "localhost" ] ++ instance.allowedAddresses;
          }
          # Its own dynamic user and state directory instead of the shared `gitea-runner`; the
          # module's registration script keeps `.runner` in `$STATE_DIRECTORY/<runner name>`,
          # where the daemon (started in WorkingDirectory) reads it.
          // lib.optionalAttrs (instance.forge == "forgejo") {
            User = lib.mkForce (userName name);
            StateDirectory = lib.mkForce "nixprox-runner/${name}";
            WorkingDirectory = lib.mkForce "-${forgejoHome name}";
          };
        }
        // lib.optionalAttrs (instance.forge == "forgejo") {
          environment.HOME = lib.mkForce (forgejoHome name);
        }
      )
    ) enabled;
  };
}
