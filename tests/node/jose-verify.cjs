// Verifies a seb execution token with the `jose` npm package: a third JWS stack beside seb's
// Rust verifier and Go's crypto/ecdsa (tests/agents.rs runs it).
//
// Usage: SEB_TOKEN=<token> node jose-verify.cjs TRUST_BUNDLE.pem ISSUER
// Prints the verified claims as JSON and exits 0, or prints "error: <jose code>" on stderr and
// exits 1. The key is the bundle certificate whose SHA-256 thumbprint is the token's kid; the
// algorithm is pinned to ES384 and the type to seb-exec+jwt, never taken from the token.
"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const jose = require("jose");

async function main() {
  const [bundlePath, issuer] = process.argv.slice(2);
  const token = process.env.SEB_TOKEN || "";
  const pems = fs.readFileSync(bundlePath, "utf8")
    .match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) || [];
  const { kid } = jose.decodeProtectedHeader(token);
  const pem = pems.find((p) => {
    const der = new crypto.X509Certificate(p).raw;
    return crypto.createHash("sha256").update(der).digest("base64url") === kid;
  });
  if (!pem) {
    throw Object.assign(new Error("no certificate for kid"), { code: "ERR_UNKNOWN_KID" });
  }
  const key = await jose.importX509(pem, "ES384");
  const { payload } = await jose.jwtVerify(token, key, {
    algorithms: ["ES384"],
    typ: "seb-exec+jwt",
    issuer,
  });
  process.stdout.write(JSON.stringify(payload));
}

main().catch((e) => {
  process.stderr.write(`error: ${e.code || e.name}: ${e.message}\n`);
  process.exit(1);
});
