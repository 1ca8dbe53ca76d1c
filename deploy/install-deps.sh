#!/usr/bin/env bash
# Installs what seb needs on Debian 12, only what is missing: SoftHSM2, swtpm, the TPM2
# tools and headers, OpenSC's pkcs11-tool, OpenSSL, Go (the interoperability test drives a Go
# program that uses only its standard library) and cargo-nextest for the test suite.
# Run as root. Prints what it installs.
set -euo pipefail

packages=(softhsm2 swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config opensc openssl ca-certificates golang-go curl python3-venv)
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

# Python's own X.509/JWS stacks for tests/python_interop.rs (`cryptography`, PyJWT), in a
# virtual environment of Debian's python3 outside the repository.
INTEROP_VENV=/var/lib/seb-ci/interop-venv
if ! "$INTEROP_VENV/bin/python" -c "import cryptography, jwt" >/dev/null 2>&1; then
  echo "install-deps: Python environment $INTEROP_VENV (cryptography, PyJWT)"
  mkdir -p /var/lib/seb-ci
  [ -x "$INTEROP_VENV/bin/python" ] || /usr/bin/python3 -m venv "$INTEROP_VENV"
  "$INTEROP_VENV/bin/pip" install -q --disable-pip-version-check cryptography pyjwt
fi
