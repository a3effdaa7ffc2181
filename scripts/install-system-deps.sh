#!/usr/bin/env bash
# Debian packages the end-to-end tests use; installed only when missing.
set -euo pipefail
need=()
# A real Prometheus server and promtool (tests/test_prometheus.py).
command -v prometheus >/dev/null && command -v promtool >/dev/null || need+=(prometheus)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing Debian packages: ${need[*]} (run as root or install them)" >&2
    exit 1
  fi
fi
echo "system packages OK"
