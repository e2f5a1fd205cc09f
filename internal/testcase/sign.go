package testcase

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

type algorithm struct {
	name    string
	hash    crypto.Hash
	ed25519 bool
}

func algorithmOf(name string) (algorithm, error) {
	switch name {
	case "", "rsa-sha256":
		return algorithm{name: "rsa-sha256", hash: crypto.SHA256}, nil
	case "rsa-sha1":
		return algorithm{name: "rsa-sha1", hash: crypto.SHA1}, nil
	case "ed25519-sha256":
		return algorithm{name: "ed25519-sha256", hash: crypto.SHA256, ed25519: true}, nil
	}
	return algorithm{}, fmt.Errorf("unknown DKIM algorithm %q", name)
}

func (a algorithm) newHash() hash.Hash {
	if a.hash == crypto.SHA1 {
		return sha1.New()
	}
	return sha256.New()
}

func canonOf(c string) (header, body string, err error) {
	if c == "" {
		return "relaxed", "relaxed", nil
	}
	h, b, ok := strings.Cut(c, "/")
	if !ok {
		b = "simple" // RFC 6376 §3.5: a lone c= value names the header algorithm
	}
	for _, v := range []string{h, b} {
		if v != "simple" && v != "relaxed" {
			return "", "", fmt.Errorf("unknown canonicalization %q", c)
		}
	}
	return h, b, nil
}

// loadKey reads keyDir/NAME.pem, a PKCS #8 private key.
func loadKey(keyDir, name string) (crypto.Signer, error) {
	if !keyNameRE.MatchString(name) {
		return nil, fmt.Errorf("key %q is not a key name", name)
	}
	b, err := os.ReadFile(filepath.Join(keyDir, name+".pem"))
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("key %s: not a PEM PRIVATE KEY block", name)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", name, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key %s: %T cannot sign", name, k)
	}
	return s, nil
}

// signParams is one signature to make, resolved from a Signing.
type signParams struct {
	domain, selector, identity string
	alg                        algorithm
	headerCanon, bodyCanon     string
	headers                    []string
	bodyLength                 bool
	time                       time.Time
	fold                       bool
}

// sign returns the DKIM-Signature field for the message made of fields
// and body (RFC 6376 §5).
func sign(fields []Field, body []byte, p signParams, key crypto.Signer) (Field, error) {
	switch key.(type) {
	case *rsa.PrivateKey:
		if p.alg.ed25519 {
			return Field{}, errors.New("ed25519-sha256 needs an Ed25519 key, got RSA")
		}
	case ed25519.PrivateKey:
		if !p.alg.ed25519 {
			return Field{}, fmt.Errorf("%s needs an RSA key, got Ed25519", p.alg.name)
		}
	default:
		return Field{}, fmt.Errorf("unsupported key type %T", key)
	}

	cb := canonBody(body, p.bodyCanon)
	bh := p.alg.newHash()
	bh.Write(cb) // RFC 6376 §3.7: l= counts the whole canonicalized body here

	var tags strings.Builder
	tags.WriteString(" v=1; a=" + p.alg.name + "; c=" + p.headerCanon + "/" + p.bodyCanon + ";")
	tags.WriteString(" d=" + p.domain + "; s=" + p.selector + ";")
	tags.WriteString(sep(p.fold) + "t=" + strconv.FormatInt(p.time.Unix(), 10) + ";")
	if p.identity != "" {
		tags.WriteString(" i=" + p.identity + ";")
	}
	if p.bodyLength {
		tags.WriteString(" l=" + strconv.Itoa(len(cb)) + ";")
	}
	tags.WriteString(sep(p.fold) + "h=" + strings.Join(p.headers, ":") + ";")
	tags.WriteString(sep(p.fold) + "bh=" + base64.StdEncoding.EncodeToString(bh.Sum(nil)) + ";")
	tags.WriteString(sep(p.fold) + "b=")
	sigField := Field{Name: "DKIM-Signature", Value: tags.String()}

	b, err := headerSignature(fields, sigField, p.headers, p.headerCanon, p.alg, key)
	if err != nil {
		return Field{}, err
	}
	sigField.Value += foldBase64(base64.StdEncoding.EncodeToString(b), p.fold)
	return sigField, nil
}

func sep(fold bool) string {
	if fold {
		return "\r\n\t"
	}
	return " "
}

// foldBase64 breaks b= into lines; RFC 6376 §3.5 lets FWS appear anywhere
// in base64 values and verifiers delete it.
func foldBase64(s string, fold bool) string {
	if !fold {
		return s
	}
	var out strings.Builder
	for len(s) > 64 {
		out.WriteString(s[:64] + "\r\n\t ")
		s = s[64:]
	}
	out.WriteString(s)
	return out.String()
}

// headerSignature signs the header hash input of RFC 6376 §3.7: the h=
// fields, then sigField (whose b= must be empty) without its CRLF.
func headerSignature(fields []Field, sigField Field, names []string, canon string, alg algorithm, key crypto.Signer) ([]byte, error) {
	h := alg.newHash()
	for _, f := range selectFields(fields, names) {
		h.Write([]byte(canonHeader(f, canon)))
		h.Write([]byte("\r\n"))
	}
	h.Write([]byte(canonHeader(sigField, canon)))
	digest := h.Sum(nil)
	if alg.ed25519 {
		// RFC 8463 §3: Ed25519 (pure) signs the SHA-256 of the hash input.
		return key.Sign(rand.Reader, digest, crypto.Hash(0))
	}
	return key.Sign(rand.Reader, digest, alg.hash)
}

// selectFields picks, for each name in h=, the bottom-most instance not yet
// used (RFC 6376 §5.4.2); a name with no instance left contributes nothing,
// which is what makes over-signing work.
func selectFields(fields []Field, names []string) []Field {
	used := make([]bool, len(fields))
	var out []Field
	for _, n := range names {
		for i := len(fields) - 1; i >= 0; i-- {
			if !used[i] && strings.EqualFold(fields[i].Name, n) {
				used[i] = true
				out = append(out, fields[i])
				break
			}
		}
	}
	return out
}

// canonHeader returns one field canonicalized without its final CRLF.
func canonHeader(f Field, canon string) string {
	if canon == "simple" {
		return f.Name + ":" + f.Value // RFC 6376 §3.4.1: no change at all
	}
	// RFC 6376 §3.4.2: lower-case name, unfold, compress WSP, trim.
	v := strings.ReplaceAll(f.Value, "\r\n", "")
	v = strings.ReplaceAll(v, "\n", "")
	var b strings.Builder
	space := false
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == ' ' || c == '\t' {
			space = true
			continue
		}
		if space && b.Len() > 0 {
			b.WriteByte(' ')
		}
		space = false
		b.WriteByte(c)
	}
	return strings.ToLower(strings.TrimRight(f.Name, " \t")) + ":" + b.String()
}

// canonBody canonicalizes a CRLF body (RFC 6376 §3.4.3, §3.4.4).
func canonBody(body []byte, canon string) []byte {
	lines := bytes.Split(body, []byte("\r\n"))
	// A body ending in CRLF splits into a trailing empty element that is
	// not a line of its own.
	if n := len(lines); n > 0 && len(lines[n-1]) == 0 {
		lines = lines[:n-1]
	}
	if canon == "relaxed" {
		for i, l := range lines {
			lines[i] = relaxLine(l)
		}
	}
	for len(lines) > 0 && len(lines[len(lines)-1]) == 0 {
		lines = lines[:len(lines)-1]
	}
	if len(lines) == 0 {
		if canon == "simple" {
			return []byte("\r\n") // RFC 6376 §3.4.3: an empty body is one CRLF
		}
		return nil // RFC 6376 §3.4.4: an empty body stays empty
	}
	out := make([]byte, 0, len(body))
	for _, l := range lines {
		out = append(out, l...)
		out = append(out, '\r', '\n')
	}
	return out
}

func relaxLine(l []byte) []byte {
	out := make([]byte, 0, len(l))
	space := false
	for _, c := range l {
		if c == ' ' || c == '\t' {
			space = true
			continue
		}
		if space {
			out = append(out, ' ')
		}
		space = false
		out = append(out, c)
	}
	return out // trailing WSP dropped: space is never flushed at the end
}
