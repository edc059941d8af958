# What `db` runs. The password file is an agenix secret, encrypted to db's host key.
{ config, ... }:

{
  age.secrets.postgres-app-password = {
    file = ../../secrets/postgres-app-password.age;
    owner = "postgres";
  };
  services.postgresql = {
    enable = true;
    ensureDatabases = [ "app" ];
    enableTCPIP = true;
  };
  networking.firewall.allowedTCPPorts = [ 5432 ];
  # The data pool (./disko.nix): ZFS needs the module and a host id of its own.
  boot.supportedFilesystems = [ "zfs" ];
  networking.hostId = "8425e349";
}
