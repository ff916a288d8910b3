#!/usr/bin/env bash
# Runs the current Neovim (Debian trixie's, in a debootstrap root made by tests/setup/neovim.sh) on this Debian 12 host.
set -euo pipefail
root=${SANDLINK_NEOVIM_ROOT:-/var/cache/sandlink/trixie-neovim}
libraries="$root/usr/lib/x86_64-linux-gnu"
# Starting nvim through the root's own dynamic loader gives it the root's newer glibc without a chroot, so it can
# still start the host's sandlink binary and see the host's paths; LD_LIBRARY_PATH would leak into those children.
export VIMRUNTIME="$root/usr/share/nvim/runtime"
exec "$libraries/ld-linux-x86-64.so.2" --library-path "$libraries" "$root/usr/bin/nvim" "$@"
