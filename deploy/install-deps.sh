#!/usr/bin/env bash
# Installs what seb needs on Debian 12, only what is missing: SoftHSM2, swtpm, the TPM2
# tools and headers, OpenSC's pkcs11-tool, OpenSSL, Go (the interoperability test drives a Go
# program that uses only its standard library), cargo-nextest for the test suite, and a Python
# virtual environment with the MCP SDK (tests/mcp.rs drives `seb mcp` with a real MCP client).
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

# The Python MCP SDK from PyPI, for tests/mcp.rs (a real MCP client driving `seb mcp`), in the
# agents' side virtual environment /var/lib/seb-ci/agents-venv (shared with the Python client's
# tests of branch agents; the system Python stays as Debian ships it). tests/mcp.rs finds it
# there, or wherever SEB_PYTHON points.
VENV=/var/lib/seb-ci/agents-venv
MCP_VERSION=2.3.0
if ! [ -x "$VENV/bin/python" ] ||
   ! "$VENV/bin/python" -c "import mcp, importlib.metadata as m, sys; sys.exit(m.version('mcp') != '$MCP_VERSION')" 2>/dev/null; then
  echo "install-deps: the Python MCP SDK (mcp $MCP_VERSION) in $VENV"
  mkdir -p /var/lib/seb-ci
  [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "mcp==$MCP_VERSION"
fi
