#!/bin/bash
# Test stand-in for nixos-anywhere (written to a temp dir by tests/support/sshd.rs).
# It rejects every option the real CLI (docs/cli.md) does not have, and does on the test host,
# over real SSH, what the real one's last phases do: build the flake's toplevel, copy its
# closure, upload disk keys, place --extra-files under /mnt, set the system profile, run
# `switch-to-configuration boot`, and request a reboot (the harness restarts sshd).
set -euo pipefail
export NIX_CONFIG="substituters ="
known=" @FLAGS@ "
flake="" target="" port=22 key="" extra="" disk_keys=() ssh_extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    -f|--flake) flake=$2; shift 2 ;;
    --target-host) target=$2; shift 2 ;;
    -p|--ssh-port) port=$2; shift 2 ;;
    -i) key=$2; shift 2 ;;
    --extra-files) extra=$2; shift 2 ;;
    --build-on)
      case "$2" in auto|local|remote) ;; *) echo "invalid --build-on $2" >&2; exit 1 ;; esac
      shift 2 ;;
    --kexec) shift 2 ;;
    # Like the real one (`sshArgs+=("-o" "$2")`): appended after its own options, so ssh keeps
    # its `StrictHostKeyChecking=no`, and an option nixos-anywhere does not set (ProxyCommand)
    # takes effect.
    --ssh-option)
      case "$2" in *=*) ;; *) echo "invalid --ssh-option $2 (expected Key=value)" >&2; exit 1 ;; esac
      ssh_extra+=(-o "$2"); shift 2 ;;
    --disk-encryption-keys) disk_keys+=("$2" "$3"); shift 3 ;;
    -*)
      case "$known" in
        *" $1 "*) echo "fake nixos-anywhere: $1 is real but not implemented here" >&2; exit 2 ;;
        *) echo "unknown option $1" >&2; exit 1 ;;
      esac ;;
    *) target=$1; shift ;;
  esac
done
[ -n "$flake" ] && [ -n "$target" ] && [ -n "$key" ] || { echo "missing --flake, target or -i" >&2; exit 1; }
# Tests count the installer's runs per host (NIXPROX_TEST_INSTALL_LOG=<file>).
if [ -n "${NIXPROX_TEST_INSTALL_LOG:-}" ]; then
  echo "${flake#*#} ${target} ${ssh_extra[*]}" >> "$NIXPROX_TEST_INSTALL_LOG"
fi
# Like nixos-anywhere (src/nixos-anywhere.sh): a private temporary directory, removed by a
# `trap … EXIT`, holding a copy of the SSH key it was given.
tempDir=$(mktemp -d)
trap 'rm -rf "$tempDir"' EXIT
cp "$key" "$tempDir/nixos-anywhere"
# Tests make an install fail with NIXPROX_TEST_INSTALL_FAIL=<message>, as a failing disko would.
if [ -n "${NIXPROX_TEST_INSTALL_FAIL:-}" ]; then
  echo "### Formatting hard drive with disko ###"
  echo "$NIXPROX_TEST_INSTALL_FAIL" >&2
  exit 1
fi
ssh_opts=(-i "$key" -p "$port" -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o IdentitiesOnly=yes -o BatchMode=yes -o LogLevel=ERROR "${ssh_extra[@]}")
# A user other than root: nixos-anywhere escalates with sudo (or doas) and aborts without it,
# then works as root (it copies the user's authorized_keys to root's; the test host has one
# authorized_keys file for every user, and its /root is the machine's, so nothing is copied).
user=${target%@*}
if [ "$user" != "$target" ] && [ "$user" != root ]; then
  if ! ssh "${ssh_opts[@]}" "$target" 'sudo -n true'; then
    echo 'Unable to find a command to use to escalate privileges: Could not find `sudo` or `doas`' >&2
    exit 1
  fi
  target="root@${target#*@}"
fi
echo "### Building the system closure ###"
attr=${flake#*#}
json=$(nix --extra-experimental-features 'nix-command flakes' build --json --no-link --option sandbox false \
  "${flake%%#*}#nixosConfigurations.\"$attr\".config.system.build.toplevel")
system=$(printf '%s' "$json" | sed -n 's/.*"out":"\([^"]*\)".*/\1/p')
echo "### Uploading disk encryption keys ###"
i=0
while [ $i -lt ${#disk_keys[@]} ]; do
  ssh "${ssh_opts[@]}" "$target" "mkdir -p \$(dirname ${disk_keys[$i]}) && cat > ${disk_keys[$i]}" < "${disk_keys[$((i+1))]}"
  i=$((i+2))
done
# Tests stop an install half way with NIXPROX_TEST_INSTALL_HANG=<file>: the installer writes
# its pid and its child's there and waits, as a long `nix copy` would.
if [ -n "${NIXPROX_TEST_INSTALL_HANG:-}" ]; then
  sleep 300 &
  echo "$$ $!" > "$NIXPROX_TEST_INSTALL_HANG"
  wait
fi
echo "### Installing NixOS ###"
NIX_SSHOPTS="${ssh_opts[*]}" nix --extra-experimental-features 'nix-command flakes' copy --no-check-sigs \
  --to "ssh-ng://$target" "$system"
if [ -n "$extra" ]; then
  tar -C "$extra" -cf - . | ssh "${ssh_opts[@]}" "$target" 'mkdir -p /mnt && tar -C /mnt -xpf -'
fi
ssh "${ssh_opts[@]}" "$target" "nix-env -p /nix/var/nix/profiles/system --set $system && $system/bin/switch-to-configuration boot"
echo "### Rebooting ###"
# Like nixos-anywhere, the reboot is scheduled in the background so this SSH session ends
# before the machine goes down (a reboot under the session's feet would fail the install with
# "connection closed by remote host", exit 255).
ssh "${ssh_opts[@]}" "$target" "nohup sh -c 'sleep 0.5 && touch /run/nixprox-test-reboot' >/dev/null 2>&1 </dev/null &"
echo "### Done! ###"
