# One runner machine with two runners, each its own system user with its own credentials
# (nix/runner.nix): `plan` runs pull-request and drift jobs with the read-only Proxmox token
# and the probe key; `apply` runs the merge job with the write token, the deploy key and the
# hosts' host keys. A job of the plan runner cannot read the apply runner's files.
#
# For GitHub: `forge = "github"`, `url = "https://github.com/<owner>/<repo>"`, and a
# fine-grained personal access token in the token file (docs/guide.md, "The runner").
{ config, ... }:

let
  # Where the secrets are decrypted to (agenix: root-only files under /run/agenix). Without
  # agenix, write this as `name: "/var/lib/nixprox-secrets/${name}"` and create those files
  # by hand, owned by root, mode 0400.
  secret = name: config.age.secrets.${name}.path;
in
{
  networking.hostName = "runner";
  services.openssh.enable = true;
  system.stateVersion = "25.11";

  age.secrets = {
    forgejo-runner-token.file = ../secrets/forgejo-runner-token.age;
    proxmox-plan-token.file = ../secrets/proxmox-plan-token.age;
    nixprox-probe-key.file = ../secrets/nixprox-probe-key.age;
    proxmox-apply-token.file = ../secrets/proxmox-apply-token.age;
    nixprox-ssh-key.file = ../secrets/nixprox-ssh-key.age;
    host-key-web.file = ../secrets/host-key-web.age;
    host-key-db.file = ../secrets/host-key-db.age;
  };

  services.nixprox-runner.instances = {
    plan = {
      forge = "forgejo";
      url = "https://git.lab.example";
      # `TOKEN=<registration token>` (the repository's Settings → Actions → Runners).
      tokenFile = secret "forgejo-runner-token";
      role = "plan";
      proxmox.apiTokenFile = secret "proxmox-plan-token";
      # drift --probe: a key the hosts accept only to print their running system.
      sshKeyFile = secret "nixprox-probe-key";
    };
    apply = {
      forge = "forgejo";
      url = "https://git.lab.example";
      tokenFile = secret "forgejo-runner-token";
      role = "apply";
      proxmox.apiTokenFile = secret "proxmox-apply-token";
      sshKeyFile = secret "nixprox-ssh-key";
      # Readable by the apply jobs as /run/nixprox-runner/apply/<name>: the paths
      # hosts/<name>/nixprox.nix gives `nixprox.install.hostKeyFile`.
      credentials = {
        host-key-web = secret "host-key-web";
        host-key-db = secret "host-key-db";
      };
    };
  };
}
