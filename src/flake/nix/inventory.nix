# Applied by `nix eval --json <flake>#nixosConfigurations --apply`: every managed host's
# `config.nixprox` in one evaluation. nixprox replaces the FILTER placeholder with `null` (all
# hosts) or a list of attribute names (`--hosts`).
# Only builtins: the flake's nixpkgs is not reachable from `--apply`.
configs:
let
  filter = @FILTER@;
  attrs = builtins.attrNames configs;
  selected = if filter == null then attrs else builtins.filter (n: builtins.elem n filter) attrs;

  # `networking.hostName` counts only when set explicitly: NixOS's default ("nixos", or "" for
  # containers) has priority 1500 (mkOptionDefault); any definition in a module is below that.
  explicitHostName =
    c:
    let
      option = c.options.networking.hostName or null;
    in
    if option != null && (option.highestPrio or 1500) < 1500 then c.config.networking.hostName else null;

  isManaged = c: (c.config ? nixprox) && c.config.nixprox.enable;

  decl =
    attr: c:
    let
      n = c.config.nixprox;
      hostName = explicitHostName c;
    in
    builtins.removeAttrs n [ "enable" ]
    // {
      # The image package is evaluated with the system (system.nix), never here: it can be as
      # expensive as the system, and this evaluation is one process for every host.
      bootstrap =
        n.bootstrap
        // (if n.bootstrap ? image then { image = builtins.removeAttrs n.bootstrap.image [ "package" ]; } else { });
      vm = n.vm // {
        name =
          if n.vm.name != null then
            n.vm.name
          else if hostName != null then
            hostName
          else
            attr;
      };
    };

  managed = builtins.filter (attr: isManaged configs.${attr}) selected;
in
{
  hosts = builtins.listToAttrs (
    map (attr: {
      name = attr;
      value = decl attr configs.${attr};
    }) managed
  );
  skipped = builtins.filter (attr: !(builtins.elem attr managed)) selected;
  missing = if filter == null then [ ] else builtins.filter (n: !(builtins.elem n attrs)) filter;
}
