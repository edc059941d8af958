# Applied by `nix eval --json <flake>#nixosConfigurations --apply` for a batch of hosts (the HOSTS
# placeholder, a list of attribute names): per host, the out path of its system and the hash of
# its disk layout. Evaluating the out path builds nothing.
configs:
let
  hosts = @HOSTS@;

  # HOOK(nixos-changes): `null`, or the function of probes.nix when the plan compares the
  # hosts against a base (src/flake/probes.rs): its result rides along as `probes`. The
  # follow-up moves this into the batched evaluator.
  probes = @PROBES@;

  # disko's device tree carries internals (`_meta`, `_create`, functions) that change with disko
  # releases, not with the layout: drop `_`-prefixed attributes, turn functions into null.
  sanitise =
    v:
    if builtins.isFunction v then
      null
    else if builtins.isList v then
      map sanitise v
    else if builtins.isAttrs v then
      (
        if (v.type or null) == "derivation" then
          v.outPath
        else
          builtins.mapAttrs (_: sanitise) (
            builtins.removeAttrs v (builtins.filter (n: builtins.substring 0 1 n == "_") (builtins.attrNames v))
          )
      )
    else
      v;

  system =
    c:
    let
      layout = builtins.toJSON (sanitise (c.config.disko.devices or null));
    in
    {
      toplevel = c.config.system.build.toplevel.outPath;
      diskLayoutHash = "sha256:" + builtins.hashString "sha256" layout;
    }
    // (if probes == null then { } else { probes = probes c; });
in
builtins.listToAttrs (
  map (name: {
    inherit name;
    value = system configs.${name};
  }) hosts
)
