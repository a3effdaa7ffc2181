#!/usr/bin/env bash
# Debian packages the end-to-end tests use; installed only when missing.
set -euo pipefail
need=()
# A real Prometheus server and promtool (tests/test_prometheus.py).
command -v prometheus >/dev/null && command -v promtool >/dev/null || need+=(prometheus)
# PostgreSQL (initdb, postgres) for mlflow server on PostgreSQL (tests/test_distributed_nodes.py);
# Debian keeps them in /usr/lib/postgresql/<version>/bin, off PATH.
command -v initdb >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null ||
  need+=(postgresql)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing Debian packages: ${need[*]} (run as root or install them)" >&2
    exit 1
  fi
fi
echo "system packages OK"
