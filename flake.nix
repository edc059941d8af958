{
  description = "nixprox: GitOps for NixOS on Proxmox VE (plan and apply a flake's VMs from CI)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      # Only `packages` and `devShells` touch nixpkgs' packages, so a flake that imports just
      # `nixosModules.default` may point `nixpkgs` at nixpkgs.lib (`follows`) and fetch nothing else.
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      cargoToml = builtins.fromTOML (builtins.readFile ./Cargo.toml);
    in
    {
      nixosModules.default = ./nix/module.nix;
      nixosModules.nixprox = ./nix/module.nix;
      # A Forgejo or GitHub Actions runner that can plan and apply (nix/runner.nix).
      nixosModules.runner = import ./nix/runner.nix { inherit self; };

      packages = forAllSystems (pkgs: {
        default = pkgs.rustPlatform.buildRustPackage {
          pname = cargoToml.package.name;
          inherit (cargoToml.package) version;
          src = lib.fileset.toSource {
            root = ./.;
            fileset = lib.fileset.unions [
              ./Cargo.toml
              ./Cargo.lock
              ./src
            ];
          };
          cargoLock.lockFile = ./Cargo.lock;
          # The integration tests need fakepve, sshd and a writable Nix store: they run in CI.
          doCheck = false;
          meta = {
            description = cargoToml.package.description;
            homepage = cargoToml.package.repository;
            license = with lib.licenses; [
              mit
              asl20
            ];
            mainProgram = "nixprox";
          };
        };
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.default ];
          packages = with pkgs; [
            cargo-nextest
            clippy
            rustfmt
            rust-analyzer
            nix
            openssh
          ];
        };
      });
    };
}
