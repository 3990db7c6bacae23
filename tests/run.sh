#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what the tests
# need when it is missing (redis-server, redis-cli, chromium), then runs
# `cargo test`. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Fuzz smoke: every cargo-fuzz target for a few seconds (long runs: see the
# README). Needs the nightly toolchain; skipped with a note when it is absent,
# or when SIS_SKIP_FUZZ=1.
if [ "${SIS_SKIP_FUZZ:-0}" != 1 ] && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
  log=$(mktemp)
  for target in $(cd fuzz && cargo +nightly fuzz list); do
    if ! (cd fuzz && cargo +nightly fuzz run "$target" -- -max_total_time="${SIS_FUZZ_SECONDS:-10}") >"$log" 2>&1; then
      tail -n 40 "$log" >&2
      echo "fuzz smoke: $target failed (reproducer under fuzz/artifacts/$target)" >&2
      exit 1
    fi
    echo "fuzz smoke: $target: $(grep -E '^Done' "$log" || echo ok)"
  done
  rm -f "$log"
else
  echo "fuzz smoke skipped (no nightly toolchain, or SIS_SKIP_FUZZ=1)"
fi

exec cargo test --locked "$@"
