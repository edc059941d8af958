# The disk layout of `dns`: the system disk alone.
{
  imports = [ ../../modules/root-disk.nix ];
}
