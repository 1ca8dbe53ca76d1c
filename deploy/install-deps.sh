#!/usr/bin/env bash
# Installs what seb needs on Debian 12, only what is missing: SoftHSM2, swtpm, the TPM2
# tools and headers, p11-kit (its server and client module serve a token over a socket: the
# network-HSM fault test), OpenSC's pkcs11-tool, OpenSSL, Go (the interoperability test drives a Go
# program that uses only its standard library), cargo-nextest for the test suite and
# cargo-fuzz for the fuzz targets (tests/fuzz.sh).
# Run as root. Prints what it installs.
set -euo pipefail

packages=(softhsm2 swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config opensc openssl ca-certificates golang-go curl p11-kit p11-kit-modules)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found; install a Rust toolchain (rustup) first" >&2
  exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "install-deps: installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "install-deps: installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
