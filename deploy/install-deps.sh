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

# The Python MCP SDK from PyPI, for tests/mcp.rs, in a virtual environment of its own (the
# system Python stays as Debian ships it). Python packages other tests need go into the same
# venv. tests/mcp.rs finds it here, or wherever SEB_MCP_PYTHON points.
venv=/var/lib/seb-ci/venv
mcp_version=2.3.0
if [ ! -x "$venv/bin/python" ]; then
  echo "install-deps: creating the Python virtual environment $venv"
  mkdir -p "$(dirname "$venv")"
  /usr/bin/python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('mcp') != '$mcp_version')" 2>/dev/null; then
  echo "install-deps: installing the Python MCP SDK (mcp $mcp_version) into $venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "mcp==$mcp_version"
fi
