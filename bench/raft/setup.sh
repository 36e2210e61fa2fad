#!/usr/bin/env bash
# Prepares a Debian machine for nvkv-raft-bench with its `etcd` feature:
#   - etcd-server (/usr/bin/etcd, 3.4 on bookworm): the three members the bench starts,
#   - etcd-client (etcdctl): not used by the bench, but the first thing one reaches for when a member misbehaves,
#   - protobuf-compiler (protoc): the etcd-client crate's build script compiles etcd's .proto files with it,
#   - libprotobuf-dev: the well-known types those files import (google/protobuf/descriptor.proto, struct.proto),
#     which Debian's protoc finds under /usr/include only with this package.
# Idempotent: installs only what is missing. Run as root (or with sudo).
set -euo pipefail

need=()
for p in etcd-server etcd-client protobuf-compiler libprotobuf-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "nvkv-raft-bench setup: installing ${need[*]}"
    apt-get update -q
    # The etcd-server package's postinst starts an etcd service on 127.0.0.1:2379/2380 on systems that run
    # systemd; the bench uses other ports and its own data dirs, so that service does not get in the way.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi
echo "nvkv-raft-bench setup: ready ($(/usr/bin/etcd --version 2>/dev/null | head -1); $(protoc --version))"
