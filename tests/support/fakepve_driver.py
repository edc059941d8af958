"""Serve a fakepve cluster described by a scenario file, and steer it with JSON lines on stdin.

nixprox's tests and its README demo use this driver (run it with a Python that has
`fakepve[crypto]` installed):

    python tests/support/fakepve_driver.py scenario.json --host 127.0.0.5 --ca-dir DIR

It makes a self-signed certificate for the host in DIR (so clients can pin it), listens on the
host with a port the system picks, and prints one JSON line when ready:

    {"url": "https://127.0.0.5:40123", "port": 40123, "ca_cert": "DIR/fakepve.crt"}

Then every line on stdin is a command, `{"cmd": "<name>", ...arguments}`, answered by one line
`{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`. The driver exits when stdin
closes (or, with --no-stdin, on SIGINT/SIGTERM). There is deliberately no command that runs
arbitrary code: each one maps onto one documented fakepve scenario call.

Scenario file (every key optional):

    {
      "guests": [{"vmid": 101, "name": "web", "node": "pve1", "status": "running",
                  "config": {...}, "pending": {...}, "template": false, "lock": null,
                  "pool": null, "type": "qemu" | "lxc", "agent": {...}, "agent_hangs": false,
                  "start_error": null, "shutdown_secs": 0, ...}],
      "tokens": {"nixprox@pve!test": "secret"},
      "grants": [{"user": "nixprox@pve", "path": "/vms", "privs": ["VM.Audit"]}],
      "nodes": ["pve1", {"name": "pve2", "online": false}],
      "storages": {"ceph-pool": {"type": "rbd", "pool": "rbd", "content": "images"}},
      "files": [{"storage": "local", "name": "nixos-minimal.iso", "size": 1073741824}],
      "time_scale": 0, "latency": 0, "lock_wait": 10, "ceph_slow": 0, "version": "9.0.10",
      "task_secs": {"qmclone": 5}
    }

`version` is what `GET /version` answers (`release` is its major.minor).

`files` are put on a storage with fakepve's `store_file()` (`content` defaults to `iso`), so a
VM created from scratch finds its installer ISO.

The image bootstrap needs Proxmox behaviour fakepve 0.5 does not have; `install_image_support`
adds it, each piece modelled on the Proxmox source it names: `import` uploads (multipart parsed
as pve-http-server does, checked and checksummed as pve-storage does), VM disks created with
`import-from` (qemu-server), guest-agent `file-read` as qemu-server answers it, and `GET …/config`
with pending values applied unless `current=1` (qemu-server `vm_config`). The command
`boot_agent` (`{"cmd": "boot_agent", "name": "web", "agent": {...}}`) gives every VM of that name
those agent answers once it runs, as the image's guest agent would; `on_reboot`
(`{"cmd": "on_reboot", "name": "web", "touch": "PATH"}`) creates PATH whenever a VM of that name
is rebooted through the API, so a test's SSH host can restart as its guest; `agent_starting`
(`{"cmd": "agent_starting", "name": "web", "calls": 3}`) makes the next `calls` agent commands
to a running VM of that name answer 500 "QEMU guest agent is not running", as qemu-server's
`assert_agent_available` does while the guest's agent starts; `store_file` puts a file on
a storage between runs (`content`, and `virtual_size` for an import).

`ceph_slow` (PVE seconds) is fakepve's `ceph_slow()`: every operation on a disk of an RBD storage
(clone, resize, start, …) takes that much longer; 0 ends it.

`task_secs` (PVE seconds per task type, `{}` ends it) makes every task of that type take that
much longer, on any storage (see `DriverPve.task`).

Faults fakepve itself has are commands that map onto its calls (`fail`, `flaky_network`,
`quorum` for `lose_quorum`/`regain_quorum`, `set_node`, …). Ones it lacks are added here:
`lose_answer` (see `AnswerLoss`), and `task_error`, a task that fails inside its worker with a
message of the test's choosing (see `TaskErrors`). `set_storage` changes a storage's options (`avail`: the bytes
left, which fakepve's allocations check) as an administrator or a filling disk would.
"""

import argparse
import asyncio
import hashlib
import ipaddress
import json
import os
import re
import signal
import sys

from aiohttp import web

import fakepve.agent
import fakepve.lxc
from fakepve import FakePve, PveError, TaskError, shapes
from fakepve.server import ok
from fakepve.certs import make_cert
from fakepve.lxc import format_size
from fakepve.qemu import DRIVE_KEY, drives_of, is_cdrom, join_drive, split_drive, volume_ref
from fakepve.routing import die, param_error, split_list
from fakepve.storage import _is_file

# Guest keys that are FakeVm/FakeCt attributes set after construction.
VM_ATTRS = ('shutdown_secs', 'start_secs', 'stop_secs', 'start_error', 'ha_state', 'agent', 'agent_hangs', 'acpi',
            'stats')
CT_ATTRS = ('shutdown_secs', 'start_secs', 'stop_secs', 'start_error', 'ha_state')


class CommandError(Exception):
    """A command that could not be carried out; its text goes back to the caller."""


class AnswerLoss:
    """The `lose_answer` fault: the request runs to its end, then its answer is lost.

    It models a write that Proxmox carried out while nixprox never learnt it: the connection
    broke after the request was sent (pveproxy restarted by a certificate renewal or an update,
    a proxy or NAT in between dropping an idle connection, a client timeout firing while the
    node was still answering). On a real node the work goes on regardless: the API handler
    forks the task worker before it answers with the UPID (PVE::RESTEnvironment::fork_worker in
    pve-common, called by qemu-server's PVE/API2/Qemu.pm for create_vm and clone_vm), so a
    lost answer says nothing about whether the VM exists. fakepve's `flaky_network` only drops
    connections *before* a request runs, so this is an aiohttp middleware put in front of all
    of fakepve's: it lets the request (and, with `time_scale` 0, its task) finish, then closes
    the connection instead of answering.

    `{"cmd": "lose_answer", "method": "POST", "path": "/qemu/\\d+/clone$", "times": 1}` loses
    the answers of the next `times` requests whose method matches and whose path matches the
    regular expression (`re.search`); `times` null loses every one until `clear_answer_loss`.
    """

    def __init__(self):
        self.rules = []

    def add(self, method, path, times):
        self.rules.append({'method': method.upper(), 'path': re.compile(path), 'times': times, 'lost': 0})

    def clear(self):
        self.rules.clear()

    def _take(self, request):
        for rule in self.rules:
            if rule['method'] == request.method and rule['path'].search(request.path):
                rule['lost'] += 1
                if rule['times'] is not None:
                    rule['times'] -= 1
                    if rule['times'] <= 0:
                        self.rules.remove(rule)
                return True
        return False

    @web.middleware
    async def middleware(self, request, handler):
        response = await handler(request)
        if self._take(request):
            # The same way fakepve drops a connection (its `_middleware`): close, then raise so
            # aiohttp sends nothing.
            request.transport.close()
            raise ConnectionResetError('fakepve_driver: answer lost after the request ran')
        return response

    def install(self, pve):
        """Wraps the app fakepve builds at start, as its outermost middleware."""
        build = pve._build_app

        def build_with_loss():
            app = build()
            app.middlewares.insert(0, self.middleware)
            return app
        pve._build_app = build_with_loss


ANSWER_LOSS = AnswerLoss()


class TaskErrors:
    """The `task_error` fault: a request Proxmox accepts whose task then fails with a message
    of the test's choosing.

    fakepve's `fail` ends a task in `TASK ERROR` only for the errors its catalogue marks as
    raised inside a worker, and pve-container's resize has none there: its API handler checks
    the size and forks the `resize` worker (`PVE/API2/LXC.pm`, `resize_vm`, `fork_worker`),
    and the worker's storage call is what fails on a real node (`PVE::Storage::volume_resize`;
    the LVM plugin's `lvextend` dies with `error resizing volume '<path>'`, `LVMPlugin.pm`). So
    this middleware answers the matching request with the UPID of a task of that type, owned
    by the requester, which ends in `TASK ERROR: <message>`; nothing is changed.

    `{"cmd": "task_error", "method": "PUT", "path": "/lxc/250/resize$", "type": "resize",
    "message": "…", "times": 1}`: the next `times` requests whose method matches and whose path
    matches the regular expression (`re.search`).
    """

    def __init__(self):
        self.rules = []

    def add(self, args):
        self.rules.append({'method': args['method'].upper(), 'path': re.compile(args['path']),
                           'type': args['type'], 'message': args['message'], 'times': args.get('times', 1)})

    def _take(self, request):
        for rule in self.rules:
            if rule['method'] == request.method and rule['path'].search(request.path):
                rule['times'] -= 1
                if rule['times'] <= 0:
                    self.rules.remove(rule)
                return rule
        return None

    def install(self, pve):
        build = pve._build_app

        @web.middleware
        async def middleware(request, handler):
            rule = self._take(request)
            if rule is None:
                return await handler(request)
            # The owner is the token (`PVEAPIToken=<user>!<token>=<secret>`), as fakepve records it.
            auth = request.headers.get('Authorization', '')
            user = auth[len('PVEAPIToken='):].partition('=')[0] if auth.startswith('PVEAPIToken=') else 'root@pam'
            parts = request.path.split('/')
            node = parts[parts.index('nodes') + 1] if 'nodes' in parts else sorted(pve.nodes)[0]
            vmid = next((p for p in parts if p.isdigit()), '')
            message = rule['message']

            async def body():
                raise TaskError(message)
            return ok(await pve.task(node, rule['type'], vmid, user, body, lock=False))

        def build_with_errors():
            app = build()
            app.middlewares.append(middleware)
            return app
        pve._build_app = build_with_errors


TASK_ERRORS = TaskErrors()


class ConfigEdits:
    """The `edit_on_request` fault: someone else edits a VM's config at a chosen point of
    nixprox's run, deterministically.

    A real cluster lets anyone with `VM.Config.Disk` attach a disk between two of nixprox's
    requests (the UI, `qm set`, another tool); PVE then answers the config it has at each
    request, and a write carrying the digest of an older read is refused with "detected
    modified configuration - file changed by other user? Try again." (qemu-server
    PVE/API2/Qemu.pm `update_vm_api`, `PVE::Tools::assert_if_modified`). fakepve models the
    digest but not the other user; this middleware is that user, timed by nixprox's own
    requests instead of a clock.

    `{"cmd": "edit_on_request", "method": "GET", "path": "/qemu/101/config$", "skip": 0,
    "when": "after", "vmid": 101, "config": {"scsi2": "…"}}`: when the request matching
    `method` and `path` (`re.search`) has been seen `skip` times already, the keys of `config`
    are written into VM `vmid`'s config (as `set_config` does) right after that request was
    answered (`when` "after") or right before it runs ("before": a write then meets the new
    digest). Each rule fires once.
    """

    def __init__(self):
        self.rules = []

    def add(self, args):
        self.rules.append({'method': args['method'].upper(), 'path': re.compile(args['path']),
                           'skip': int(args.get('skip', 0)), 'when': args.get('when', 'after'),
                           'vmid': int(args['vmid']), 'config': args['config'], 'fired': False})

    def _fire(self, pve, request, when):
        for rule in self.rules:
            if rule['fired'] or rule['when'] != when:
                continue
            if rule['method'] != request.method or not rule['path'].search(request.path):
                continue
            if rule['skip'] > 0:
                rule['skip'] -= 1
                continue
            rule['fired'] = True
            vm = pve.vm(rule['vmid'])
            if vm is not None:
                vm.config.update(rule['config'])

    def install(self, pve):
        build = pve._build_app

        @web.middleware
        async def middleware(request, handler):
            self._fire(pve, request, 'before')
            response = await handler(request)
            self._fire(pve, request, 'after')
            return response

        def build_with_edits():
            app = build()
            app.middlewares.insert(0, middleware)
            return app
        pve._build_app = build_with_edits


CONFIG_EDITS = ConfigEdits()


MIB = 1024 ** 2
# The physical extent size `vgcreate` gives a volume group unless told otherwise (LVM's default,
# also what the Proxmox installer's `pve` VG has): `lvcreate`/`lvextend` round sizes up to it.
LVM_EXTENT = 4 * MIB
# `zfs create -b` default for zvols since OpenZFS 2.2 (Proxmox VE 8): the `blocksize` storage option
# overrides it.
ZFS_DEFAULT_BLOCKSIZE = 16 * 1024
# The schema's pattern for the `size` of PUT /nodes/{node}/qemu/{vmid}/resize, and the units.
RESIZE_SIZE = re.compile(r'^(\+)?(\d+(\.\d+)?)([KMGT])?$')
UNITS = {None: 1, 'K': 1024, 'M': MIB, 'G': 1024 ** 3, 'T': 1024 ** 4}


def round_up(size, unit):
    return -(-size // unit) * unit


def parse_blocksize(text):
    """A zfspool `blocksize` (`16k`, `1M`, `8192`) in bytes (pve-storage verify_zfs_blocksize)."""
    found = re.fullmatch(r'(\d+)([kKmM]?)', str(text or '').strip())
    if not found:
        return ZFS_DEFAULT_BLOCKSIZE
    return int(found.group(1)) * {'': 1, 'k': 1024, 'm': MIB}[found.group(2).lower()]


def allocated(store, size):
    """The bytes a storage really allocates for a volume of `size` bytes, per storage type.

    From pve-storage's plugins (src/PVE/Storage/*.pm, 9.x):
    - LVMPlugin.pm (`lvm`; LvmThinPlugin.pm defers to it for `lvmthin`): alloc_image and
      volume_resize hand the size in KiB to `lvcreate --size`/`lvextend -L`, and LVM rounds up to
      whole physical extents (LVM_EXTENT).
    - ZFSPoolPlugin.pm (`zfspool`): zfs_create_zvol and volume_resize pad the KiB size up to whole
      MiB ("always align size to 1M") before `zfs create -V`/`zfs set volsize`; ZFS itself refuses
      a volsize that is not a multiple of the volblocksize (see `resize_error`).
    - RBDPlugin.pm (`rbd`): volume_resize runs `rbd resize --size ceil(size / 1 MiB)`.
    - Plugin.pm (file-based: `dir`, `nfs`, `cifs`, …): `qemu-img resize` to the exact size.
    """
    kind = store.get('type', 'dir')
    if kind in ('lvm', 'lvmthin'):
        return round_up(size, LVM_EXTENT)
    if kind in ('zfspool', 'rbd'):
        return round_up(size, MIB)
    return size


def resize_error(store, size):
    """ZFS's refusal of a volsize that is not a multiple of the volblocksize, else None."""
    if store.get('type') != 'zfspool':
        return None
    blocksize = parse_blocksize(store.get('blocksize'))
    if size % blocksize:
        return "zfs error: cannot set property: 'volsize' must be a multiple of volume block size ({0})".format(
            format_size(blocksize))
    return None


# Config keys none of qemu-server's option tables name (API2/Qemu.pm, `$check_vm_modify_config_perm`
# "catches args, lock, etc."): only root@pam may set them, API tokens never.
ROOT_ONLY_KEYS = ('args', 'affinity', 'hugepages', 'keephugepages', 'hookscript')


class DriverPve(FakePve):
    """FakePve plus what its release does not model, done the way Proxmox's source does it:

    - `PUT /nodes/{node}/qemu/{vmid}/resize` (qemu-server src/PVE/API2/Qemu.pm, `resize_vm`);
    - volumes allocated as the storage really allocates them (`allocated`), so a clone (which
      records the new volume's real size, QemuServer.pm `clone_disk`) and `qm disk rescan` (the
      `rescan` command) show the storage's rounding;
    - tasks that take time (`task_secs`): fakepve's clone copies its disks at once, a real one
      for as long as `qemu-img convert` or the drive mirror takes (qemu-server
      PVE/API2/Qemu.pm `clone_vm`: the worker writes the new config with `lock: clone` first,
      then copies every disk in QemuServer.pm `clone_disk`, then drops the lock). The pause
      comes first in the task's body, so the VM is there, locked, for that long.
    - a disk deleted from a VM's config is detached, not dropped: its volume stays as `unusedN`
      (qemu-server src/PVE/QemuServer.pm `vmconfig_delete_or_detach_drive` and
      `vmconfig_register_unused_drive`), and a protected VM refuses it (API2/Qemu.pm,
      `check_protection` "can't remove drive"); fakepve forgets the volume;
    - the permission checks qemu-server makes beside a config key's privilege (API2/Qemu.pm
      `$check_vm_modify_config_perm` and the `check_*_perm` subs): keys in none of its option
      tables (`args`, `affinity`, `hugepages`, …) are root@pam's, `startup` needs `Sys.Modify`
      on `/`, a `serialN` other than a socket is root@pam's, a mapped `hostpciN`/`usbN` needs
      `Mapping.Use` on its mapping and a raw one is root@pam's (`_config_priv`,
      `_hardware_perm`, `_device_perm`);
    - `GET /cluster/mapping/{pci,usb,dir}` (pve-manager PVE/API2/Cluster/Mapping/*.pm `index`)
      from the scenario's `mappings`;
    - `GET` and `POST /nodes/{node}/qemu/{vmid}/migrate` (qemu-server src/PVE/API2/Qemu.pm,
      `migrate_vm_precondition` and `migrate_vm`; src/PVE/QemuMigrate.pm, `prepare` and
      `scan_local_volumes`): fakepve answers these with a task that moves nothing.
    """

    task_secs = {}
    # The parameters of the container create being forked (see `host_key_log`).
    _ct_create = None

    async def _lxc_create(self, user, v):
        # Nothing awaits between here and the create's `task()`, so the parameters reach the
        # task that create forks.
        self._ct_create = v
        try:
            return await super()._lxc_create(user, v)
        finally:
            self._ct_create = None

    async def task(self, node, ttype, tid, user, body, vm=None, lock=True, log=()):
        if ttype == 'vzcreate' and self._ct_create is not None:
            log = list(log) + host_key_log(self._ct_create)
            self._ct_create = None
        secs = self.task_secs.get(ttype)
        if secs:
            work = body

            async def body():
                await self.pause(secs)
                return await work()
        return await super().task(node, ttype, tid, user, body, vm=vm, lock=lock, log=log)

    def _routes_qemu_resize(self):
        return [('PUT', '/nodes/{node}/qemu/{vmid}/resize', self._qm_resize)]

    def _config_priv(self, key):
        """qemu-server src/PVE/API2/Qemu.pm `$check_vm_modify_config_perm`: a key in none of its
        option tables (`$cpuoptions`, `$memoryoptions`, `$hwtypeoptions`, `$generaloptions`, …)
        "catches args, lock, etc.": only root@pam may set it. fakepve counts these as HWType."""
        if key in ROOT_ONLY_KEYS:
            return 'root'
        if re.fullmatch(r'virtiofs\d+', key):
            return 'VM.Config.Disk'
        return super()._config_priv(key)

    def _hardware_perm(self, user, vmid, params, deletes=()):
        """The value-dependent checks qemu-server makes beside the key's privilege (API2/Qemu.pm):
        `startup` also needs Sys.Modify on / (it changes how the node starts its guests);
        `serialN` other than `socket` is root@pam's (`$check_vm_create_serial_perm`, and
        "only root can delete '…' config for real devices" in `update_vm`)."""
        if user.split('!')[0] == 'root@pam':
            return
        if 'startup' in params or 'startup' in deletes:
            self.require(user, '/', 'Sys.Modify')
        vm = self.vm(vmid)
        for key in sorted(k for k in set(params) | set(deletes) if re.fullmatch(r'virtiofs\d+', k)):
            # `check_dir_perm`: VM.Config.Disk and Mapping.Use on the directory mapping (old and new).
            self.require(user, '/vms/{0}'.format(vmid), 'VM.Config.Disk')
            for value in [vm.config.get(key) if vm else None, params.get(key)]:
                if value is not None:
                    parts = str(value).split(',')
                    props = dict(p.split('=', 1) for p in parts if '=' in p)
                    dirid = props.get('dirid') or (parts[0] if '=' not in parts[0] else None)
                    self.require(user, '/mapping/dir/{0}'.format(dirid), 'Mapping.Use')
        for key in sorted(k for k in set(params) | set(deletes) if re.fullmatch(r'(hostpci|usb)\d+', k)):
            # update_vm checks the old value too (modify and delete alike).
            if vm and key in vm.config:
                self._device_perm(user, key, vm.config[key], 'set' if key in params else 'delete')
            if key in params:
                self._device_perm(user, key, params[key], 'set')
        for key in sorted(k for k in set(params) | set(deletes) if re.fullmatch(r'serial\d+', k)):
            # A socket may replace a socket or nothing; anything else, or replacing a device, is root's.
            old = vm.config.get(key) if vm else None
            value = params.get(key) if key in params else old
            if (value is not None and str(value) != 'socket') or (old is not None and str(old) != 'socket'):
                verb = 'set' if key in params else 'delete'
                raise PveError(500, "only root can {0} '{1}' config for real devices".format(verb, key))

    async def _qm_create(self, v, user):
        self._hardware_perm(user, int(v['vmid']), v)
        return await super()._qm_create(v, user)

    def _hotplug_usb(self, vm):
        """qemu-server PVE/QemuServer.pm `vmconfig_hotplug_pending`: on a running VM a `usbN`
        change is plugged at once when `$is_usb_hotplug_supported` (`usb` among the `hotplug`
        features, default `network,disk,usb`; machine version 7.1 or later, which every
        unversioned machine on PVE 8+ is; `ostype` l26); fakepve leaves every one pending."""
        if vm.status != 'running':
            return
        hotplug = str(vm.config.get('hotplug', '1'))
        features = {'network', 'disk', 'usb'} if hotplug == '1' else set() if hotplug == '0' else set(hotplug.split(','))
        machine = str(vm.config.get('machine', ''))
        version = re.search(r'^pc-.*-(\d+)\.(\d+)', machine)
        new_enough = version is None or (int(version.group(1)), int(version.group(2))) >= (7, 1)
        if 'usb' not in features or not new_enough or vm.config.get('ostype') != 'l26':
            return
        for key in [k for k in vm.pending if re.fullmatch(r'usb\d+', k)]:
            value = vm.pending.pop(key)
            if value is None:
                vm.config.pop(key, None)
            else:
                vm.config[key] = value

    def _device_perm(self, user, key, value, verb):
        """qemu-server API2/Qemu.pm `check_hostpci_perm` / `check_usb_perm`: a mapped device
        needs Mapping.Use on /mapping/{pci,usb}/<id>; a raw one (`host=`) is root@pam's (USB's
        `host=spice` excepted); VM.Config.HWType comes with the key (`_config_priv`)."""
        kind = 'pci' if key.startswith('hostpci') else 'usb'
        props = dict(p.split('=', 1) for p in str(value).split(',') if '=' in p)
        if str(value).strip().lower() == 'spice' or props.get('host', '').lower() == 'spice':
            return
        if 'host' in props:
            what = 'non-mapped devices' if kind == 'pci' else 'real devices'
            raise PveError(500, "only root can {0} '{1}' config for {2}".format(verb, key, what))
        if 'mapping' in props:
            self.require(user, '/mapping/{0}/{1}'.format(kind, props['mapping']), 'Mapping.Use')
        else:
            raise PveError(500, "either 'host' or 'mapping' must be set.")

    def _routes_cluster_mapping(self):
        return [('GET', '/cluster/mapping/pci', self._mapping_index('pci')),
                ('GET', '/cluster/mapping/usb', self._mapping_index('usb')),
                ('GET', '/cluster/mapping/dir', self._mapping_index('dir'))]

    def _mapping_index(self, kind):
        """pve-manager PVE/API2/Cluster/Mapping/{PCI,USB,Dir}.pm `index`: the mappings the user
        may see (Mapping.Modify, Mapping.Use or Mapping.Audit on /mapping/<kind>/<id>), each
        with its `id`, `map` (one `node=…,path=…` entry per node) and `description`.
        Directory mappings came with Proxmox VE 8.4 (pve-manager 8.4.0, `API2/Cluster/Mapping/Dir.pm`):
        an older release has no such path and answers as pve-http-server does for any unknown
        one, 501 "Method '…' not implemented"."""
        async def index(v, user):
            if kind == 'dir' and version_tuple(self) < (8, 4):
                raise PveError(501, "Method 'GET /api2/json/cluster/mapping/dir' not implemented")
            entries = []
            for entry in getattr(self, 'mappings', {}).get(kind, []):
                path = '/mapping/{0}/{1}'.format(kind, entry['id'])
                if any(self.allowed(user, path, p) for p in ('Mapping.Modify', 'Mapping.Use', 'Mapping.Audit')):
                    entries.append(dict(entry, digest='0' * 40))
            return entries
        return index

    async def _apply_config(self, vm, user, p):
        self._hardware_perm(user, vm.vmid, {k: x for k, x in p.items() if k not in ('delete', 'digest')},
                            [k for k in str(p.get('delete', '') or '').split(',') if k])
        # qemu-server API2/Qemu.pm `update_vm` allocates a new TPM state or EFI vars volume
        # (`<storage>:<size>`) through `$create_disks` before it writes the config (or the
        # pending config of a running VM); fakepve would keep the request's value as it is.
        for key in ('tpmstate0', 'efidisk0'):
            value = p.get(key)
            if value is not None and re.match(r'^[^/:\s]+:\d+(\.\d+)?(,|$)', str(value)):
                self._qm_check_drive(user, vm.vmid, None, key, str(value), None)
                p = dict(p)
                p[key] = self._qm_new_drive(vm.vmid, key, str(value), None)[0]
        deletes = [k for k in str(p.get('delete', '') or '').split(',') if DRIVE_KEY.match(k) and k in vm.config]
        if deletes and vm.config.get('protection') in (1, '1', True):
            raise PveError(500, "can't remove drive '{0}' - protection mode enabled".format(deletes[0]))
        detached = {}
        for key in deletes:
            volume, props = split_drive(vm.config[key])
            sid, name = volume_ref(volume)
            # Only a volume of this VM on a storage PVE manages becomes `unusedN`; CD-ROMs do not.
            if sid is not None and not is_cdrom(volume, props) and 'vm-{0}-'.format(vm.vmid) in name:
                detached[key] = volume
        await super()._apply_config(vm, user, p)
        self._hotplug_usb(vm)
        for key, volume in detached.items():
            if key not in vm.config:
                n = next(i for i in range(256) if 'unused{0}'.format(i) not in vm.config)
                vm.config['unused{0}'.format(n)] = volume

    def _routes_qemu_migrate(self):
        return [('GET', '/nodes/{node}/qemu/{vmid}/migrate', self._qm_migrate_check),
                ('POST', '/nodes/{node}/qemu/{vmid}/migrate', self._qm_migrate)]

    def _local_disks(self, vm):
        """$check_vm_disks_local (API2/Qemu.pm): the VM's volumes on storages that are not shared,
        CD-ROMs included except the empty drive `none`; each with the slot it is attached to."""
        disks = []
        for key, volume, props in drives_of(vm.config):
            sid, _name = volume_ref(volume)
            if sid is None or sid not in self.storages or self.storages[sid].get('shared') or props.get('shared'):
                continue
            vol = self._qm_volume(volume) or {}
            disks.append({'volid': volume, 'drivename': key, 'size': int(vol.get('size') or 0),
                          'cdrom': 1 if is_cdrom(volume, props) else 0, 'is_unused': 0})
        return disks

    def _unavailable_storages(self, vm, node):
        """check_storage_availability / check_local_storage_availability (QemuServer.pm): the
        storages of the VM's volumes that are not enabled on `node`."""
        sids = sorted(set(volume_ref(volume)[0] for _key, volume, _props in drives_of(vm.config)) - {None})
        return [sid for sid in sids if sid in self.storages and not self._storage_enabled(sid, node)]

    async def _qm_migrate_check(self, v, user):
        """migrate_vm_precondition: what blocks a migration, per node, before one is asked for."""
        vm = self.find(v['node'], v['vmid'])
        if not self.quorate:
            raise die('cluster not ready - no quorum?')
        if vm.lock:
            raise die('VM is locked ({0})'.format(vm.lock))
        allowed, not_allowed = [], {}
        for node in sorted(self.nodes):
            if node == vm.node:
                continue
            missing = self._unavailable_storages(vm, node)
            if missing:
                not_allowed[node] = {'unavailable_storages': missing}
            else:
                allowed.append(node)
        return {'running': 1 if vm.status == 'running' else 0, 'allowed_nodes': allowed,
                'not_allowed_nodes': not_allowed, 'local_disks': self._local_disks(vm),
                'local_resources': [], 'mapped-resources': [], 'mapped-resource-info': {},
                'has-dbus-vmstate': 1}

    async def _qm_migrate(self, v, user):
        """migrate_vm: the checks the API makes before it forks the `qmigrate` worker, then the
        worker's own (QemuMigrate.pm): a running VM with attached local disks needs
        `with-local-disks`; the VM is locked `migrate` while it moves and keeps its VMID."""
        vm = self.find(v['node'], v['vmid'])
        target = v['target']
        if target == vm.node:
            raise param_error(target='target is local node.')
        if not self.quorate:
            raise die('cluster not ready - no quorum?')
        if target not in self.nodes:
            raise die("no such cluster node '{0}'".format(target))
        for option in ('force', 'migration_type', 'migration_network'):
            if v.get(option) and user != 'root@pam':
                raise param_error(**{option: 'Only root may use this option.'})
        if vm.lock:
            raise die('VM is locked ({0})'.format(vm.lock))
        running = vm.status == 'running'
        if running and not v.get('online'):
            raise die("can't migrate running VM without --online")
        for sid in self._unavailable_storages(vm, target):
            raise die("storage '{0}' is not available on node '{1}'".format(sid, target))
        attached = [d for d in self._local_disks(vm) if not d['cdrom']]
        log = ['starting migration of VM {0} to node {1!r}'.format(vm.vmid, target)]

        async def body():
            self._qm_lock(vm, 'migrate')
            try:
                for disk in attached:
                    log.append("found local disk '{0}' (attached)".format(disk['volid']))
                if running and attached and not v.get('with-local-disks'):
                    for disk in attached:
                        log.append("can't migrate local disk '{0}': can't live migrate attached local "
                                   "disks without with-local-disks option".format(disk['volid']))
                    raise TaskError("can't migrate VM - check log")
                await self.pause(5)
                vm.node = target
            finally:
                self._qm_lock(vm, None)
            return 'migration finished successfully'
        return await self.task(vm.node, 'qmigrate', vm.vmid, user, body, vm=vm, lock=False, log=log)

    def _qm_alloc(self, sid, vmid, fmt, size, linked_from=None):
        volid, fmt = super()._qm_alloc(sid, vmid, fmt, size, linked_from)
        store = self.storages[sid]
        vol = self._qm_volume(volid)
        real = allocated(store, size)
        if vol is not None and real != size:
            vol['size'] = real
            if 'avail' in store:
                store['avail'] -= real - size
        return volid, fmt

    async def _qm_resize(self, v, user):
        """resize_vm: everything but the parameter checks happens in the worker, under the config lock."""
        vm = self.find(v['node'], v['vmid'])
        disk, text, digest = v['disk'], str(v['size']), v.get('digest')
        if v.get('skiplock') and user != 'root@pam':
            raise PveError(400, 'Parameter verification failed.', {'skiplock': 'Only root may use this option.'})

        async def body():
            if digest and digest != vm.digest():
                raise TaskError('checksum mismatch (file change by other user?)')
            if vm.lock and not v.get('skiplock'):
                raise TaskError('VM is locked ({0})'.format(vm.lock))
            value = vm.config.get(disk)
            if not value:
                raise TaskError("disk '{0}' does not exist".format(disk))
            volume, props = split_drive(value)
            if is_cdrom(volume, props):
                raise TaskError("you can't resize a cdrom")
            sid, name = volume_ref(volume)
            if sid is None or sid not in self.storages:
                raise TaskError("disk '{0}' has no associated volume".format(disk))
            if not self.allowed(user, '/storage/' + sid, 'Datastore.AllocateSpace'):
                raise TaskError('Permission check failed (/storage/{0}, Datastore.AllocateSpace)'.format(sid))
            store = self.storages[sid]
            vol = store.setdefault('volumes', {}).get(name)
            if vol is None:
                vol = self._scenario_volume(sid, name)
                if vol is None:
                    raise TaskError("Could not determine current size of volume '{0}'".format(volume))
            size = int(vol.get('size') or 0)
            found = RESIZE_SIZE.match(text)
            newsize = float(found.group(2)) * UNITS[found.group(4)]
            if found.group(1):
                newsize += size
            newsize = int(newsize)
            if newsize < size:
                raise TaskError('shrinking disks is not supported')
            if newsize == size:
                return None
            real = allocated(store, newsize)
            refused = resize_error(store, real)
            if refused:
                raise TaskError(refused)
            await self.ceph_io(vm, [disk])
            if 'avail' in store:
                store['avail'] -= real - size
            vol['size'] = real
            # qemu-server records the size it asked for, not what the storage made of it.
            vm.config[disk] = join_drive(volume, dict(props, size=format_size(newsize)))
            return None
        return await self.task(vm.node, 'resize', vm.vmid, user, body, vm=vm)

    def _scenario_volume(self, sid, name):
        """A volume only a scenario guest's config names, made real: the storage allocated it, so it
        holds the storage's rounding of the size the config records."""
        known = self._volumes(sid).get(name)
        if known is None:
            return None
        store = self.storages[sid]
        vol = store.setdefault('volumes', {})[name] = dict(known)
        vol['size'] = allocated(store, int(known.get('size') or 0))
        return vol

    def rescan(self, vmid):
        """`qm disk rescan --vmid N` (QemuServer.pm `rescan` → `update_disksize`): every disk's
        `size=` in the config becomes its volume's real size."""
        vm = self.vm(int(vmid))
        if vm is None:
            raise CommandError('no VM {0}'.format(vmid))
        for key, value in list(vm.config.items()):
            if not DRIVE_KEY.match(key):
                continue
            volume, props = split_drive(value)
            if is_cdrom(volume, props):
                continue
            sid, name = volume_ref(volume)
            if sid not in self.storages:
                continue
            vol = self.storages[sid].get('volumes', {}).get(name) or self._scenario_volume(sid, name)
            if vol and vol.get('size'):
                vm.config[key] = join_drive(volume, dict(props, size=format_size(int(vol['size']))))
        return vm


def loopback_only(host):
    """Refuse anything but a loopback address: the fake has no real security."""
    try:
        if host == 'localhost' or ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise SystemExit('fakepve_driver: --host must be a loopback address (127.0.0.0/8 or ::1), not {0!r}'.format(host))


def add_guest(pve, guest):
    """Add one VM or container from its scenario entry; returns it."""
    kind = guest.get('type', 'qemu')
    common = dict(node=guest.get('node', 'pve1'), status=guest.get('status', 'stopped'),
                  config=guest.get('config', {}), template=guest.get('template', False), lock=guest.get('lock'))
    if kind == 'lxc':
        ct = pve.add_ct(int(guest['vmid']), guest.get('name'), pool=guest.get('pool'), **common)
        for key in CT_ATTRS:
            if key in guest:
                setattr(ct, key, guest[key])
        return ct
    if kind != 'qemu':
        raise CommandError('unknown guest type {0!r} (qemu or lxc)'.format(kind))
    vm = pve.add_vm(int(guest['vmid']), guest['name'], qmpstatus=guest.get('qmpstatus'),
                    pending=guest.get('pending'), pool=guest.get('pool'), **common)
    if vm.lock:
        vm.config['lock'] = vm.lock
    for key in VM_ATTRS:
        if key in guest:
            setattr(vm, key, guest[key])
    return vm


# Paths `GET /access/permissions` always considers (pve-access-control
# `PVE/RPCEnvironment.pm`, `get_effective_permissions`).
TOP_LEVEL_PATHS = ('/', '/access', '/access/groups', '/nodes', '/pool', '/sdn', '/storage', '/vms')


def model_token_privileges(pve):
    """Tokens and `GET /access/permissions` as Proxmox has them.

    fakepve gives a token the union of its own grants and its user's, and answers
    `/access/permissions` with the grants as given. Proxmox (pve-access-control
    `PVE/RPCEnvironment.pm`, `permissions` and `compile_acl_path`) gives a privilege-separated
    token only what both the token and its user hold, a token without privilege separation
    exactly its user's, and answers `/access/permissions` with, for every top-level path, every
    ACL path and every pool member's path, the privileges that hold there after inheritance.
    The scenario file cannot say whether a token is privilege-separated, so here a token with
    grants of its own is (Proxmox's default, `privsep` 1 in `PVE/API2/User.pm`) and a token
    without any is not.
    """
    def held(userid, path, priv):
        paths = [path]
        if path.startswith('/vms/'):
            try:
                vmid = int(path.split('/')[2])
            except ValueError:
                vmid = None
            paths += ['/pool/' + name for name, ids in pve.pools.items() if vmid in ids]
        elif path.startswith('/storage/'):
            sid = path.split('/')[2]
            paths += ['/pool/' + name for name, meta in pve.pool_info.items() if sid in meta['storage']]
        for granted, privs in pve.acl.get(userid, []):
            if priv in privs and any(p == granted or granted == '/' or p.startswith(granted + '/') for p in paths):
                return True
        return False

    def allowed(user, path, priv):
        owner = user.split('!')[0]
        if pve.acl is None or owner == 'root@pam':
            return True
        if '!' in user and pve.acl.get(user):
            return held(user, path, priv) and held(owner, path, priv)
        return held(owner, path, priv)

    async def permissions(v, user):
        who = v.get('userid') or user
        if pve.acl is None or who.split('!')[0] == 'root@pam':
            answer = {'/': set(shapes.PRIVILEGES)}
        else:
            paths = set(TOP_LEVEL_PATHS)
            for entries in pve.acl.values():
                paths.update(path for path, _ in entries)
            for ids in pve.pools.values():
                paths.update('/vms/{0}'.format(vmid) for vmid in ids)
            for meta in pve.pool_info.values():
                paths.update('/storage/' + sid for sid in meta['storage'])
            if v.get('path') is not None:
                paths = {v['path']}
            answer = {}
            for path in paths:
                privs = set(p for p in shapes.PRIVILEGES if allowed(who, path, p))
                if privs:
                    answer[path] = privs
        return dict((path, dict.fromkeys(sorted(privs), 1)) for path, privs in sorted(answer.items()))

    pve.allowed = allowed
    pve._permissions = permissions


def apply_scenario(pve, scenario):
    for node in scenario.get('nodes', []):
        if isinstance(node, str):
            pve.add_node(node)
        else:
            pve.add_node(node['name'], online=node.get('online', True))
    for name, options in scenario.get('storages', {}).items():
        store = {'active': 1, 'files': set()}
        store.update(options)
        pve.storages[name] = store
    for item in scenario.get('files', []):
        pve.store_file(item['storage'], item['name'], int(item.get('size', 0)), item.get('content', 'iso'))
    for tokenid, secret in scenario.get('tokens', {}).items():
        pve.apitokens[tokenid] = secret
    for grant in scenario.get('grants', []):
        pve.grant(grant['user'], grant['path'], *grant['privs'])
    # Cluster resource mappings, `{"pci": [{"id": "gpu", "map": ["node=pve1,path=0000:01:00.0"]}],
    # "usb": […], "dir": […]}`, as /etc/pve/mapping/{pci,usb,dir}.cfg hold them.
    pve.mappings = scenario.get('mappings', {})
    set_values(pve, scenario)
    for guest in scenario.get('guests', []):
        add_guest(pve, guest)


def set_values(pve, values):
    """The `set` command and the scenario's top-level knobs."""
    if values.get('time_scale') is not None:
        pve.time_scale = float(values['time_scale'])
    if values.get('latency') is not None:
        pve.slow_network(float(values['latency']))
    if values.get('lock_wait') is not None:
        pve.lock_wait = float(values['lock_wait'])
    if values.get('ceph_slow') is not None:
        if float(values['ceph_slow']):
            pve.ceph_slow(float(values['ceph_slow']))
        else:
            pve.ceph_recover()
    if values.get('task_secs') is not None:
        pve.task_secs = dict((str(k), float(v)) for k, v in values['task_secs'].items())
    if values.get('version') is not None:
        pve.version = str(values['version'])
        pve.release_version = '.'.join(pve.version.replace('-', '.').split('.')[:2])


def vm_of(pve, args):
    vm = pve.vm(int(args['vmid']))
    if vm is None:
        raise CommandError('no VM {0}'.format(args['vmid']))
    return vm


def dump_vm(vm):
    tags = [t for t in str(vm.config.get('tags', '')).replace(',', ';').replace(' ', ';').split(';') if t]
    return {'vmid': vm.vmid, 'name': vm.name, 'node': vm.node, 'status': vm.status, 'template': bool(vm.template),
            'config': vm.config, 'pending': vm.pending, 'lock': vm.lock, 'tags': tags, 'pool': vm.pool,
            'digest': vm.digest(), 'config_lock_held': vm.lock_holder is not None, 'ha_state': vm.ha_state}


def list_guests(pve):
    out = [{'vmid': vm.vmid, 'name': vm.name, 'node': vm.node, 'status': vm.status, 'type': 'qemu',
            'template': bool(vm.template)} for vm in pve.vms]
    out += [{'vmid': ct.vmid, 'name': getattr(ct, 'name', None), 'node': ct.node, 'status': ct.status,
             'type': 'lxc', 'template': bool(getattr(ct, 'template', False))} for ct in getattr(pve, 'cts', [])]
    return sorted(out, key=lambda g: g['vmid'])


async def run_task(pve, args):
    """A task with the given log and exit status, for exercising task waiting.

    fakepve's own tasks end in OK or an error; this reaches the remaining PVE outcome,
    `WARNINGS: n`, whose log ends in `TASK WARNINGS: n` as on a real node.
    """
    exitstatus = args.get('exitstatus', 'OK')
    secs = float(args.get('secs', 0))
    warnings = exitstatus.startswith('WARNINGS')

    def fix_log(upid):
        record = pve.tasks[upid]
        log = record['log']
        if record.get('status') == 'stopped' and log and log[-1] == 'TASK ERROR: ' + exitstatus:
            log[-2:] = ['TASK ' + exitstatus]
            record['exitstatus'] = exitstatus

    holder = {}

    async def body():
        await pve.pause(secs)
        if exitstatus != 'OK':
            if warnings:
                # Runs right after the task's own bookkeeping, before any other request is answered.
                asyncio.get_running_loop().call_soon(lambda: holder.get('upid') and fix_log(holder['upid']))
            raise TaskError(exitstatus)
    upid = await pve.task(args.get('node', 'pve1'), args.get('type', 'qmconfig'), args.get('id', ''),
                          args.get('user', 'root@pam'), body, log=list(args.get('log', [])))
    holder['upid'] = upid
    if warnings:
        fix_log(upid)
    return upid


# ------------------------------------------------------------------ image bootstrap

# pve-storage src/PVE/Storage.pm: $SAFE_CHAR_CLASS_RE and $UPLOAD_IMPORT_EXT_RE_1.
SAFE_CHAR = r'[a-zA-Z0-9\-\.\+\=\_]'
UPLOAD_IMPORT_EXT = r'\.(ova|qcow2|raw|vmdk)'
# qemu-server src/PVE/API2/Qemu/Agent.pm: $MAX_READ_SIZE of file-read.
MAX_READ_SIZE = 16 * 1024 * 1024
QCOW2_MAGIC = b'QFI\xfb'
ORIGINAL_UPLOAD = FakePve._upload
ORIGINAL_CHECK_DRIVE = FakePve._qm_check_drive
ORIGINAL_NEW_DRIVE = FakePve._qm_new_drive
ORIGINAL_AGENT_RESULT = fakepve.agent.result


def upload_failed(message='upload failed'):
    """pve-http-server answers a body it cannot parse with HTTP 500 and the message."""
    return PveError(500, message)


def parse_multipart(body, boundary):
    """Fields and file of an upload body, read the way pve-http-server reads them
    (src/PVE/APIServer/AnyEvent.pm, file_upload_multipart): before the file, only `content`,
    `checksum-algorithm` and `checksum` are taken, in that order; the file part must come next,
    named `filename`; its data runs up to the closing delimiter."""
    newline = rb'\r?\n'
    delim = rb'--' + re.escape(boundary) + newline
    close = rb'--' + re.escape(boundary) + rb'--'
    found = re.match(rb'^.*?(' + delim + rb')', body, re.S)
    if not found:
        raise upload_failed()
    buf = body[found.start(1):]
    params = {}

    def remove_until_data(buf):
        return re.sub(rb'^.*?(?:' + newline + rb'){2}', b'', buf, count=1, flags=re.S)

    def disposition(value):
        if value != b'form-data':
            raise upload_failed("wrong Content-Disposition '{0}' in multipart, expected 'form-data'".format(
                value.decode('utf-8', 'replace')))

    for name in (b'content', b'checksum-algorithm', b'checksum'):
        found = re.match(rb'^' + delim + rb'.*?Content-Disposition: (.*?); name="' + name + rb'"(.*?' + delim + rb')',
                         buf, re.S)
        if found:
            disposition(found.group(1))
            buf = remove_until_data(found.group(2) + buf[found.end():])
            value = re.match(rb'^(.*?)(' + delim + rb')', buf, re.S)
            if value:
                params[name.decode()] = value.group(1).strip().decode('utf-8', 'replace')
                buf = buf[value.start(2):]
    found = re.match(rb'^' + delim + rb'Content-Disposition: (.*?); name="(.*?)"; filename="([^"]+)"', buf, re.S)
    if not found:
        raise upload_failed()
    disposition(found.group(1))
    if found.group(2) != b'filename':
        raise upload_failed("wrong field name '{0}' for file upload, expected 'filename'".format(
            found.group(2).decode('utf-8', 'replace')))
    params['filename'] = found.group(3).strip().decode('utf-8', 'replace')
    buf = remove_until_data(buf[found.end():])
    data = re.match(rb'^(.*?)(?:' + newline + rb')?+' + close + rb'.*$', buf, re.S)
    if not data:
        raise upload_failed()
    return params, data.group(1)


def version_tuple(pve):
    return tuple(int(x) for x in re.findall(r'\d+', pve.release_version)[:2])


def image_virtual_size(data, fmt):
    """The disk size an image holds (QEMU docs/interop/qcow2.txt: the size is at byte 24), or raise
    TaskError as PVE::Storage::Plugin::file_size_info does for an untrusted image it cannot read
    or that references other files."""
    if fmt == 'raw':
        return len(data)
    if fmt != 'qcow2':
        return len(data)
    if data[:4] != QCOW2_MAGIC or len(data) < 32:
        raise TaskError('failed to query file information with qemu-img')
    if int.from_bytes(data[8:16], 'big'):
        raise TaskError("backing file not allowed for untrusted image '/var/tmp/pveupload-fake'!")
    return int.from_bytes(data[24:32], 'big')


# The `corrupt_upload` fault (`{"cmd": "corrupt_upload", "times": 1}`): the next uploads arrive with
# their first byte flipped, as a connection that damaged them would deliver them; pve-storage then
# computes another checksum than the one sent and its task fails (Status.pm, upload).
CORRUPTED_UPLOADS = {'left': 0}


async def upload(self, request):
    """POST /nodes/{node}/storage/{storage}/upload with `import` content, as pve-storage
    src/PVE/API2/Storage/Status.pm (upload) handles it after pve-http-server stored the body;
    other content types keep fakepve's own handler."""
    from fakepve.server import USER, ok
    encoding = request.headers.get('Transfer-Encoding')
    if encoding:
        # pve-http-server AnyEvent.pm: uploads need a Content-Length.
        raise PveError(501, 'chunked transfer encoding not supported' if encoding.lower() == 'chunked'
                       else "Unknown transfer encoding '{0}'".format(encoding))
    ctype = request.headers.get('Content-Type', '')
    boundary = re.search(r'boundary\s*=\s*(\S+?)\s*(?:[;,]|$)', ctype)
    if not ctype.startswith('multipart/form-data') or not boundary:
        return await ORIGINAL_UPLOAD(self, request)
    body = await request.read()
    if int(request.headers.get('Content-Length', -1)) != len(body):
        raise upload_failed()
    fields, data = parse_multipart(body, boundary.group(1).encode())
    if CORRUPTED_UPLOADS['left'] > 0 and data:
        # The `corrupt_upload` fault: the bytes that arrived are not the bytes sent.
        CORRUPTED_UPLOADS['left'] -= 1
        data = bytes([data[0] ^ 0xff]) + data[1:]
    if fields.get('content') == 'vztmpl':
        return await vztmpl_upload(self, request, fields, data)
    if fields.get('content') != 'import':
        return await ORIGINAL_UPLOAD(self, request)
    name, node, user = request.match_info['storage'], request.match_info['node'], request[USER]
    self.require(user, '/storage/' + name, 'Datastore.AllocateTemplate')
    allowed = ['iso', 'vztmpl'] + (['import'] if version_tuple(self) >= (8, 4) else [])
    if fields['content'] not in allowed:
        raise param_error(content="value '{0}' does not have a value in the enumeration '{1}'".format(
            fields['content'], ', '.join(allowed)))
    if ('checksum' in fields) != ('checksum-algorithm' in fields):
        missing = 'checksum' if 'checksum' not in fields else 'checksum-algorithm'
        raise param_error(**{missing: "property is missing and it is not optional"})
    algorithm = fields.get('checksum-algorithm')
    if algorithm and algorithm not in ('md5', 'sha1', 'sha224', 'sha256', 'sha384', 'sha512'):
        raise param_error(**{'checksum-algorithm': "value '{0}' does not have a value in the enumeration "
                                                   "'md5, sha1, sha224, sha256, sha384, sha512'".format(algorithm)})
    store = self._check_enabled(name, node)
    if not _is_file(store):
        raise PveError(500, "can't upload to storage type '{0}'".format(store.get('type')))
    # PVE::Storage::normalize_content_filename
    filename = re.sub(r'[^a-zA-Z0-9_.-]', '_', re.sub(r'^.*[/\\]', '', fields['filename'].rstrip('\n')))
    found = re.search(SAFE_CHAR + '+' + UPLOAD_IMPORT_EXT + '$', filename)
    if not found:
        raise param_error(filename='invalid filename or wrong extension')
    fmt = found.group(1)
    if 'import' not in split_list(store.get('content')):
        raise PveError(500, "storage '{0}' does not support 'import' content".format(name))
    tmpfile = '/var/tmp/pveupload-' + hashlib.md5(body[:64] + str(len(body)).encode()).hexdigest()
    log = ['starting file import from: ' + tmpfile]

    async def body_():
        if algorithm:
            got = hashlib.new(algorithm, data).hexdigest()
            if got.lower() != fields['checksum'].lower():
                log.append('calculating checksum...')
                raise TaskError("checksum mismatch: got '{0}' != expect '{1}'".format(got, fields['checksum']))
            log.append('calculating checksum...OK, checksum verified')
        virtual_size = image_virtual_size(data, fmt)
        volname = 'import/' + filename
        old = store.get('volumes', {}).get(volname)
        if old and 'avail' in store:
            # PVE overwrites the file: its old bytes are freed.
            store['avail'] += int(old.get('size') or 0)
        self.store_file(name, filename, len(data), 'import')
        store['volumes'][volname]['virtual_size'] = virtual_size
        log.extend(['target node: ' + node, 'target file: {0}/import/{1}'.format(self._base_path(name), filename),
                    'file size is: {0}'.format(len(data))])
        return 'finished file import successfully'
    upid = await self.task(node, 'imgcopy', '', user, body_, log=log)
    return ok(upid)


def check_drive(self, user, vmid, pool, key, value, default):
    """qemu-server src/PVE/API2/Qemu.pm ($check_drive_param, check_storage_access): a drive with
    `import-from` must be `<storage>:0`, its source an `images` or `import` volume the user may
    read, and an EFI disk must say `efitype` and `pre-enrolled-keys`."""
    volume, props = split_drive(value)
    source = props.get('import-from')
    if source is None:
        return ORIGINAL_CHECK_DRIVE(self, user, vmid, pool, key, value, default)
    found = re.match(r'^(?:([^/:\s]+):)?(\d+(?:\.\d+)?)$', volume)
    if not found or float(found.group(2)) != 0:
        raise param_error(**{key: "'import-from' requires special syntax - use <storage ID>:0,import-from=<source>"})
    if key == 'efidisk0':
        for required in ('efitype', 'pre-enrolled-keys'):
            if required not in props:
                raise param_error(**{key: "need to specify '{0}' when using 'import-from'".format(required)})
    self._qm_image_store(found.group(1) or default, user)
    sid, _, volname = source.partition(':')
    store = self._store(sid)
    vtype, owner, _fmt = self._parse_volname(store, volname)
    if vtype not in ('images', 'import'):
        raise param_error(**{key: "{0} has wrong type '{1}' - needs to be 'images' or 'import'".format(source, vtype)})
    self._check_access(user, sid, vtype, owner, source)


def new_drive(self, vmid, key, value, default):
    """qemu-server create_disks: an `import-from` disk is a new volume of the source's virtual
    size holding a copy of it; the config keeps the new volume and its size, not `import-from`."""
    volume, props = split_drive(value)
    source = props.pop('import-from', None)
    if source is None:
        return ORIGINAL_NEW_DRIVE(self, vmid, key, value, default)
    sid, _, volname = source.partition(':')
    vol = self._volumes(sid).get(volname) if sid in self.storages else None
    if vol is None:
        raise PveError(500, "cannot import from '{0}' - could not get size of {0}".format(source))
    size = int(vol.get('virtual_size') or vol.get('size') or 0)
    target = volume.split(':', 1)[0] if ':' in volume else default
    volid, _fmt = self._qm_alloc(target, vmid, props.pop('format', None), size)
    props['size'] = format_size(size)
    return join_drive(volid, props), [volid]


def agent_result(vm, command, values):
    """Guest-agent `file-read` as qemu-server src/PVE/API2/Qemu/Agent.pm answers it: the decoded
    content, `bytes-read`, and `truncated` only when the read stopped before the end. A missing
    file fails in `guest-file-open` (QEMU qga/commands-posix.c), which check_agent_error
    (src/PVE/QemuServer/Agent.pm) reports as `Agent error: <the agent's message>`."""
    if command != 'file-read':
        return ORIGINAL_AGENT_RESULT(vm, command, values)
    files = (vm.agent or {}).get('files') or {}
    path = values['file']
    if path not in files:
        raise PveError(500, "Agent error: failed to open file '{0}' (mode: 'r'): No such file or directory".format(path))
    offset = int(values.get('offset') or 0)
    count = int(values.get('count') or MAX_READ_SIZE)
    content = files[path][offset:]
    result = {'content': content[:count], 'bytes-read': len(content[:count])}
    if len(content) > count:
        result['truncated'] = 1
    return result


# VM name -> the guest-agent answers (`interfaces`, `files`) its image's qemu-guest-agent gives
# once the VM runs (the `boot_agent` command). A VM created from an image has no agent until it
# boots; a NixOS image with `services.qemuGuest.enable` answers from then on, and its sshd has
# written its host key (`/etc/ssh/ssh_host_ed25519_key.pub`, read through `file-read`).
BOOT_AGENTS = {}
ORIGINAL_AGENT_CALL = FakePve._agent_call


# VM name -> how many more agent calls find the agent still starting (the `agent_starting`
# command). qemu-server's assert_agent_available (src/PVE/QemuServer/Agent.pm) runs before every
# agent command: a running VM whose qemu-guest-agent has not answered `guest-ping` yet (it is
# still starting in the guest) fails with `die "QEMU guest agent is not running\n"`, which the
# API answers as HTTP 500 with that message (PVE 8 and 9).
AGENT_STARTING = {}


async def agent_call(self, match, values):
    vm = self.find(values['node'], values['vmid'])
    if vm is not None and vm.status == 'running' and AGENT_STARTING.get(vm.name, 0) > 0:
        AGENT_STARTING[vm.name] -= 1
        raise PveError(500, 'QEMU guest agent is not running')
    if vm is not None and vm.agent is None and vm.status == 'running' and vm.name in BOOT_AGENTS:
        vm.agent = json.loads(json.dumps(BOOT_AGENTS[vm.name]))
    return await ORIGINAL_AGENT_CALL(self, match, values)


# VM name -> a file the driver creates when the VM is rebooted through the API (the
# `on_reboot` command). The tests' SSH host (tests/support/sshd.rs) watches for it and restarts
# as the VM's guest would: a reboot task (`qmreboot`, qemu-server's PVE/API2/Qemu.pm
# vm_reboot: shutdown, then start) ends with the guest booting again.
REBOOT_FILES = {}
ORIGINAL_DO_REBOOT = FakePve._do_reboot


async def do_reboot(self, vm, user, p):
    answer = await ORIGINAL_DO_REBOOT(self, vm, user, p)
    path = REBOOT_FILES.get(vm.name)
    if path is not None:
        with open(path, 'w'):
            pass
    return answer


async def config_get(self, request):
    """`GET /nodes/{node}/qemu/{vmid}/config` as qemu-server src/PVE/API2/Qemu.pm `vm_config`
    answers it: "the virtual machine configuration with pending configuration changes applied"
    (pending values in place of the current ones, pending deletions left out) unless `current`
    is set, which answers the config the VM runs. fakepve 0.5 always answers the current one."""
    vm = self._vm(request, 'VM.Audit')
    cfg = dict(vm.config)
    if str(request.query.get('current', '0')).lower() not in ('1', 'true', 'yes', 'on'):
        for key, value in vm.pending.items():
            if value is None:
                cfg.pop(key, None)
            else:
                cfg[key] = value
    if 'memory' in cfg:
        cfg['memory'] = str(cfg['memory'])  # PVE sends it as a string
    cfg['digest'] = vm.digest()
    return ok(cfg)


# ------------------------------------------------------------------ containers (pve-container)
#
# What fakepve 0.5 does not model of pve-container and pve-storage, each from the source named:
#
# - `vztmpl` uploads (pve-storage src/PVE/API2/Storage/Status.pm, `upload`): the file name must
#   end in one of `$VZTMPL_EXT_RE_1` (src/PVE/Storage.pm: `.tar.gz`, `.tar.xz`, `.tar.zst`,
#   `.tar.bz2`), else "wrong file extension"; the storage must have `vztmpl` content; an existing
#   file is overwritten. The driver keeps which paths the uploaded tarball holds, as the node's
#   file system would.
# - The OS type of a new container is detected from its root file system, not from the
#   template's name (pve-container src/PVE/LXC/Setup.pm, `detect_distribution`: the release
#   files in order, `/nix/store` means `nixos`). For a template the driver knows the contents of
#   (uploaded, or given with `ct_template`), that is what decides; for others fakepve's name
#   rule stays.
# - Host keys (src/PVE/LXC/Setup.pm, `rewrite_ssh_host_keys` and `generate_ssh_key`): when the
#   root file system has `/etc/ssh`, Proxmox generates rsa, ecdsa and ed25519 host keys and
#   the create task's log says, per key, `Creating SSH host key '<file>' - this may take some
#   time ...` and `done: <SHA256 fingerprint> root@<hostname up to the first dot>`. Which keys
#   "Proxmox generates" for a hostname is set with `ct_host_keys` (the public keys of the test
#   host that answers as that container); without it the driver prints random keys'.
# - `ssh-public-keys` is a create parameter only (src/PVE/API2/LXC.pm, `create_vm`); the config
#   update's schema has no such property, so fakepve's schema check refuses it on `PUT`.

VZTMPL_EXT = re.compile(r'\.tar\.(gz|xz|zst|bz2)$', re.I)
# Release files pve-container checks before `/nix/store`, with the type each means.
RELEASE_FILES = (('etc/debian_version', 'debian'), ('etc/devuan_version', 'devuan'),
                 ('etc/fedora-release', 'fedora'), ('etc/centos-release', 'centos'),
                 ('etc/redhat-release', 'centos'), ('etc/arch-release', 'archlinux'),
                 ('etc/alpine-release', 'alpine'), ('etc/gentoo-release', 'gentoo'))
# Template volume id -> the set of paths (no leading `./` or `/`) its root file system holds.
CT_TEMPLATES = {}
# Container hostname -> the public key lines its generated host keys are.
CT_HOST_KEYS = {}
KEY_FILES = {'ssh-ed25519': 'ssh_host_ed25519_key', 'ssh-rsa': 'ssh_host_rsa_key'}
ORIGINAL_OSTYPE_OF = fakepve.lxc.ostype_of


def tar_paths(data):
    """The paths a template tarball holds, with their parent directories; None when Python
    cannot read it (zstd)."""
    import io
    import tarfile
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode='r:*') as tar:
            names = [m.name for m in tar.getmembers()]
    except (tarfile.TarError, EOFError, OSError):
        return None
    paths = set()
    for name in names:
        parts = [p for p in name.split('/') if p not in ('', '.')]
        for i in range(1, len(parts) + 1):
            paths.add('/'.join(parts[:i]))
    return paths


def detected_ostype(template):
    """Setup.pm's detection for a template whose contents are known, else fakepve's name rule."""
    paths = CT_TEMPLATES.get(template)
    if paths is None:
        return ORIGINAL_OSTYPE_OF(template)
    for path, kind in RELEASE_FILES:
        if path in paths:
            return kind
    if 'nix/store' in paths:
        return 'nixos'
    return 'unmanaged'


def fingerprint(public_line):
    """`SHA256:<base64 without padding>` of an OpenSSH public key line, as ssh-keygen -E sha256."""
    import base64
    blob = base64.b64decode(public_line.split()[1])
    return 'SHA256:' + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip('=')


def random_key():
    import base64
    name = b'ssh-ed25519'
    blob = len(name).to_bytes(4, 'big') + name + (32).to_bytes(4, 'big') + os.urandom(32)
    return 'ssh-ed25519 ' + base64.b64encode(blob).decode()


def host_key_log(v):
    """The create task's lines for the host keys, when the template's root has /etc/ssh."""
    template = v.get('ostemplate', '')
    paths = CT_TEMPLATES.get(template)
    if paths is None or 'etc/ssh' not in paths:
        return []
    hostname = str(v.get('hostname') or 'localhost').split('.')[0]
    keys = CT_HOST_KEYS.get(hostname) or [random_key()]
    lines = []
    for key in keys:
        lines.append("Creating SSH host key '{0}' - this may take some time ...".format(
            KEY_FILES.get(key.split()[0], 'ssh_host_ecdsa_key')))
        lines.append('done: {0} root@{1}'.format(fingerprint(key), hostname))
    return lines


async def vztmpl_upload(self, request, fields, data):
    """`vztmpl` content of POST /nodes/{node}/storage/{storage}/upload (see above)."""
    from fakepve.server import USER, ok
    name, node, user = request.match_info['storage'], request.match_info['node'], request[USER]
    self.require(user, '/storage/' + name, 'Datastore.AllocateTemplate')
    store = self._check_enabled(name, node)
    if not _is_file(store):
        raise PveError(500, "can't upload to storage type '{0}'".format(store.get('type')))
    filename = re.sub(r'[^a-zA-Z0-9_.-]', '_', re.sub(r'^.*[/\\]', '', fields['filename'].rstrip('\n')))
    if not VZTMPL_EXT.search(filename):
        raise param_error(filename='wrong file extension')
    if 'vztmpl' not in split_list(store.get('content')):
        raise PveError(500, "storage '{0}' does not support 'vztmpl' content".format(name))
    log = ['starting file import from: /var/tmp/pveupload-' + hashlib.md5(data[:64]).hexdigest()]

    algorithm = fields.get('checksum-algorithm')

    async def body_():
        if algorithm:
            got = hashlib.new(algorithm, data).hexdigest()
            if got.lower() != fields.get('checksum', '').lower():
                raise TaskError("checksum mismatch: got '{0}' != expect '{1}'".format(got, fields.get('checksum')))
            log.append('calculating checksum...OK, checksum verified')
        self.store_file(name, filename, len(data), 'vztmpl')
        paths = tar_paths(data)
        if paths is not None:
            CT_TEMPLATES['{0}:vztmpl/{1}'.format(name, filename)] = paths
        log.extend(['target node: ' + node, 'target file: {0}/template/cache/{1}'.format(self._base_path(name), filename),
                    'file size is: {0}'.format(len(data))])
        return 'finished file import successfully'
    upid = await self.task(node, 'imgcopy', '', user, body_, log=log)
    return ok(upid)


ORIGINAL_LXC_MIGRATE = FakePve._lxc_migrate


async def lxc_migrate(self, user, v):
    """POST /nodes/{node}/lxc/{vmid}/migrate, with the storage check fakepve leaves out.

    pve-container src/PVE/LXC/Migrate.pm `prepare`: for every volume mount point,
    `PVE::Storage::storage_check_node($storecfg, $storage, $target)`, which dies with
    "storage '<id>' is not available on node '<target>'" before the container is shut down;
    the migration task fails and the container stays where it is, running as it was.
    """
    ct = self._find_ct(v['node'], v['vmid'])
    target = v.get('target')
    if target in self.nodes and target != v['node']:
        for _key, mount in ct.volumes():
            storage = str(mount.get('volume', '')).split(':', 1)[0]
            if storage in self.storages and not self._storage_enabled(storage, target):
                message = "storage '{0}' is not available on node '{1}'".format(storage, target)

                async def fail():
                    raise TaskError(message)
                return await self._ct_task(ct, 'vzmigrate', user, fail, lock=False,
                                           log=["starting migration of CT {0} to node '{1}'".format(ct.vmid, target)])
    return await ORIGINAL_LXC_MIGRATE(self, user, v)


def install_image_support():
    FakePve._upload = upload
    fakepve.lxc.ostype_of = detected_ostype
    FakePve._qm_check_drive = check_drive
    FakePve._qm_new_drive = new_drive
    FakePve._agent_call = agent_call
    FakePve._lxc_migrate = lxc_migrate
    FakePve._config_get = config_get
    FakePve._do_reboot = do_reboot
    fakepve.agent.result = agent_result


async def command(pve, args):
    name = args.get('cmd')
    if name == 'fail':
        pve.fail(args['method'], args['path'], status=args.get('status'), message=args.get('message'),
                 html=args.get('html', False), error=args.get('error'), times=args.get('times'))
        return None
    if name == 'clear_failures':
        pve.failures.clear()
        return None
    if name == 'lose_answer':
        ANSWER_LOSS.add(args['method'], args['path'], args.get('times', 1))
        return None
    if name == 'edit_on_request':
        CONFIG_EDITS.add(args)
        return None
    if name == 'task_error':
        TASK_ERRORS.add(args)
        return None
    if name == 'clear_task_errors':
        TASK_ERRORS.rules.clear()
        return None
    if name == 'remove_vm':
        # What an owner does in the UI (Remove, with "purge"): the VM is gone, its VMID free.
        vm = vm_of(pve, args)
        pve.vms.remove(vm)
        return None
    if name == 'clear_answer_loss':
        ANSWER_LOSS.clear()
        return None
    if name == 'hold_config_lock':
        await pve.hold_config_lock(int(args['vmid']), args.get('secs'))
        return None
    if name == 'release_config_lock':
        pve.release_config_lock(int(args['vmid']))
        return None
    if name == 'backup':
        return await pve.backup(int(args['vmid']), secs=float(args.get('secs', 30)))
    if name == 'set_agent':
        vm = vm_of(pve, args)
        if 'agent' in args:
            vm.agent = args['agent']
        if 'hangs' in args:
            vm.agent_hangs = bool(args['hangs'])
        return None
    if name == 'set_vm':
        vm = vm_of(pve, args)
        # `ha_state`: the VM becomes an HA resource with that requested state (`ha-manager add`).
        for key in ('status', 'start_error', 'shutdown_secs', 'start_secs', 'stop_secs', 'acpi', 'ha_state'):
            if key in args:
                setattr(vm, key, args[key])
        if 'status' in args:
            vm.qmpstatus = args['status']
        return dump_vm(vm)
    if name == 'corrupt_upload':
        CORRUPTED_UPLOADS['left'] = int(args.get('times', 1))
        return None
    if name == 'on_reboot':
        REBOOT_FILES[args['name']] = args['touch']
        return None
    if name == 'boot_agent':
        BOOT_AGENTS[args['name']] = args['agent']
        return None
    if name == 'agent_starting':
        AGENT_STARTING[args['name']] = int(args['calls'])
        return None
    if name == 'store_file':
        # fakepve's store_file(): a file already on a storage (an earlier upload, complete or
        # cut short); `virtual_size` is what an import's image header says.
        pve.store_file(args['storage'], args['name'], int(args['size']), args.get('content', 'iso'))
        if args.get('virtual_size') is not None:
            volname = '{0}/{1}'.format(args.get('content', 'iso'), args['name'])
            pve.storages[args['storage']]['volumes'][volname]['virtual_size'] = int(args['virtual_size'])
        return None
    if name == 'ct_template':
        # A container template on a storage whose root file system holds `paths` (see
        # `detected_ostype` and `host_key_log`).
        pve.store_file(args['storage'], args['name'], int(args.get('size', 1 << 20)), 'vztmpl')
        CT_TEMPLATES['{0}:vztmpl/{1}'.format(args['storage'], args['name'])] = set(args.get('paths', []))
        return None
    if name == 'ct':
        ct = pve.ct(int(args['vmid']))
        if ct is None:
            raise CommandError('no container {0}'.format(args['vmid']))
        return {'vmid': ct.vmid, 'node': ct.node, 'status': ct.status, 'config': ct.config, 'pending': ct.pending}
    if name == 'ct_host_keys':
        CT_HOST_KEYS[args['hostname']] = list(args['keys'])
        return None
    if name == 'rescan':
        return dump_vm(pve.rescan(args['vmid']))
    if name == 'volumes':
        store = pve.storages.get(args['storage'])
        if store is None:
            raise CommandError('no storage {0}'.format(args['storage']))
        return dict((volname, vol.get('size')) for volname, vol in store.get('volumes', {}).items())
    if name == 'set_config':
        # What an owner does in the Proxmox UI between two runs (edit the notes, …): the keys
        # are written into the config as they are, bypassing the API's checks.
        vm = vm_of(pve, args)
        vm.config.update(args.get('config', {}))
        for key in args.get('delete', []):
            vm.config.pop(key, None)
        return dump_vm(vm)
    if name == 'vm':
        return dump_vm(vm_of(pve, args))
    if name == 'vms':
        return list_guests(pve)
    if name == 'requests':
        seen = [[method, path, body.decode('utf-8', 'replace')] for method, path, body in pve.requests]
        if args.get('clear'):
            pve.requests.clear()
        return seen
    if name == 'set':
        set_values(pve, args)
        return None
    if name == 'slow_network':
        pve.slow_network(float(args.get('latency', 0)), jitter=float(args.get('jitter', 0)), node=args.get('node'))
        return None
    if name == 'flaky_network':
        pve.flaky_network(drop_rate=float(args.get('drop_rate', 0)), hang_rate=float(args.get('hang_rate', 0)),
                          hang_secs=float(args.get('hang_secs', 120)), seed=args.get('seed'))
        if args.get('seed') is not None:
            pve._random.seed(args['seed'])
        return None
    if name == 'add_vm':
        guest = add_guest(pve, args['guest'])
        return dump_vm(guest) if args['guest'].get('type', 'qemu') == 'qemu' else guest.vmid
    if name == 'grant':
        pve.grant(args['user'], args['path'], *args['privs'])
        return None
    if name == 'add_token':
        pve.apitokens[args['id']] = args['secret']
        return None
    if name == 'set_node':
        pve.set_node_offline(args['node'], offline=not args.get('online', True))
        return None
    if name == 'quorum':
        if args.get('quorate', True):
            pve.regain_quorum()
        else:
            pve.lose_quorum()
        return None
    if name == 'set_storage':
        store = pve.storages.get(args['storage'])
        if store is None:
            raise CommandError('no storage {0}'.format(args['storage']))
        store.update(args['options'])
        return dict((k, v) for k, v in store.items() if k not in ('files', 'volumes'))
    if name == 'task':
        return await run_task(pve, args)
    if name == 'task_status':
        record = pve.tasks.get(args['upid'])
        if record is None:
            raise CommandError('no task {0}'.format(args['upid']))
        return dict((k, v) for k, v in record.items())
    raise CommandError('unknown command {0!r}'.format(name))


async def answer_stdin(pve):
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        if not line.strip():
            continue
        try:
            args = json.loads(line)
            reply = {'ok': True, 'result': await command(pve, args)}
        except (CommandError, PveError, KeyError, ValueError, TypeError) as exc:
            text = exc.message if isinstance(exc, PveError) else str(exc)
            if isinstance(exc, KeyError):
                text = 'missing argument {0}'.format(exc)
            reply = {'ok': False, 'error': text}
        print(json.dumps(reply, default=sorted), flush=True)


async def serve(args):
    with open(args.scenario) as handle:
        scenario = json.load(handle)
    pve = DriverPve(host=args.host, port=args.port, password=os.urandom(16).hex())
    model_token_privileges(pve)
    ANSWER_LOSS.install(pve)
    CONFIG_EDITS.install(pve)
    TASK_ERRORS.install(pve)
    apply_scenario(pve, scenario)
    os.makedirs(args.ca_dir, exist_ok=True)
    certfile, keyfile, _ = make_cert(args.ca_dir, hosts=(args.host,))
    await pve.start(certfile, keyfile)
    print(json.dumps({'url': pve.url, 'port': pve.port, 'ca_cert': os.path.abspath(certfile)}), flush=True)
    try:
        if args.no_stdin:
            stop = asyncio.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
            await stop.wait()
        else:
            await answer_stdin(pve)
    finally:
        await pve.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('scenario', help='scenario JSON file')
    parser.add_argument('--host', default='127.0.0.2', help='loopback address to listen on')
    parser.add_argument('--port', type=int, default=0, help='port (default: one the system picks)')
    parser.add_argument('--ca-dir', required=True, help='directory for the certificate (fakepve.crt) and key')
    parser.add_argument('--no-stdin', action='store_true', help='ignore stdin; run until SIGINT or SIGTERM')
    args = parser.parse_args()
    loopback_only(args.host)
    install_image_support()
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    # The stdin reader thread may still block in readline; leave without waiting for it.
    sys.stdout.flush()
    os._exit(0)


if __name__ == '__main__':
    main()
