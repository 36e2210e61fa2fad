#!/bin/sh
# Installs libnvkv for C programs:
#   PREFIX/include/nvkv.h
#   PREFIX/lib/libnvkv.so, PREFIX/lib/libnvkv.a
#   PREFIX/lib/pkgconfig/nvkv.pc (shared) and nvkv-static.pc (static)
#
# Usage: engine/capi/install.sh PREFIX [LIBDIR]
#   LIBDIR: where libnvkv.so and libnvkv.a were built; without it, this builds them with
#   `cargo build --release -p nvkv-capi` and takes them from ${CARGO_TARGET_DIR:-<workspace>/target}/release.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
prefix=${1:?usage: install.sh PREFIX [LIBDIR]}
if [ $# -ge 2 ]; then
    libdir=$2
else
    (cd "$here" && cargo build --release -p nvkv-capi)
    libdir=${CARGO_TARGET_DIR:-$here/../../target}/release
fi
for f in libnvkv.so libnvkv.a; do
    [ -f "$libdir/$f" ] || { echo "install.sh: $libdir/$f not found" >&2; exit 1; }
done
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../../Cargo.toml" | head -n 1)
# What a Rust staticlib needs from the system; the same on every glibc Linux target so far.
native_libs="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"
mkdir -p "$prefix/include" "$prefix/lib/pkgconfig"
prefix=$(cd "$prefix" && pwd)
install -m 0644 "$here/include/nvkv.h" "$prefix/include/nvkv.h"
install -m 0755 "$libdir/libnvkv.so" "$prefix/lib/libnvkv.so"
install -m 0644 "$libdir/libnvkv.a" "$prefix/lib/libnvkv.a"
for pc in nvkv nvkv-static; do
    sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" -e "s|@NATIVE_LIBS@|$native_libs|" \
        "$here/$pc.pc.in" > "$prefix/lib/pkgconfig/$pc.pc"
done
echo "installed libnvkv $version under $prefix (pkg-config: PKG_CONFIG_PATH=$prefix/lib/pkgconfig)"
