#!/usr/bin/env bash
# Install Debian's etcd server and etcdctl for the side-by-side benchmark, when they are missing.
set -euo pipefail
if command -v etcd >/dev/null && command -v etcdctl >/dev/null; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-cache policy etcd-server | grep -q 'Candidate: [0-9]'; then
    apt-get update -q
fi
apt-get install -y -q etcd-server etcd-client
# The package enables a system service on a default port; the benchmark runs its own members instead.
if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
    systemctl stop etcd || true
fi
