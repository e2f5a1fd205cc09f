package testcase

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
)

func TestCanonBody(t *testing.T) {
	tests := []struct {
		name, in, canon, want string
	}{
		{"simple empty", "", "simple", "\r\n"},
		{"relaxed empty", "", "relaxed", ""},
		{"simple only empty lines", "\r\n\r\n\r\n", "simple", "\r\n"},
		{"relaxed only blank lines", " \r\n\t\r\n", "relaxed", ""},
		{"simple keeps WSP", "a  b \r\n\r\n", "simple", "a  b \r\n"},
		{"relaxed squeezes WSP", "a \t b \t\r\n", "relaxed", "a b\r\n"},
		{"relaxed leading WSP kept as one SP", "  a\r\n", "relaxed", " a\r\n"},
		{"missing final CRLF added", "a", "simple", "a\r\n"},
		{"inner empty lines kept", "a\r\n\r\nb\r\n\r\n", "relaxed", "a\r\n\r\nb\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(canonBody([]byte(tt.in), tt.canon)); got != tt.want {
				t.Errorf("canonBody(%q, %s) = %q, want %q", tt.in, tt.canon, got, tt.want)
			}
		})
	}
}

func TestCanonHeader(t *testing.T) {
	tests := []struct {
		f           Field
		canon, want string
	}{
		{Field{"SubJect", " a  b "}, "simple", "SubJect: a  b "},
		{Field{"SubJect ", "  a \t b \r\n\t c  "}, "relaxed", "subject:a b c"},
		{Field{"X", ""}, "relaxed", "x:"},
		{Field{"X", "\r\n\tfolded"}, "relaxed", "x:folded"},
	}
	for _, tt := range tests {
		if got := canonHeader(tt.f, tt.canon); got != tt.want {
			t.Errorf("canonHeader(%q, %s) = %q, want %q", tt.f, tt.canon, got, tt.want)
		}
	}
}

func TestSelectFields(t *testing.T) {
	fields := []Field{{"A", "1"}, {"B", "2"}, {"a", "3"}}
	tests := []struct {
		names []string
		want  string
	}{
		{[]string{"a"}, "3"},
		{[]string{"a", "a"}, "31"},
		{[]string{"a", "a", "a", "b"}, "312"}, // the third a is past the last
		{[]string{"c", "B"}, "2"},
		{nil, ""},
	}
	for _, tt := range tests {
		var got string
		for _, f := range selectFields(fields, tt.names) {
			got += f.Value
		}
		if got != tt.want {
			t.Errorf("selectFields(%v) = %q, want %q", tt.names, got, tt.want)
		}
	}
}

const sampleMessage = "From: Joe <joe@sign.test>\r\n" +
	"To: <sink@lab.test>\r\n" +
	"Subject:  folded\r\n\t subject  \r\n" +
	"Date: Mon, 01 Jun 2026 12:00:00 +0000\r\n" +
	"Message-ID: <1@sign.test>\r\n" +
	"\r\n" +
	"Hello  there. \r\n\r\nSecond\tparagraph.\r\n\r\n\r\n"

// TestSignVerifiesWithMsgauth checks the signer against an independent
// verifier for every algorithm go-msgauth accepts and every
// canonicalization, folded and not, with over-signing and i=.
func TestSignVerifiesWithMsgauth(t *testing.T) {
	kd := keyDir(t)
	pub := map[string]string{}
	for _, k := range []string{"rsa2048", "rsa1024", "ed25519"} {
		b, err := os.ReadFile(filepath.Join(kd, k+".txt"))
		if err != nil {
			t.Fatal(err)
		}
		pub[k+"._domainkey.sign.test"] = strings.TrimSpace(string(b))
	}
	wrong, err := os.ReadFile(filepath.Join(kd, "rsa2048-alt.txt"))
	if err != nil {
		t.Fatal(err)
	}
	pub["wrong._domainkey.sign.test"] = strings.TrimSpace(string(wrong))
	lookup := func(name string) ([]string, error) {
		if v, ok := pub[name]; ok {
			return []string{v}, nil
		}
		return nil, nil
	}
	fields, body, err := SplitMessage([]byte(sampleMessage))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	for _, alg := range []struct{ name, key string }{
		{"rsa-sha256", "rsa2048"}, {"rsa-sha256", "rsa1024"}, {"ed25519-sha256", "ed25519"},
	} {
		key, err := loadKey(kd, alg.key)
		if err != nil {
			t.Fatal(err)
		}
		for _, canon := range []string{"simple/simple", "simple/relaxed", "relaxed/simple", "relaxed/relaxed"} {
			for _, fold := range []bool{false, true} {
				for _, selector := range []string{alg.key, "wrong"} {
					name := alg.name + "/" + alg.key + "/" + canon + "/fold=" + strconv.FormatBool(fold) + "/" + selector
					t.Run(name, func(t *testing.T) {
						a, _ := algorithmOf(alg.name)
						hc, bc, _ := canonOf(canon)
						p := signParams{
							domain: "sign.test", selector: selector, identity: "joe@sign.test",
							alg: a, headerCanon: hc, bodyCanon: bc,
							headers: []string{"from", "from", "to", "subject", "date", "message-id", "cc"},
							time:    now, fold: fold,
						}
						sig, err := sign(fields, body, p, key)
						if err != nil {
							t.Fatal(err)
						}
						msg := joinMessage(append([]Field{sig}, fields...), body)
						vs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{LookupTXT: lookup})
						if err != nil || len(vs) != 1 {
							t.Fatalf("verify: %v, %d verifications", err, len(vs))
						}
						// "wrong" publishes rsa2048-alt: a key that did not sign.
						wantPass := selector != "wrong"
						if (vs[0].Err == nil) != wantPass {
							t.Fatalf("verification err = %v, want pass=%v\n%s", vs[0].Err, wantPass, msg)
						}
						if wantPass && vs[0].Identifier != "joe@sign.test" {
							t.Errorf("i= = %q", vs[0].Identifier)
						}
						// The same signature must break when a signed field changes.
						if wantPass {
							bad := bytes.Replace(msg, []byte("Subject:"), []byte("Subject: x"), 1)
							vs, _ := dkim.VerifyWithOptions(bytes.NewReader(bad), &dkim.VerifyOptions{LookupTXT: lookup})
							if len(vs) != 1 || vs[0].Err == nil {
								t.Error("a changed Subject still verifies")
							}
							// Over-signed From: a second From added on top must break it.
							bad = append([]byte("From: evil@attacker.example.org\r\n"), msg...)
							vs, _ = dkim.VerifyWithOptions(bytes.NewReader(bad), &dkim.VerifyOptions{LookupTXT: lookup})
							if len(vs) != 1 || vs[0].Err == nil {
								t.Error("an added From still verifies despite over-signing")
							}
						}
					})
				}
			}
		}
	}
}

// TestSignRSASHA1 checks rsa-sha1, which go-msgauth refuses to verify (RFC
// 8301): the body hash and the signature must use SHA-1 throughout.
func TestSignRSASHA1(t *testing.T) {
	kd := keyDir(t)
	key, err := loadKey(kd, "rsa2048")
	if err != nil {
		t.Fatal(err)
	}
	fields, body, err := SplitMessage([]byte(sampleMessage))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := algorithmOf("rsa-sha1")
	p := signParams{domain: "sign.test", selector: "s", alg: a, headerCanon: "relaxed", bodyCanon: "simple",
		headers: DefaultSignedHeaders, time: time.Unix(1780000000, 0)}
	sig, err := sign(fields, body, p, key)
	if err != nil {
		t.Fatal(err)
	}
	tags := tagMap(t, sig.Value)
	bh := sha1.Sum(canonBody(body, "simple"))
	if tags["bh"] != base64.StdEncoding.EncodeToString(bh[:]) {
		t.Errorf("bh = %s, want SHA-1 of the simple body", tags["bh"])
	}
	if tags["a"] != "rsa-sha1" || tags["t"] != "1780000000" {
		t.Errorf("a=%s t=%s", tags["a"], tags["t"])
	}
	var in strings.Builder
	for _, f := range selectFields(fields, DefaultSignedHeaders) {
		in.WriteString(canonHeader(f, "relaxed") + "\r\n")
	}
	unsigned := sig
	unsigned.Value = sig.Value[:strings.LastIndex(sig.Value, "b=")+2]
	in.WriteString(canonHeader(unsigned, "relaxed"))
	digest := sha1.Sum([]byte(in.String()))
	b, err := base64.StdEncoding.DecodeString(tags["b"])
	if err != nil {
		t.Fatal(err)
	}
	if err := rsa.VerifyPKCS1v15(&key.(*rsa.PrivateKey).PublicKey, crypto.SHA1, digest[:], b); err != nil {
		t.Errorf("rsa-sha1 signature does not verify: %v", err)
	}
}

// TestBodyLength checks l=: the length of the whole canonicalized body,
// which the body hash covers. go-msgauth fails every l=, so this is
// checked by hand.
func TestBodyLength(t *testing.T) {
	key, err := loadKey(keyDir(t), "rsa2048")
	if err != nil {
		t.Fatal(err)
	}
	fields, body, err := SplitMessage([]byte(sampleMessage))
	if err != nil {
		t.Fatal(err)
	}
	for _, canon := range []string{"simple", "relaxed"} {
		a, _ := algorithmOf("")
		p := signParams{domain: "sign.test", selector: "s", alg: a, headerCanon: "relaxed", bodyCanon: canon,
			headers: DefaultSignedHeaders, bodyLength: true, time: time.Unix(1780000000, 0)}
		sig, err := sign(fields, body, p, key)
		if err != nil {
			t.Fatal(err)
		}
		tags := tagMap(t, sig.Value)
		cb := canonBody(body, canon)
		if tags["l"] != strconv.Itoa(len(cb)) {
			t.Errorf("%s: l=%s, want %d", canon, tags["l"], len(cb))
		}
		bh := sha256.Sum256(cb)
		if tags["bh"] != base64.StdEncoding.EncodeToString(bh[:]) {
			t.Errorf("%s: bh does not cover the canonical body", canon)
		}
	}
}

// tagMap parses a DKIM-Signature value into its tags, whitespace removed.
func tagMap(t *testing.T, v string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, kv := range strings.Split(v, ";") {
		k, val, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		clean := strings.Map(func(r rune) rune {
			if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
				return -1
			}
			return r
		}, val)
		m[strings.TrimSpace(k)] = clean
	}
	return m
}

// TestRFC8463Example signs the RFC 8463 Appendix A message with the RFC's
// Ed25519 key and exactly its signature tags: the body hash and the
// signature must be the RFC's (Ed25519 is deterministic).
func TestRFC8463Example(t *testing.T) {
	seed, _ := base64.StdEncoding.DecodeString("nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=")
	key := ed25519.NewKeyFromSeed(seed)
	if got := base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey)); got != "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=" {
		t.Fatalf("public key %s is not RFC 8463's", got)
	}
	msg := "From: Joe SixPack <joe@football.example.com>\r\n" +
		"To: Suzie Q <suzie@shopping.example.net>\r\n" +
		"Subject: Is dinner ready?\r\n" +
		"Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n" +
		"Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n" +
		"\r\n" +
		"Hi.\r\n\r\nWe lost the game.  Are you hungry yet?\r\n\r\nJoe.\r\n"
	fields, body, err := SplitMessage([]byte(msg))
	if err != nil {
		t.Fatal(err)
	}
	bh := sha256.Sum256(canonBody(body, "relaxed"))
	if got := base64.StdEncoding.EncodeToString(bh[:]); got != "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=" {
		t.Errorf("bh = %s, want RFC 8463's", got)
	}
	sigField := Field{Name: "DKIM-Signature", Value: " v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n" +
		" d=football.example.com; i=@football.example.com;\r\n" +
		" q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n" +
		" subject : date : message-id : from : subject : date;\r\n" +
		" bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n" +
		" b="}
	names := []string{"from", "to", "subject", "date", "message-id", "from", "subject", "date"}
	a, _ := algorithmOf("ed25519-sha256")
	b, err := headerSignature(fields, sigField, names, "relaxed", a, key)
	if err != nil {
		t.Fatal(err)
	}
	const want = "/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11BusFa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw=="
	if got := base64.StdEncoding.EncodeToString(b); got != want {
		t.Errorf("b = %s, want RFC 8463's %s", got, want)
	}
}

func TestLoadKeyErrors(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "garbage.pem"), []byte("not pem"), 0o600)
	os.WriteFile(filepath.Join(dir, "rsakey.pem"), []byte("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"), 0o600)
	for _, name := range []string{"../etc/passwd", "garbage", "rsakey", "missing", ""} {
		if _, err := loadKey(dir, name); err == nil {
			t.Errorf("loadKey(%q) succeeded", name)
		}
	}
}
