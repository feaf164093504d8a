#!/usr/bin/env bash
# The test command (README's, and what .ci/run runs): installs what the tests need on a
# Debian machine and runs every test. Extra arguments go to `cargo test`.
#
# The tests need, beyond the Rust toolchain: tmux (the TUI is driven through it), ip and nft
# (the fault runs' network namespaces and partitions, as root) and promtool (Prometheus's
# linter, run on live /metrics pages) and curl (README's tour, followed by tests/tests/tour.rs).
# Missing ones are installed with apt-get when this runs
# as root; otherwise the script says which to install and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v tmux >/dev/null || missing+=(tmux)
command -v ip >/dev/null || missing+=(iproute2)
command -v nft >/dev/null || missing+=(nftables)
command -v promtool >/dev/null || missing+=(prometheus)
command -v curl >/dev/null || missing+=(curl)

if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "scripts/test.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  else
    echo "scripts/test.sh: the tests need ${missing[*]}: apt-get install ${missing[*]} (as root)" >&2
    exit 1
  fi
fi

exec cargo test --workspace "$@"
