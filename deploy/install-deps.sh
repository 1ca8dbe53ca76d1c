#!/usr/bin/env bash
# Installs what seb needs on Debian 12, only what is missing: SoftHSM2, swtpm, the TPM2
# tools and headers, p11-kit (its server and client module serve a token over a socket: the
# network-HSM fault test), OpenSC's pkcs11-tool, OpenSSL, Go (the interoperability test drives a Go
# program that uses only its standard library, and builds examples/go-executor), Node.js and
# npm, Python's venv, PostgreSQL (`postgresql`: the server and, through it, the client psql;
# the store shared by several broker replicas, and `softhsm-setup/provision.sh DIR --postgres`
# starts a throwaway cluster with its binaries), cargo-nextest for the test suite
# and cargo-fuzz for the fuzz targets (tests/fuzz.sh). Then the test environments of the
# agents' side (tests/agents.rs), outside the repository:
#   /var/lib/seb-ci/agents-venv   Python virtual environment: clients/python with its
#                                 langchain extra (httpx, cryptography, langchain-core), pytest,
#                                 and the MCP SDK (tests/mcp.rs drives `seb mcp` with it)
#   /var/lib/seb-ci/node          npm folder with `jose` (a third JWS stack)
#   /var/lib/seb-ci/interop-venv  Python's `cryptography` and PyJWT alone, for
#                                 tests/python_interop.rs
# Debian's postgresql package normally creates and starts a cluster `main` on port 5432. Before
# installing it on a machine that lacks it, this script sets `create_main_cluster = false` in
# /etc/postgresql-common/createcluster.conf (or, when postgresql-common is not installed yet, in
# createcluster.d/seb-no-main-cluster.conf), so no database server is left running (tests and
# provision.sh make their own clusters; a production database is set up deliberately, see
# docs/OPERATIONS.md "Running replicas on PostgreSQL"). An existing cluster is left alone.
# Run as root. Prints what it installs; a second run installs nothing.
set -euo pipefail

packages=(softhsm2 swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config opensc openssl ca-certificates golang-go curl python3-venv nodejs p11-kit p11-kit-modules postgresql)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# No default cluster on 5432: the server package's postinst reads create_main_cluster from
# createcluster.conf (and the files it includes). If postgresql-common is already there, the
# setting goes into its createcluster.conf; if not, into a drop-in under createcluster.d, which
# the createcluster.conf it then installs includes (writing createcluster.conf itself first
# would make its installer, ucf, keep our one-line file instead of Debian's).
if printf '%s\n' "${missing[@]}" | grep -qx postgresql; then
  conf=/etc/postgresql-common/createcluster.conf
  if [ -f "$conf" ]; then
    if grep -Eq '^[[:space:]]*create_main_cluster[[:space:]]*=' "$conf"; then
      sed -i -E 's/^[[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' "$conf"
    else
      echo "create_main_cluster = false" >> "$conf"
    fi
  else
    mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/seb-no-main-cluster.conf
  fi
  echo "install-deps: PostgreSQL without Debian's default cluster (create_main_cluster = false)"
fi
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

# npm: Debian packages it apart from nodejs; a nodejs from elsewhere (NodeSource) bundles it.
if ! command -v npm >/dev/null 2>&1; then
  echo "install-deps: installing npm"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
fi

# The Python client and its test tools, in a virtual environment of Debian's python3. Reinstalled
# whenever the package (its pyproject.toml or any module) changed, so that the copy in the venv
# is always this tree's: executors use it, and an old copy refuses newer tokens.
HERE=$(cd "$(dirname "$0")/.." && pwd)
VENV=/var/lib/seb-ci/agents-venv
CLIENT_HASH=$(cat "$HERE/clients/python/pyproject.toml" "$HERE"/clients/python/seb_client/*.py | sha256sum | cut -c1-16)
STAMP="$VENV/.seb-client-$CLIENT_HASH"
if [ ! -e "$STAMP" ]; then
  echo "install-deps: Python environment $VENV (seb_client[langchain], pytest)"
  mkdir -p /var/lib/seb-ci
  [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "$HERE/clients/python[langchain,test]"
  rm -f "$VENV"/.seb-client-*
  touch "$STAMP"
fi

# jose for the Node interoperability check, in a local npm folder.
NODE_DIR=/var/lib/seb-ci/node
if [ ! -d "$NODE_DIR/node_modules/jose" ]; then
  echo "install-deps: npm jose in $NODE_DIR"
  mkdir -p "$NODE_DIR"
  [ -f "$NODE_DIR/package.json" ] || echo '{"private": true}' >"$NODE_DIR/package.json"
  npm install --prefix "$NODE_DIR" --no-audit --no-fund --silent jose@5
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
