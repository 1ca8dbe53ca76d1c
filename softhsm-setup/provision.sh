#!/usr/bin/env bash
# Provision a fresh SoftHSM2 token for seb under DIR, touching nothing outside DIR.
#
#   softhsm-setup/provision.sh DIR [--port PORT] [--label LABEL]
#
# Creates (only what is missing; running it again changes nothing):
#   DIR/softhsm2.conf   SoftHSM2 configuration with its token directory DIR/tokens
#   DIR/so.pin          random security-officer PIN (mode 0600)
#   DIR/user.pin        random user PIN (mode 0600), read by seb through pin_file
#   DIR/seb.toml        a seb configuration ready for every subcommand
#                       (state_dir = DIR/state, broker on 127.0.0.1:PORT)
#   DIR/stop.sh         stops whatever this script started
# It installs nothing. If SoftHSM2 is missing it says how to install it and exits 1.
set -euo pipefail

usage() { echo "usage: $0 DIR [--port PORT] [--label LABEL]" >&2; exit 2; }

[ $# -ge 1 ] || usage
DIR=$1; shift
PORT=8443
LABEL=seb
while [ $# -gt 0 ]; do
  case "$1" in
    --port) [ $# -ge 2 ] || usage; PORT=$2; shift 2 ;;
    --label) [ $# -ge 2 ] || usage; LABEL=$2; shift 2 ;;
    *) usage ;;
  esac
done
case "$PORT" in ''|*[!0-9]*) echo "provision: --port must be a number" >&2; exit 2 ;; esac

if ! command -v softhsm2-util >/dev/null 2>&1; then
  echo "provision: softhsm2-util not found. Install SoftHSM2 first: apt-get install softhsm2" >&2
  exit 1
fi
MODULE=""
for candidate in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
                 /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
  if [ -f "$candidate" ]; then MODULE=$candidate; break; fi
done
if [ -z "$MODULE" ]; then
  echo "provision: libsofthsm2.so not found. Install SoftHSM2 first: apt-get install softhsm2" >&2
  exit 1
fi

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
umask 077
mkdir -p "$DIR/tokens" "$DIR/state"

if [ ! -f "$DIR/softhsm2.conf" ]; then
  cat > "$DIR/softhsm2.conf" <<CONF
directories.tokendir = $DIR/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
fi
export SOFTHSM2_CONF="$DIR/softhsm2.conf"

random_pin() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }
[ -s "$DIR/so.pin" ] || random_pin > "$DIR/so.pin"
[ -s "$DIR/user.pin" ] || random_pin > "$DIR/user.pin"
chmod 600 "$DIR/so.pin" "$DIR/user.pin"

if softhsm2-util --show-slots 2>/dev/null | grep -Eq "^[[:space:]]*Label:[[:space:]]+$LABEL[[:space:]]*$"; then
  echo "provision: token '$LABEL' already exists in $DIR/tokens"
else
  softhsm2-util --init-token --free --label "$LABEL" \
    --so-pin "$(cat "$DIR/so.pin")" --pin "$(cat "$DIR/user.pin")" >/dev/null
  echo "provision: created SoftHSM2 token '$LABEL' in $DIR/tokens"
fi

if [ ! -f "$DIR/seb.toml" ]; then
  cat > "$DIR/seb.toml" <<TOML
# seb configuration written by softhsm-setup/provision.sh (see deploy/seb.example.toml for
# every option). Relative paths are relative to this file.
broker_id = "seb-dev"
state_dir = "state"

[backend]
type = "pkcs11"
module = "$MODULE"
token_label = "$LABEL"
pin_file = "user.pin"
sessions = 2

[backend.module_env]
SOFTHSM2_CONF = "$DIR/softhsm2.conf"

[server]
listen = "127.0.0.1:$PORT"
TOML
  umask 022
  chmod 644 "$DIR/seb.toml"
  echo "provision: wrote $DIR/seb.toml (broker on 127.0.0.1:$PORT)"
else
  echo "provision: $DIR/seb.toml exists; left unchanged"
fi

if [ ! -f "$DIR/stop.sh" ]; then
  cat > "$DIR/stop.sh" <<'STOP'
#!/usr/bin/env bash
# Stops what provision.sh started in this directory (processes recorded in *.pid files).
set -u
cd "$(dirname "$0")"
for pidfile in ./*.pid; do
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then kill "$pid" 2>/dev/null || true; fi
  rm -f "$pidfile"
done
exit 0
STOP
  chmod 755 "$DIR/stop.sh"
fi
