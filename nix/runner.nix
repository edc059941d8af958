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
#   example workflows use.
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
        sshKeyFile = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "/run/agenix/nixprox-ssh-key";
          description = ''
            Private SSH key nixprox and nixos-anywhere log in to the VMs with; jobs get it as
            `NIXPROX_SSH_KEY_FILE`. Needed by `apply` (install, switch) and by `plan --probe`.
          '';
        };
        credentials = mkOption {
          type = types.attrsOf types.str;
          default = { };
          example = {
            host-key-db = "/run/agenix/host-key-db";
          };
          description = ''
            More secret files for the jobs, by name: loaded like the token and readable at
            `/run/credentials/<unit>.service/<name>`, the unit being
            `gitea-runner-nixprox_<instance>` (Forgejo) or `github-runner-nixprox_<instance>`
            (GitHub). For example the host keys `nixprox.install.hostKeyFile` names.
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

  # What jobs find on PATH.
  packages = [
    cfg.package
    cfg.nixosAnywhere
    config.nix.package
    pkgs.openssh
    pkgs.gitMinimal
  ] ++ cfg.extraPackages;

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
        extraEnvironment = jobEnvironment name instance;
      }
    ) (ofForge "github");

    systemd.services = lib.mapAttrs' (
      name: instance:
      lib.nameValuePair (unitName name instance) {
        serviceConfig.LoadCredential = [
          "proxmox-api-token:${instance.proxmox.apiTokenFile}"
        ]
        ++ lib.optional (instance.sshKeyFile != null) "ssh-key:${instance.sshKeyFile}"
        ++ lib.mapAttrsToList (file: path: "${file}:${path}") instance.credentials;
      }
    ) enabled;
  };
}
