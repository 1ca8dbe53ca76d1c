#!/usr/bin/env bash
# Brings up a working seb demo on this machine (Debian 12, as root): installs what is missing,
# builds seb, provisions a SoftHSM2 token, an swtpm and an executor under ./demo, starts the
# broker (https://127.0.0.1:8443) and the executor (https://127.0.0.1:8444), and walks an agent
# through: a granted and executed operation (a real file written, shown before and after), a
# denied one, a pending one approved by two approvers, a replayed token refused, a tampered
# token refused, a freeze refusing a request, and `seb audit verify` over the whole log.
# The broker, the executor and the swtpm keep running; stop them with ./demo/stop.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEMO="$ROOT/demo"
PORT=${SEB_DEMO_PORT:-8443}
EXEC_PORT=${SEB_DEMO_EXEC_PORT:-8444}
TPM_PORT=${SEB_DEMO_TPM_PORT:-2321}

bash deploy/install-deps.sh
echo "== building seb (release)"
cargo build --release --locked --bin seb
SEB="$ROOT/target/release/seb"

for pidfile in "$DEMO/broker.pid" "$DEMO/executor.pid"; do
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "== stopping $(basename "$pidfile" .pid) from an earlier run"
    kill "$(cat "$pidfile")"; sleep 1
  fi
done
echo "== provisioning a SoftHSM2 token, an swtpm and an executor in $DEMO"
SEB_BIN="$SEB" bash softhsm-setup/provision.sh "$DEMO" --port "$PORT" --tpm --tpm-port "$TPM_PORT" \
  --executor-port "$EXEC_PORT"
CFG="$DEMO/seb.toml"
"$SEB" --config "$CFG" keys

cd "$DEMO"
cp "$ROOT/deploy/demo-grants.toml" grants-demo-bot.toml
issue() { # name subject role [extra...]
  local name=$1 subject=$2 role=$3; shift 3
  if [ ! -f "$name.pem" ]; then
    rm -f "$name.key" "$name.csr"
    "$SEB" keygen --out-key "$name.key" --out-csr "$name.csr" --subject "$subject" >/dev/null
    "$SEB" --config "$CFG" cert issue --csr "$name.csr" --role "$role" --ttl 30d --out "$name.pem" "$@"
  fi
}
echo "== issuing certificates (each key stays with its holder)"
issue demo-bot "CN=demo-bot,O=demo" agent --grants grants-demo-bot.toml
issue alice "CN=alice,O=demo" approver --group demo-approvers
issue bob "CN=bob,O=demo" approver --group demo-approvers
openssl verify -CAfile state/trust/root.pem demo-bot.pem alice.pem bob.pem executor.pem
cat alice.pem bob.pem > approvers.pem
grep -q '^approvers' executor.toml || sed -i 's|^# approvers = .*|approvers = "approvers.pem"|' executor.toml

echo "== starting the broker on https://127.0.0.1:$PORT (log: $DEMO/broker.log)"
nohup "$SEB" --config "$CFG" serve > broker.log 2>&1 &
echo $! > broker.pid
for _ in $(seq 1 100); do grep -q "listening on" broker.log && break; sleep 0.1; done
grep "listening on" broker.log
echo "== starting the executor on https://127.0.0.1:$EXEC_PORT (log: $DEMO/executor.log)"
nohup "$SEB" exec --config executor.toml > executor.log 2>&1 &
echo $! > executor.pid
for _ in $(seq 1 100); do grep -q "listening on" executor.log && break; sleep 0.1; done
grep "listening on" executor.log

URL="https://127.0.0.1:$PORT"
EXE="https://127.0.0.1:$EXEC_PORT"
AGENT=(--broker "$URL" --ca state/trust/root.pem --cert demo-bot.pem --key demo-bot.key)
APPROVE=(--broker "$URL" --ca state/trust/root.pem)
run_at_executor() { # token params: POST /v1/run as the agent, print the answer
  curl -sS --cacert state/trust/root.pem --cert demo-bot.pem --key demo-bot.key \
    -H 'content-type: application/json' \
    --data "{\"token\":\"$1\",\"params\":$2}" "$EXE/v1/run"
  echo
}

echo
echo "== 1. granted and executed: the agent writes hello.txt through the executor"
if [ -f demo-output/hello.txt ]; then
  echo "   before: demo-output/hello.txt contains: $(cat demo-output/hello.txt)"
else
  echo "   before: demo-output/hello.txt does not exist"
fi
# The time in the text makes a second run's change visible too.
P1="{\"name\":\"hello.txt\",\"text\":\"written by demo-bot through seb at $(date -u +%H:%M:%S)\"}"
"$SEB" request "${AGENT[@]}" --operation demo.write --resource demo/files --params "$P1" \
  --justification "demo" --execute "$EXE" > run1.json
echo "   after:  demo-output/hello.txt contains: $(cat demo-output/hello.txt)"
echo "   receipt: $(jq -c '.receipt.body | {jti, exit_code, stdout_sha256}' run1.json)"
"$SEB" receipt verify --receipt run1.json --cert executor.pem --trust state/trust/root.pem >/dev/null

echo
echo "== 2. denied: the agent asks for an operation it has no grant for"
set +e
"$SEB" request "${AGENT[@]}" --operation demo.delete --resource demo/files --params '{"name":"hello.txt"}'
echo "   (exit status $?: denied)"
set -e

echo
echo "== 3. pending: release-notes.txt needs two approvers; alice and bob approve"
"$SEB" request "${AGENT[@]}" --operation demo.write --resource demo/files \
  --params '{"name":"release-notes.txt","text":"approved by two"}' --justification "release" \
  --wait --timeout 2m --execute "$EXE" > run3.json 2> run3.err &
WAITER=$!
ID=""
for _ in $(seq 1 50); do
  ID=$(grep -o 'request [A-Za-z0-9_-]*' run3.err 2>/dev/null | head -1 | cut -d' ' -f2 || true)
  [ -n "$ID" ] && break; sleep 0.2
done
if [ -z "$ID" ]; then
  echo "demo: the request did not wait for approvals:" >&2; cat run3.err >&2; exit 1
fi
echo "   pending request $ID; alice sees:"
"$SEB" pending "${APPROVE[@]}" --cert alice.pem --key alice.key
# `seb approve` shows the request again and what it signs (on stderr); the demo printed the
# request once above, so that is kept in approve.log and shown only if approving fails.
approve() {
  "$SEB" approve "${APPROVE[@]}" --cert "$1.pem" --key "$1.key" --reason "$2" "$ID" \
    >/dev/null 2>approve.log || { cat approve.log >&2; exit 1; }
  echo "   $1 approved"
}
approve alice "looks right"
approve bob "agreed"
wait "$WAITER"
echo "   executed: demo-output/release-notes.txt contains: $(cat demo-output/release-notes.txt)"
echo "   receipt: $(jq -c '.receipt.body | {jti, exit_code}' run3.json)"

echo
echo "== 4. replay: the same token presented twice"
P4='{"name":"once.txt","text":"only once"}'
TOKEN=$("$SEB" request "${AGENT[@]}" --operation demo.write --resource demo/files --params "$P4" | jq -r .token)
echo "   first:  $(run_at_executor "$TOKEN" "$P4" | jq -c '{status, exit_code: .receipt.body.exit_code}')"
echo "   second: $(run_at_executor "$TOKEN" "$P4" | jq -c .error)"

echo
echo "== 5. tampered: one character of a fresh token's claims changed"
P5='{"name":"tampered.txt","text":"never"}'
TOKEN=$("$SEB" request "${AGENT[@]}" --operation demo.write --resource demo/files --params "$P5" | jq -r .token)
HEAD=${TOKEN%%.*}; REST=${TOKEN#*.}; CLAIMS=${REST%%.*}; SIG=${REST#*.}
C=${CLAIMS:10:1}; if [ "$C" = A ]; then R=B; else R=A; fi
BAD="$HEAD.${CLAIMS:0:10}$R${CLAIMS:11}.$SIG"
echo "   $(run_at_executor "$BAD" "$P5" | jq -c .error)"
echo "   demo-output/tampered.txt: $(ls demo-output/tampered.txt 2>/dev/null || echo 'not written')"

echo
echo "== 6. freeze: the security team stops all issuance on the running broker"
"$SEB" --config "$CFG" freeze --reason "demo incident"
sleep 1
set +e
"$SEB" request "${AGENT[@]}" --operation demo.write --resource demo/files --params "$P1"
echo "   (exit status $?: refused while frozen)"
set -e
"$SEB" --config "$CFG" unfreeze

if grep -q '^\[attestation\]' "$CFG"; then
  echo
  echo "== 7. a relying party with only the root checks the broker's boot state (TPM quote bound to this TLS session)"
  "$SEB" attest verify --broker "$URL" --trust state/trust/root.pem --policy attest-policy.toml
fi

echo
echo "== 8. the auditor checks the tamper-evident audit log offline (entries, checkpoint signed in the HSM)"
sleep 1.5
"$SEB" audit verify --trust state/trust/root.pem --broker "$URL" --cert alice.pem --key alice.key | tail -3

cat <<EOF

Broker:   $URL (pid $(cat broker.pid), log $DEMO/broker.log)
Executor: $EXE (pid $(cat executor.pid), log $DEMO/executor.log)
Try more by hand, from $DEMO:
  $SEB request --broker $URL --ca state/trust/root.pem --cert demo-bot.pem --key demo-bot.key \\
      --operation demo.write --resource demo/files --params '{"name":"mine.txt","text":"hi"}' --execute $EXE
  $SEB mcp --broker $URL --ca state/trust/root.pem --cert demo-bot.pem --key demo-bot.key \\
      --executor $EXE     # the same agent as an MCP server over stdio, for an MCP host (docs/AGENTS.md)
  $SEB --config $CFG epoch bump      # every outstanding token is refused from now on
  $SEB --config $CFG freeze / unfreeze
  $SEB receipt verify --receipt run1.json --cert executor.pem --trust state/trust/root.pem
Stop everything with: $DEMO/stop.sh
EOF
