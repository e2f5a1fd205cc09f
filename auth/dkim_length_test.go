package auth

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/testcase"
)

// lengthBody has what relaxed canonicalization rewrites: WSP runs, WSP at
// line ends, a whitespace-only line, empty lines at the end.
const lengthBody = "Hello  Bob,\t\n\n  indented \t line\nlast line\n  \n\n"

// buildSigned builds and signs a message with internal/testcase's signer,
// which is separate code from the verifier under test (its own
// canonicalization, header selection and l=).
func buildSigned(t testing.TB, body string, sigs ...testcase.Signing) string {
	t.Helper()
	c := &testcase.Case{
		ID: "l-test",
		Message: testcase.Message{
			Headers: []testcase.HeaderPair{
				{Name: "From", Value: "Alice <alice@x.test>"},
				{Name: "To", Value: "bob@y.test"},
				{Name: "Subject", Value: "a  folded\n\tsubject"},
			},
			Body: body,
		},
		DKIM: sigs,
	}
	msg, err := c.Build("../testdata/keys", time.Unix(1780000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	return string(msg)
}

func lengthLookup(t testing.TB) *keyLookup {
	_, rsaRec := loadKey(t, "rsa2048")
	_, edRec := loadKey(t, "ed25519")
	return &keyLookup{records: map[string][]string{
		"sel._domainkey.x.test":    {rsaRec},
		"ed._domainkey.x.test":     {edRec},
		"sel._domainkey.r.test":    {rsaRec},
		"two._domainkey.x.test":    {rsaRec, rsaRec},
		"junk._domainkey.x.test":   {"v=DKIM1; k=rsa; p=!!!not base64!!!"},
		"rev._domainkey.x.test":    {"v=DKIM1; k=rsa; p="},
		"kind._domainkey.x.test":   {"v=DKIM1; k=ed25519; " + strings.TrimPrefix(rsaRec, "v=DKIM1; k=rsa; ")},
		"strict._domainkey.x.test": {strings.Replace(rsaRec, "v=DKIM1;", "v=DKIM1; t=s;", 1)},
	}, errs: map[string]error{
		"fail._domainkey.x.test": &net.DNSError{Err: "SERVFAIL", IsTemporary: true},
		"slow._domainkey.x.test": &net.DNSError{Err: "i/o timeout", IsTimeout: true, IsTemporary: true},
	}}
}

func TestDKIMBodyLength(t *testing.T) {
	lk := lengthLookup(t)
	keys := []struct{ key, sel, algo string }{
		{"rsa2048", "sel", "rsa-sha256"},
		{"ed25519", "ed", "ed25519-sha256"},
	}
	for _, canon := range []string{"simple/simple", "relaxed/relaxed", "relaxed/simple", "simple/relaxed"} {
		for _, k := range keys {
			sig := testcase.Signing{Domain: "x.test", Selector: k.sel, Key: k.key, Algorithm: k.algo, Canon: canon, BodyLength: true}
			msg := buildSigned(t, lengthBody, sig)
			tampered := sig
			tampered.TamperBody = true
			lastLine := strings.LastIndex(msg, "last line")
			tests := []struct {
				name, msg, result, reason string
			}{
				{"l= equal", msg, DKIMPass, ""},
				{"trailing empty lines added", msg + "\r\n\r\n", DKIMPass, ""},
				{"text appended", msg + "-- \r\nunsubscribe here\r\n", DKIMPolicy, "unsigned content"},
				{"l= longer than body", msg[:lastLine] + "\r\n", DKIMFail, "shorter than l="},
				{"signed part tampered", buildSigned(t, lengthBody, tampered), DKIMFail, "body hash"},
				{"header tampered", strings.Replace(msg, "bob@y.test", "eve@y.test", 1), DKIMFail, "signature did not verify"},
			}
			for _, tc := range tests {
				for _, chunk := range []int{1 << 16, 1, 3} {
					t.Run(fmt.Sprintf("%s/%s/%s/chunk%d", canon, k.key, tc.name, chunk), func(t *testing.T) {
						r := verify(t, tc.msg, lk, 0, chunk)
						if len(r) != 1 {
							t.Fatalf("got %+v", r)
						}
						if r[0].Result != tc.result || !strings.Contains(r[0].Reason, tc.reason) {
							t.Fatalf("got %s (%s), want %s (%s)", r[0].Result, r[0].Reason, tc.result, tc.reason)
						}
						if r[0].Domain != "x.test" || r[0].Selector != k.sel || r[0].Algorithm != k.algo {
							t.Errorf("got %+v", r[0])
						}
					})
				}
			}
		}
	}
}

// TestDKIMBodyLengthTwoSignatures is shared case 220 and its variants:
// each signature has its own body state, so l= on one never changes the
// other's verdict.
func TestDKIMBodyLengthTwoSignatures(t *testing.T) {
	lk := lengthLookup(t)
	withL := testcase.Signing{Domain: "x.test", Selector: "sel", Key: "rsa2048", BodyLength: true}
	without := testcase.Signing{Domain: "r.test", Selector: "sel", Key: "rsa2048"}
	// Build signs in order and prepends each, so the last is on top.
	lFirst := buildSigned(t, lengthBody, withL, without)
	lOnTop := buildSigned(t, lengthBody, without, withL)
	tests := []struct {
		name string
		msg  string
		want []string // top to bottom
	}{
		{"l= below, both whole", lFirst, []string{DKIMPass, DKIMPass}},
		{"l= on top, both whole", lOnTop, []string{DKIMPass, DKIMPass}},
		{"l= below, text appended", lFirst + "appended\r\n", []string{DKIMFail, DKIMPolicy}},
		{"l= on top, text appended", lOnTop + "appended\r\n", []string{DKIMPolicy, DKIMFail}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := runtime.NumGoroutine()
			r := verify(t, tc.msg, lk, 0, 5)
			if len(r) != len(tc.want) {
				t.Fatalf("got %+v", r)
			}
			for i, w := range tc.want {
				if r[i].Result != w {
					t.Errorf("signature %d (%s): got %s (%s), want %s", i, r[i].Domain, r[i].Result, r[i].Reason, w)
				}
			}
			settle(t, base)
		})
	}
}

// TestDKIMBodyLengthKeysAndTags covers the verdicts reached before any
// hash: the tags of the signature and its key record.
func TestDKIMBodyLengthKeysAndTags(t *testing.T) {
	lk := lengthLookup(t)
	signed := func(sel, identity string) string {
		return buildSigned(t, lengthBody, testcase.Signing{Domain: "x.test", Selector: sel, Key: "rsa2048", BodyLength: true, Identity: identity})
	}
	msg := signed("sel", "")
	edit := func(old, new string) string {
		if !strings.Contains(msg, old) {
			t.Fatalf("%q not in message", old)
		}
		return strings.Replace(msg, old, new, 1)
	}
	tests := []struct{ name, msg, result, reason string }{
		{"key SERVFAIL", signed("fail", ""), DKIMTempError, "key unavailable"},
		{"key timeout", signed("slow", ""), DKIMTempError, "key unavailable"},
		{"key NXDOMAIN", signed("none", ""), DKIMPermError, "no key"},
		{"key garbage", signed("junk", ""), DKIMPermError, "malformed p="},
		{"key revoked", signed("rev", ""), DKIMPermError, "revoked"},
		{"two key records", signed("two", ""), DKIMPermError, "multiple"},
		{"key type mismatch", signed("kind", ""), DKIMPermError, "does not match"},
		{"strict key, i= in subdomain", signed("strict", "a@sub.x.test"), DKIMPermError, "t=s"},
		{"strict key, i= in d=", signed("strict", "a@x.test"), DKIMPass, ""},
		{"expired", edit("DKIM-Signature: ", "DKIM-Signature: x=1780000001; "), DKIMPermError, "expired"},
		{"x= before t=", edit("DKIM-Signature: ", "DKIM-Signature: x=1779999999; "), DKIMPermError, "x= before t="},
		{"rsa-sha1", edit("a=rsa-sha256", "a=rsa-sha1"), DKIMPermError, "rsa-sha1"},
		{"bad l=", edit(" l=", " l=-"), DKIMPermError, "l="},
		{"bad bh= base64", edit("\tbh=", "\tbh=*"), DKIMPermError, "bh="},
		{"bad b= base64", edit("\tb=", "\tb=!"), DKIMPermError, "b="},
		{"From not signed", edit("h=from:", "h="), DKIMPermError, "From"},
		{"i= outside d=", signed("sel", "a@y.test"), DKIMPermError, "i="},
		{"bad selector", edit("s=sel;", "s=se/l;"), DKIMPermError, "s="},
		{"unknown canonicalization", edit("c=relaxed/relaxed", "c=relaxed/odd"), DKIMPermError, "canonicalization"},
		{"huge l= saturates", edit(" l=", " l=99999999999999999999999999999"), DKIMFail, "shorter"},
		{"q= without dns/txt", edit("DKIM-Signature: ", "DKIM-Signature: q=other; "), DKIMPermError, "query"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := runtime.NumGoroutine()
			r := verify(t, tc.msg, lk, 0, 1<<16)
			if len(r) != 1 || r[0].Result != tc.result || !strings.Contains(r[0].Reason, tc.reason) {
				t.Fatalf("got %+v, want %s (%s)", r, tc.result, tc.reason)
			}
			settle(t, base)
		})
	}
}

func TestParseKeyRecord(t *testing.T) {
	_, rsaRec := loadKey(t, "rsa2048")
	_, edRec := loadKey(t, "ed25519")
	p := func(rec string) string { return rec[strings.Index(rec, "p="):] }
	small, err := x509.MarshalPKIXPublicKey(&rsa.PublicKey{N: new(big.Int).Lsh(big.NewInt(1), 1000), E: 65537})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		rec, want string
		ok        bool
	}{
		{rsaRec, "rsa", true},
		{p(rsaRec), "rsa", true}, // k= defaults to rsa, v= is optional
		{edRec, "ed25519", true},
		{"v=DKIM1; h=sha1:sha256; s=email:other; t=y; " + p(rsaRec), "rsa", true},
		{"k=rsa; v=DKIM1; " + p(rsaRec), "rsa", false}, // v= must come first
		{"v=DKIM2; " + p(rsaRec), "rsa", false},
		{"v=DKIM1; h=sha1; " + p(rsaRec), "rsa", false},
		{"v=DKIM1; s=other; " + p(rsaRec), "rsa", false},
		{"v=DKIM1; k=dsa; " + p(rsaRec), "dsa", false},
		{"v=DKIM1; k=rsa", "rsa", false},
		{"v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(small), "rsa", false}, // RFC 8301 §3.2
		{"v=DKIM1; k=ed25519; p=AAAA", "ed25519", false},
		{"v=DKIM1; k=rsa; p=AAAA", "rsa", false},
		{"v=DKIM1; p; k=rsa", "rsa", false},
		{"v=DKIM1; k=rsa; k=rsa; " + p(rsaRec), "rsa", false},
		{"\x00\xff;;;==", "rsa", false},
		{strings.Repeat("a=b;", 1000), "rsa", false},
	}
	for _, tc := range tests {
		_, _, err := parseKeyRecord(tc.rec, tc.want)
		if (err == nil) != tc.ok {
			t.Errorf("parseKeyRecord(%.60q): %v", tc.rec, err)
		}
	}
}

// refCanonBody canonicalizes a whole body line by line, straight from the
// RFC 6376 §3.4.3 and §3.4.4 wording, as the reference for the streamed
// canonicalizer.
func refCanonBody(body string, relaxed bool) string {
	body = strings.ReplaceAll(body, "\r\n", "\n")
	lines := strings.Split(body, "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1] // the final line end, not an empty line
	}
	for i, l := range lines {
		if relaxed {
			l = strings.TrimRight(l, " \t")
			for strings.Contains(l, "\t") {
				l = strings.ReplaceAll(l, "\t", " ")
			}
			for strings.Contains(l, "  ") {
				l = strings.ReplaceAll(l, "  ", " ")
			}
		}
		lines[i] = l
	}
	for len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	if len(lines) == 0 {
		if relaxed {
			return ""
		}
		return "\r\n"
	}
	return strings.Join(lines, "\r\n") + "\r\n"
}

func streamCanon(body string, relaxed bool, chunk int) (string, uint64) {
	var out bytes.Buffer
	lh := &lengthHash{h: &bufHash{&out}, limit: ^uint64(0)}
	c := newBodyCanon(relaxed, lh)
	for b := []byte(body); len(b) > 0; {
		n := min(chunk, len(b))
		_, _ = c.Write(b[:n])
		b = b[n:]
	}
	c.Close()
	return out.String(), lh.n
}

// bufHash is a hash.Hash that keeps what it is given, to see the
// canonicalized body itself.
type bufHash struct{ b *bytes.Buffer }

func (h *bufHash) Write(p []byte) (int, error) { return h.b.Write(p) }
func (h *bufHash) Sum(b []byte) []byte         { return append(b, h.b.Bytes()...) }
func (h *bufHash) Reset()                      { h.b.Reset() }
func (h *bufHash) Size() int                   { return 0 }
func (h *bufHash) BlockSize() int              { return 1 }

func TestBodyCanon(t *testing.T) {
	// RFC 6376 §3.4.5 example body.
	ex := " C \r\nD \t E\r\n\r\n\r\n"
	if got, _ := streamCanon(ex, true, 1<<10); got != " C\r\nD E\r\n" {
		t.Errorf("relaxed example: %q", got)
	}
	if got, _ := streamCanon(ex, false, 1<<10); got != " C \r\nD \t E\r\n" {
		t.Errorf("simple example: %q", got)
	}
	bodies := []string{
		"", "\r\n", "\r\n\r\n", " \r\n", "a", "a\r\n", "a\r\n\r\n \t\r\n", "a \r\n\r\nb\t \t\r\n",
		"a\rb\r\n", "a\r", "a\r\r\n", "a \r", "\ta\t\tb \r\n", " \r\n \r\nx", "bare\nlf\n\n",
		lengthBody, strings.Repeat("x", 5000) + "  \r\n" + strings.Repeat(" ", 3000) + "y\r\n\r\n",
	}
	for _, body := range bodies {
		for _, relaxed := range []bool{false, true} {
			// A CR without LF is content, which the line-based reference
			// cannot express; compare those against the stream whole.
			want, _ := streamCanon(body, relaxed, len(body)+1)
			if !strings.Contains(strings.ReplaceAll(body, "\r\n", ""), "\r") {
				want = refCanonBody(body, relaxed)
			}
			for _, chunk := range []int{1, 2, 3, 7, 1 << 10} {
				got, n := streamCanon(body, relaxed, chunk)
				if got != want || n != uint64(len(want)) {
					t.Errorf("relaxed=%v chunk=%d %.40q: got %q (%d), want %q", relaxed, chunk, body, got, n, want)
				}
			}
		}
	}
	// Bare CRs: content, kept in place.
	if got, _ := streamCanon("a \r b\r", true, 1); got != "a \r b\r\r\n" {
		t.Errorf("bare CR relaxed: %q", got)
	}
}

func TestLengthHashLimit(t *testing.T) {
	for _, limit := range []uint64{0, 1, 5, 9, 10, 11, 100} {
		lh := &lengthHash{h: sha256.New(), limit: limit}
		lh.write([]byte("01234"))
		lh.write([]byte("56789"))
		want := sha256.Sum256([]byte("0123456789"[:min(limit, 10)]))
		if !bytes.Equal(lh.h.Sum(nil), want[:]) || lh.n != 10 {
			t.Errorf("limit %d: n=%d, hash mismatch", limit, lh.n)
		}
	}
}

// TestDKIMBodyLengthAbort: Abort while the l= key lookup blocks releases
// everything, and Finish reports temperror.
func TestDKIMBodyLengthAbort(t *testing.T) {
	base := runtime.NumGoroutine()
	lk := lengthLookup(t)
	lk.block = map[string]bool{"sel._domainkey.x.test": true}
	msg := buildSigned(t, lengthBody, testcase.Signing{Domain: "x.test", Selector: "sel", Key: "rsa2048", BodyLength: true})
	v := NewDKIMVerifier(context.Background(), lk.lookup, 0)
	fs, body := split(t, msg)
	for _, f := range fs {
		v.AddHeader(f.name, f.value)
	}
	v.EndHeaders()
	// Body writes wait while go-msgauth waits for its key (the pipe), so
	// the Abort comes from another goroutine, as from the milter session.
	go func() { time.Sleep(20 * time.Millisecond); v.Abort() }()
	_, _ = v.Write(body)
	r := v.Finish()
	if len(r) != 1 || r[0].Result != DKIMTempError {
		t.Fatalf("got %+v", r)
	}
	settle(t, base)

	// The deadline ends the wait for a blocked key too.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	v = NewDKIMVerifier(ctx, lk.lookup, 0)
	for _, f := range fs {
		v.AddHeader(f.name, f.value)
	}
	_, _ = v.Write(body) // returns once the deadline ends the library's lookup
	r = v.Finish()
	if len(r) != 1 || r[0].Result != DKIMTempError || !errors.Is(r[0].Err, context.DeadlineExceeded) && !strings.Contains(r[0].Reason, "deadline") {
		t.Fatalf("got %+v", r)
	}
	settle(t, base)
}

// BenchmarkDKIMVerifyBodyLength100KB is BenchmarkDKIMVerify100KB for a
// signature with l=, verified by our own code (go-msgauth still reads the
// stream and looks the key up).
func BenchmarkDKIMVerifyBodyLength100KB(b *testing.B) {
	lk := lengthLookup(b)
	line := strings.Repeat("y", 35) + "  \t" + strings.Repeat("z", 32) + "\n"
	msg := buildSigned(b, strings.Repeat(line, (100<<10)/len(line)), testcase.Signing{Domain: "x.test", Selector: "sel", Key: "rsa2048", BodyLength: true})
	fs, body := split(b, msg)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		v := NewDKIMVerifier(context.Background(), lk.lookup, 0)
		for _, f := range fs {
			v.AddHeader(f.name, f.value)
		}
		for off := 0; off < len(body); off += 64 << 10 {
			_, _ = v.Write(body[off:min(off+64<<10, len(body))])
		}
		if r := v.Finish(); r[0].Result != DKIMPass {
			b.Fatal(r)
		}
	}
}

// TestDKIMKeysFetchedAtEndOfHeader: both paths ask for their keys as soon
// as the header is complete, before any body byte, so that DNS overlaps
// with the body transfer.
func TestDKIMKeysFetchedAtEndOfHeader(t *testing.T) {
	_, rec := loadKey(t, "rsa2048")
	for _, withL := range []bool{false, true} {
		t.Run(fmt.Sprintf("l=%v", withL), func(t *testing.T) {
			base := runtime.NumGoroutine()
			msg := buildSigned(t, lengthBody, testcase.Signing{Domain: "x.test", Selector: "sel", Key: "rsa2048", BodyLength: withL})
			asked := make(chan string, 4)
			lookup := func(ctx context.Context, name string) ([]string, error) {
				asked <- name
				return []string{rec}, nil
			}
			v := NewDKIMVerifier(context.Background(), lookup, 0)
			fs, body := split(t, msg)
			for _, f := range fs {
				v.AddHeader(f.name, f.value)
			}
			v.EndHeaders()
			select {
			case name := <-asked:
				if name != "sel._domainkey.x.test" {
					t.Errorf("asked for %q", name)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no key lookup before the body")
			}
			_, _ = v.Write(body)
			if r := v.Finish(); len(r) != 1 || r[0].Result != DKIMPass {
				t.Fatalf("got %+v", r)
			}
			settle(t, base)
		})
	}
}
