# The plan runner: pull-request jobs (label `nixprox-plan`) with a read-only Proxmox token.
# It holds nothing that can change the cluster, so a pull request's flake code can do no harm
# with what it finds here.
{ config, ... }:

{
  imports = [ ./common.nix ];
  networking.hostName = "runner-plan";

  age.secrets.proxmox-plan-token.file = ../secrets/proxmox-plan-token.age;

  services.nixprox-runner.instances.plan = {
    forge = "forgejo";
    url = "https://git.lab.example";
    tokenFile = config.age.secrets.forgejo-runner-token.path;
    role = "plan";
    proxmox.apiTokenFile = config.age.secrets.proxmox-plan-token.path;
  };
}
