//! Integration tests of the Proxmox read path against fakepve.
