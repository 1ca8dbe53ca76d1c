#!/usr/bin/env bash
# Builds the cargo-fuzz targets (fuzz/, outside the main build) and runs each one for a
# bounded time: FUZZ_SECONDS each (default 15). Any crash, panic, leak or timeout fails the
# run; libFuzzer leaves the input in fuzz/artifacts/TARGET/. The long runs whose results
# docs/RELIABILITY.md reports are the same command with a larger FUZZ_SECONDS.
# cargo-fuzz needs nightly features; this machine has one stable toolchain, so they are
# enabled with RUSTC_BOOTSTRAP=1 for this build only.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${FUZZ_SECONDS:-15}
export RUSTC_BOOTSTRAP=1
echo "== fuzz: build"
cargo fuzz build -O
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target"
  out=$(mktemp)
  if ! cargo fuzz run -O "$target" "corpus/$target" -- \
      -max_total_time="$SECONDS_EACH" -max_len=8192 -timeout=10 -rss_limit_mb=2048 >"$out" 2>&1; then
    tail -40 "$out" >&2
    echo "fuzz: $target FAILED (see fuzz/artifacts/$target)" >&2
    rm -f "$out"
    exit 1
  fi
  echo "fuzz: $target $(grep -E '^Done' "$out" | tail -1)"
  rm -f "$out"
done
