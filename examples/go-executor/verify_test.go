package main

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"testing"
	"time"
)

// claimsWith is a well-formed claims set with its members replaced (a nil value removes one).
func claimsWith(t *testing.T, changes map[string]interface{}) []byte {
	t.Helper()
	m := map[string]interface{}{
		"iss": "seb-dev", "sub": "CN=agent", "jti": "AAAAAAAAAAAAAAAAAAAAAA",
		"iat": 1764892800, "nbf": 1764892800, "exp": 1764892830, "epoch": 1,
		"cnf":       map[string]interface{}{"x5t#S256": "q0Zs"},
		"approvals": []interface{}{},
		"authorization_details": []interface{}{map[string]interface{}{
			"type": "seb_execution", "operation": "demo.write", "resource": "demo/files",
			"params_digest": "m1xM", "request_digest": "C3aE", "approvals": 0,
		}},
		"params_digest": "m1xM",
		"att":           map[string]interface{}{"pcr_digest": "AAAA", "time": 1764892800},
		"audit":         map[string]interface{}{"index": 7, "leaf_hash": "AAAA"},
	}
	for k, v := range changes {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// The claims' shapes are read as seb's own verifier reads them: optional claims are absent or
// of exactly their type, never anything else that happens to be present.
func TestClaimShapesAreSebs(t *testing.T) {
	for name, changes := range map[string]map[string]interface{}{
		"as issued":                           {},
		"without att, audit":                  {"att": nil, "audit": nil},
		"without the top-level params_digest": {"params_digest": nil},
	} {
		if _, err := readClaims(claimsWith(t, changes)); err != nil {
			t.Errorf("%s: refused: %v", name, err)
		}
	}
	for name, changes := range map[string]map[string]interface{}{
		"att a string":          {"att": "x"},
		"audit a string":        {"audit": "x"},
		"att an unknown member": {"att": map[string]interface{}{"foo": 1}},
		"att time negative":     {"att": map[string]interface{}{"pcr_digest": "AAAA", "time": -1}},
		"audit index a string":  {"audit": map[string]interface{}{"index": "7", "leaf_hash": "AAAA"}},
		"audit an extra member": {"audit": map[string]interface{}{"index": 7, "leaf_hash": "AAAA", "x": 1}},
		"params_digest differs": {"params_digest": "other"},
		"an unknown claim":      {"aud": "x"},
	} {
		_, err := readClaims(claimsWith(t, changes))
		if e, ok := err.(*refusal); !ok || e.Code != "invalid_claims" {
			t.Errorf("%s: want invalid_claims, got %v", name, err)
		}
	}
}

// A header member of the wrong type is a malformed token, as seb reads it, not an unsupported
// algorithm; the header is checked before anything else is looked up.
func TestHeaderMembersMustBeStrings(t *testing.T) {
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for _, header := range []string{
		`{"alg":["ES384"],"typ":"seb-exec+jwt","kid":"x"}`,
		`{"alg":"ES384","typ":1,"kid":"x"}`,
		`{"alg":"ES384","typ":"seb-exec+jwt","kid":null}`,
	} {
		token := enc(header) + "." + enc(`{}`) + "." + enc("sig")
		_, err := verifyToken(token, &trust{}, time.Unix(1764892800, 0), "seb-dev", 0, nil, nil)
		if e, ok := err.(*refusal); !ok || e.Code != "malformed_token" {
			t.Errorf("%s: want malformed_token, got %v", header, err)
		}
	}
}

// Approver names compare as the broker compares them: the known answers seb's own verifier
// is tested with (src/cert/name.rs).
func TestNamesCompareAsTheBrokerCompares(t *testing.T) {
	raw, err := os.ReadFile("../../tests/data/same_names.json")
	if err != nil {
		t.Fatal(err)
	}
	var cases []struct {
		A, B, Why string
		Same      bool
	}
	if err := json.Unmarshal(raw, &cases); err != nil {
		t.Fatal(err)
	}
	if len(cases) < 20 {
		t.Fatalf("only %d cases", len(cases))
	}
	for _, c := range cases {
		for _, pair := range [][2]string{{c.A, c.B}, {c.B, c.A}} {
			same := pair[0] == pair[1] || nameKey(pair[0]) == nameKey(pair[1])
			if same != c.Same {
				t.Errorf("%s: %q / %q: same %v (keys %s / %s)", c.Why, pair[0], pair[1], same,
					nameKey(pair[0]), nameKey(pair[1]))
			}
		}
	}
	for _, odd := range []string{"", "=", ",,", "CN", "CN=\\", "CN=#", "CN=#1e01", "CN=#0c7f61", "+=+"} {
		nameKey(odd)
	}
}
