#!/usr/bin/env bash
# Brings up a working seb demo on this machine (Debian 12, as root):
#   installs what is missing (SoftHSM2, swtpm, OpenSSL, ...), builds seb, provisions a
#   SoftHSM2 token and an swtpm under ./demo, generates the broker's keys inside the token and
#   its attestation key in the TPM, issues an agent and an executor certificate, starts the
#   broker on https://127.0.0.1:8443, and walks through: a granted token, its offline
#   verification, a denied request, and a relying party's check of the broker's boot state.
# The broker and the swtpm keep running in the background; stop them with ./demo/stop.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEMO="$ROOT/demo"
PORT=${SEB_DEMO_PORT:-8443}
TPM_PORT=${SEB_DEMO_TPM_PORT:-2321}

bash deploy/install-deps.sh
echo "== building seb (release)"
cargo build --release --locked --bin seb
SEB="$ROOT/target/release/seb"

echo "== provisioning a SoftHSM2 token and an swtpm in $DEMO"
SEB_BIN="$SEB" bash softhsm-setup/provision.sh "$DEMO" --port "$PORT" --tpm --tpm-port "$TPM_PORT"
CFG="$DEMO/seb.toml"
if [ -f "$DEMO/broker.pid" ] && kill -0 "$(cat "$DEMO/broker.pid")" 2>/dev/null; then
  echo "== stopping the broker from an earlier run"
  kill "$(cat "$DEMO/broker.pid")"; sleep 1
fi
if [ ! -f "$DEMO/state/trust/root.pem" ]; then
  echo "== seb init: keys generated inside the token"
  "$SEB" --config "$CFG" init
fi
"$SEB" --config "$CFG" keys

cd "$DEMO"
cat > grants-deploy-bot.toml <<'TOML'
[[grant]]
operation = "deploy.rollout"
resource  = "prod/payments/*"
max_ttl   = "60s"
params.replicas = { min = 1, max = 10 }
params.image    = { prefix = "registry.internal/payments/" }
params.strategy = { one_of = ["rolling", "canary"] }
TOML
if [ ! -f deploy-bot.pem ]; then
  echo "== issuing the agent certificate (key stays with the agent)"
  rm -f deploy-bot.key deploy-bot.csr
  "$SEB" keygen --out-key deploy-bot.key --out-csr deploy-bot.csr --subject "CN=deploy-bot,O=demo"
  "$SEB" --config "$CFG" cert issue --csr deploy-bot.csr --grants grants-deploy-bot.toml \
    --role agent --ttl 30d --out deploy-bot.pem
fi
if [ ! -f executor.pem ]; then
  echo "== issuing the executor certificate"
  rm -f executor.key executor.csr
  "$SEB" keygen --out-key executor.key --out-csr executor.csr --subject "CN=k8s-executor,O=demo"
  "$SEB" --config "$CFG" cert issue --csr executor.csr --role executor --ttl 30d --out executor.pem
fi
openssl verify -CAfile state/trust/root.pem deploy-bot.pem executor.pem

echo "== starting the broker on https://127.0.0.1:$PORT (log: $DEMO/broker.log)"
nohup "$SEB" --config "$CFG" serve > broker.log 2>&1 &
echo $! > broker.pid
for _ in $(seq 1 100); do
  grep -q "listening on" broker.log && break
  sleep 0.1
done
grep "listening on" broker.log

URL="https://127.0.0.1:$PORT"
echo "== the agent asks for a rollout it is granted"
"$SEB" request --broker "$URL" --ca state/trust/root.pem --cert deploy-bot.pem --key deploy-bot.key \
  --operation deploy.rollout --resource prod/payments/api \
  --params '{"replicas":3,"image":"registry.internal/payments/api:1.4.2","strategy":"canary"}' \
  --justification "demo" | tee granted.json
sed -E 's/.*"token":"([^"]+)".*/\1/' granted.json > token.jwt

echo "== an executor verifies the token offline against the trust bundle"
cat state/trust/root.pem state/trust/token.pem > trust-bundle.pem
"$SEB" token verify --trust trust-bundle.pem --token token.jwt --operation deploy.rollout \
  --resource prod/payments/api \
  --params '{"replicas":3,"image":"registry.internal/payments/api:1.4.2","strategy":"canary"}' \
  --cert deploy-bot.pem > verified.json && echo "token verified (claims in $DEMO/verified.json)"

echo "== the agent asks for more than it is granted"
set +e
"$SEB" request --broker "$URL" --ca state/trust/root.pem --cert deploy-bot.pem --key deploy-bot.key \
  --operation deploy.rollout --resource prod/payments/api \
  --params '{"replicas":50,"image":"registry.internal/payments/api:1.4.2","strategy":"canary"}'
echo "(exit status $?: denied)"
set -e

if grep -q '^\[attestation\]' "$CFG"; then
  echo "== a relying party checks the broker's boot state (TPM quote bound to this TLS session, AK chain, event log, policy)"
  "$SEB" attest verify --broker "$URL" --trust state/trust/root.pem --policy attest-policy.toml \
    --cert executor.pem --key executor.key
fi

echo
echo "Demo broker running at $URL (pid $(cat broker.pid)). Files are in $DEMO."
echo "Stop it with: $DEMO/stop.sh"
