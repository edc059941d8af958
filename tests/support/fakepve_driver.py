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
import signal
import sys

from fakepve import FakePve, PveError, TaskError
from fakepve.certs import make_cert

# Guest keys that are FakeVm/FakeCt attributes set after construction.
VM_ATTRS = ('shutdown_secs', 'start_secs', 'stop_secs', 'start_error', 'ha_state', 'agent', 'agent_hangs', 'acpi',
            'stats')
CT_ATTRS = ('shutdown_secs', 'start_secs', 'stop_secs', 'start_error', 'ha_state')


class CommandError(Exception):
    """A command that could not be carried out; its text goes back to the caller."""


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
    pve = FakePve(host=args.host, port=args.port, password=os.urandom(16).hex())
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
