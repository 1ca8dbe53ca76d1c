// Command go-executor is a seb executor written with Go's standard library only: it verifies
// execution tokens offline, redeems them at the broker (single use), acts, and reports a signed
// receipt. It is an example for platform teams, run against a real broker by tests/agents.rs.
//
// An agent presents {"token", "params"} at POST /v1/run over mutual TLS with its own
// certificate. The executor:
//
//  1. requires a client certificate that chains to the pinned root with sebRole agent;
//  2. parses the parameters strictly (duplicate keys, deep nesting, unsafe numbers refused);
//  3. verifies the token offline (verify.go: docs/VERIFYING.md §4): the token certificate named
//     by kid, issued directly by the root with the token key purpose alone; ES384/ES256 pinned
//     to its curve, low-S; the claims, lifetime, epoch and issuer; the binding to the
//     certificate the agent presented on this connection; the approvals of tokens issued after
//     approvals, against the approvers' certificates (-approvers);
//  4. finds its action by the token's exact operation and resource, and checks the digest of
//     exactly these parameters against params_digest;
//  5. redeems the token at the broker (POST /v1/tokens/redeem), trusting only a broker
//     certificate the root issued directly with serverAuth;
//  6. acts (the one action of this example writes params.text to DIR/params.name), signs a
//     receipt (docs/VERIFYING.md §6) with its own key and posts it to the broker.
//
// It never acts before the redemption succeeded, and never redeems before every offline check
// passed. Usage:
//
//	go-executor -listen 127.0.0.1:8600 -broker https://127.0.0.1:8443 -broker-id seb-dev \
//	    -trust trust.pem -cert executor.pem -key executor.key -dir /srv/demo \
//	    [-approvers approvers.pem] [-min-epoch N]
package main

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

type executor struct {
	brokerURL string
	brokerID  string
	trust     *trust
	// current is the trust tokens are verified against: the pinned bundle, or one fetched
	// again from the broker after a re-key (refreshTrust), always under the pinned root.
	current     atomic.Pointer[trust]
	lastRefresh int64 // Unix seconds of the last fetch, for at most one per refreshEvery
	identity    tls.Certificate
	leaf        *x509.Certificate
	minEpoch    int64
	dir         string
	approvers   []*x509.Certificate
	client      *http.Client
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8600", "address to serve HTTPS on")
	broker := flag.String("broker", "", "the broker's URL, https://host:port")
	brokerID := flag.String("broker-id", "", "the broker id tokens must name (iss)")
	trustPath := flag.String("trust", "", "the pinned trust bundle (PEM; GET /v1/trust)")
	certPath := flag.String("cert", "", "this executor's certificate chain (PEM)")
	keyPath := flag.String("key", "", "this executor's key (PKCS#8 PEM)")
	dir := flag.String("dir", "", "the directory the demo.write action writes into")
	minEpoch := flag.Int64("min-epoch", 0, "refuse tokens of an older policy epoch")
	approversPath := flag.String("approvers", "", "the approvers' certificates (PEM), for tokens issued after approvals")
	flag.Parse()

	e, err := newExecutor(*broker, *brokerID, *trustPath, *certPath, *keyPath, *dir, *minEpoch, *approversPath)
	if err != nil {
		log.Fatalf("go-executor: %v", err)
	}
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("go-executor: %v", err)
	}
	server := &http.Server{
		Handler:           http.HandlerFunc(e.serve),
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{e.identity},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    e.trust.roots,
			MinVersion:   tls.VersionTLS12,
		},
	}
	fmt.Printf("go-executor listening on https://%s\n", listener.Addr())
	log.Fatal(server.ServeTLS(listener, "", ""))
}

func newExecutor(broker, brokerID, trustPath, certPath, keyPath, dir string, minEpoch int64, approversPath string) (*executor, error) {
	if broker == "" || brokerID == "" || dir == "" {
		return nil, errors.New("-broker, -broker-id and -dir are required")
	}
	bundle, err := os.ReadFile(trustPath)
	if err != nil {
		return nil, err
	}
	t, err := loadTrust(bundle)
	if err != nil {
		return nil, err
	}
	identity, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(identity.Certificate[0])
	if err != nil {
		return nil, err
	}
	var approvers []*x509.Certificate
	if approversPath != "" {
		data, err := os.ReadFile(approversPath)
		if err != nil {
			return nil, err
		}
		for rest := data; ; {
			var block *pem.Block
			if block, rest = pem.Decode(rest); block == nil {
				break
			}
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("approvers: %w", err)
			}
			approvers = append(approvers, cert)
		}
	}
	e := &executor{brokerURL: strings.TrimRight(broker, "/"), brokerID: brokerID, trust: t,
		identity: identity, leaf: leaf, minEpoch: minEpoch, dir: dir, approvers: approvers}
	e.current.Store(t)
	e.client = &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{identity},
		RootCAs:      t.roots,
		MinVersion:   tls.VersionTLS12,
		// Only a certificate the root issued directly, for serverAuth, without a seb role, is
		// the broker: an intermediate CA may hold one for the broker's name that chains to the
		// root as well, and an executor's certificate may be root-issued with serverAuth (it
		// carries sebRole).
		VerifyConnection: func(cs tls.ConnectionState) error {
			for _, chain := range cs.VerifiedChains {
				if len(chain) == 2 && !hasExtension(chain[0], sebOID(2)) {
					for _, usage := range chain[0].ExtKeyUsage {
						if usage == x509.ExtKeyUsageServerAuth {
							return nil
						}
					}
				}
			}
			return errors.New("the broker's certificate is not issued directly by the root for serverAuth, or carries a seb role")
		},
	}}}
	return e, nil
}

// refreshEvery bounds how often a token with an unknown kid makes the executor fetch the
// broker's trust bundle again.
const refreshEvery = 5

// refreshTrust fetches GET /v1/trust from the broker (over the mTLS client that trusts only
// the pinned root) and uses it from now on if its roots are exactly the pinned ones: a
// re-keyed broker's new token certificate is found without a restart, and the trust anchor
// never changes. At most once per refreshEvery seconds; reports whether a new bundle is in use.
func (e *executor) refreshTrust() bool {
	now := time.Now().Unix()
	last := atomic.LoadInt64(&e.lastRefresh)
	if now-last < refreshEvery || !atomic.CompareAndSwapInt64(&e.lastRefresh, last, now) {
		return false
	}
	resp, err := e.client.Get(e.brokerURL + "/v1/trust")
	if err != nil {
		log.Printf("trust refresh: %v", err)
		return false
	}
	defer resp.Body.Close()
	bundle, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		log.Printf("trust refresh: status %d: %v", resp.StatusCode, err)
		return false
	}
	fresh, err := loadTrust(bundle)
	if err != nil {
		log.Printf("trust refresh: %v", err)
		return false
	}
	if len(fresh.root) != len(e.trust.root) {
		log.Printf("trust refresh: the broker's bundle has other roots; keeping the pinned one")
		return false
	}
	for i := range fresh.root {
		if !fresh.root[i].Equal(e.trust.root[i]) {
			log.Printf("trust refresh: the broker's bundle has other roots; keeping the pinned one")
			return false
		}
	}
	e.current.Store(fresh)
	log.Printf("trust refresh: the broker's bundle is in use (%d certificates)", len(fresh.others)+len(fresh.root))
	return true
}

// answer is a JSON response; failures are {"error": {"code", "message"}}.
func answer(w http.ResponseWriter, status int, body interface{}) {
	w.Header().Set("content-type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

func fail(w http.ResponseWriter, status int, code, message string) {
	log.Printf("refused: %s: %s", code, message)
	answer(w, status, map[string]interface{}{"error": map[string]string{"code": code, "message": message}})
}

const maxBody = 64 * 1024

func (e *executor) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/run" {
		fail(w, http.StatusNotFound, "no_such_endpoint", "POST /v1/run is the only endpoint")
		return
	}
	// 1. The agent: a verified client certificate with sebRole agent.
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		fail(w, http.StatusForbidden, "bad_certificate", "no verified client certificate")
		return
	}
	agent := r.TLS.VerifiedChains[0][0]
	if kind, _ := roleOf(agent); kind != 0 {
		fail(w, http.StatusForbidden, "wrong_role", "only agents may present tokens")
		return
	}
	// 2. The body, strictly.
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil || len(body) > maxBody {
		fail(w, http.StatusRequestEntityTooLarge, "body_too_large", "at most 64 KiB")
		return
	}
	parsed, err := parseStrict(body)
	if err != nil {
		// Not JSON, or JSON another parser could read differently (seb exec's code too).
		fail(w, http.StatusBadRequest, "malformed_json", err.Error())
		return
	}
	run, ok := parsed.(map[string]interface{})
	if !ok || len(run) != 2 {
		fail(w, http.StatusBadRequest, "invalid_request", "the body is not exactly {token, params}")
		return
	}
	token, okToken := run["token"].(string)
	params, okParams := run["params"].(map[string]interface{})
	if !okToken || !okParams {
		fail(w, http.StatusBadRequest, "invalid_request", "token must be a string and params an object")
		return
	}
	// 3. The token, offline.
	used := e.current.Load()
	claims, err := verifyToken(token, used, time.Now(), e.brokerID, atomic.LoadInt64(&e.minEpoch), agent, e.approvers)
	var unknown *refusal
	// Once more with a newer bundle: one another request fetched meanwhile, or one fetched now.
	if errors.As(err, &unknown) && unknown.Code == "unknown_key" && (e.current.Load() != used || e.refreshTrust()) {
		// The broker may have re-keyed (seb rotate token): once more, with its bundle now.
		claims, err = verifyToken(token, e.current.Load(), time.Now(), e.brokerID, atomic.LoadInt64(&e.minEpoch), agent, e.approvers)
	}
	if err != nil {
		var refused *refusal
		if errors.As(err, &refused) {
			fail(w, http.StatusForbidden, refused.Code, refused.Reason)
		} else {
			fail(w, http.StatusForbidden, "invalid_token", err.Error())
		}
		return
	}
	// 4. The action, and exactly these parameters.
	if claims.Detail.Operation != "demo.write" || claims.Detail.Resource != "demo/files" {
		fail(w, http.StatusForbidden, "no_action", "no action for this operation and resource")
		return
	}
	canon, err := canonical(params)
	if err != nil {
		fail(w, http.StatusBadRequest, "invalid_params", err.Error())
		return
	}
	digest := sha512.Sum384(canon)
	paramsDigest := base64.RawURLEncoding.EncodeToString(digest[:])
	if paramsDigest != claims.Detail.ParamsDigest {
		fail(w, http.StatusForbidden, "wrong_params", "the parameters' digest differs from params_digest")
		return
	}
	// What approvers signed is the request digest: it must be this action's, or approvals
	// given for another request of the same agent could be carried into this token.
	request, err := canonical(map[string]interface{}{
		"operation": claims.Detail.Operation, "resource": claims.Detail.Resource, "params": params,
	})
	if err != nil {
		fail(w, http.StatusBadRequest, "invalid_params", err.Error())
		return
	}
	requestDigest := sha512.Sum384(request)
	if base64.RawURLEncoding.EncodeToString(requestDigest[:]) != claims.Detail.RequestDigest {
		fail(w, http.StatusForbidden, "invalid_authorization_details",
			"request_digest is not the digest of this operation, resource and parameters")
		return
	}
	name, okName := params["name"].(string)
	text, okText := params["text"].(string)
	if !okName || !okText || len(params) != 2 || !safeName(name) {
		fail(w, http.StatusBadRequest, "params_refused", "demo.write takes a plain file name and a text")
		return
	}
	// 5. Single use: redeem before acting.
	requestID, status, code, err := e.redeem(token)
	if err != nil {
		fail(w, status, code, err.Error())
		return
	}
	// 6. Act, then say what was done.
	started := time.Now()
	exitCode := int64(0)
	stderr := ""
	if err := os.WriteFile(filepath.Join(e.dir, name), []byte(text), 0o600); err != nil {
		exitCode, stderr = 1, "write failed"
		log.Printf("action failed: %v", err)
	}
	finished := time.Now()
	receipt, err := e.receipt(map[string]interface{}{
		"typ": "seb-receipt-v1", "jti": claims.Jti, "request_id": requestID,
		"operation": claims.Detail.Operation, "resource": claims.Detail.Resource,
		"params_digest": paramsDigest, "exit_code": exitCode, "timed_out": false,
		"stdout_sha256": sha256b64(""), "stderr_sha256": sha256b64(stderr),
		"started_at_ms": started.UnixMilli(), "finished_at_ms": finished.UnixMilli(),
		"executor": thumbprint(e.leaf.Raw),
	})
	if err != nil {
		fail(w, http.StatusInternalServerError, "internal_error", "could not sign the receipt")
		return
	}
	recorded := e.report(requestID, receipt) == nil
	// As seb exec answers: whether the action succeeded, beside the signed receipt that says so.
	answer(w, http.StatusOK, map[string]interface{}{
		"status": "executed", "succeeded": exitCode == 0, "stdout": "", "stderr": stderr,
		"receipt": receipt, "outcome_recorded": recorded,
	})
}

func safeName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\\\x00") && len(name) <= 255
}

func sha256b64(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// redeem posts the token to the broker; the request id on 200, else the broker's status and code.
func (e *executor) redeem(token string) (string, int, string, error) {
	body, _ := json.Marshal(map[string]string{"token": token})
	status, out, err := e.post("/v1/tokens/redeem", body)
	if err != nil {
		return "", http.StatusBadGateway, "broker_unavailable", err
	}
	var reply struct {
		Status    string `json:"status"`
		RequestID string `json:"request_id"`
		Epoch     int64  `json:"epoch"`
		Error     struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(out, &reply); err != nil {
		return "", http.StatusBadGateway, "broker_unavailable", errors.New("unreadable answer from the broker")
	}
	if status != http.StatusOK || reply.Status != "redeemed" {
		if reply.Error.Code == "" {
			reply.Error.Code = "redeem_refused"
		}
		return "", status, reply.Error.Code, errors.New(reply.Error.Message)
	}
	// Every epoch the broker reports becomes the floor for tokens verified offline.
	for {
		current := atomic.LoadInt64(&e.minEpoch)
		if reply.Epoch <= current || atomic.CompareAndSwapInt64(&e.minEpoch, current, reply.Epoch) {
			break
		}
	}
	return reply.RequestID, http.StatusOK, "", nil
}

func (e *executor) post(path string, body []byte) (int, []byte, error) {
	resp, err := e.client.Post(e.brokerURL+path, "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, out, err
}

// receipt signs the JCS form of body with this executor's key: DER ECDSA, SHA-384 for P-384
// and SHA-256 for P-256 (docs/VERIFYING.md §6).
func (e *executor) receipt(body map[string]interface{}) (map[string]interface{}, error) {
	// Through parseStrict, so numbers are the integers canonical() writes.
	raw, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	value, err := parseStrict(raw)
	if err != nil {
		return nil, err
	}
	canon, err := canonical(value)
	if err != nil {
		return nil, err
	}
	key, ok := e.identity.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("the executor key is not ECDSA")
	}
	var digest []byte
	var hash crypto.Hash
	if key.Curve == elliptic.P384() {
		sum := sha512.Sum384(canon)
		digest, hash = sum[:], crypto.SHA384
	} else {
		sum := sha256.Sum256(canon)
		digest, hash = sum[:], crypto.SHA256
	}
	sig, err := key.Sign(rand.Reader, digest, hash)
	if err != nil {
		return nil, err
	}
	return map[string]interface{}{"body": value, "signature": base64.RawURLEncoding.EncodeToString(sig)}, nil
}

// report posts the receipt to the broker, which records it once in the audit log.
func (e *executor) report(requestID string, receipt map[string]interface{}) error {
	body, err := json.Marshal(map[string]interface{}{"receipt": receipt})
	if err != nil {
		return err
	}
	status, out, err := e.post("/v1/executions/"+requestID+"/outcome", body)
	if err != nil {
		return err
	}
	if status != http.StatusCreated {
		log.Printf("the broker did not record the outcome: %d %s", status, out)
		return fmt.Errorf("status %d", status)
	}
	return nil
}
