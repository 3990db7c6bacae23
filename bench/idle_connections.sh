#!/usr/bin/env bash
# Target (README, Benchmarks): 10,000 idle keep-alive client connections in under 100 MB RSS.
#
# Builds the release gateway and the driver (bench/idle_connections.rs),
# raises the open-file limit, then lets the driver start the gateway on
# 127.0.0.1, open the connections (each completes one proxied request and
# stays open), read the gateway's VmRSS and check a sample still works.
# Extra arguments go to the driver, e.g. `--connections 20000`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each connection costs a descriptor in the gateway and one in the driver:
# 65536, or at least the hard limit.
if ! ulimit -n 65536 2>/dev/null && ! ulimit -n "$(ulimit -Hn)" 2>/dev/null; then
  echo "warning: cannot raise the open-file limit to 65536 (now $(ulimit -n))" >&2
fi

cargo build --release --locked --bin sis-gateway --example idle_connections
exec target/release/examples/idle_connections --gateway target/release/sis-gateway "$@"
