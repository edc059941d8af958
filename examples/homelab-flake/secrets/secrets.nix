# agenix recipients: who can decrypt each secret (`agenix -e <name>.age` in this directory).
# The keys below and in ./host-keys are examples whose private halves no longer exist: replace
# them with yours.
let
  # You, to edit the secrets.
  admin = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB4cyNHHlL6C82zXo0VGxWz7yPnTw2Z7FrnvhMayxP5o admin";
  # The CI runner machine's own host key (`cat /etc/ssh/ssh_host_ed25519_key.pub` on it).
  runner = builtins.readFile ./host-keys/runner.pub;
  # The managed hosts' host keys: generated before the first install (docs/guide.md, "Secrets
  # with host keys"); the private halves are secrets of the apply runner (host-key-<name>.age
  # below), which nixprox installs on the VMs (`nixprox.install.hostKeyFile`).
  db = builtins.readFile ./host-keys/db.pub;
in
{
  # Secrets of the runner machine (../runner/configuration.nix; nix/runner.nix hands each to
  # one runner's user only).
  "forgejo-runner-token.age".publicKeys = [ admin runner ];
  "proxmox-plan-token.age".publicKeys = [ admin runner ];
  "nixprox-probe-key.age".publicKeys = [ admin runner ];
  "proxmox-apply-token.age".publicKeys = [ admin runner ];
  "nixprox-ssh-key.age".publicKeys = [ admin runner ];
  "host-key-web.age".publicKeys = [ admin runner ];
  "host-key-db.age".publicKeys = [ admin runner ];
  # Secrets of the hosts, decrypted with their host keys.
  "postgres-app-password.age".publicKeys = [ admin db ];
}
