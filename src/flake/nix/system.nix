# Applied by `nix eval --json <flake>#nixosConfigurations --apply` for a batch of hosts (the HOSTS
# placeholder, a list of attribute names): per host, the out path of its system, the hash of its
# disk layout and, for image hosts, the store paths of the image package. Evaluating out paths
# builds nothing.
configs:
let
  hosts = @HOSTS@;

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

  # `null` unless `nixprox.bootstrap.image` is enabled with a package (modules older than the
  # option have none). The package may be a derivation or a plain store path.
  image =
    c:
    let
      i = c.config.nixprox.bootstrap.image or null;
      disko = c.config.system.build.diskoImages or null;
      disks = c.config.disko.devices.disk or { };
      # disko's images are `<imageName>.<format>` of `imageSize` (disko's defaults: the disk's
      # name, 2G): the one package whose image sizes are known without building it.
      sizes =
        if disko != null && toString disko == toString i.package then
          builtins.listToAttrs (
            map (name: {
              name = disks.${name}.imageName or name;
              value = disks.${name}.imageSize or "2G";
            }) (builtins.attrNames disks)
          )
        else
          { };
    in
    if i == null || !i.enable || i.package == null then
      null
    else
      {
        # Not `outPath`: toJSON would print an attribute set with `outPath` as that string.
        storePath = toString i.package;
        drvPath = i.package.drvPath or null;
        imageSizes = sizes;
      };

  system =
    c:
    let
      layout = builtins.toJSON (sanitise (c.config.disko.devices or null));
    in
    {
      toplevel = c.config.system.build.toplevel.outPath;
      diskLayoutHash = "sha256:" + builtins.hashString "sha256" layout;
      image = image c;
    };
in
builtins.listToAttrs (
  map (name: {
    inherit name;
    value = system configs.${name};
  }) hosts
)
