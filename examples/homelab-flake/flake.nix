# A homelab on two Proxmox VE nodes, managed by nixprox: every directory under ./hosts is one
# VM and its NixOS system. See ./README.md, and docs/guide.md for the whole setup.
{
  description = "Homelab on Proxmox VE, managed by nixprox";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
    # Keep this tag equal to the nixprox release the workflows install (docs/releasing.md).
    nixprox.url = "github:nixprox/nixprox/v0.1.0";
    nixprox.inputs.nixpkgs.follows = "nixpkgs";
    disko.url = "github:nix-community/disko";
    disko.inputs.nixpkgs.follows = "nixpkgs";
    agenix.url = "github:ryantm/agenix";
    agenix.inputs.nixpkgs.follows = "nixpkgs";
  };

  outputs =
    {
      nixpkgs,
      nixprox,
      disko,
      agenix,
      ...
    }:
    let
      # One VM per directory: hosts/<name>/{nixprox,configuration}.nix, and its disks: a disko
      # layout (disko.nix) for a VM nixprox creates, or the file systems of its own
      # hardware-configuration.nix for a VM adopted in place (hosts/media).
      names = builtins.attrNames (nixpkgs.lib.filterAttrs (_: type: type == "directory") (builtins.readDir ./hosts));
      optionalFile = path: nixpkgs.lib.optional (builtins.pathExists path) path;
      host =
        name:
        nixpkgs.lib.nixosSystem {
          system = "x86_64-linux";
          modules = [
            nixprox.nixosModules.default
            disko.nixosModules.disko
            agenix.nixosModules.default
            # The VM, its address and its disks: the part nixprox plans from.
            ./modules/nixprox.nix
            ./hosts/${name}/nixprox.nix
            # The NixOS every host shares, and what this one runs.
            ./modules/common.nix
            ./hosts/${name}/configuration.nix
            { networking.hostName = name; }
          ]
          ++ optionalFile ./hosts/${name}/disko.nix
          ++ optionalFile ./hosts/${name}/hardware-configuration.nix;
        };
    in
    {
      # Only the VMs: nixprox evaluates every entry here. The CI runner machine has its own
      # flake, ./runner/flake.nix (docs/guide.md, "The runner").
      nixosConfigurations = nixpkgs.lib.genAttrs names host;
    };
}
