package auth

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/domain"
)

// Signatures with l= are verified by our own code: go-msgauth refuses
// every l= (LIBRARIES.md), yet RFC 6376 §3.5 and §8.2 make a signature
// whose l= covers the whole canonicalized body as good as one without it
// (shared case 220). Signatures without l= stay with go-msgauth.

// Bounds on key records, beyond RFC 8301's minimum.
const (
	minRSABits = 1024 // RFC 8301 §3.2
	// maxRSABits keeps a hostile key record from making one verification
	// expensive; no signer publishes more.
	maxRSABits = 8192
)

// errUnsignedTail explains the "policy" result of a signature whose l=
// leaves content after the signed part.
var errUnsignedTail = errors.New("unsigned content follows the l= body length")

// lengthSig is one DKIM-Signature with l= under our own verification.
type lengthSig struct {
	field    int    // index into DKIMVerifier.fields
	sigField string // "name:value" as in the header, CRLF folds, b= emptied

	domain   string
	selector string
	identity string // i=, or "" when absent
	keyType  string // "rsa" or "ed25519"
	relaxedH bool
	headers  []string // h=
	bh, b    []byte
	expires  time.Time // x=, zero when absent

	limit    uint64 // l=, or the largest uint64 without one
	hasLimit bool
	body     *bodyCanon
	sum      *lengthHash

	keyDone chan struct{} // closed once key, keyRes and keyErr are set
	key     crypto.PublicKey
	keyRes  string // "" when the key is usable
	keyErr  error
	strict  bool       // key t=s: i= must be in d= itself (RFC 6376 §3.6.1)
	keyOf   *lengthSig // an ARC-Seal whose key another seal looks up
}

// sigError is a verdict reached while checking tags or the key.
type sigError struct {
	result string
	err    error
}

func (e *sigError) Error() string { return e.err.Error() }

func permErr(format string, a ...any) *sigError {
	return &sigError{DKIMPermError, fmt.Errorf(format, a...)}
}

// newLengthSig checks the tags of a signature with l= (RFC 6376 §3.5,
// §6.1.1) given its field value with CRLF folds. A *sigError gives the
// result when the signature cannot be verified at all.
func newLengthSig(field int, value string) (*lengthSig, error) {
	return parseSignature(field, "DKIM-Signature", value, false)
}

// parseSignature reads a DKIM-Signature, or with arc an
// ARC-Message-Signature (RFC 8617 §4.1.2: the DKIM tags without v=, i=
// the instance, l= optional), named name in the header.
func parseSignature(field int, name, value string, arc bool) (*lengthSig, error) {
	tags, err := parseTagList(value)
	if err != nil {
		return nil, permErr("malformed tag-list: %v", err)
	}
	t := tagMap(tags)
	required := []string{"v", "a", "b", "bh", "d", "h", "s"}
	if arc {
		required = []string{"i", "a", "b", "bh", "d", "h", "s"}
	}
	for _, req := range required {
		if _, ok := t[req]; !ok {
			return nil, permErr("missing required tag %s=", req) // RFC 6376 §3.5
		}
	}
	if !arc && t["v"] != "1" {
		return nil, permErr("incompatible signature version") // RFC 6376 §6.1.1
	}
	s := &lengthSig{field: field, selector: stripFWS(t["s"])}
	switch stripFWS(t["a"]) {
	case "rsa-sha256":
		s.keyType = "rsa"
	case "ed25519-sha256":
		s.keyType = "ed25519" // RFC 8463 §3
	case "rsa-sha1":
		return nil, permErr("rsa-sha1 is not accepted") // RFC 8301 §3.1
	default:
		return nil, permErr("unsupported algorithm")
	}
	hc, bc, ok := parseCanon(stripFWS(t["c"]))
	if !ok {
		return nil, permErr("unsupported canonicalization")
	}
	s.relaxedH = hc
	if s.domain, err = normalizeSigDomain(t["d"]); err != nil {
		return nil, permErr("unusable d= domain")
	}
	if !validSelector(s.selector) {
		return nil, permErr("unusable s= selector")
	}
	if i, ok := t["i"]; ok && !arc {
		s.identity = stripFWS(i)
		at := strings.LastIndexByte(s.identity, '@')
		id, err := normalizeSigDomain(s.identity[at+1:])
		// RFC 6376 §3.5 i=: the domain of the AUID is d= or a subdomain.
		if at < 0 || err != nil || (id != s.domain && !strings.HasSuffix(id, "."+s.domain)) {
			return nil, permErr("i= not within d=")
		}
	}
	s.headers = colonList(t["h"])
	from := false
	for _, h := range s.headers {
		from = from || strings.EqualFold(h, "from")
	}
	if !from {
		return nil, permErr("From field not signed") // RFC 6376 §5.4, §6.1.1
	}
	if q, ok := t["q"]; ok {
		dns := false
		for _, m := range colonList(q) {
			dns = dns || m == "dns/txt"
		}
		if !dns {
			return nil, permErr("no supported query method") // RFC 6376 §3.5 q=
		}
	}
	s.limit = ^uint64(0)
	if l, ok := t["l"]; ok || !arc {
		if s.limit, err = parseBodyLength(l); err != nil {
			return nil, permErr("malformed l=: %v", err)
		}
		s.hasLimit = true
	}
	if s.bh, err = decodeB64(t["bh"]); err != nil || len(s.bh) == 0 {
		return nil, permErr("malformed bh=")
	}
	if s.b, err = decodeB64(t["b"]); err != nil || len(s.b) == 0 {
		return nil, permErr("malformed b=")
	}
	var signed time.Time
	if v, ok := t["t"]; ok {
		if signed, err = parseUnixTime(v); err != nil {
			return nil, permErr("malformed t=")
		}
	}
	if v, ok := t["x"]; ok {
		if s.expires, err = parseUnixTime(v); err != nil {
			return nil, permErr("malformed x=")
		}
		// RFC 6376 §3.5 x=: not before t=, and past it the signature is
		// invalid. Like go-msgauth, no clock-skew allowance.
		if !signed.IsZero() && s.expires.Before(signed) {
			return nil, permErr("x= before t=")
		}
		if time.Now().After(s.expires) {
			return nil, permErr("signature expired")
		}
	}
	// RFC 6376 §3.7: the signature field enters the header hash with the
	// value of b= deleted, everything else unchanged.
	for _, tg := range tags {
		if tg.name == "b" {
			a, b := bValueSpan(value, tg)
			s.sigField = name + ":" + value[:a] + value[b:]
		}
	}
	s.sum = &lengthHash{h: sha256.New(), limit: s.limit}
	s.body = newBodyCanon(bc, s.sum)
	return s, nil
}

// bValueSpan is what RFC 6376 §3.7 deletes from the signature field: the
// b= value "including all surrounding whitespace", from after the "=" to
// the ";" or the end (as go-msgauth does, so both paths agree). With b=
// not the last tag, relaxed canonicalization would otherwise hash "b= ;"
// where the signer hashed "b=;".
func bValueSpan(value string, tg tagSpec) (int, int) {
	a, b := tg.vStart, tg.vEnd
	for a > 0 && isFWS(value[a-1]) {
		a--
	}
	for b < len(value) && isFWS(value[b]) {
		b++
	}
	return a, b
}

// parseCanon reads c= (RFC 6376 §3.5): header/body, each simple or
// relaxed, simple by default; a lone value names the header algorithm.
func parseCanon(c string) (relaxedHeader, relaxedBody, ok bool) {
	if c == "" {
		return false, false, true
	}
	h, b, _ := strings.Cut(c, "/")
	if b == "" {
		b = "simple"
	}
	rh, okh := canonName(h)
	rb, okb := canonName(b)
	return rh, rb, okh && okb
}

func canonName(s string) (relaxed, ok bool) {
	switch s {
	case "simple":
		return false, true
	case "relaxed":
		return true, true
	}
	return false, false
}

// parseBodyLength reads l= (RFC 6376 §3.5: 1*76DIGIT). A value beyond
// uint64 saturates: no body reaches it, so the signature fails.
func parseBodyLength(v string) (uint64, error) {
	v = stripFWS(v)
	if v == "" || len(v) > 76 {
		return 0, errors.New("not 1 to 76 digits")
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, errors.New("not 1 to 76 digits")
		}
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return ^uint64(0), nil
	}
	return n, nil
}

// parseUnixTime reads t= or x= (RFC 6376 §3.5: 1*12DIGIT seconds).
func parseUnixTime(v string) (time.Time, error) {
	v = stripFWS(v)
	if v == "" || len(v) > 12 {
		return time.Time{}, errors.New("not 1 to 12 digits")
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, errors.New("not a number")
	}
	return time.Unix(n, 0), nil
}

// decodeB64 reads a base64 tag value; RFC 6376 §3.5 allows FWS anywhere
// in it.
func decodeB64(v string) ([]byte, error) {
	return base64.StdEncoding.DecodeString(stripFWS(v))
}

// normalizeSigDomain normalises d= or the domain of i= the same way
// parseSigTags does for the DKIMResult.
func normalizeSigDomain(d string) (string, error) {
	return domain.Normalize(stripFWS(d))
}

// validSelector: RFC 6376 §3.1 selector = sub-domain *("." sub-domain),
// checked so that no query is made for a name we would not accept.
func validSelector(s string) bool {
	if s == "" || len(s) > 200 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			if c := l[i]; !isAlpha(c) && !(c >= '0' && c <= '9') && c != '-' && c != '_' {
				return false
			}
		}
	}
	return true
}

// fetchKey looks the key up and parses it (RFC 6376 §6.1.2), then closes
// keyDone. It returns once ctx is done, as lookup must.
func (s *lengthSig) fetchKey(ctx context.Context, lookup func(string) ([]string, error)) {
	defer close(s.keyDone)
	txt, err := lookup(s.selector + "._domainkey." + s.domain)
	var de *net.DNSError
	switch {
	case errors.As(err, &de) && de.Temporary():
		s.keyRes, s.keyErr = DKIMTempError, fmt.Errorf("key unavailable: %v", err) // RFC 6376 §6.1.2 step 3
		return
	case err != nil:
		s.keyRes, s.keyErr = DKIMPermError, fmt.Errorf("no key for signature: %v", err)
		return
	case len(txt) == 0:
		s.keyRes, s.keyErr = DKIMPermError, errors.New("no key for signature")
		return
	case len(txt) > 1:
		// RFC 6376 §3.6.2.2 leaves several records undefined; go-msgauth
		// refuses them, and so do we, so that both paths agree.
		s.keyRes, s.keyErr = DKIMPermError, errors.New("multiple TXT records found for key")
		return
	}
	k, strict, err := parseKeyRecord(txt[0], s.keyType)
	if err != nil {
		s.keyRes, s.keyErr = DKIMPermError, err
		return
	}
	s.key, s.strict = k, strict
}

// parseKeyRecord reads a DKIM key record (RFC 6376 §3.6.1) for key type
// want and reports whether its t=s flag is set.
func parseKeyRecord(rec, want string) (crypto.PublicKey, bool, error) {
	tags, err := parseTagList(rec)
	if err != nil {
		return nil, false, fmt.Errorf("key record: %v", err)
	}
	t := tagMap(tags)
	if v, ok := t["v"]; ok && (v != "DKIM1" || tags[0].name != "v") {
		return nil, false, errors.New("key record: incompatible version") // RFC 6376 §3.6.1 v=
	}
	if h, ok := t["h"]; ok && !contains(colonList(h), "sha256") {
		return nil, false, errors.New("key record: sha256 not allowed") // h=
	}
	if sv, ok := t["s"]; ok {
		l := colonList(sv)
		if !contains(l, "*") && !contains(l, "email") {
			return nil, false, errors.New("key record: not for email") // s=
		}
	}
	strict := contains(colonList(t["t"]), "s")
	p, ok := t["p"]
	if !ok {
		return nil, false, errors.New("key record: no p=")
	}
	raw, err := decodeB64(p)
	if err != nil {
		return nil, false, errors.New("key record: malformed p=")
	}
	if len(raw) == 0 {
		return nil, false, errors.New("key revoked") // RFC 6376 §3.6.1 p=
	}
	k := stripFWS(t["k"])
	if k == "" {
		k = "rsa"
	}
	if k != want {
		return nil, false, fmt.Errorf("key type %q does not match a=", truncate(k, 20))
	}
	switch k {
	case "rsa":
		pub, err := x509.ParsePKIXPublicKey(raw)
		if err != nil {
			// RFC 6376 §3.6.1 says SubjectPublicKeyInfo, its example
			// section RSAPublicKey (erratum 3017); some publish that.
			pub, err = x509.ParsePKCS1PublicKey(raw)
		}
		if err != nil {
			return nil, false, errors.New("key record: malformed RSA key")
		}
		rk, ok := pub.(*rsa.PublicKey)
		if !ok {
			return nil, false, errors.New("key record: not an RSA key")
		}
		if bits := rk.N.BitLen(); bits < minRSABits || bits > maxRSABits {
			return nil, false, fmt.Errorf("RSA key of %d bits", bits) // RFC 8301 §3.2
		}
		return rk, strict, nil
	case "ed25519":
		if len(raw) != ed25519.PublicKeySize {
			return nil, false, errors.New("key record: malformed Ed25519 key") // RFC 8463 §4
		}
		return ed25519.PublicKey(raw), strict, nil
	}
	return nil, false, errors.New("key record: unsupported key type")
}

func contains(l []string, s string) bool {
	for _, e := range l {
		if e == s {
			return true
		}
	}
	return false
}

// headerField locates one header field in the verifier's header buffer:
// buf[start:end] is "name:value" with CRLF folds, without the final CRLF.
type headerField struct {
	name       string
	start, end int
}

// verify decides the signature once the body has ended and the key is in
// (RFC 6376 §6.1.3). fields are all header fields, top to bottom, in buf.
func (s *lengthSig) verify(buf []byte, fields []headerField) (string, error) {
	if s.keyRes != "" {
		return s.keyRes, s.keyErr
	}
	if s.strict && s.identity != "" {
		// RFC 6376 §3.6.1 t=s: the i= domain must be d= exactly.
		if id, _ := normalizeSigDomain(s.identity[strings.LastIndexByte(s.identity, '@')+1:]); id != s.domain {
			return DKIMPermError, errors.New("i= is a subdomain of d= but the key has t=s")
		}
	}
	s.body.Close()
	if s.hasLimit && s.sum.n < s.limit {
		// RFC 6376 §3.5 l=: a body shorter than l= cannot have been signed
		// as it is.
		return DKIMFail, fmt.Errorf("body of %d bytes is shorter than l=%d", s.sum.n, s.limit)
	}
	if subtle.ConstantTimeCompare(s.sum.h.Sum(nil), s.bh) != 1 {
		return DKIMFail, errors.New("body hash did not verify")
	}
	h := sha256.New()
	// RFC 6376 §5.4.2: each name in h= takes the bottom-most instance not
	// yet taken; a name with none left (over-signing) adds nothing. The
	// signature being verified is never one of them: it enters last.
	byName := make(map[string][]int)
	for i, f := range fields {
		if i == s.field {
			continue
		}
		n := strings.ToLower(strings.TrimRight(f.name, " \t"))
		byName[n] = append(byName[n], i)
	}
	for _, name := range s.headers {
		n := strings.ToLower(name)
		idx := byName[n]
		if len(idx) == 0 {
			continue
		}
		f := fields[idx[len(idx)-1]]
		h.Write([]byte(canonHeaderField(string(buf[f.start:f.end]), s.relaxedH)))
		byName[n] = idx[:len(idx)-1]
	}
	// RFC 6376 §3.7: the signature field last, b= empty, without its CRLF.
	h.Write([]byte(strings.TrimSuffix(canonHeaderField(s.sigField, s.relaxedH), "\r\n")))
	digest := h.Sum(nil)
	switch k := s.key.(type) {
	case *rsa.PublicKey:
		if err := rsa.VerifyPKCS1v15(k, crypto.SHA256, digest, s.b); err != nil {
			return DKIMFail, errors.New("signature did not verify")
		}
	case ed25519.PublicKey:
		// RFC 8463 §3: Ed25519 signs the SHA-256 of the hash input.
		if !ed25519.Verify(k, digest, s.b) {
			return DKIMFail, errors.New("signature did not verify")
		}
	default:
		return DKIMPermError, errors.New("no usable key")
	}
	if s.hasLimit && s.sum.n > s.limit {
		// RFC 6376 §8.2: text after the l= length is not signed. It may be
		// anything an intermediary appended, so never a pass.
		return DKIMPolicy, fmt.Errorf("%w (%d of %d bytes signed)", errUnsignedTail, s.limit, s.sum.n)
	}
	return DKIMPass, nil
}
