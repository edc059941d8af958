# What `files` runs: Samba shares from the data disk (./disko.nix mounts it at /srv/files).
{ ... }:

{
  services.samba = {
    enable = true;
    openFirewall = true;
    settings.files = {
      path = "/srv/files";
      "read only" = "no";
    };
  };
}
