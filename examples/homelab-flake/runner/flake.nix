# The CI runner machine: its own flake, so that nixprox (which evaluates every
# `nixosConfigurations` entry of ../flake.nix) never sees it, and so it pins its own nixprox and
# nixpkgs (and so nixos-anywhere) in ./flake.lock. Not a VM nixprox manages: an apply must
# never switch the machine it runs on. Deploy it by hand, from the repository's root:
#
#   nixos-rebuild switch --flake ./runner#runner --target-host root@runner
#
# (a flake in a subdirectory of a git repository sees the whole repository, so ../secrets
# works).
{
  description = "The nixprox CI runner of the homelab";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
    # Keep this tag equal to the nixprox release the workflows install (docs/releasing.md).
    nixprox.url = "github:nixprox/nixprox/v0.1.0";
    nixprox.inputs.nixpkgs.follows = "nixpkgs";
    # Optional: the secrets below are agenix files. Without agenix, drop this input and the
    # module, and give configuration.nix plain paths (docs/guide.md, "The runner").
    agenix.url = "github:ryantm/agenix";
    agenix.inputs.nixpkgs.follows = "nixpkgs";
  };

  outputs =
    { nixpkgs, nixprox, agenix, ... }:
    {
      nixosConfigurations.runner = nixpkgs.lib.nixosSystem {
        system = "x86_64-linux";
        modules = [
          nixprox.nixosModules.runner
          agenix.nixosModules.default
          # The machine's own hardware: `nixos-generate-config --show-hardware-config` on it.
          ./hardware-configuration.nix
          ./configuration.nix
        ];
      };
    };
}
