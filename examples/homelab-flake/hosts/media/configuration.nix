# What `media` runs: Jellyfin, its library on the VM's own disk.
{ ... }:

{
  services.jellyfin = {
    enable = true;
    openFirewall = true;
  };
}
