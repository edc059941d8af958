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
      "time_scale": 0, "latency": 0, "lock_wait": 10, "ceph_slow": 0
    }

`ceph_slow` (PVE seconds) is fakepve's `ceph_slow()`: every operation on a disk of an RBD storage
(clone, resize, start, …) takes that much longer; 0 ends it.
"""

import argparse
import asyncio
import ipaddress
import json
import os
import re
import signal
import sys

from fakepve import FakePve, PveError, TaskError
from fakepve.certs import make_cert
from fakepve.lxc import format_size
from fakepve.qemu import DRIVE_KEY, is_cdrom, join_drive, split_drive, volume_ref

# Guest keys that are FakeVm/FakeCt attributes set after construction.
VM_ATTRS = ('shutdown_secs', 'start_secs', 'stop_secs', 'start_error', 'ha_state', 'agent', 'agent_hangs', 'acpi',
            'stats')
CT_ATTRS = ('shutdown_secs', 'start_secs', 'stop_secs', 'start_error', 'ha_state')


class CommandError(Exception):
    """A command that could not be carried out; its text goes back to the caller."""


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


class DriverPve(FakePve):
    """FakePve plus what its release does not model, done the way Proxmox's source does it:

    - `PUT /nodes/{node}/qemu/{vmid}/resize` (qemu-server src/PVE/API2/Qemu.pm, `resize_vm`);
    - volumes allocated as the storage really allocates them (`allocated`), so a clone (which
      records the new volume's real size, QemuServer.pm `clone_disk`) and `qm disk rescan` (the
      `rescan` command) show the storage's rounding.
    """

    def _routes_qemu_resize(self):
        return [('PUT', '/nodes/{node}/qemu/{vmid}/resize', self._qm_resize)]

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
    for tokenid, secret in scenario.get('tokens', {}).items():
        pve.apitokens[tokenid] = secret
    for grant in scenario.get('grants', []):
        pve.grant(grant['user'], grant['path'], *grant['privs'])
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


def vm_of(pve, args):
    vm = pve.vm(int(args['vmid']))
    if vm is None:
        raise CommandError('no VM {0}'.format(args['vmid']))
    return vm


def dump_vm(vm):
    tags = [t for t in str(vm.config.get('tags', '')).replace(',', ';').replace(' ', ';').split(';') if t]
    return {'vmid': vm.vmid, 'name': vm.name, 'node': vm.node, 'status': vm.status, 'template': bool(vm.template),
            'config': vm.config, 'pending': vm.pending, 'lock': vm.lock, 'tags': tags, 'pool': vm.pool,
            'digest': vm.digest(), 'config_lock_held': vm.lock_holder is not None}


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


async def command(pve, args):
    name = args.get('cmd')
    if name == 'fail':
        pve.fail(args['method'], args['path'], status=args.get('status'), message=args.get('message'),
                 html=args.get('html', False), error=args.get('error'), times=args.get('times'))
        return None
    if name == 'clear_failures':
        pve.failures.clear()
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
        for key in ('status', 'start_error', 'shutdown_secs', 'start_secs', 'stop_secs', 'acpi'):
            if key in args:
                setattr(vm, key, args[key])
        if 'status' in args:
            vm.qmpstatus = args['status']
        return dump_vm(vm)
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
        vm.config.update(args['config'])
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
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    # The stdin reader thread may still block in readline; leave without waiting for it.
    sys.stdout.flush()
    os._exit(0)


if __name__ == '__main__':
    main()
