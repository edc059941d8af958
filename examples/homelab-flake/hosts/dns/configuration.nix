# What `dns` runs.
{ ... }:

{
  services.unbound.enable = true;
  networking.firewall.allowedUDPPorts = [ 53 ];
  networking.firewall.allowedTCPPorts = [ 53 ];
}
