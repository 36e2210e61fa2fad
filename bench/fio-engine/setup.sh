#!/usr/bin/env bash
# Prepares a Debian machine to build nvkv-fio with its `fio` feature (the fio ioengine):
#   - a deb-src entry for the same suites as the existing deb entries (so `apt-get source fio` works),
#   - the Debian packages the build needs: libclang-dev and clang (bindgen), dpkg-dev (dpkg-source unpacks the
#     source package), fio itself (the engine's target, 3.33 on bookworm),
#   - Debian's fio source package, unpacked under ${NVKV_CACHE:-$HOME/.cache/nvkv}/fio-src.
# Idempotent: does nothing that is already done. Run as root (or with sudo).
set -euo pipefail

cache="${NVKV_CACHE:-$HOME/.cache/nvkv}/fio-src"
need=()
for p in libclang-dev clang dpkg-dev fio; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done

src_list=/etc/apt/sources.list.d/nvkv-deb-src.sources
have_src=0
if grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then have_src=1; fi
updated=0
if [ "$have_src" = 0 ]; then
    echo "nvkv-fio setup: adding deb-src entries ($src_list) for the suites of the existing deb entries"
    tmp=$(mktemp)
    # deb822 files: copy each stanza whose Types has deb, with Types: deb-src.
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        [ "$f" = "$src_list" ] && continue
        perl -00 -ne 'next if /^Enabled: *no/mi; if (/^Types:.*\bdeb\b/mi) { s/^Types:.*$/Types: deb-src/mi; print "$_\n" }' \
            "$f" >> "$tmp"
    done
    # one-line format
    one=$(grep -hsE '^deb +' /etc/apt/sources.list || true)
    if [ -n "$one" ]; then
        printf '%s\n' "$one" | sed -E 's/^deb +/deb-src /' > /etc/apt/sources.list.d/nvkv-deb-src.list
    fi
    if [ -s "$tmp" ]; then cp "$tmp" "$src_list"; fi
    rm -f "$tmp"
    apt-get update -q
    updated=1
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "nvkv-fio setup: installing ${need[*]}"
    [ "$updated" = 1 ] || apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi
if ! ls -d "$cache"/fio-*/ >/dev/null 2>&1; then
    echo "nvkv-fio setup: fetching Debian's fio source package into $cache"
    mkdir -p "$cache"
    (cd "$cache" && apt-get source -q fio)
fi
echo "nvkv-fio setup: ready ($(ls -d "$cache"/fio-*/ | head -1))"
