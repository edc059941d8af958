# Applied by `nix eval --json <flake>#nixosConfigurations --apply` in every evaluation worker
# (src/flake/worker.rs). Each selected host's module system is evaluated ONCE for everything
# nixprox needs: its `nixprox` declaration, the out path of its system and the hash of its disk
# layout (plus the caller's extra attributes). Only builtins: the flake's nixpkgs is not
# reachable from `--apply`.
#
# nixprox fills the placeholders (written between at signs in the code below; the names here
# are without them, so this comment is never filled in):
#   NAMES        null (every attribute) or a list of attribute names
#   PARTITION    a list of [ count index ] pairs: keep every count-th name from index on, in
#                turn (`plan --shard I/N` is [ [ N I-1 ] ]), so a shard needs no separate
#                listing
#   EXTRA        null, or a function `attr: host: { … }` whose JSON-able result is reported
#                under `extra` for every managed host (same process, same module system)
#   EXTRA_ONLY   true: report only `extra`, for every selected host, managed or not (the
#                NixOS changes' probes at a pull request's base need nothing else)
#   STREAM       true: report each host as soon as it is computed, as one line on stderr
#                (`builtins.trace` of MARKER + JSON; the value is the number of hosts);
#                false: return every result as the value (one plain evaluation)
#   MARKER       a random per-run prefix that tells nixprox's lines from the flake's traces
configs:
let
  names = @NAMES@;
  partition = @PARTITION@;
  extra = @EXTRA@;
  extraOnly = @EXTRA_ONLY@;
  stream = @STREAM@;
  marker = "@MARKER@";

  attrs = builtins.attrNames configs;
  listed = if names == null then attrs else builtins.filter (n: configs ? ${n}) names;
  missing = if names == null then [ ] else builtins.filter (n: !(configs ? ${n})) names;

  # Every `count`-th element of `list`, starting at `index`.
  every =
    list: part:
    let
      count = builtins.elemAt part 0;
      index = builtins.elemAt part 1;
      length = builtins.length list;
      taken = if index >= length then 0 else (length - index + count - 1) / count;
    in
    builtins.genList (i: builtins.elemAt list (index + i * count)) taken;
  selected = builtins.foldl' every listed partition;

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
    # `summary` holds the user's probes for the plan's NixOS changes (probes.nix reads them),
    # `hardware` what the module sets inside NixOS for the VM: not part of the declaration.
    builtins.removeAttrs n [
      "enable"
      "summary"
      "hardware"
      "container"
    ]
    // {
      # An image package (`nixprox.bootstrap.image.package`, where the module has it) is a
      # derivation: its store paths are reported with the system, not in the declaration.
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
    }
    # The container kind (nix/container.nix), its hostname resolved like `vm.name`; only for a
    # container host, so a VM's declaration is as before.
    // (
      if n ? container && n.container.enable then
        {
          container = n.container // {
            # The template package is a derivation: its store paths are reported with the
            # system (`tarball`), not in the declaration.
            tarball = builtins.removeAttrs (n.container.tarball or { }) [ "package" ];
            hostname =
              if n.container.hostname != null then
                n.container.hostname
              else if hostName != null then
                hostName
              else
                attr;
          };
        }
      else
        { }
    );

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

  # The store paths of an enabled image package, else null (also for modules without the
  # option). `storePath`, not `outPath`: toJSON prints a set with `outPath` as that string.
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
        storePath = toString i.package;
        drvPath = i.package.drvPath or null;
        imageSizes = sizes;
      };

  # Whether the system expects a serial console (a `console=ttyS0…` kernel parameter), read
  # only for hosts nixprox boots from an ISO or their image: such a new VM gets `serial0` when
  # `nixprox.vm.serial` is null. Read here, outside the module system: there it would depend on
  # itself (`nixprox.hardware.kernelParams` derives from `nixprox.vm.serial`).
  serialConsole =
    c:
    let
      b = c.config.nixprox.bootstrap;
      booted = (b.iso or null) != null || (b.image.enable or false);
      params = builtins.tryEval (c.config.boot.kernelParams or [ ]);
    in
    booted
    && params.success
    && builtins.any (p: builtins.isString p && builtins.match "console=ttyS0.*" p != null) params.value;

  # A layout without any device (disko not imported, or imported with nothing declared) is no
  # layout: it hashes like `null`, which nixprox reads as "disks not managed" (an adopted host
  # with its own hardware configuration).
  layout =
    c:
    let
      devices = sanitise (c.config.disko.devices or null);
      declared =
        builtins.isAttrs devices
        && builtins.any (v: v != null && v != { } && v != [ ]) (builtins.attrValues devices);
    in
    if declared then devices else null;
  # The store paths of a container host's own template (nix/container.nix `tarball`), else null.
  tarball =
    c:
    let
      ct = c.config.nixprox.container or null;
      t = if ct == null then null else ct.tarball or null;
    in
    if ct == null || !ct.enable || t == null || !t.enable || t.package == null then
      null
    else
      {
        storePath = toString t.package;
        drvPath = t.package.drvPath or null;
      };

  # Evaluating out paths builds nothing.
  system = c: {
    serialConsole = serialConsole c;
    toplevel = c.config.system.build.toplevel.outPath;
    diskLayoutHash = "sha256:" + builtins.hashString "sha256" (builtins.toJSON (layout c));
    image = image c;
    tarball = tarball c;
  };

  result =
    attr:
    let
      c = configs.${attr};
    in
    if extraOnly then
      {
        host = attr;
        extra = extra attr c;
      }
    else if !(isManaged c) then
      {
        host = attr;
        skipped = true;
      }
    else
      {
        host = attr;
        decl = decl attr c;
        system = system c;
      }
      // (if extra == null then { } else { extra = extra attr c; });

  # `toJSON` forces the whole result, so a line is printed only once its host is complete.
  report = value: builtins.trace (marker + builtins.toJSON value) null;
  streamed = builtins.seq (report {
    hosts = selected;
    inherit missing;
  }) (builtins.foldl' (done: attr: builtins.seq (report (result attr)) (done + 1)) 0 selected);
in
if stream then
  streamed
else
  {
    hosts = map result selected;
    inherit missing;
  }
