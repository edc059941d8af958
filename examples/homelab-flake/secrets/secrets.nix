# agenix recipients: who can decrypt each secret (`agenix -e <name>.age` in this directory).
# The keys below and in ./host-keys are examples whose private halves no longer exist: replace
# them with yours.
let
  # You, to edit the secrets.
  admin = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB4cyNHHlL6C82zXo0VGxWz7yPnTw2Z7FrnvhMayxP5o admin";
  # The CI runners' own host keys (`cat /etc/ssh/ssh_host_ed25519_key.pub` on each).
  runner-apply = builtins.readFile ./host-keys/runner-apply.pub;
  runner-plan = builtins.readFile ./host-keys/runner-plan.pub;
  # The managed hosts' host keys: generated before the first install (docs/guide.md, "Secrets
  # with host keys"); the private halves are secrets of the apply runner (host-key-<name>.age
  # below), which nixprox installs on the VMs (`nixprox.install.hostKeyFile`).
  db = builtins.readFile ./host-keys/db.pub;
in
{
  # Secrets of the runners (nix/runner.nix reads them as files).
  "forgejo-runner-token.age".publicKeys = [ admin runner-apply runner-plan ];
  "proxmox-plan-token.age".publicKeys = [ admin runner-plan ];
  "proxmox-apply-token.age".publicKeys = [ admin runner-apply ];
  "nixprox-ssh-key.age".publicKeys = [ admin runner-apply ];
  "host-key-web.age".publicKeys = [ admin runner-apply ];
  "host-key-db.age".publicKeys = [ admin runner-apply ];
  # Secrets of the hosts, decrypted with their host keys.
  "postgres-app-password.age".publicKeys = [ admin db ];
}
