# What a NixOS configuration says about the machine, for the plan's per-host change summary
# (docs/plan.md, "What changes inside NixOS"): a function from a `nixosConfigurations.<host>`
# value to its probes, read from evaluation alone (nothing is built).
#
# Every probe is `null` (the option does not exist: skipped), `{ failed = true; }` (it threw),
# or `{ ok = { <entry> = { ok = <value>; } or { failed = true; }; … }; }`: entries are the
# things the summary lists (packages by name, services by name, ports, users, …). Each probe,
# and each entry of the probes whose entries are independent (services, extra), is forced
# inside `builtins.tryEval` with `deepSeq`, so a probe that throws costs only itself. Values are
# plain strings, numbers, booleans, lists and attribute sets: JSON-safe by construction.
#
# Only builtins: the flake's nixpkgs is not reachable from `--apply`. Attribute paths use `or`
# (a missing option is a missing attribute), and every value is type-checked before use:
# `tryEval` catches `throw` and `assert`, not type errors.
c:
let
  cfg = c.config or { };

  attempt =
    v:
    let
      r = builtins.tryEval (builtins.deepSeq v v);
    in
    if r.success then { ok = r.value; } else { failed = true; };

  # A probe whose entries are computed together: one failure fails the probe.
  whole =
    entries:
    let
      r = attempt entries;
    in
    if r ? failed then
      r
    else if r.ok == null then
      null
    else
      { ok = builtins.mapAttrs (_: v: { ok = v; }) r.ok; };

  # A probe whose entries are independent (`set` is an attribute set or null, `value` turns one
  # (name, value) of its attributes into the entry's value, null to leave it out): one failing
  # entry fails only itself.
  each =
    set: value:
    let
      names = attempt (if builtins.isAttrs set then builtins.attrNames set else null);
      entries = map (name: {
        inherit name;
        value = attempt (value name set.${name});
      }) names.ok;
    in
    if names ? failed then
      names
    else if names.ok == null then
      null
    else
      { ok = builtins.listToAttrs (builtins.filter (e: e.value != { ok = null; }) entries); };

  isDrv = v: builtins.isAttrs v && (v.type or null) == "derivation";
  pathOf = v: if isDrv v then v.outPath else null;
  text =
    v:
    if builtins.isString v then
      v
    else if builtins.isInt v || builtins.isFloat v then
      toString v
    else
      null;
  textOr = fallback: v: let t = text v; in if t == null then fallback else t;
  listOr = v: if builtins.isList v then v else [ ];
  attrsOr = v: if builtins.isAttrs v then v else { };
  # Drops the attributes whose value is null.
  present = set: builtins.removeAttrs set (builtins.filter (n: set.${n} == null) (builtins.attrNames set));
  # A set of names, as the attribute set `{ <name> = true; }`.
  flags = names: builtins.listToAttrs (map (name: { inherit name; value = true; }) names);

  # Any JSON-able value from a user: functions, derivations and paths become strings (a path in
  # JSON would be copied to the store).
  sanitise =
    v:
    if builtins.isFunction v then
      "<function>"
    else if builtins.isPath v then
      toString v
    else if isDrv v then
      v.outPath
    else if builtins.isList v then
      map sanitise v
    else if builtins.isAttrs v then
      builtins.mapAttrs (_: sanitise) v
    else
      v;

  kernel = cfg.boot.kernelPackages.kernel or null;

  # `environment.systemPackages` by name: `pname`/`version`, else the parsed `name`. A name
  # installed in several versions keeps them all.
  package =
    p:
    let
      parsed = builtins.parseDrvName (if builtins.isString (p.name or null) then p.name else "");
      name = text (p.pname or null);
      version = text (p.version or null);
    in
    if !isDrv p then
      null
    else
      {
        name = if name != null then name else parsed.name;
        version = if version != null then version else parsed.version;
      };
  packages =
    list:
    builtins.foldl' (
      acc: p:
      if p == null || p.name == "" then
        acc
      else
        acc // { ${p.name} = (acc.${p.name} or [ ]) ++ [ p.version ]; }
    ) { } (map package (listOr list));

  # Open ports: top level and per interface (`interfaces.<name>`; NixOS's internal
  # `allInterfaces.default` repeats the top level and is not read).
  ports =
    suffix: fw:
    let
      single = proto: map (p: "${textOr "?" p}/${proto}${suffix}") (listOr (fw."allowed${proto'.${proto}}Ports" or [ ]));
      range =
        proto:
        map (r: "${textOr "?" (r.from or null)}-${textOr "?" (r.to or null)}/${proto}${suffix}") (
          listOr (fw."allowed${proto'.${proto}}PortRanges" or [ ])
        );
      proto' = {
        tcp = "TCP";
        udp = "UDP";
      };
    in
    single "tcp" ++ range "tcp" ++ single "udp" ++ range "udp";
  firewall =
    fw:
    if !builtins.isAttrs fw then
      null
    else
      flags (
        ports "" fw
        ++ builtins.concatMap (i: ports " (${i})" (attrsOr fw.interfaces.${i})) (
          builtins.attrNames (attrsOr (fw.interfaces or { }))
        )
        ++ map (i: "trusted ${i}") (listOr (fw.trustedInterfaces or [ ]))
      )
      // {
        enabled = fw.enable or true;
      };

  # Users that can log in or administer the machine, with the groups that grant root.
  adminGroups = [
    "wheel"
    "root"
    "sudo"
    "admin"
    "docker"
    "libvirtd"
    "lxd"
    "incus-admin"
  ];
  users =
    all: groups:
    let
      memberOf = name: builtins.filter (g: builtins.elem name (listOr (groups.${g}.members or [ ]))) (builtins.attrNames groups);
      entry =
        key: u:
        let
          name = if builtins.isString (u.name or null) then u.name else key;
          inGroups = [ (u.group or "") ] ++ listOr (u.extraGroups or [ ]) ++ memberOf name;
          admin = builtins.sort builtins.lessThan (
            builtins.filter (g: builtins.elem g inGroups) adminGroups
          );
        in
        if (u.enable or true) != false && ((u.isNormalUser or false) == true || admin != [ ]) then
          { inherit name admin; }
        else
          null;
      entries = builtins.filter (e: e != null) (builtins.attrValues (builtins.mapAttrs entry (attrsOr all)));
    in
    if !builtins.isAttrs all then
      null
    else
      builtins.listToAttrs (map (e: { inherit (e) name; value = e.admin; }) entries);

  fileSystems =
    set:
    if !builtins.isAttrs set then
      null
    else
      builtins.listToAttrs (
        builtins.filter (e: e != null) (
          map (
            key:
            let
              fs = set.${key};
              mount = if builtins.isString (fs.mountPoint or null) then fs.mountPoint else key;
              device = text (fs.device or null);
              label = text (fs.label or null);
              source = if device != null then device else if label != null then "label ${label}" else "?";
            in
            if (fs.enable or true) != false then
              {
                name = mount;
                value = "${source} (${textOr "auto" (fs.fsType or null)})";
              }
            else
              null
          ) (builtins.attrNames set)
        )
      );

  substituters =
    settings:
    if !builtins.isAttrs settings then
      null
    else
      flags (
        builtins.filter builtins.isString (
          listOr (settings.substituters or [ ]) ++ listOr (settings.extra-substituters or [ ])
        )
      );
in
{
  release = whole (present {
    nixos = text (cfg.system.nixos.release or null);
    nixpkgs = text (cfg.system.nixos.revision or null);
  });

  kernel = whole (
    if kernel == null then
      null
    else
      present {
        version = text (kernel.version or null);
        build = pathOf kernel;
        initrd = pathOf (cfg.system.build.initialRamdisk or null);
      }
  );

  kernel_params = whole (
    let
      params = cfg.boot.kernelParams or null;
    in
    if builtins.isList params then flags (builtins.filter builtins.isString params) else null
  );

  packages = whole (
    let
      list = cfg.environment.systemPackages or null;
    in
    if builtins.isList list then packages list else null
  );

  # Enabled services, each with the store path of its unit file (`systemd.units.<name>.unit`,
  # what NixOS generates from `systemd.services.<name>`): a new path means a changed unit.
  # `true` for an enabled service without a unit; a disabled one is left out.
  services = each (cfg.systemd.services or null) (
    name: service:
    let
      unit = pathOf ((attrsOr (cfg.systemd.units or { }))."${name}.service" or { }).unit or null;
    in
    if (service.enable or true) == false then null else if unit == null then true else unit
  );

  firewall = whole (firewall (cfg.networking.firewall or null));

  users = whole (users (cfg.users.users or null) (attrsOr (cfg.users.groups or { })));

  file_systems = whole (fileSystems (cfg.fileSystems or null));

  substituters = whole (substituters (cfg.nix.settings or null));

  # The user's own probes (`nixprox.summary.extra`).
  extra = each (cfg.nixprox.summary.extra or null) (_: sanitise);
}
