# The apply runner: the only machine that holds the write token, the SSH key and the hosts'
# host keys. Only the merge workflow (label `nixprox-apply`) runs here; pull requests never do.
{ config, ... }:

let
  secret = name: config.age.secrets.${name}.path;
in
{
  imports = [ ./common.nix ];
  networking.hostName = "runner-apply";

  age.secrets = {
    proxmox-apply-token.file = ../secrets/proxmox-apply-token.age;
    nixprox-ssh-key.file = ../secrets/nixprox-ssh-key.age;
    host-key-web.file = ../secrets/host-key-web.age;
    host-key-db.file = ../secrets/host-key-db.age;
  };

  services.nixprox-runner.instances.apply = {
    forge = "forgejo";
    url = "https://git.lab.example";
    tokenFile = secret "forgejo-runner-token";
    role = "apply";
    proxmox.apiTokenFile = secret "proxmox-apply-token";
    sshKeyFile = secret "nixprox-ssh-key";
    # Readable by jobs as /run/credentials/gitea-runner-nixprox_apply.service/<name>: the
    # paths hosts/<name>/nixprox.nix gives `nixprox.install.hostKeyFile`.
    credentials = {
      host-key-web = secret "host-key-web";
      host-key-db = secret "host-key-db";
    };
  };
}
