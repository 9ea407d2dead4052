#!/usr/bin/env bash
# The engine crate stays free of HTTP: no axum, hyper or reqwest among its normal
# dependencies (run by scripts/test.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tree="$(cargo tree --locked -p migserve-engine -e normal --prefix none)"
if bad="$(grep -E '^(axum|hyper|reqwest)( |-)' <<<"$tree")"; then
  echo "migserve-engine depends on HTTP crates:" >&2
  echo "$bad" | sort -u >&2
  exit 1
fi
echo "migserve-engine: no axum, hyper or reqwest among $(sort -u <<<"$tree" | wc -l) dependencies"
