// Command interop is an agent, an approver and an executor written in Go with nothing but the
// standard library, run against a live seb broker by tests/go_interop.rs.
//
// It shows that an X.509 stack seb does not control accepts seb's certificates and tokens:
// crypto/x509 parses the agent, approver and executor certificates and every certificate of
// the broker's trust bundle (before the OIDs moved off the 2.25 UUID arc, Go refused them with
// "x509: malformed extension OID field"), crypto/tls completes mutual TLS with them, and
// crypto/ecdsa verifies the ES384 token against the token certificate named by its kid, and
// crypto/x509 parses the broker's CRL (PEM and DER), checks the root's signature over it and
// finds the revoked certificate's serial in it.
//
// Usage:
//
//	go run interop.go -broker https://127.0.0.1:PORT -root root.pem \
//	    -agent agent.pem -agent-key agent.key -approver approver.pem -approver-key approver.key \
//	    -executor executor.pem -executor-key executor.key -revoked-serial HEX
//
// The agent must hold a grant for deploy.rollout on prod/payments/api with {"replicas": 3}
// (tests/go_interop.rs issues it one), and the approver and executor certificates those roles.
//
// It prints one line per step and "interop: ok" at the end; any failure exits with status 1
// and says which step failed.
package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"strings"
	"time"
)

// sebArc is the project's OID arc (docs/GRANTS.md §1): every component fits an int.
var sebArc = asn1.ObjectIdentifier{1, 2, 840, 113556, 1, 8000, 2554, 11087, 30221, 20830, 16501, 40880, 2628193, 9833871}

func sebOID(arcs ...int) asn1.ObjectIdentifier {
	out := append(asn1.ObjectIdentifier{}, sebArc...)
	return append(out, arcs...)
}

var (
	oidGrants  = sebOID(1)
	oidRole    = sebOID(2)
	oidKpToken = sebOID(4, 1)
)

// role is the sebRole extension: SEQUENCE { kind ENUMERATED, groups SEQUENCE OF UTF8String }.
type role struct {
	Kind   asn1.Enumerated
	Groups []string
}

var roleNames = map[asn1.Enumerated]string{0: "agent", 1: "approver", 2: "executor", 3: "broker"}

func main() {
	broker := flag.String("broker", "", "broker URL, https://host:port")
	rootPath := flag.String("root", "", "the broker's root certificate (PEM)")
	agentCert := flag.String("agent", "", "agent certificate chain (PEM)")
	agentKey := flag.String("agent-key", "", "agent key (PKCS#8 PEM)")
	approverCert := flag.String("approver", "", "approver certificate chain (PEM)")
	approverKey := flag.String("approver-key", "", "approver key (PKCS#8 PEM)")
	executorCert := flag.String("executor", "", "executor certificate chain (PEM)")
	executorKey := flag.String("executor-key", "", "executor key (PKCS#8 PEM)")
	revokedSerial := flag.String("revoked-serial", "", "serial (hex) of a certificate the root revoked")
	flag.Parse()
	revoked, ok := new(big.Int).SetString(*revokedSerial, 16)
	if !ok {
		fmt.Fprintf(os.Stderr, "interop: -revoked-serial %q is not hex\n", *revokedSerial)
		os.Exit(2)
	}
	if err := run(*broker, *rootPath, [3][2]string{
		{*agentCert, *agentKey}, {*approverCert, *approverKey}, {*executorCert, *executorKey},
	}, revoked); err != nil {
		fmt.Fprintf(os.Stderr, "interop: %v\n", err)
		os.Exit(1)
	}
	fmt.Println("interop: ok")
}

func run(broker, rootPath string, ids [3][2]string, revoked *big.Int) error {
	rootPEM, err := os.ReadFile(rootPath)
	if err != nil {
		return err
	}
	rootBlock, _ := pem.Decode(rootPEM)
	if rootBlock == nil {
		return errors.New("no PEM block in the root file")
	}
	root, err := x509.ParseCertificate(rootBlock.Bytes)
	if err != nil {
		return fmt.Errorf("parse root: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)

	agent, err := load("agent", ids[0][0], ids[0][1], roots, 0)
	if err != nil {
		return err
	}
	approver, err := load("approver", ids[1][0], ids[1][1], roots, 1)
	if err != nil {
		return err
	}
	executor, err := load("executor", ids[2][0], ids[2][1], roots, 2)
	if err != nil {
		return err
	}

	// The agent asks for a token.
	body := `{"operation":"deploy.rollout","resource":"prod/payments/api","params":{"replicas":3}}`
	status, answer, err := call(broker, roots, root, agent, "POST", "/v1/executions", body)
	if err != nil {
		return fmt.Errorf("agent request: %w", err)
	}
	if status != http.StatusCreated {
		return fmt.Errorf("agent request: status %d: %s", status, answer)
	}
	var granted struct {
		Status    string `json:"status"`
		RequestID string `json:"request_id"`
		Token     string `json:"token"`
	}
	if err := json.Unmarshal(answer, &granted); err != nil {
		return fmt.Errorf("agent request: %w", err)
	}
	if granted.Status != "granted" || granted.Token == "" {
		return fmt.Errorf("agent request: not granted: %s", answer)
	}
	fmt.Println("interop: mTLS POST /v1/executions as the agent: 201 granted")

	// The token verifies with crypto/ecdsa under the token certificate from /v1/trust.
	status, bundle, err := call(broker, roots, root, agent, "GET", "/v1/trust", "")
	if err != nil || status != http.StatusOK {
		return fmt.Errorf("GET /v1/trust: status %d: %v", status, err)
	}
	if err := verifyToken(granted.Token, bundle, roots, agent.Certificate[0]); err != nil {
		return fmt.Errorf("token: %w", err)
	}
	fmt.Println("interop: ES384 token verified with crypto/ecdsa under the token certificate")

	// The approver sees the request's status, not the token.
	status, answer, err = call(broker, roots, root, approver, "GET", "/v1/executions/"+granted.RequestID, "")
	if err != nil {
		return fmt.Errorf("approver: %w", err)
	}
	var seen map[string]interface{}
	if status != http.StatusOK || json.Unmarshal(answer, &seen) != nil || seen["status"] != "granted" || seen["token"] != nil {
		return fmt.Errorf("approver: status %d: %s", status, answer)
	}
	fmt.Println("interop: mTLS GET /v1/executions/{id} as the approver: 200")

	// The executor redeems it.
	redeem, _ := json.Marshal(map[string]string{"token": granted.Token})
	status, answer, err = call(broker, roots, root, executor, "POST", "/v1/tokens/redeem", string(redeem))
	if err != nil {
		return fmt.Errorf("executor: %w", err)
	}
	if status != http.StatusOK || !bytes.Contains(answer, []byte(`"redeemed"`)) {
		return fmt.Errorf("executor: status %d: %s", status, answer)
	}
	fmt.Println("interop: mTLS POST /v1/tokens/redeem as the executor: 200 redeemed")

	// The CRL, as PEM (the default) and as DER (RFC 2585's media type, asked for by Accept).
	for _, accept := range []string{"", "application/pkix-crl"} {
		status, answer, err = fetch(broker, roots, root, executor, "GET", "/v1/crl", "", accept)
		if err != nil || status != http.StatusOK {
			return fmt.Errorf("GET /v1/crl (Accept %q): status %d: %v", accept, status, err)
		}
		der := answer
		if accept == "" {
			block, _ := pem.Decode(answer)
			if block == nil || block.Type != "X509 CRL" {
				return fmt.Errorf("GET /v1/crl: not a PEM X509 CRL: %q", answer)
			}
			der = block.Bytes
		}
		if err := checkCRL(der, root, revoked); err != nil {
			return fmt.Errorf("CRL (Accept %q): %w", accept, err)
		}
	}
	fmt.Println("interop: CRL parsed by crypto/x509 as PEM and DER, signed by the root, lists the revoked serial")
	return nil
}

// checkCRL parses a DER CRL with crypto/x509, checks the root's signature over it, its
// issuer, that it is current, and that it lists the revoked serial.
func checkCRL(der []byte, root *x509.Certificate, revoked *big.Int) error {
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return fmt.Errorf("parse: %w", err)
	}
	if err := crl.CheckSignatureFrom(root); err != nil {
		return fmt.Errorf("signature: %w", err)
	}
	if !bytes.Equal(crl.RawIssuer, root.RawSubject) {
		return errors.New("the issuer is not the root's subject")
	}
	now := time.Now()
	if crl.ThisUpdate.After(now.Add(time.Minute)) || !crl.NextUpdate.After(now) {
		return fmt.Errorf("not current: thisUpdate %v, nextUpdate %v", crl.ThisUpdate, crl.NextUpdate)
	}
	for _, entry := range crl.RevokedCertificates {
		if entry.SerialNumber.Cmp(revoked) == 0 {
			return nil
		}
	}
	return fmt.Errorf("serial %X is not listed (%d entries)", revoked, len(crl.RevokedCertificates))
}

// load reads a certificate chain and key as tls.LoadX509KeyPair does, parses every certificate
// with crypto/x509, checks that the leaf chains to the root for client authentication and
// carries the expected sebRole.
func load(name, certPath, keyPath string, roots *x509.CertPool, want asn1.Enumerated) (tls.Certificate, error) {
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return pair, fmt.Errorf("%s: tls.LoadX509KeyPair: %w", name, err)
	}
	var chain []*x509.Certificate
	for _, der := range pair.Certificate {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return pair, fmt.Errorf("%s: x509.ParseCertificate: %w", name, err)
		}
		chain = append(chain, cert)
	}
	leaf := chain[0]
	intermediates := x509.NewCertPool()
	for _, c := range chain[1:] {
		intermediates.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: intermediates,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return pair, fmt.Errorf("%s: does not verify for client authentication: %w", name, err)
	}
	var got *role
	grants := false
	for _, ext := range leaf.Extensions {
		switch {
		case ext.Id.Equal(oidRole):
			got = &role{}
			rest, err := asn1.Unmarshal(ext.Value, got)
			if err != nil || len(rest) != 0 {
				return pair, fmt.Errorf("%s: sebRole does not decode: %v", name, err)
			}
		case ext.Id.Equal(oidGrants):
			grants = true
		}
	}
	if got == nil || got.Kind != want {
		return pair, fmt.Errorf("%s: sebRole is %v, want %s", name, got, roleNames[want])
	}
	if grants != (want == 0) {
		return pair, fmt.Errorf("%s: sebGrants present: %v", name, grants)
	}
	fmt.Printf("interop: %s certificate %q loaded and parsed (sebRole %s, groups %v)\n",
		name, leaf.Subject.String(), roleNames[got.Kind], got.Groups)
	return pair, nil
}

// call makes one HTTPS request with the identity's client certificate, trusting only the
// root, and refusing a broker certificate that the root did not issue directly.
func call(broker string, roots *x509.CertPool, root *x509.Certificate, id tls.Certificate, method, path, body string) (int, []byte, error) {
	return fetch(broker, roots, root, id, method, path, body, "")
}

// hasRole is whether cert carries seb's role extension.
func hasRole(cert *x509.Certificate) bool {
	for _, ext := range cert.Extensions {
		if ext.Id.Equal(oidRole) {
			return true
		}
	}
	return false
}

// fetch is call with an Accept header (none when empty).
func fetch(broker string, roots *x509.CertPool, root *x509.Certificate, id tls.Certificate, method, path, body, accept string) (int, []byte, error) {
	client := &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{
			Certificates: []tls.Certificate{id},
			RootCAs:      roots,
			MinVersion:   tls.VersionTLS12,
			VerifyConnection: func(cs tls.ConnectionState) error {
				// Root-issued directly, for serverAuth (Verify checked the usage), and no seb
				// role: an executor's certificate with TLS names is root-issued for serverAuth
				// too, but always carries sebRole; the broker's never does.
				for _, chain := range cs.VerifiedChains {
					if len(chain) == 2 && chain[1].Equal(root) && !hasRole(chain[0]) {
						return nil
					}
				}
				return errors.New("the broker's TLS certificate is not issued directly by the root, or carries a seb role")
			},
		}},
	}
	var reader io.Reader
	if body != "" {
		reader = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, broker+path, reader)
	if err != nil {
		return 0, nil, err
	}
	if body != "" {
		req.Header.Set("content-type", "application/json")
	}
	if accept != "" {
		req.Header.Set("accept", accept)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, out, err
}

// verifyToken checks the JWS with crypto/ecdsa: the certificate whose SHA-256 thumbprint is
// the kid, from the trust bundle, chaining directly to the root and carrying the token key
// purpose alone; ES384 over the signing input; the binding to the agent's certificate. An edited
// token must fail the same check.
func verifyToken(token string, bundle []byte, roots *x509.CertPool, agentDER []byte) error {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return errors.New("not three parts")
	}
	var header struct {
		Alg string `json:"alg"`
		Typ string `json:"typ"`
		Kid string `json:"kid"`
	}
	if err := decodeJSON(parts[0], &header); err != nil {
		return err
	}
	if header.Alg != "ES384" || header.Typ != "seb-exec+jwt" {
		return fmt.Errorf("header %+v", header)
	}
	var signer *x509.Certificate
	count := 0
	for rest := bundle; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return fmt.Errorf("trust bundle certificate %d: x509.ParseCertificate: %w", count, err)
		}
		count++
		thumb := sha256.Sum256(block.Bytes)
		if base64.RawURLEncoding.EncodeToString(thumb[:]) == header.Kid {
			signer = cert
		}
	}
	if signer == nil {
		return fmt.Errorf("no certificate of the %d in the trust bundle has kid %s", count, header.Kid)
	}
	chains, err := signer.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return fmt.Errorf("token certificate: %w", err)
	}
	if len(chains) != 1 || len(chains[0]) != 2 {
		return errors.New("token certificate is not issued directly by the root")
	}
	if len(signer.ExtKeyUsage) != 0 || len(signer.UnknownExtKeyUsage) != 1 || !signer.UnknownExtKeyUsage[0].Equal(oidKpToken) {
		return fmt.Errorf("token certificate's key purposes are %v %v, want only %v",
			signer.ExtKeyUsage, signer.UnknownExtKeyUsage, oidKpToken)
	}
	key, ok := signer.PublicKey.(*ecdsa.PublicKey)
	if !ok || key.Curve != elliptic.P384() {
		return errors.New("token key is not ECDSA P-384")
	}
	if !es384(key, parts) {
		return errors.New("ES384 signature does not verify")
	}
	edited := append([]string{}, parts...)
	claimsBytes := []byte(edited[1])
	if claimsBytes[5] == 'A' {
		claimsBytes[5] = 'B'
	} else {
		claimsBytes[5] = 'A'
	}
	edited[1] = string(claimsBytes)
	if es384(key, edited) {
		return errors.New("an edited token verified: the check is not checking")
	}
	var claims struct {
		Cnf struct {
			X5t string `json:"x5t#S256"`
		} `json:"cnf"`
	}
	if err := decodeJSON(parts[1], &claims); err != nil {
		return err
	}
	thumb := sha256.Sum256(agentDER)
	if claims.Cnf.X5t != base64.RawURLEncoding.EncodeToString(thumb[:]) {
		return errors.New("cnf does not name the agent's certificate")
	}
	return nil
}

func es384(key *ecdsa.PublicKey, parts []string) bool {
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) != 96 {
		return false
	}
	digest := sha512.Sum384([]byte(parts[0] + "." + parts[1]))
	r := new(big.Int).SetBytes(sig[:48])
	s := new(big.Int).SetBytes(sig[48:])
	return ecdsa.Verify(key, digest[:], r, s)
}

func decodeJSON(part string, into interface{}) error {
	raw, err := base64.RawURLEncoding.DecodeString(part)
	if err != nil {
		return err
	}
	return json.Unmarshal(raw, into)
}
