package testcase

import (
	"crypto"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// ARCSealing is one ARC set for tests to add (RFC 8617 §5.1): an
// ARC-Authentication-Results carrying Results, an ARC-Message-Signature
// over Headers and the body, and an ARC-Seal over the whole chain. This
// signer is written apart from the verifier in package auth, so that a
// misreading in one shows as a failure in the other.
type ARCSealing struct {
	Domain, Selector string
	AuthServID       string   // of the ARC-Authentication-Results
	Results          string   // e.g. "dmarc=pass header.from=a.example"
	Headers          []string // AMS h=; DefaultSignedHeaders if empty
	CV               string   // cv=; by default none for i=1, pass after
	Algorithm        string   // rsa-sha256 (default) or ed25519-sha256
}

// LoadKey reads keyDir/NAME.pem, a PKCS #8 private key.
func LoadKey(keyDir, name string) (crypto.Signer, error) { return loadKey(keyDir, name) }

var arcInstanceRE = regexp.MustCompile(`(?:^|;)\s*i\s*=\s*([0-9]+)\s*(?:;|$)`)

func arcInstanceOf(v string) int {
	m := arcInstanceRE.FindStringSubmatch(strings.ReplaceAll(v, "\r\n", ""))
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// SealARC returns fields with one more ARC set on top, numbered after the
// ARC-Seal fields already there.
func SealARC(fields []Field, body []byte, s ARCSealing, key crypto.Signer, now time.Time) ([]Field, error) {
	alg, err := algorithmOf(s.Algorithm)
	if err != nil {
		return nil, err
	}
	// The existing sets, by instance, each in the order AAR, AMS, AS.
	sets := map[int][3]*Field{}
	n := 0
	for i := range fields {
		f := &fields[i]
		slot := map[string]int{"arc-authentication-results": 0, "arc-message-signature": 1, "arc-seal": 2}
		k, ok := slot[strings.ToLower(f.Name)]
		if !ok {
			continue
		}
		inst := arcInstanceOf(f.Value)
		if inst == 0 {
			return nil, fmt.Errorf("ARC field without i=: %q", f.Value)
		}
		set := sets[inst]
		set[k] = f
		sets[inst] = set
		if k == 2 {
			n = max(n, inst)
		}
	}
	i := n + 1
	cv := s.CV
	if cv == "" {
		cv = "pass"
		if i == 1 {
			cv = "none"
		}
	}
	aar := Field{Name: "ARC-Authentication-Results", Value: fmt.Sprintf(" i=%d; %s; %s", i, s.AuthServID, s.Results)}

	headers := s.Headers
	if len(headers) == 0 {
		headers = DefaultSignedHeaders
	}
	cb := canonBody(body, "relaxed")
	bh := alg.newHash()
	bh.Write(cb)
	ams := Field{Name: "ARC-Message-Signature", Value: fmt.Sprintf(" i=%d; a=%s; c=relaxed/relaxed; d=%s; s=%s;\r\n\tt=%d; h=%s;\r\n\tbh=%s; b=",
		i, alg.name, s.Domain, s.Selector, now.Unix(), strings.Join(headers, ":"), base64.StdEncoding.EncodeToString(bh.Sum(nil)))}
	b, err := headerSignature(fields, ams, headers, "relaxed", alg, key)
	if err != nil {
		return nil, err
	}
	ams.Value += base64.StdEncoding.EncodeToString(b)

	seal := Field{Name: "ARC-Seal", Value: fmt.Sprintf(" i=%d; a=%s; t=%d; cv=%s;\r\n\td=%s; s=%s; b=", i, alg.name, now.Unix(), cv, s.Domain, s.Selector)}
	// RFC 8617 §5.1.1: every ARC field of sets 1..i, set by set, AAR, AMS,
	// AS, relaxed; the new seal last with b= empty and no CRLF.
	var chain []Field
	for j := 1; j < i; j++ {
		for _, f := range sets[j] {
			if f == nil {
				return nil, fmt.Errorf("ARC set %d incomplete", j)
			}
			chain = append(chain, *f)
		}
	}
	chain = append(chain, aar, ams)
	h := alg.newHash()
	for _, f := range chain {
		h.Write([]byte(canonHeader(f, "relaxed") + "\r\n"))
	}
	h.Write([]byte(canonHeader(seal, "relaxed")))
	digest := h.Sum(nil)
	var sig []byte
	if alg.ed25519 {
		sig, err = key.Sign(rand.Reader, digest, crypto.Hash(0))
	} else {
		sig, err = key.Sign(rand.Reader, digest, alg.hash)
	}
	if err != nil {
		return nil, err
	}
	seal.Value += base64.StdEncoding.EncodeToString(sig)
	return append([]Field{seal, ams, aar}, fields...), nil
}
