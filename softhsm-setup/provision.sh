#!/usr/bin/env bash
# Provision a fresh SoftHSM2 token for seb under DIR, touching nothing outside DIR.
#
#   softhsm-setup/provision.sh DIR [--port PORT] [--label LABEL] [--p11kit]
#                              [--tpm [--tpm-port P] [--backend pkcs11|tpm]]
#                              [--executor-port PORT] [--postgres [--pg-port P]]
#
# Creates (only what is missing; running it again changes nothing):
#   DIR/softhsm2.conf   SoftHSM2 configuration with its token directory DIR/tokens
#   DIR/so.pin          random security-officer PIN (mode 0600)
#   DIR/user.pin        random user PIN (mode 0600), read by seb through pin_file
#   DIR/seb.toml        a seb configuration ready for every subcommand
#                       (state_dir = DIR/state, broker on 127.0.0.1:PORT)
#   DIR/stop.sh         stops whatever this script started (written first, so it exists even
#                       when a later step fails)
# With --p11kit the token is served over a socket, as a network HSM would be (docs/RELIABILITY.md):
#   DIR/hsm-start.sh    starts `p11-kit server` for the token on DIR/p11kit/hsm.sock (the HSM
#                       is plugged in); run by provision.sh, and by hand after hsm-stop.sh
#   DIR/hsm-stop.sh     kills that server and every connection it serves with SIGKILL (the HSM
#                       is pulled: no orderly close reaches the broker)
#   seb.toml then loads the p11-kit client module with P11_KIT_SERVER_ADDRESS pointing at the
#   socket, instead of SoftHSM2 itself. Needs p11-kit and p11-kit-modules.
# With --executor-port PORT it also (needs the seb binary, found as for --tpm below; runs
# `seb init` first when DIR/state/trust/root.pem does not exist yet):
#   DIR/executor.key    the executor's own P-384 key (PKCS#8, mode 0600): never a broker key
#   DIR/executor.pem    its certificate (role executor, serves HTTPS as 127.0.0.1/localhost)
#   DIR/executor.toml   `seb exec` configuration on 127.0.0.1:PORT with one sample action,
#                       demo.write on demo/files: `seb demo-write` writes the `text` parameter
#                       into DIR/demo-output/<name> (a plain file name; separators and .. refused)
# With --tpm it also (docs/ATTESTATION.md):
#   DIR/tpm/            an swtpm manufactured by swtpm_setup (EK + EK certificate signed by a
#                       local test EK CA in DIR/tpm/ek-ca), running on 127.0.0.1:P (control P+1)
#   DIR/eventlog.json   the synthetic event log (firmware-config/swtpm-eventlog.json), extended
#                       into the fresh swtpm
#   DIR/attest-policy.toml  reference values recorded from it with `seb attest record`
#                       (the seb binary: $SEB_BIN, else this checkout's target/release/seb,
#                       else `seb` on PATH; looked for before anything is started)
#   [attestation] in DIR/seb.toml (self-check every 5 s); --backend tpm also keeps the
#   broker's keys in that TPM instead of SoftHSM2. DIR/stop.sh sends TPM2_Shutdown first.
#   Run again after DIR/stop.sh, it starts the swtpm on its state with TPM2_Startup(CLEAR), which
#   resets every PCR (a reboot, as far as the TPM can tell), and measures the boot again. The
#   broker image is measured into PCR 10 (firmware-config/README.md): never 16-23, which
#   software can reset.
# With --postgres it also starts a throwaway PostgreSQL cluster for the store (several
# replicas sharing one database, docs/OPERATIONS.md "Running replicas on PostgreSQL"), with
# Debian's server binaries (the newest /usr/lib/postgresql/*/bin; the seb binary is not needed):
#   DIR/postgres/data   the cluster (initdb; owned by the `postgres` user when run as root, as
#                       the server refuses to run as root: DIR is then made traversable with
#                       chmod o+x, the secrets in it stay 0600). Listens on 127.0.0.1:P only
#                       (--pg-port P; default a free port, another one tried if the start fails
#                       to bind), Unix socket in DIR/postgres/run, fsync on, scram-sha-256 for
#                       TCP connections; settings in DIR/postgres/data/seb.conf, log in
#                       DIR/postgres/postgres.log
#   DIR/pg.password     random password of the role `seb` (mode 0600), owner of database `seb`
#   DIR/pg.port         the port P, once the cluster has started on it (kept on later runs)
#   DIR/pg-stop.sh      fast shutdown of the cluster (pg_ctl stop -m fast); harmless if stopped
#   DIR/pg-start.sh     starts it again on the same port and waits until it accepts connections
#   [store] in DIR/seb.toml: backend = "postgres", url = "postgres://seb@127.0.0.1:P/seb",
#   password_file = "pg.password" (appended to an existing seb.toml that has no [store]).
#   DIR/stop.sh stops the cluster too. Run again after DIR/stop.sh, it starts it on P again.
# It installs nothing. If SoftHSM2 is missing it says how to install it and exits 1.
set -euo pipefail

usage() { echo "usage: $0 DIR [--port PORT] [--label LABEL] [--p11kit] [--tpm [--tpm-port P] [--backend pkcs11|tpm]] [--executor-port PORT] [--postgres [--pg-port P]]" >&2; exit 2; }

[ $# -ge 1 ] || usage
case "$1" in
  -h|--help)
    # The header above this script's `set` line is its manual.
    sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0 ;;
  -*) echo "the first argument is the directory DIR, not an option ($1)" >&2; usage ;;
esac
DIR=$1; shift
PORT=8443
LABEL=seb
TPM=0
TPM_PORT=2321
BACKEND=pkcs11
EXEC_PORT=""
P11KIT=0
POSTGRES=0
PG_PORT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --port) [ $# -ge 2 ] || usage; PORT=$2; PORT_GIVEN=1; shift 2 ;;
    --label) [ $# -ge 2 ] || usage; LABEL=$2; shift 2 ;;
    --tpm) TPM=1; shift ;;
    --p11kit) P11KIT=1; shift ;;
    --tpm-port) [ $# -ge 2 ] || usage; TPM_PORT=$2; shift 2 ;;
    --backend) [ $# -ge 2 ] || usage; BACKEND=$2; shift 2 ;;
    --executor-port) [ $# -ge 2 ] || usage; EXEC_PORT=$2; shift 2 ;;
    --postgres) POSTGRES=1; shift ;;
    --pg-port) [ $# -ge 2 ] || usage; PG_PORT=$2; POSTGRES=1; shift 2 ;;
    *) usage ;;
  esac
done
case "$PORT" in ''|*[!0-9]*) echo "provision: --port must be a number" >&2; exit 2 ;; esac
case "$EXEC_PORT" in *[!0-9]*) echo "provision: --executor-port must be a number" >&2; exit 2 ;; esac
case "$TPM_PORT" in ''|*[!0-9]*) echo "provision: --tpm-port must be a number" >&2; exit 2 ;; esac
case "$PG_PORT" in *[!0-9]*) echo "provision: --pg-port must be a number" >&2; exit 2 ;; esac
case "$BACKEND" in pkcs11) ;; tpm) TPM=1 ;; *) echo "provision: --backend is pkcs11 or tpm" >&2; exit 2 ;; esac
HERE=$(cd "$(dirname "$0")" && pwd)
FIRMWARE="$HERE/../firmware-config"

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

# PostgreSQL (--postgres): Debian's server binaries, the newest version installed. As root,
# the server runs as the `postgres` user (it refuses to run as root); otherwise as the caller.
PG_BIN=""
PG_USER=""
if [ "$POSTGRES" = 1 ]; then
  for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do
    if [ -x "$candidate/initdb" ] && [ -x "$candidate/pg_ctl" ] && [ -x "$candidate/psql" ]; then PG_BIN=$candidate; fi
  done
  if [ -z "$PG_BIN" ]; then
    echo "provision: PostgreSQL's server binaries (/usr/lib/postgresql/*/bin/initdb) not found. Install: apt-get install postgresql" >&2
    echo "provision: (deploy/install-deps.sh installs it without creating Debian's default cluster)" >&2
    exit 1
  fi
  if [ "$(id -u)" = 0 ]; then
    PG_USER=postgres
    if ! id -u "$PG_USER" >/dev/null 2>&1 || ! command -v runuser >/dev/null 2>&1; then
      echo "provision: --postgres as root needs the user 'postgres' (made by Debian's postgresql package) and runuser" >&2
      exit 1
    fi
  else
    PG_USER=$(id -un)
  fi
fi

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
if [ "$POSTGRES" = 1 ]; then
  # The server's Unix socket path must fit in sun_path (107 bytes).
  pg_socket="$DIR/postgres/run/.s.PGSQL.65535"
  if [ ${#pg_socket} -gt 107 ]; then
    echo "provision: $DIR is too long a path for PostgreSQL's Unix socket ($DIR/postgres/run/.s.PGSQL.PORT must fit in 107 bytes); use a shorter DIR" >&2
    exit 2
  fi
fi
umask 077
mkdir -p "$DIR/tokens" "$DIR/state"

# stop.sh first, before anything is started, so that whatever a later failure leaves running
# can always be stopped.
if [ ! -f "$DIR/stop.sh" ] || ! grep -q pg-stop "$DIR/stop.sh"; then
  cat > "$DIR/stop.sh" <<'STOP'
#!/usr/bin/env bash
# Stops what provision.sh started in this directory (processes recorded in *.pid files, and
# the PostgreSQL cluster in postgres/ with pg-stop.sh, a fast shutdown). An swtpm first gets an
# orderly TPM2_Shutdown, so the restart is not a dictionary-attack failure. Harmless when
# nothing runs.
set -u
cd "$(dirname "$0")"
if [ -f hsm-stop.sh ]; then bash hsm-stop.sh >/dev/null 2>&1 || true; fi
if [ -f pg-stop.sh ]; then bash pg-stop.sh >/dev/null 2>&1 || true; fi
if [ -f swtpm.port ] && [ -f swtpm.pid ] && kill -0 "$(cat swtpm.pid)" 2>/dev/null; then
  port=$(cat swtpm.port)
  TPM2TOOLS_TCTI="swtpm:host=127.0.0.1,port=$port" tpm2_shutdown >/dev/null 2>&1 || true
  swtpm_ioctl --tcp "127.0.0.1:$((port + 1))" -s >/dev/null 2>&1 || true
  for _ in $(seq 1 50); do kill -0 "$(cat swtpm.pid 2>/dev/null)" 2>/dev/null || break; sleep 0.05; done
fi
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

CLIENT_MODULE=""
if [ "$P11KIT" = 1 ]; then
  if ! command -v p11-kit >/dev/null 2>&1; then
    echo "provision: p11-kit not found. Install: apt-get install p11-kit p11-kit-modules" >&2
    exit 1
  fi
  for candidate in /usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so \
                   /usr/lib/aarch64-linux-gnu/pkcs11/p11-kit-client.so /usr/lib/pkcs11/p11-kit-client.so; do
    if [ -f "$candidate" ]; then CLIENT_MODULE=$candidate; break; fi
  done
  if [ -z "$CLIENT_MODULE" ]; then
    echo "provision: p11-kit-client.so not found. Install: apt-get install p11-kit-modules" >&2
    exit 1
  fi
  mkdir -p "$DIR/p11kit"
  cat > "$DIR/hsm-start.sh" <<START
#!/usr/bin/env bash
# Plugs the HSM in: serves the SoftHSM2 token '$LABEL' over $DIR/p11kit/hsm.sock with
# p11-kit server, in its own process group (hsm-stop.sh kills the group). Does nothing if it
# is already running.
set -eu
cd "\$(dirname "\$0")"
if [ -f p11kit.pid ] && kill -0 "\$(cat p11kit.pid)" 2>/dev/null; then exit 0; fi
rm -f p11kit/hsm.sock
SOFTHSM2_CONF="$DIR/softhsm2.conf" setsid p11-kit server -f -n "$DIR/p11kit/hsm.sock" \
  -p "$MODULE" "pkcs11:token=$LABEL" >p11kit/server.log 2>&1 </dev/null &
echo \$! > p11kit.pid
for _ in \$(seq 1 200); do [ -S p11kit/hsm.sock ] && exit 0; sleep 0.025; done
echo "hsm-start: p11-kit server did not open its socket" >&2
cat p11kit/server.log >&2
exit 1
START
  cat > "$DIR/hsm-stop.sh" <<'STOPHSM'
#!/usr/bin/env bash
# Pulls the HSM: SIGKILL to the p11-kit server and to every connection it serves (its process
# group), so no orderly close reaches the broker. hsm-start.sh plugs it in again.
set -u
cd "$(dirname "$0")"
[ -f p11kit.pid ] || exit 0
pid=$(cat p11kit.pid)
kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
rm -f p11kit.pid p11kit/hsm.sock
exit 0
STOPHSM
  chmod 755 "$DIR/hsm-start.sh" "$DIR/hsm-stop.sh"
  bash "$DIR/hsm-start.sh"
  echo "provision: p11-kit server serves token '$LABEL' on $DIR/p11kit/hsm.sock"
fi

# The seb binary records the attestation policy (--tpm). It is found before anything starts:
# $SEB_BIN, else this checkout's target/release/seb, else `seb` on PATH.
SEB=""
NEED_SEB=0
if [ "$TPM" = 1 ] && [ ! -f "$DIR/attest-policy.toml" ]; then NEED_SEB=1; fi
# An attestation key certificate made by a seb that did not yet name the EK certificate it was
# enrolled against (sebEkCertificate, arc.5) is enrolled again at the end (the same AK, a new
# certificate): relying parties that pin the EK CA refuse it (docs/OPERATIONS.md §11).
AK_UNBOUND=0
if [ "$TPM" = 1 ] && [ -f "$DIR/state/trust/ak.pem" ] && [ -f "$DIR/state/trust/ek.pem" ] \
  && ! openssl x509 -in "$DIR/state/trust/ak.pem" -noout -text | grep -q '2628193\.9833871\.5:'; then
  AK_UNBOUND=1
  NEED_SEB=1
fi
if [ -n "$EXEC_PORT" ] && [ ! -f "$DIR/executor.toml" ]; then NEED_SEB=1; fi
if [ "$NEED_SEB" = 1 ]; then
  if [ -n "${SEB_BIN:-}" ]; then
    SEB=$SEB_BIN
  elif [ -x "$HERE/../target/release/seb" ]; then
    SEB="$HERE/../target/release/seb"
  else
    SEB=$(command -v seb || true)
  fi
  if [ -z "$SEB" ] || [ ! -x "$SEB" ]; then
    echo "provision: --tpm and --executor-port need the seb binary, and none was found" >&2
    echo "provision: build it (cargo build --release) or set SEB_BIN=/path/to/seb; nothing was started" >&2
    exit 1
  fi
fi

if [ "$TPM" = 1 ]; then
  for tool in swtpm swtpm_setup swtpm_ioctl tpm2_pcrextend tpm2_shutdown openssl; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      echo "provision: $tool not found. Install: apt-get install swtpm swtpm-tools tpm2-tools openssl" >&2
      exit 1
    fi
  done
  # shellcheck source=../firmware-config/swtpm-profile.conf
  . "$FIRMWARE/swtpm-profile.conf"
  TCTI="swtpm:host=127.0.0.1,port=$TPM_PORT"
  mkdir -p "$DIR/tpm/state" "$DIR/tpm/ek-ca"
  if [ ! -f "$DIR/tpm/state/tpm2-00.permall" ]; then
    openssl ecparam -name secp384r1 -genkey -noout -out "$DIR/tpm/ek-ca/signkey.pem"
    openssl req -new -x509 -key "$DIR/tpm/ek-ca/signkey.pem" -subj "/CN=seb test EK CA" \
      -days 3650 -out "$DIR/tpm/ek-ca/issuercert.pem" 2>/dev/null
    echo 1 > "$DIR/tpm/ek-ca/certserial"
    cat > "$DIR/tpm/localca.conf" <<CONF
statedir = $DIR/tpm/ek-ca
signingkey = $DIR/tpm/ek-ca/signkey.pem
issuercert = $DIR/tpm/ek-ca/issuercert.pem
certserial = $DIR/tpm/ek-ca/certserial
CONF
    printf -- '--platform-manufacturer seb\n--platform-version 1\n--platform-model swtpm\n' > "$DIR/tpm/localca.options"
    cat > "$DIR/tpm/swtpm_setup.conf" <<CONF
create_certs_tool = /usr/bin/swtpm_localca
create_certs_tool_config = $DIR/tpm/localca.conf
create_certs_tool_options = $DIR/tpm/localca.options
active_pcr_banks = $SWTPM_PCR_BANKS
CONF
    swtpm_setup --tpm2 --tpmstate "$DIR/tpm/state" --create-ek-cert \
      --config "$DIR/tpm/swtpm_setup.conf" > "$DIR/tpm/setup.log" 2>&1 \
      || { cat "$DIR/tpm/setup.log" >&2; echo "provision: swtpm_setup failed" >&2; exit 1; }
    echo "provision: manufactured an swtpm (EK certificate by the test EK CA) in $DIR/tpm"
  fi
  if [ -f "$DIR/swtpm.pid" ] && kill -0 "$(cat "$DIR/swtpm.pid")" 2>/dev/null; then
    echo "provision: swtpm already running"
  else
    if ! swtpm socket --tpm2 --tpmstate dir="$DIR/tpm/state" \
      --server type=tcp,port="$TPM_PORT",bindaddr=127.0.0.1 \
      --ctrl type=tcp,port=$((TPM_PORT + 1)),bindaddr=127.0.0.1 \
      --flags "$SWTPM_FLAGS" --pid file="$DIR/swtpm.pid" --daemon \
      --log file="$DIR/tpm/swtpm.log"; then
      echo "provision: swtpm did not start on 127.0.0.1:$TPM_PORT-$((TPM_PORT + 1)) (ports in use?); its log:" >&2
      tail -5 "$DIR/tpm/swtpm.log" >&2 2>/dev/null || true
      exit 1
    fi
    echo "$TPM_PORT" > "$DIR/swtpm.port"
    ready=0
    for _ in $(seq 1 200); do
      if swtpm_ioctl --tcp "127.0.0.1:$((TPM_PORT + 1))" -g >/dev/null 2>&1; then ready=1; break; fi
      sleep 0.05
    done
    if [ "$ready" != 1 ]; then
      echo "provision: swtpm did not start answering on 127.0.0.1:$((TPM_PORT + 1)) within 10 s; its log:" >&2
      tail -5 "$DIR/tpm/swtpm.log" >&2 2>/dev/null || true
      exit 1
    fi
    # Measure the synthetic boot into the fresh TPM, exactly as the log says.
    cp "$FIRMWARE/swtpm-eventlog.json" "$DIR/eventlog.json"
    sed -n 's/.*"pcr": *\([0-9]*\), *"digest": *"\([0-9a-f]*\)".*/\1 \2/p' "$DIR/eventlog.json" |
      while read -r pcr digest; do
        TPM2TOOLS_TCTI="$TCTI" tpm2_pcrextend "$pcr:sha256=$digest"
      done
    echo "provision: swtpm on 127.0.0.1:$TPM_PORT with the synthetic boot measured"
  fi
fi

# --postgres: a throwaway PostgreSQL cluster under DIR/postgres, for the store.
if [ "$POSTGRES" = 1 ]; then
  PGD="$DIR/postgres"
  # The start and stop scripts come first, so stop.sh can stop whatever a later failure leaves
  # running. They find the server binaries from the cluster's PG_VERSION and run them as the
  # data directory's owner.
  if [ ! -f "$DIR/pg-stop.sh" ]; then
    cat > "$DIR/pg-stop.sh" <<'PGSTOP'
#!/usr/bin/env bash
# Stops the PostgreSQL cluster provision.sh made in postgres/data: fast shutdown (open
# transactions roll back, committed ones are on disk). Harmless when it is not running.
# pg-start.sh starts it again.
set -u
cd "$(dirname "$0")"
here=$PWD
data=$here/postgres/data
[ -f "$data/PG_VERSION" ] || exit 0
bin=/usr/lib/postgresql/$(cat "$data/PG_VERSION")/bin
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u "$(stat -c %U "$data")" -- "$@"; else "$@"; fi
}
cd "$here/postgres" || exit 0
as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1 || exit 0
if ! as_owner "$bin/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null; then
  echo "pg-stop: PostgreSQL in $data did not stop (pg_ctl stop -m fast)" >&2
  exit 1
fi
exit 0
PGSTOP
  fi
  if [ ! -f "$DIR/pg-start.sh" ]; then
    cat > "$DIR/pg-start.sh" <<'PGSTART'
#!/usr/bin/env bash
# Starts the PostgreSQL cluster provision.sh made in postgres/data again, on its port (in
# postgres/data/seb.conf), and waits until it accepts connections. Does nothing if it runs.
set -eu
cd "$(dirname "$0")"
here=$PWD
data=$here/postgres/data
if [ ! -f "$data/PG_VERSION" ]; then
  echo "pg-start: no PostgreSQL cluster in $data (provision.sh DIR --postgres makes one)" >&2
  exit 1
fi
bin=/usr/lib/postgresql/$(cat "$data/PG_VERSION")/bin
port=$(sed -n 's/^port = \([0-9][0-9]*\).*/\1/p' "$data/seb.conf")
log=$here/postgres/postgres.log
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u "$(stat -c %U "$data")" -- "$@"; else "$@"; fi
}
cd "$here/postgres"
if ! as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
  size=$(stat -c %s "$log" 2>/dev/null || echo 0)
  if ! as_owner "$bin/pg_ctl" -D "$data" -l "$log" -w -t 60 start >/dev/null 2>&1; then
    echo "pg-start: PostgreSQL did not start on 127.0.0.1:$port; its log:" >&2
    tail -c +"$((size + 1))" "$log" 2>/dev/null | tail -n 20 >&2
    exit 1
  fi
fi
for _ in $(seq 1 200); do
  if "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -d seb -t 2; then exit 0; fi
  sleep 0.05
done
echo "pg-start: PostgreSQL on 127.0.0.1:$port does not accept connections; see $log" >&2
exit 1
PGSTART
  fi
  chmod 755 "$DIR/pg-stop.sh" "$DIR/pg-start.sh"

  as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u "$PG_USER" -- "$@"; else "$@"; fi
  }
  if [ "$(id -u)" = 0 ]; then
    # The server runs as postgres and must reach DIR/postgres: DIR (typically a root-owned
    # 0700 directory) becomes traversable, not listable; the secrets in it stay 0600.
    if command -v setfacl >/dev/null 2>&1 && setfacl -m "u:$PG_USER:x" "$DIR" 2>/dev/null; then :; else chmod o+x "$DIR"; fi
    if ! runuser -u "$PG_USER" -- test -x "$DIR"; then
      echo "provision: the user $PG_USER cannot reach $DIR (a directory above it is not traversable); use a DIR under /tmp" >&2
      exit 1
    fi
  fi
  mkdir -p "$PGD/run"
  if [ "$(id -u)" = 0 ]; then chown "$PG_USER:" "$PGD" "$PGD/run"; fi
  chmod 700 "$PGD" "$PGD/run"

  if [ ! -f "$PGD/data/PG_VERSION" ]; then
    rm -rf "$PGD/data"
    if ! (cd "$PGD" && as_pg "$PG_BIN/initdb" -D "$PGD/data" --auth-local=peer --auth-host=scram-sha-256 \
          -E UTF8 --locale=C) >"$DIR/pg-initdb.log" 2>&1; then
      cat "$DIR/pg-initdb.log" >&2
      echo "provision: initdb failed in $PGD/data" >&2
      exit 1
    fi
    rm -f "$DIR/pg-initdb.log"
    echo "include 'seb.conf'" | (cd "$PGD" && as_pg tee -a "$PGD/data/postgresql.conf") >/dev/null
    echo "provision: created a PostgreSQL $(cat "$PGD/data/PG_VERSION") cluster in $PGD/data"
  fi

  # The port: the one it started on before (pg.port), else --pg-port, else a free one (another
  # is tried when the start fails to bind, as a parallel run may take a port found free).
  port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
  free_port() {
    local p
    for _ in $(seq 1 100); do
      p=$((20000 + RANDOM % 12000))
      case "$p" in "$PORT"|"$EXEC_PORT"|"$TPM_PORT"|"$((TPM_PORT + 1))") continue ;; esac
      if ! port_taken "$p"; then echo "$p"; return 0; fi
    done
    echo "provision: found no free port for PostgreSQL in 20000-31999" >&2
    return 1
  }
  PG_FIXED=1
  if [ -f "$DIR/pg.port" ]; then
    recorded=$(cat "$DIR/pg.port")
    if [ -n "$PG_PORT" ] && [ "$PG_PORT" != "$recorded" ]; then
      echo "provision: the cluster in $PGD listens on port $recorded ($DIR/pg.port), not $PG_PORT" >&2
      exit 2
    fi
    PG_PORT=$recorded
  elif [ -z "$PG_PORT" ]; then
    PG_FIXED=0
    PG_PORT=$(free_port)
  fi
  attempts=0
  while :; do
    conf="# written by softhsm-setup/provision.sh; included from postgresql.conf
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PGD/run'
password_encryption = 'scram-sha-256'
# durability as in production: every commit is flushed to disk
fsync = on
synchronous_commit = on
full_page_writes = on
# PostgreSQL's default: with 32MB the backends evicted dirty pages themselves under bench load
shared_buffers = 128MB
max_connections = 100"
    if [ "$(cat "$PGD/data/seb.conf" 2>/dev/null || true)" != "$conf" ]; then
      printf '%s\n' "$conf" | (cd "$PGD" && as_pg tee "$PGD/data/seb.conf") >/dev/null
    fi
    if err=$(bash "$DIR/pg-start.sh" 2>&1); then break; fi
    attempts=$((attempts + 1))
    if [ "$PG_FIXED" = 0 ] && [ "$attempts" -lt 5 ] && printf '%s' "$err" | grep -q "Address already in use"; then
      echo "provision: port $PG_PORT was taken meanwhile; trying another for PostgreSQL"
      PG_PORT=$(free_port)
      continue
    fi
    printf '%s\n' "$err" >&2
    if printf '%s' "$err" | grep -q "Address already in use"; then
      echo "provision: PostgreSQL cannot bind 127.0.0.1:$PG_PORT (port in use); free it, or run again with another --pg-port (or none, for a free one)" >&2
    else
      echo "provision: PostgreSQL did not start on 127.0.0.1:$PG_PORT (log: $PGD/postgres.log)" >&2
    fi
    exit 1
  done
  [ "$(cat "$DIR/pg.port" 2>/dev/null || true)" = "$PG_PORT" ] || echo "$PG_PORT" > "$DIR/pg.port"
  chmod 644 "$DIR/pg.port"

  # The role seb (password in pg.password, never on a command line) owning the database seb.
  psql_admin() {
    (cd "$PGD" && as_pg "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$PGD/run" -p "$PG_PORT" -d postgres "$@")
  }
  NEW_PASSWORD=0
  if [ ! -s "$DIR/pg.password" ]; then random_pin > "$DIR/pg.password"; NEW_PASSWORD=1; fi
  chmod 600 "$DIR/pg.password"
  if [ -z "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = 'seb'")" ]; then
    printf "CREATE ROLE seb LOGIN PASSWORD '%s';\n" "$(cat "$DIR/pg.password")" | psql_admin
    echo "provision: created the PostgreSQL role seb (password in $DIR/pg.password)"
  elif [ "$NEW_PASSWORD" = 1 ]; then
    printf "ALTER ROLE seb PASSWORD '%s';\n" "$(cat "$DIR/pg.password")" | psql_admin
    echo "provision: set a new password for the PostgreSQL role seb ($DIR/pg.password)"
  fi
  if [ -z "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = 'seb'")" ]; then
    psql_admin -c "CREATE DATABASE seb OWNER seb"
    echo "provision: created the PostgreSQL database seb"
  fi
  # The broker's way in: TCP, scram-sha-256, the password from the file.
  if ! PGPASSWORD=$(cat "$DIR/pg.password") PGCONNECT_TIMEOUT=10 "$PG_BIN/psql" -X -q -At \
       "postgresql://seb@127.0.0.1:$PG_PORT/seb" -c "SELECT 1" >/dev/null; then
    echo "provision: the role seb cannot log in to 127.0.0.1:$PG_PORT/seb with $DIR/pg.password" >&2
    exit 1
  fi
  echo "provision: PostgreSQL $(cat "$PGD/data/PG_VERSION") on 127.0.0.1:$PG_PORT, database seb, role seb"
fi

STORE_TOML=""
if [ "$POSTGRES" = 1 ]; then
  STORE_TOML="
[store]
backend = \"postgres\"
url = \"postgres://seb@127.0.0.1:$PG_PORT/seb\"
password_file = \"pg.password\""
fi

if [ ! -f "$DIR/seb.toml" ]; then
  if [ "$BACKEND" = tpm ]; then
    BACKEND_TOML="type = \"tpm\"
tcti = \"$TCTI\""
  elif [ "$P11KIT" = 1 ]; then
    BACKEND_TOML="type = \"pkcs11\"
module = \"$CLIENT_MODULE\"
token_label = \"$LABEL\"
pin_file = \"user.pin\"
sessions = 2

[backend.module_env]
P11_KIT_SERVER_ADDRESS = \"unix:path=$DIR/p11kit/hsm.sock\""
  else
    BACKEND_TOML="type = \"pkcs11\"
module = \"$MODULE\"
token_label = \"$LABEL\"
pin_file = \"user.pin\"
sessions = 2

[backend.module_env]
SOFTHSM2_CONF = \"$DIR/softhsm2.conf\""
  fi
  ATTEST_TOML=""
  if [ "$TPM" = 1 ]; then
    ATTEST_TOML="
[attestation]
tcti = \"$TCTI\"
policy = \"attest-policy.toml\"
event_log = \"eventlog.json\"
interval = \"$SEB_ATTEST_INTERVAL\""
  fi
  cat > "$DIR/seb.toml" <<TOML
# seb configuration written by softhsm-setup/provision.sh (see deploy/seb.example.toml for
# every option). Relative paths are relative to this file.
broker_id = "seb-dev"
state_dir = "state"

[backend]
$BACKEND_TOML

[server]
listen = "127.0.0.1:$PORT"
$ATTEST_TOML$STORE_TOML
TOML
  umask 022
  chmod 644 "$DIR/seb.toml"
  echo "provision: wrote $DIR/seb.toml (broker on 127.0.0.1:$PORT)"
elif [ -n "$STORE_TOML" ] && ! grep -q '^\[store\]' "$DIR/seb.toml"; then
  printf '%s\n' "$STORE_TOML" >> "$DIR/seb.toml"
  echo "provision: added [store] (PostgreSQL on 127.0.0.1:$PG_PORT) to $DIR/seb.toml"
else
  echo "provision: $DIR/seb.toml exists; left unchanged"
fi
# A re-run keeps the configuration it finds: say so when it listens elsewhere than --port.
KEPT_LISTEN=$(sed -n 's/^listen *= *"\(.*\)"/\1/p' "$DIR/seb.toml" | head -1)
if [ -n "${PORT_GIVEN:-}" ] && [ -n "$KEPT_LISTEN" ] && [ "$KEPT_LISTEN" != "127.0.0.1:$PORT" ]; then
  echo "provision: warning: $DIR/seb.toml listens on $KEPT_LISTEN, not on port $PORT; edit its listen line to change it (and broker_url in executor.toml, if there is one)" >&2
fi

if [ "$TPM" = 1 ] && [ ! -f "$DIR/attest-policy.toml" ]; then
  "$SEB" --config "$DIR/seb.toml" attest record --out "$DIR/attest-policy.toml" \
    --pcrs "$SEB_ATTEST_PCRS" --ek-ca tpm/ek-ca/issuercert.pem --max-age "$SEB_ATTEST_MAX_AGE"
fi

if [ -n "$EXEC_PORT" ] && [ ! -f "$DIR/executor.toml" ]; then
  SEB=$(cd "$(dirname "$SEB")" && pwd)/$(basename "$SEB")
  if [ ! -f "$DIR/state/trust/root.pem" ]; then
    "$SEB" --config "$DIR/seb.toml" init
  fi
  mkdir -p "$DIR/demo-output"
  if [ ! -f "$DIR/executor.pem" ]; then
    rm -f "$DIR/executor.key" "$DIR/executor.csr"
    "$SEB" keygen --out-key "$DIR/executor.key" --out-csr "$DIR/executor.csr" --subject "CN=demo-executor,O=seb-dev" >/dev/null
    "$SEB" --config "$DIR/seb.toml" cert issue --csr "$DIR/executor.csr" --role executor --ttl 90d \
      --tls-name 127.0.0.1 --tls-name localhost --out "$DIR/executor.pem"
  fi
  umask 022
  cat > "$DIR/executor.toml" <<TOML
# seb exec configuration written by softhsm-setup/provision.sh (docs/OPERATIONS.md, "Executors").
# The executor's key is its own (executor.key, mode 0600); it holds no broker key.
listen = "127.0.0.1:$EXEC_PORT"
broker_url = "https://127.0.0.1:$PORT"
broker_id = "seb-dev"
root = "state/trust/root.pem"
cert = "executor.pem"
key = "executor.key"
# approvers = "approvers.pem"     # approvers' certificates (PEM bundle): needed for tokens issued after approvals (unknown_approver without it)
# min_epoch = 1                   # refuse tokens of older policy epochs (it also learns newer ones)
# max_attestation_age = "5m"      # require the broker's TPM self-attestation (att) this fresh

# demo.write: writes the text parameter into demo-output/<name>. Each parameter is one argv
# element after "--"; no shell is involved.
[[action]]
operation = "demo.write"
resource = "demo/files"
argv = ["$SEB", "demo-write", "--dir", "$DIR/demo-output", "--", "{name}", "{text}"]
timeout = "10s"
TOML
  echo "provision: wrote $DIR/executor.toml (executor on 127.0.0.1:$EXEC_PORT)"
elif [ -n "$EXEC_PORT" ]; then
  KEPT_EXEC=$(sed -n 's/^listen *= *"\(.*\)"/\1/p' "$DIR/executor.toml" | head -1)
  if [ -n "$KEPT_EXEC" ] && [ "$KEPT_EXEC" != "127.0.0.1:$EXEC_PORT" ]; then
    echo "provision: warning: $DIR/executor.toml exists and listens on $KEPT_EXEC, not on port $EXEC_PORT; edit its listen line to change it" >&2
  fi
fi

if [ "$AK_UNBOUND" = 1 ]; then
  echo "provision: the attestation key's certificate names no EK certificate (an older seb made it); enrolling again"
  "$SEB" --config "$DIR/seb.toml" attest enroll
fi
