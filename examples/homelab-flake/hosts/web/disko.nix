# The disk layout of `web`: the system disk alone.
{
  imports = [ ../../modules/root-disk.nix ];
}
