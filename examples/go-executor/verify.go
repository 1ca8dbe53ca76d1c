package main

// Offline verification of a seb execution token (docs/VERIFYING.md §4), with crypto/x509 and
// crypto/ecdsa. Each refusal carries the stable code seb's own verifier uses.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"
)

// sebArc is the project's OID arc (docs/GRANTS.md §1).
var sebArc = asn1.ObjectIdentifier{1, 2, 840, 113556, 1, 8000, 2554, 11087, 30221, 20830, 16501, 40880, 2628193, 9833871}

func sebOID(arcs ...int) asn1.ObjectIdentifier {
	return append(append(asn1.ObjectIdentifier{}, sebArc...), arcs...)
}

var (
	oidGrants        = sebOID(1)
	oidRole          = sebOID(2)
	oidIssuableRoles = sebOID(3)
	oidPurposeToken  = sebOID(4, 1)
)

const (
	maxTokenLen = 16 * 1024
	leeway      = 30
	maxLifetime = 3600
)

// refusal is a verification failure with its stable code.
type refusal struct {
	Code   string
	Reason string
}

func (r *refusal) Error() string { return r.Code + ": " + r.Reason }

func refuse(code, format string, args ...interface{}) error {
	return &refusal{Code: code, Reason: fmt.Sprintf(format, args...)}
}

// trust is the pinned bundle: the roots, and the other certificates (token, audit, TLS, ...).
type trust struct {
	roots  *x509.CertPool
	root   []*x509.Certificate
	others []*x509.Certificate
}

func loadTrust(pemBytes []byte) (*trust, error) {
	t := &trust{roots: x509.NewCertPool()}
	for rest := pemBytes; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, refuse("invalid_trust_bundle", "%v", err)
		}
		if bytes.Equal(cert.RawIssuer, cert.RawSubject) && cert.CheckSignatureFrom(cert) == nil {
			t.roots.AddCert(cert)
			t.root = append(t.root, cert)
		} else {
			t.others = append(t.others, cert)
		}
	}
	if len(t.root) == 0 {
		return nil, refuse("invalid_trust_bundle", "no self-signed root")
	}
	return t, nil
}

func thumbprint(der []byte) string {
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// claims are the token's claims, read only after the signature verified.
type claims struct {
	Iss       string
	Sub       string
	Jti       string
	Iat       int64
	Nbf       int64
	Exp       int64
	Epoch     int64
	Cnf       string
	Detail    detail
	Approvals []approval
}

type detail struct {
	Operation     string
	Resource      string
	ParamsDigest  string
	RequestDigest string
	Approvals     int64
	ApprovalGroup string
	HasGroup      bool
}

// approval is one entry of the approvals claim: an approver's certificate thumbprint and its
// DER ECDSA signature over the approval message.
type approval struct {
	X5t string
	Sig []byte
}

// verifyToken checks everything but single use, which is the broker's (redeem before acting).
func verifyToken(token string, t *trust, now time.Time, issuer string, minEpoch int64,
	agent *x509.Certificate, approvers []*x509.Certificate) (*claims, error) {
	// 1. Size and shape: three strict base64url parts.
	if len(token) > maxTokenLen {
		return nil, refuse("token_too_large", "%d bytes", len(token))
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, refuse("malformed_token", "%d parts", len(parts))
	}
	var raw [3][]byte
	for i, p := range parts {
		b, err := base64.RawURLEncoding.Strict().DecodeString(p)
		if err != nil || len(b) == 0 {
			return nil, refuse("malformed_token", "part %d is not strict base64url", i)
		}
		raw[i] = b
	}

	// 2. Header: exactly alg, typ, kid.
	h, err := parseStrict(raw[0])
	header, ok := h.(map[string]interface{})
	if err != nil || !ok || len(header) != 3 {
		return nil, refuse("malformed_token", "the header is not exactly {alg, typ, kid}")
	}
	alg, okAlg := header["alg"].(string)
	typ, okTyp := header["typ"].(string)
	kid, okKid := header["kid"].(string)
	if !okAlg || !okTyp || !okKid {
		return nil, refuse("malformed_token", "alg, typ and kid must be strings")
	}
	if alg != "ES384" && alg != "ES256" {
		return nil, refuse("unsupported_algorithm", "alg %q", alg)
	}
	if typ != "seb-exec+jwt" {
		return nil, refuse("wrong_token_type", "typ %q", typ)
	}

	// 3. The token certificate: by kid, issued directly by a root, token purpose only.
	var signer *x509.Certificate
	for _, c := range t.others {
		if thumbprint(c.Raw) == kid {
			signer = c
		}
	}
	if signer == nil {
		return nil, refuse("unknown_key", "no certificate in the bundle has kid %s", kid)
	}
	// The bundle's CAs may complete a path, so that a token certificate under an intermediate
	// is refused for what it is (not_issued_by_root), as seb refuses it.
	bundleCAs := x509.NewCertPool()
	for _, c := range t.others {
		if c.IsCA {
			bundleCAs.AddCert(c)
		}
	}
	chains, err := signer.Verify(x509.VerifyOptions{
		Roots: t.roots, Intermediates: bundleCAs, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		var invalid x509.CertificateInvalidError
		if errors.As(err, &invalid) && invalid.Reason == x509.Expired {
			return nil, refuse("certificate_expired", "%v", err)
		}
		return nil, refuse("untrusted_token_certificate", "%v", err)
	}
	direct := false
	for _, chain := range chains {
		direct = direct || len(chain) == 2
	}
	if !direct {
		return nil, refuse("not_issued_by_root", "an intermediate issued the token certificate")
	}
	if signer.IsCA || signer.KeyUsage&x509.KeyUsageDigitalSignature == 0 || hasExtension(signer, oidRole) || hasExtension(signer, oidGrants) {
		return nil, refuse("not_a_token_certificate", "%s", signer.Subject)
	}
	if len(signer.ExtKeyUsage) != 0 || len(signer.UnknownExtKeyUsage) != 1 || !signer.UnknownExtKeyUsage[0].Equal(oidPurposeToken) {
		return nil, refuse("wrong_key_purpose", "the extended key usage is not exactly the token purpose")
	}

	// 4. Signature: the algorithm pinned to the key's curve, raw r‖s, verifies, low-S.
	key, ok := signer.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, refuse("not_a_token_certificate", "not an EC key")
	}
	var digest []byte
	size := 0
	switch {
	case alg == "ES384" && key.Curve == elliptic.P384():
		sum := sha512.Sum384([]byte(parts[0] + "." + parts[1]))
		digest, size = sum[:], 48
	case alg == "ES256" && key.Curve == elliptic.P256():
		sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
		digest, size = sum[:], 32
	default:
		return nil, refuse("algorithm_key_mismatch", "%s on a %s key", alg, key.Curve.Params().Name)
	}
	if len(raw[2]) != 2*size {
		return nil, refuse("bad_signature", "%d signature bytes", len(raw[2]))
	}
	r := new(big.Int).SetBytes(raw[2][:size])
	s := new(big.Int).SetBytes(raw[2][size:])
	if !ecdsa.Verify(key, digest, r, s) {
		return nil, refuse("bad_signature", "the signature does not verify")
	}
	halfOrder := new(big.Int).Rsh(key.Curve.Params().N, 1)
	if s.Cmp(halfOrder) > 0 {
		return nil, refuse("non_canonical_signature", "high-S signature")
	}

	// 5. Claims: exactly seb's, each of its type; lifetime; epoch; one authorization detail.
	c, err := readClaims(raw[1])
	if err != nil {
		return nil, err
	}
	unix := now.Unix()
	switch {
	case c.Exp <= c.Nbf || c.Iat > c.Exp || c.Exp-c.Nbf > maxLifetime || c.Iat > unix+leeway:
		return nil, refuse("invalid_lifetime", "iat %d nbf %d exp %d now %d", c.Iat, c.Nbf, c.Exp, unix)
	case c.Nbf > unix+leeway:
		return nil, refuse("token_not_yet_valid", "nbf %d now %d", c.Nbf, unix)
	case unix >= c.Exp:
		return nil, refuse("token_expired", "exp %d now %d", c.Exp, unix)
	case c.Epoch < minEpoch:
		return nil, refuse("stale_epoch", "epoch %d below %d", c.Epoch, minEpoch)
	}
	if issuer != "" && c.Iss != issuer {
		return nil, refuse("wrong_issuer", "iss %q", c.Iss)
	}
	// Binding to the certificate the agent presented on this connection.
	if c.Cnf != thumbprint(agent.Raw) {
		return nil, refuse("wrong_certificate", "the token is bound to another agent certificate")
	}
	if err := checkApprovals(c, t, approvers, agent); err != nil {
		return nil, err
	}
	return c, nil
}

// checkApprovals checks the quorum offline (docs/VERIFYING.md §4 step 7): each entry's
// certificate among the given approvers, chaining to a root with every certificate valid at
// iat, role approver in the token's group, every intermediate above it allowed to issue
// approvers, not the agent, no approver twice, and its signature over the approval message.
// The approval rule of the agent's own grant is not re-derived here (the broker stamped it
// into the detail under its signature); seb exec and seb_client.verify_token check it too.
func checkApprovals(c *claims, t *trust, approvers []*x509.Certificate, agent *x509.Certificate) error {
	if c.Detail.Approvals == 0 {
		if len(c.Approvals) != 0 || c.Detail.HasGroup {
			return refuse("invalid_approvals", "approvals in a token that needed none")
		}
		return nil
	}
	if !c.Detail.HasGroup {
		return refuse("invalid_approvals", "a required count without approval_group")
	}
	message := []byte("seb-approval-v1\napprove\n" + c.Detail.RequestDigest + "\n" + c.Cnf)
	intermediates := x509.NewCertPool()
	for _, cert := range append(append([]*x509.Certificate{}, approvers...), t.others...) {
		if cert.IsCA {
			intermediates.AddCert(cert)
		}
	}
	agentKey, _ := x509.MarshalPKIXPublicKey(agent.PublicKey)
	seen := map[string]bool{}
	valid := int64(0)
	for _, entry := range c.Approvals {
		var cert *x509.Certificate
		for _, a := range approvers {
			if thumbprint(a.Raw) == entry.X5t {
				cert = a
			}
		}
		if cert == nil {
			return refuse("unknown_approver", "no approver certificate has thumbprint %s", entry.X5t)
		}
		chains, err := cert.Verify(x509.VerifyOptions{Roots: t.roots, Intermediates: intermediates,
			CurrentTime: time.Unix(c.Iat, 0), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		if err != nil {
			return refuse("untrusted_approver", "%s: %v", cert.Subject, err)
		}
		kind, groups := roleOf(cert)
		if kind != 1 {
			return refuse("not_an_approver", "%s is not an approver", cert.Subject)
		}
		chain := chains[0]
		for _, ca := range chain[1 : len(chain)-1] {
			if !issues(ca, 1) {
				return refuse("role_not_delegated", "%s may not issue approvers", ca.Subject)
			}
		}
		inGroup := false
		for _, g := range groups {
			inGroup = inGroup || g == c.Detail.ApprovalGroup
		}
		if !inGroup {
			return refuse("wrong_approval_group", "%s is not in %s", cert.Subject, c.Detail.ApprovalGroup)
		}
		key, _ := x509.MarshalPKIXPublicKey(cert.PublicKey)
		// Names compared as the broker compares approvers (case- and space-insensitively).
		if entry.X5t == c.Cnf || nameKey(cert.Subject.String()) == nameKey(agent.Subject.String()) ||
			bytes.Equal(key, agentKey) {
			return refuse("self_approval", "%s is the agent", cert.Subject)
		}
		for _, id := range []string{"c" + entry.X5t, "s" + nameKey(cert.Subject.String()), "k" + string(key)} {
			if seen[id] {
				return refuse("duplicate_approver", "%s appears twice", cert.Subject)
			}
			seen[id] = true
		}
		pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
		var digest []byte
		if ok && pub.Curve == elliptic.P384() {
			sum := sha512.Sum384(message)
			digest = sum[:]
		} else if ok && pub.Curve == elliptic.P256() {
			sum := sha256.Sum256(message)
			digest = sum[:]
		}
		if digest == nil || !ecdsa.VerifyASN1(pub, digest, entry.Sig) {
			return refuse("bad_approval_signature", "%s's signature does not verify", cert.Subject)
		}
		valid++
	}
	if valid < c.Detail.Approvals {
		return refuse("approval_quorum_not_met", "%d valid approvals, %d required", valid, c.Detail.Approvals)
	}
	return nil
}

// roleOf reads sebRole: its kind (0 agent, 1 approver, 2 executor, 3 broker; -1 without a
// readable one) and its groups.
func roleOf(cert *x509.Certificate) (asn1.Enumerated, []string) {
	for _, ext := range cert.Extensions {
		if ext.Id.Equal(oidRole) {
			var role struct {
				Kind   asn1.Enumerated
				Groups []string `asn1:"utf8"`
			}
			if rest, err := asn1.Unmarshal(ext.Value, &role); err == nil && len(rest) == 0 {
				return role.Kind, role.Groups
			}
			return -1, nil
		}
	}
	return -1, nil
}

// issues says whether an intermediate may issue the role: sebIssuableRoles, absent meaning
// agents only, unreadable meaning none.
func issues(ca *x509.Certificate, kind asn1.Enumerated) bool {
	for _, ext := range ca.Extensions {
		if ext.Id.Equal(oidIssuableRoles) {
			var roles []asn1.Enumerated
			if rest, err := asn1.Unmarshal(ext.Value, &roles); err != nil || len(rest) != 0 {
				return false
			}
			for _, r := range roles {
				if r == kind {
					return true
				}
			}
			return false
		}
	}
	return kind == 0
}

func hasExtension(cert *x509.Certificate, oid asn1.ObjectIdentifier) bool {
	for _, e := range cert.Extensions {
		if e.Id.Equal(oid) {
			return true
		}
	}
	return false
}

var claimNames = map[string]bool{"iss": true, "sub": true, "jti": true, "iat": true, "nbf": true, "exp": true,
	"cnf": true, "authorization_details": true, "params_digest": true, "att": true, "audit": true, "epoch": true,
	"approvals": true}

// objectOf is whether an optional claim is absent (or null) or an object of exactly these
// members, each a "string" or an unsigned integer ("uint"), as seb's own verifier reads it.
func objectOf(v interface{}, members map[string]string) bool {
	if v == nil {
		return true
	}
	obj, ok := v.(map[string]interface{})
	if !ok || len(obj) != len(members) {
		return false
	}
	for name, kind := range members {
		switch kind {
		case "string":
			if _, ok := obj[name].(string); !ok {
				return false
			}
		default:
			if n, ok := obj[name].(int64); !ok || n < 0 {
				return false
			}
		}
	}
	return true
}

func readClaims(raw []byte) (*claims, error) {
	bad := func(what string) error { return refuse("invalid_claims", "%s", what) }
	v, err := parseStrict(raw)
	m, ok := v.(map[string]interface{})
	if err != nil || !ok {
		return nil, bad("not a JSON object")
	}
	for k := range m {
		if !claimNames[k] {
			return nil, bad("unknown claim " + k)
		}
	}
	c := &claims{}
	str := func(k string, into *string) bool { s, ok := m[k].(string); *into = s; return ok }
	num := func(k string, into *int64) bool { n, ok := m[k].(int64); *into = n; return ok && n >= 0 }
	if !str("iss", &c.Iss) || !str("sub", &c.Sub) || !str("jti", &c.Jti) ||
		!num("iat", &c.Iat) || !num("nbf", &c.Nbf) || !num("exp", &c.Exp) || !num("epoch", &c.Epoch) {
		return nil, bad("a registered claim is missing or mistyped")
	}
	if !objectOf(m["att"], map[string]string{"pcr_digest": "string", "time": "uint"}) {
		return nil, bad("att")
	}
	if !objectOf(m["audit"], map[string]string{"index": "uint", "leaf_hash": "string"}) {
		return nil, bad("audit")
	}
	cnf, ok := m["cnf"].(map[string]interface{})
	if !ok || len(cnf) != 1 {
		return nil, bad("cnf")
	}
	if c.Cnf, ok = cnf["x5t#S256"].(string); !ok {
		return nil, bad("cnf")
	}
	approvals, ok := m["approvals"].([]interface{})
	if !ok {
		return nil, bad("approvals")
	}
	for _, a := range approvals {
		entry, ok := a.(map[string]interface{})
		if !ok || len(entry) != 2 {
			return nil, bad("approvals entry")
		}
		x5t, okX := entry["x5t#S256"].(string)
		sigText, okS := entry["sig"].(string)
		sig, err := base64.RawURLEncoding.Strict().DecodeString(sigText)
		if !okX || !okS || err != nil {
			return nil, bad("approvals entry")
		}
		c.Approvals = append(c.Approvals, approval{X5t: x5t, Sig: sig})
	}
	details, ok := m["authorization_details"].([]interface{})
	if !ok {
		return nil, bad("authorization_details")
	}
	if len(details) != 1 {
		return nil, refuse("invalid_authorization_details", "%d entries", len(details))
	}
	d, ok := details[0].(map[string]interface{})
	if !ok {
		return nil, bad("authorization_details")
	}
	if kind, _ := d["type"].(string); kind != "seb_execution" {
		return nil, refuse("invalid_authorization_details", "type %v", d["type"])
	}
	var okOp, okRes, okPD, okRD bool
	c.Detail.Operation, okOp = d["operation"].(string)
	c.Detail.Resource, okRes = d["resource"].(string)
	c.Detail.ParamsDigest, okPD = d["params_digest"].(string)
	c.Detail.RequestDigest, okRD = d["request_digest"].(string)
	c.Detail.Approvals, ok = d["approvals"].(int64)
	if !okOp || !okRes || !okPD || !okRD || !ok || c.Detail.Approvals < 0 {
		return nil, bad("authorization detail")
	}
	if g, present := d["approval_group"]; present {
		if c.Detail.ApprovalGroup, ok = g.(string); !ok {
			return nil, bad("approval_group")
		}
		c.Detail.HasGroup = true
	}
	for k := range d {
		switch k {
		case "type", "operation", "resource", "params_digest", "request_digest", "approvals", "approval_group":
		default:
			return nil, bad("unknown member " + k + " in the authorization detail")
		}
	}
	// The top-level copy of the digest (optional) must name the same parameters.
	if top, present := m["params_digest"]; present {
		if s, ok := top.(string); !ok || s != c.Detail.ParamsDigest {
			return nil, bad("params_digest differs from the authorization detail's")
		}
	}
	return c, nil
}

// nameKey is a subject (RFC 4514) as the broker compares approvers (seb::cert::same_name):
// every attribute as (type, value), sorted, so that order and grouping do not count; types by
// name or OID alike; #hex values decoded from their DER string type; escapes undone; values
// lower-cased with spaces at either end dropped and runs of them collapsed. Known answers
// shared with the broker: tests/data/same_names.json.
func nameKey(name string) string {
	var key []string
	var kind strings.Builder
	var raw []byte
	inValue, hexForm, first := false, false, true
	flush := func() {
		text := strings.ToValidUTF8(string(raw), "\uFFFD")
		value := text
		if hexForm {
			if decoded, ok := derString(text[1:]); ok {
				value = decoded
			} else {
				value = strings.ToLower(text)
			}
		}
		if strings.TrimSpace(kind.String()) != "" || value != "" {
			prepared := strings.Join(strings.Fields(strings.ToLower(value)), " ")
			key = append(key, strconv.Quote(attributeType(kind.String()))+"="+strconv.Quote(prepared))
		}
		kind.Reset()
		raw = nil
		inValue, hexForm, first = false, false, true
	}
	for i := 0; i < len(name); {
		c := name[i]
		if c == ',' || c == '+' {
			flush()
			i++
			continue
		}
		if !inValue {
			if c == '=' {
				inValue = true
			} else {
				kind.WriteByte(c)
			}
			i++
			continue
		}
		if first && c == '#' {
			hexForm = true
		}
		first = false
		if c == '\\' {
			if i+2 < len(name) && isHex(name[i+1]) && isHex(name[i+2]) {
				b, _ := strconv.ParseUint(name[i+1:i+3], 16, 8)
				raw = append(raw, byte(b))
				i += 3
			} else if i+1 < len(name) {
				// An escaped character: all of its UTF-8 bytes.
				_, size := utf8.DecodeRuneInString(name[i+1:])
				raw = append(raw, name[i+1:i+1+size]...)
				i += 1 + size
			} else {
				i++
			}
			continue
		}
		raw = append(raw, c)
		i++
	}
	flush()
	sort.Strings(key)
	return strings.Join(key, ",")
}

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F')
}

// attributeTypes is the same table as seb::cert::name::ATTRIBUTE_TYPES, by name.
var attributeTypes = map[string]string{
	"cn": "2.5.4.3", "commonname": "2.5.4.3",
	"sn": "2.5.4.4", "surname": "2.5.4.4",
	"serialnumber": "2.5.4.5",
	"c":            "2.5.4.6", "countryname": "2.5.4.6",
	"l": "2.5.4.7", "localityname": "2.5.4.7",
	"st": "2.5.4.8", "s": "2.5.4.8", "stateorprovincename": "2.5.4.8",
	"street": "2.5.4.9", "streetaddress": "2.5.4.9",
	"o": "2.5.4.10", "organizationname": "2.5.4.10",
	"ou": "2.5.4.11", "organizationalunitname": "2.5.4.11",
	"title":            "2.5.4.12",
	"description":      "2.5.4.13",
	"businesscategory": "2.5.4.15",
	"postaladdress":    "2.5.4.16",
	"postalcode":       "2.5.4.17",
	"postofficebox":    "2.5.4.18",
	"telephonenumber":  "2.5.4.20",
	"name":             "2.5.4.41",
	"givenname":        "2.5.4.42", "gn": "2.5.4.42",
	"initials":             "2.5.4.43",
	"generationqualifier":  "2.5.4.44",
	"x500uniqueidentifier": "2.5.4.45",
	"dnqualifier":          "2.5.4.46",
	"houseidentifier":      "2.5.4.51",
	"dmdname":              "2.5.4.54",
	"pseudonym":            "2.5.4.65",
	"role":                 "2.5.4.72", "id-at-role": "2.5.4.72",
	"uid": "0.9.2342.19200300.100.1.1", "userid": "0.9.2342.19200300.100.1.1",
	"dc": "0.9.2342.19200300.100.1.25", "domaincomponent": "0.9.2342.19200300.100.1.25",
	"emailaddress": "1.2.840.113549.1.9.1", "email": "1.2.840.113549.1.9.1", "pkcs-9-at-emailaddress": "1.2.840.113549.1.9.1",
}

// attributeType is an attribute type as an OID where it is one of the common names, else
// lower-cased as written.
func attributeType(kind string) string {
	kind = strings.TrimPrefix(strings.ToLower(strings.TrimSpace(kind)), "oid.")
	if oid, ok := attributeTypes[kind]; ok {
		return oid
	}
	return kind
}

// derString is the text of a DER string value given as hex.
func derString(hexText string) (string, bool) {
	data, err := hex.DecodeString(hexText)
	if err != nil || len(data) < 2 {
		return "", false
	}
	tag, first, rest := data[0], data[1], data[2:]
	var length int
	switch {
	case first < 0x80:
		length = int(first)
	case first == 0x81 && len(rest) >= 1:
		length, rest = int(rest[0]), rest[1:]
	case first == 0x82 && len(rest) >= 2:
		length, rest = int(rest[0])<<8|int(rest[1]), rest[2:]
	default:
		return "", false
	}
	if len(rest) < length {
		return "", false
	}
	content := rest[:length]
	switch tag {
	case 0x0c, 0x12, 0x13, 0x16, 0x1a:
		return string(content), utf8.Valid(content)
	case 0x14:
		runes := make([]rune, len(content))
		for i, b := range content {
			runes[i] = rune(b)
		}
		return string(runes), true
	case 0x1e:
		if len(content)%2 != 0 {
			return "", false
		}
		units := make([]uint16, len(content)/2)
		for i := range units {
			units[i] = uint16(content[2*i])<<8 | uint16(content[2*i+1])
		}
		// Lone surrogates are not text.
		for i := 0; i < len(units); i++ {
			switch u := units[i]; {
			case 0xd800 <= u && u < 0xdc00:
				if i+1 >= len(units) || units[i+1] < 0xdc00 || units[i+1] >= 0xe000 {
					return "", false
				}
				i++
			case 0xdc00 <= u && u < 0xe000:
				return "", false
			}
		}
		return string(utf16.Decode(units)), true
	case 0x1c:
		if len(content)%4 != 0 {
			return "", false
		}
		var out strings.Builder
		for i := 0; i < len(content); i += 4 {
			r := rune(uint32(content[i])<<24 | uint32(content[i+1])<<16 | uint32(content[i+2])<<8 | uint32(content[i+3]))
			if !utf8.ValidRune(r) {
				return "", false
			}
			out.WriteRune(r)
		}
		return out.String(), true
	}
	return "", false
}
