package auth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
)

func loadKey(t testing.TB, name string) (crypto.Signer, string) {
	t.Helper()
	p, err := os.ReadFile("../testdata/keys/" + name + ".pem")
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(p)
	if blk == nil {
		t.Fatalf("%s: no PEM block", name)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := os.ReadFile("../testdata/keys/" + name + ".txt")
	if err != nil {
		t.Fatal(err)
	}
	return k.(crypto.Signer), strings.TrimSpace(string(rec))
}

// keyLookup is a fake LookupTXTFunc: records by name, errors by name,
// and names that block until the context ends.
type keyLookup struct {
	mu      sync.Mutex
	records map[string][]string
	errs    map[string]error
	block   map[string]bool
	calls   int
}

func (k *keyLookup) lookup(ctx context.Context, name string) ([]string, error) {
	k.mu.Lock()
	k.calls++
	k.mu.Unlock()
	name = strings.ToLower(name) // DNS names compare case-insensitively
	if k.block[name] {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if err, ok := k.errs[name]; ok {
		return nil, err
	}
	if r, ok := k.records[name]; ok {
		return r, nil
	}
	return nil, &net.DNSError{Err: "NXDOMAIN", Name: name, IsNotFound: true}
}

const testMessage = "From: Alice <alice@x.test>\r\n" +
	"To: bob@y.test\r\n" +
	"Subject: a folded\r\n subject line\r\n" +
	"Date: Mon, 1 Jun 2026 10:00:00 +0000\r\n" +
	"Message-ID: <1@x.test>\r\n" +
	"\r\n" +
	"Hello Bob,\r\n\r\nthis is the body.\r\n"

func sign(t testing.TB, msg, key, d, sel string, mod func(*dkim.SignOptions)) string {
	t.Helper()
	signer, _ := loadKey(t, key)
	o := &dkim.SignOptions{Domain: d, Selector: sel, Signer: signer,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
		HeaderKeys: []string{"From", "To", "Subject", "Date", "Message-ID"}}
	if mod != nil {
		mod(o)
	}
	var b bytes.Buffer
	if err := dkim.Sign(&b, strings.NewReader(msg), o); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

type field struct{ name, value string }

// split cuts a CRLF message into fields as go-milter delivers them with
// OptHeaderLeadingSpace (value keeps its leading space, folds use LF) and
// the body.
func split(t testing.TB, msg string) ([]field, []byte) {
	t.Helper()
	head, body, ok := strings.Cut(msg, "\r\n\r\n")
	if !ok {
		t.Fatal("no header/body separator")
	}
	var fs []field
	for _, line := range strings.Split(head, "\r\n") {
		if line[0] == ' ' || line[0] == '\t' {
			fs[len(fs)-1].value += "\n" + line
			continue
		}
		n, v, _ := strings.Cut(line, ":")
		fs = append(fs, field{n, v})
	}
	return fs, []byte(body)
}

func verify(t testing.TB, msg string, lk *keyLookup, maxSigs, chunk int) []DKIMResult {
	t.Helper()
	v := NewDKIMVerifier(context.Background(), lk.lookup, maxSigs)
	defer v.Abort()
	fs, body := split(t, msg)
	for _, f := range fs {
		v.AddHeader(f.name, f.value)
	}
	v.EndHeaders()
	for len(body) > 0 {
		n := min(chunk, len(body))
		if _, err := v.Write(body[:n]); err != nil {
			t.Fatal(err)
		}
		body = body[n:]
	}
	return v.Finish()
}

// settle waits until the goroutine count is back to base.
func settle(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("goroutines: %d > %d\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDKIMVerifier(t *testing.T) {
	_, rsaRec := loadKey(t, "rsa2048")
	_, edRec := loadKey(t, "ed25519")
	_, rsa1024Rec := loadKey(t, "rsa1024")
	lk := &keyLookup{
		records: map[string][]string{
			"sel._domainkey.x.test":     {rsaRec},
			"ed._domainkey.x.test":      {edRec},
			"small._domainkey.x.test":   {rsa1024Rec},
			"two._domainkey.x.test":     {rsaRec, rsaRec},
			"revoked._domainkey.x.test": {"v=DKIM1; k=rsa; p="},
		},
		errs: map[string]error{
			"servfail._domainkey.x.test": &net.DNSError{Err: "SERVFAIL", IsTemporary: true},
			"timeout._domainkey.x.test":  fmt.Errorf("wrapped: %w", &net.DNSError{Err: "timeout", IsTimeout: true}),
			"weird._domainkey.x.test":    errors.New("resolver exploded"),
		},
	}
	good := sign(t, testMessage, "rsa2048", "x.test", "sel", nil)
	type want struct{ result, domain, sel, algo string }
	tests := []struct {
		name    string
		msg     string
		maxSigs int
		want    []want
	}{
		{"no signature", testMessage, 0, nil},
		{"rsa2048 pass", good, 0, []want{{"pass", "x.test", "sel", "rsa-sha256"}}},
		{"ed25519 pass", sign(t, testMessage, "ed25519", "X.Test", "ed", nil), 0, []want{{"pass", "x.test", "ed", "ed25519-sha256"}}},
		{"rsa1024 pass", sign(t, testMessage, "rsa1024", "x.test", "small", nil), 0, []want{{"pass", "x.test", "small", "rsa-sha256"}}},
		{"simple canonicalization pass", sign(t, testMessage, "rsa2048", "x.test", "sel", func(o *dkim.SignOptions) {
			o.HeaderCanonicalization, o.BodyCanonicalization = dkim.CanonicalizationSimple, dkim.CanonicalizationSimple
		}), 0, []want{{"pass", "x.test", "sel", "rsa-sha256"}}},
		{"body tampered", strings.Replace(good, "this is the body", "this is the b0dy", 1), 0, []want{{"fail", "x.test", "sel", "rsa-sha256"}}},
		{"body line added", good + "added\r\n", 0, []want{{"fail", "x.test", "sel", "rsa-sha256"}}},
		{"header tampered", strings.Replace(good, "Subject: a folded", "Subject: a fooled", 1), 0, []want{{"fail", "x.test", "sel", "rsa-sha256"}}},
		{"wrong key", sign(t, testMessage, "rsa2048-alt", "x.test", "sel", nil), 0, []want{{"fail", "x.test", "sel", "rsa-sha256"}}},
		{"rsa-sha1", strings.Replace(good, "a=rsa-sha256", "a=rsa-sha1", 1), 0, []want{{"permerror", "x.test", "sel", "rsa-sha1"}}},
		{"key nxdomain", sign(t, testMessage, "rsa2048", "x.test", "nokey", nil), 0, []want{{"permerror", "x.test", "nokey", "rsa-sha256"}}},
		{"key revoked", sign(t, testMessage, "rsa2048", "x.test", "revoked", nil), 0, []want{{"permerror", "x.test", "revoked", "rsa-sha256"}}},
		{"two key records", sign(t, testMessage, "rsa2048", "x.test", "two", nil), 0, []want{{"permerror", "x.test", "two", "rsa-sha256"}}},
		{"key servfail", sign(t, testMessage, "rsa2048", "x.test", "servfail", nil), 0, []want{{"temperror", "x.test", "servfail", "rsa-sha256"}}},
		{"key timeout wrapped", sign(t, testMessage, "rsa2048", "x.test", "timeout", nil), 0, []want{{"temperror", "x.test", "timeout", "rsa-sha256"}}},
		{"key unknown error", sign(t, testMessage, "rsa2048", "x.test", "weird", nil), 0, []want{{"temperror", "x.test", "weird", "rsa-sha256"}}},
		{"l= added after signing fails", strings.Replace(good, "DKIM-Signature: ", "DKIM-Signature: l=10; ", 1), 0, []want{{"fail", "x.test", "sel", "rsa-sha256"}}},
		{"missing tag", strings.Replace(good, " bh=", " xh=", 1), 0, []want{{"permerror", "x.test", "sel", "rsa-sha256"}}},
		{"duplicate tag", strings.Replace(good, "DKIM-Signature: ", "DKIM-Signature: s=sel; ", 1), 0, []want{{"permerror", "x.test", "sel", "rsa-sha256"}}},
		{"garbage signature then good", "DKIM-Signature: garbage\r\n" + good, 0, []want{
			{"permerror", "", "", ""}, {"pass", "x.test", "sel", "rsa-sha256"}}},
		{"two signatures one good", sign(t, sign(t, testMessage, "rsa2048-alt", "y.test", "sel", nil), "ed25519", "x.test", "ed", nil), 0, []want{
			{"pass", "x.test", "ed", "ed25519-sha256"}, {"permerror", "y.test", "sel", "rsa-sha256"}}},
		{"good below bad", sign(t, good, "rsa2048-alt", "x.test", "sel", nil), 0, []want{
			{"fail", "x.test", "sel", "rsa-sha256"}, {"pass", "x.test", "sel", "rsa-sha256"}}},
		// Past the bound the bottom-most go first (PreferDomains ranks
		// nothing here): the top one is left unverified.
		{"more than maxSigs", sign(t, sign(t, good, "ed25519", "x.test", "ed", nil), "rsa2048", "x.test", "sel", nil), 2, []want{
			{"policy", "x.test", "sel", "rsa-sha256"}, {"pass", "x.test", "ed", "ed25519-sha256"}, {"pass", "x.test", "sel", "rsa-sha256"}}},
	}
	for _, tc := range tests {
		for _, chunk := range []int{1 << 16, 7} {
			t.Run(fmt.Sprintf("%s/chunk%d", tc.name, chunk), func(t *testing.T) {
				base := runtime.NumGoroutine()
				got := verify(t, tc.msg, lk, tc.maxSigs, chunk)
				if len(got) != len(tc.want) {
					t.Fatalf("got %d results %+v, want %d", len(got), got, len(tc.want))
				}
				for i, w := range tc.want {
					g := got[i]
					if g.Result != w.result || g.Domain != w.domain || g.Selector != w.sel || g.Algorithm != w.algo {
						t.Errorf("result %d: got %+v, want %+v", i, g, w)
					}
					if (g.Result == "pass") != (g.Err == nil) || (g.Result == "pass") != (g.Reason == "") {
						t.Errorf("result %d: %s with err %v reason %q", i, g.Result, g.Err, g.Reason)
					}
					if w.result == "pass" && len(g.BPrefix) != 8 {
						t.Errorf("result %d: b prefix %q", i, g.BPrefix)
					}
				}
				settle(t, base)
			})
		}
	}
}

func TestDKIMNoSignatureStartsNothing(t *testing.T) {
	base := runtime.NumGoroutine()
	lk := &keyLookup{}
	v := NewDKIMVerifier(context.Background(), lk.lookup, 0)
	fs, body := split(t, testMessage)
	for _, f := range fs {
		v.AddHeader(f.name, f.value)
	}
	v.EndHeaders()
	if runtime.NumGoroutine() != base || v.done != nil || v.Signatures() != 0 {
		t.Fatalf("goroutine started without a signature")
	}
	if n, err := v.Write(body); n != len(body) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if r := v.Finish(); len(r) != 0 || lk.calls != 0 {
		t.Fatalf("results %v, %d lookups", r, lk.calls)
	}
	v.Abort()
	v.Abort()
}

// bodyWriter streams size bytes of CRLF lines in 64 KB chunks, reusing
// one buffer, and reports the heap growth it saw.
func streamBody(t *testing.T, v *DKIMVerifier, size int) uint64 {
	t.Helper()
	line := strings.Repeat("x", 62) + "\r\n"
	chunk := []byte(strings.Repeat(line, (64<<10)/len(line)))
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var peak uint64
	for sent := 0; sent < size; sent += len(chunk) {
		if _, err := v.Write(chunk); err != nil {
			t.Fatal(err)
		}
		if sent%(8<<20) == 0 {
			runtime.ReadMemStats(&after)
			if after.HeapInuse > before.HeapInuse && after.HeapInuse-before.HeapInuse > peak {
				peak = after.HeapInuse - before.HeapInuse
			}
		}
	}
	return peak
}

func TestDKIMLargeBodyEarlyReturn(t *testing.T) {
	base := runtime.NumGoroutine()
	msg := sign(t, testMessage, "rsa2048", "x.test", "nokey", nil)
	lk := &keyLookup{}
	v := NewDKIMVerifier(context.Background(), lk.lookup, 0)
	fs, _ := split(t, msg)
	for _, f := range fs {
		v.AddHeader(f.name, f.value)
	}
	v.EndHeaders()
	done := make(chan uint64)
	go func() { done <- streamBody(t, v, 50<<20) }()
	select {
	case peak := <-done:
		if peak > 16<<20 {
			t.Errorf("heap grew by %d bytes while streaming", peak)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("deadlock: body writes blocked")
	}
	r := v.Finish()
	if len(r) != 1 || r[0].Result != DKIMPermError {
		t.Fatalf("got %+v", r)
	}
	settle(t, base)
}

func TestDKIMLargeBodyPass(t *testing.T) {
	base := runtime.NumGoroutine()
	_, rec := loadKey(t, "ed25519")
	const size = 8 << 20
	line := strings.Repeat("x", 62) + "\r\n"
	var body strings.Builder
	for body.Len() < size {
		body.WriteString(strings.Repeat(line, (64<<10)/len(line)))
	}
	msg := sign(t, testMessage+body.String(), "ed25519", "x.test", "ed", nil)
	lk := &keyLookup{records: map[string][]string{"ed._domainkey.x.test": {rec}}}
	if r := verify(t, msg, lk, 0, 64<<10); len(r) != 1 || r[0].Result != DKIMPass {
		t.Fatalf("got %+v", r)
	}
	settle(t, base)
}

func TestDKIMAbortMidBody(t *testing.T) {
	_, rec := loadKey(t, "rsa2048")
	msg := sign(t, sign(t, testMessage, "rsa2048", "x.test", "sel", nil), "rsa2048", "x.test", "sel", nil)
	for _, abortAt := range []string{"before headers end", "mid body", "while key lookup blocks", "after finish"} {
		t.Run(abortAt, func(t *testing.T) {
			base := runtime.NumGoroutine()
			lk := &keyLookup{records: map[string][]string{"sel._domainkey.x.test": {rec}}}
			if abortAt == "while key lookup blocks" {
				lk.block = map[string]bool{"sel._domainkey.x.test": true}
			}
			v := NewDKIMVerifier(context.Background(), lk.lookup, 0)
			fs, body := split(t, msg)
			for _, f := range fs {
				v.AddHeader(f.name, f.value)
			}
			if abortAt == "before headers end" {
				v.Abort()
			}
			v.EndHeaders()
			if abortAt == "while key lookup blocks" {
				go func() { time.Sleep(50 * time.Millisecond); v.Abort() }()
			}
			_, _ = v.Write(body[:10])
			if abortAt == "mid body" {
				v.Abort()
			}
			_, _ = v.Write(body[10:])
			r := v.Finish()
			if abortAt == "after finish" {
				if len(r) != 2 || r[0].Result != DKIMPass || r[1].Result != DKIMPass {
					t.Fatalf("got %+v", r)
				}
			} else if len(r) != 2 || r[0].Result != DKIMTempError {
				t.Fatalf("got %+v", r)
			}
			v.Abort()
			v.Abort()
			if again := v.Finish(); len(again) != 2 || again[0].Result != r[0].Result {
				t.Fatalf("second Finish: %+v", again)
			}
			settle(t, base)
		})
	}
}

func TestDKIMDeadline(t *testing.T) {
	base := runtime.NumGoroutine()
	msg := sign(t, testMessage, "rsa2048", "x.test", "slow", nil)
	lk := &keyLookup{block: map[string]bool{"slow._domainkey.x.test": true}}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	v := NewDKIMVerifier(ctx, lk.lookup, 0)
	fs, body := split(t, msg)
	for _, f := range fs {
		v.AddHeader(f.name, f.value)
	}
	v.EndHeaders()
	start := time.Now()
	_, _ = v.Write(body)
	r := v.Finish()
	if len(r) != 1 || r[0].Result != DKIMTempError {
		t.Fatalf("got %+v", r)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v", d)
	}
	settle(t, base)
}

func TestDKIMHostileHeaders(t *testing.T) {
	_, rec := loadKey(t, "rsa2048")
	lk := &keyLookup{records: map[string][]string{"sel._domainkey.x.test": {rec}}}
	good := sign(t, testMessage, "rsa2048", "x.test", "sel", nil)
	fs, body := split(t, good)
	run := func(extra []field, maxSigs int) []DKIMResult {
		v := NewDKIMVerifier(context.Background(), lk.lookup, maxSigs)
		defer v.Abort()
		for _, f := range append(extra, fs...) {
			v.AddHeader(f.name, f.value)
		}
		_, _ = v.Write(body)
		return v.Finish()
	}
	// A value with a bare line break and an empty line must not inject a
	// field or end the header inside the verifier's stream.
	r := run([]field{{"X-Evil", " a\nDKIM-Signature: v=1\n\nbody"}, {"Bad:Name", " x"}, {"", " y"}, {"Sp ace", " z"}}, 0)
	if len(r) != 1 || r[0].Result != DKIMPass {
		t.Fatalf("got %+v", r)
	}
	// A header over the size bound is not verified at all.
	big := []field{{"X-Big", " " + strings.Repeat("a", MaxDKIMHeaderBytes)}}
	if r := run(big, 0); len(r) != 0 {
		t.Fatalf("oversized header: %+v", r)
	}
	huge := []field{{"DKIM-Signature", " v=1; d=x.test; s=sel; b=" + strings.Repeat("A", maxSignatureBytes)}}
	if r := run(huge, 0); len(r) != 2 || r[0].Result != DKIMPermError || r[1].Result != DKIMPass {
		t.Fatalf("huge signature: %+v", r)
	}
	many := make([]field, 50)
	for i := range many {
		many[i] = field{"DKIM-Signature", " v=1; a=rsa-sha256; d=x.test; s=none; h=from; bh=AA==; b=AA=="}
	}
	// Past the bound the bottom-most are verified: the real one is last.
	r = run(many, 3)
	if len(r) != 51 || r[0].Result != DKIMPolicy || r[50].Result != DKIMPass || lk.calls > 10 {
		t.Fatalf("many signatures: %d results, %d lookups", len(r), lk.calls)
	}
}

func TestCRLFValue(t *testing.T) {
	tests := []struct{ in, want string }{
		{" plain", " plain"},
		{" a\n\tb", " a\r\n\tb"},
		{" a\r\n b", " a\r\n b"},
		{" a\nb", " a\r\n b"},
		{" a\n\nb", " a\r\n \r\n b"},
		{" a\n", " a\r\n "},
	}
	for _, tc := range tests {
		if got := crlfValue(tc.in); got != tc.want {
			t.Errorf("crlfValue(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func BenchmarkDKIMVerify100KB(b *testing.B) {
	_, rec := loadKey(b, "rsa2048")
	line := strings.Repeat("y", 70) + "\r\n"
	msg := sign(b, testMessage+strings.Repeat(line, (100<<10)/len(line)), "rsa2048", "x.test", "sel", nil)
	lk := &keyLookup{records: map[string][]string{"sel._domainkey.x.test": {rec}}}
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

// TestDKIMBoundPrefersAuthorSignatures: with more signatures than the
// bound, the ones that can align with the From are verified first, so a
// forwarder's signatures on top do not push the author's out.
func TestDKIMBoundPrefersAuthorSignatures(t *testing.T) {
	_, rec := loadKey(t, "rsa2048")
	lk := &keyLookup{records: map[string][]string{"sel._domainkey.mail.x.test": {rec}}}
	msg := sign(t, testMessage, "rsa2048", "mail.x.test", "sel", nil)
	for i := 0; i < 3; i++ {
		d := fmt.Sprintf("fwd%d.example", i)
		lk.records["sel._domainkey."+d] = []string{rec}
		msg = sign(t, msg, "rsa2048", d, "sel", nil)
	}
	run := func(prefer []string) []DKIMResult {
		v := NewDKIMVerifier(context.Background(), lk.lookup, 2)
		defer v.Abort()
		fs, body := split(t, msg)
		for _, f := range fs {
			v.AddHeader(f.name, f.value)
		}
		v.PreferDomains(prefer)
		v.EndHeaders()
		_, _ = v.Write(body)
		return v.Finish()
	}
	got := func(rs []DKIMResult) string {
		var b []string
		for _, r := range rs {
			b = append(b, r.Domain+"="+r.Result)
		}
		return strings.Join(b, " ")
	}
	// Top to bottom: fwd2, fwd1, fwd0, then the author's. Unranked, the
	// bottom-most (the first signers) go first.
	if g, want := got(run(nil)), "fwd2.example=policy fwd1.example=policy fwd0.example=pass mail.x.test=pass"; g != want {
		t.Errorf("without Author Domains: %s, want %s", g, want)
	}
	if g, want := got(run([]string{"fwd1.example"})), "fwd2.example=policy fwd1.example=pass fwd0.example=policy mail.x.test=pass"; g != want {
		t.Errorf("with fwd1.example: %s, want %s", g, want)
	}
	if g, want := got(run([]string{"x.test", "fwd2.example"})), "fwd2.example=pass fwd1.example=policy fwd0.example=policy mail.x.test=pass"; g != want {
		t.Errorf("with x.test and fwd2.example: %s, want %s", g, want)
	}
	// A TLD in d= is no relation to anyone.
	v := &DKIMVerifier{prefer: []string{"bank.com"}}
	if r := v.rank(&sigTags{res: DKIMResult{Domain: "com"}}); r != 2 {
		t.Errorf("d=com ranked %d for bank.com", r)
	}
}

func TestSetBPrefixes(t *testing.T) {
	tests := []struct {
		bs   []string
		want []string
	}{
		{[]string{"abcdefghXYZ", "abcdefgiXYZ"}, []string{"abcdefgh", "abcdefgi"}},
		{[]string{"abcdefgh1234567", "abcdefgh1239999"}, []string{"abcdefgh1234", "abcdefgh1239"}},
		{[]string{"short"}, []string{"short"}},
		// The same signature twice (a replayed field) cannot be told apart.
		{[]string{"abcdefghij", "abcdefghij"}, []string{"abcdefgh", "abcdefgh"}},
	}
	for _, tt := range tests {
		sigs := make([]sigTags, len(tt.bs))
		for i, b := range tt.bs {
			sigs[i].b = b
		}
		out := make([]DKIMResult, len(sigs))
		setBPrefixes(out, sigs)
		for i := range out {
			if out[i].BPrefix != tt.want[i] {
				t.Errorf("%q: %q, want %q", tt.bs, out[i].BPrefix, tt.want[i])
			}
		}
	}
}
