#!/usr/bin/env bash
# The whole test suite: installs missing system packages, checks the build without device
# code (the offline verifier an executor links), lints, then runs every test with nextest
# (each test in its own process, each device test with its own SoftHSM2 token / swtpm).
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh

echo "== disk: a clean build and test run needs about 5 GB"
df -h . | tail -n 1

echo "== build and lint without default features (the offline verifier an executor links)"
cargo clippy --locked --lib --no-default-features -- -D warnings

echo "== clippy"
cargo clippy --locked --all-targets -- -D warnings

echo "== tests"
cargo nextest run --locked --no-fail-fast

echo "== fuzz (each parser target for a bounded time)"
bash tests/fuzz.sh
