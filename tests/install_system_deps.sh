#!/usr/bin/env bash
# Installs the Debian packages the test suite needs (network namespaces and iptables for the
# partition suite, etcdctl for the etcd API tests, promtool from Debian's prometheus package for the
# metrics and alert-rule tests) when they are missing. Idempotent; quiet when everything is present.
set -euo pipefail
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
# etcdctl 3.4 drives raftkv's etcd v3 API in tests/integration/test_etcd_api.py.
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests need: ${need[*]} (run as root or install them)" >&2
    exit 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian's iptables is the nf_tables variant; where the kernel lacks nf_tables the legacy variant
# (same package) still works. The partition suite picks whichever answers (tests/jepsen/topology.py);
# say which when it is not the default.
if [ "$(id -u)" -eq 0 ] && ! iptables -w -S INPUT >/dev/null 2>&1; then
  if command -v iptables-legacy >/dev/null 2>&1 && iptables-legacy -w -S INPUT >/dev/null 2>&1; then
    echo "iptables (nf_tables) does not work on this kernel; the partition suite uses iptables-legacy" >&2
  else
    echo "warning: neither iptables variant works here; the partition suite will fail" >&2
  fi
fi
