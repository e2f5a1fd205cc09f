package auth

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/testcase"
)

// arcMessage builds a message as a list then forwarded through sealers:
// each sealing adds one ARC set with the independent signer of
// internal/testcase; mods change the fields (and body) after sealing.
func arcMessage(t testing.TB, seals []testcase.ARCSealing, body string, mod func([]testcase.Field, string) ([]testcase.Field, string)) ([]testcase.Field, string) {
	t.Helper()
	fs, b, err := testcase.SplitMessage([]byte(testMessage))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		b = []byte(body)
	}
	now := time.Now()
	for _, s := range seals {
		key := "rsa2048"
		if s.Algorithm == "ed25519-sha256" {
			key = "ed25519"
		}
		k, err := testcase.LoadKey("../testdata/keys", key)
		if err != nil {
			t.Fatal(err)
		}
		if fs, err = testcase.SealARC(fs, b, s, k, now); err != nil {
			t.Fatal(err)
		}
	}
	out := string(b)
	if mod != nil {
		fs, out = mod(fs, out)
	}
	return fs, out
}

func arcLookup(t testing.TB) *keyLookup {
	_, rsaRec := loadKey(t, "rsa2048")
	_, edRec := loadKey(t, "ed25519")
	return &keyLookup{records: map[string][]string{
		"arc._domainkey.list.example":     {rsaRec},
		"arc._domainkey.upstream.example": {rsaRec},
		"ed._domainkey.upstream.example":  {edRec},
	}, errs: map[string]error{
		"temp._domainkey.upstream.example": &net.DNSError{Err: "SERVFAIL", IsTemporary: true},
	}}
}

func checkARC(t *testing.T, fs []testcase.Field, body string, lk *keyLookup, chunk int) ARCResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	v := NewDKIMVerifier(ctx, lk.lookup, 0)
	defer v.Abort()
	for _, f := range fs {
		// As go-milter delivers them: folds as LF.
		v.AddHeader(f.Name, strings.ReplaceAll(f.Value, "\r\n", "\n"))
	}
	v.EndHeaders()
	for b := []byte(body); len(b) > 0; {
		n := min(chunk, len(b))
		_, _ = v.Write(b[:n])
		b = b[n:]
	}
	v.Finish()
	return v.ARC()
}

var (
	listSeal     = testcase.ARCSealing{Domain: "list.example", Selector: "arc", AuthServID: "lists.list.example", Results: "dkim=pass header.d=x.test; dmarc=pass header.from=x.test"}
	upstreamSeal = testcase.ARCSealing{Domain: "upstream.example", Selector: "arc", AuthServID: "mx.upstream.example", Results: "spf=fail smtp.mailfrom=list.example;\r\n\tdkim=fail header.d=x.test; arc=pass (i=1); dmarc=pass (p=reject) header.from=x.test"}
)

func TestARCChain(t *testing.T) {
	base := runtime.NumGoroutine()
	setField := func(name, suffix string, inst string) func([]testcase.Field, string) ([]testcase.Field, string) {
		return func(fs []testcase.Field, b string) ([]testcase.Field, string) {
			for i := range fs {
				if strings.EqualFold(fs[i].Name, name) && strings.Contains(fs[i].Value, "i="+inst+";") {
					fs[i].Value += suffix
					break
				}
			}
			return fs, b
		}
	}
	drop := func(name, inst string) func([]testcase.Field, string) ([]testcase.Field, string) {
		return func(fs []testcase.Field, b string) ([]testcase.Field, string) {
			for i := range fs {
				if strings.EqualFold(fs[i].Name, name) && strings.Contains(fs[i].Value, "i="+inst+";") {
					return append(fs[:i:i], fs[i+1:]...), b
				}
			}
			t.Fatalf("no %s i=%s", name, inst)
			return nil, ""
		}
	}
	tests := []struct {
		name   string
		seals  []testcase.ARCSealing
		mod    func([]testcase.Field, string) ([]testcase.Field, string)
		want   string
		reason string
	}{
		{"no ARC fields", nil, nil, ARCNone, ""},
		{"one set", []testcase.ARCSealing{listSeal}, nil, ARCPass, ""},
		{"two sets", []testcase.ARCSealing{listSeal, upstreamSeal}, nil, ARCPass, ""},
		{"ed25519 seal", []testcase.ARCSealing{listSeal, func() testcase.ARCSealing {
			s := upstreamSeal
			s.Selector, s.Algorithm = "ed", "ed25519-sha256"
			return s
		}()}, nil, ARCPass, ""},
		// The older AMS need not verify any more (§5.2 step 5 checks only
		// the latest); the seals still must.
		{"body changed between the hops", []testcase.ARCSealing{listSeal}, func(fs []testcase.Field, b string) ([]testcase.Field, string) {
			b = "footer added by a list\r\n" + b
			k, _ := testcase.LoadKey("../testdata/keys", "rsa2048")
			fs, err := testcase.SealARC(fs, []byte(b), upstreamSeal, k, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			return fs, b
		}, ARCPass, ""},
		{"body changed after the last seal", []testcase.ARCSealing{listSeal, upstreamSeal}, func(fs []testcase.Field, b string) ([]testcase.Field, string) {
			return fs, "spam\r\n" + b
		}, ARCFail, "ARC-Message-Signature 2"},
		{"signed header changed", []testcase.ARCSealing{listSeal, upstreamSeal}, func(fs []testcase.Field, b string) ([]testcase.Field, string) {
			for i := range fs {
				if fs[i].Name == "Subject" {
					fs[i].Value = " changed"
				}
			}
			return fs, b
		}, ARCFail, "ARC-Message-Signature 2"},
		{"sealed results changed", []testcase.ARCSealing{listSeal, upstreamSeal}, setField("ARC-Authentication-Results", " dmarc=pass", "1"), ARCFail, "ARC-Seal 2"},
		{"latest results changed", []testcase.ARCSealing{listSeal, upstreamSeal}, setField("ARC-Authentication-Results", " dmarc=pass", "2"), ARCFail, "ARC-Seal 2"},
		{"older seal changed", []testcase.ARCSealing{listSeal, upstreamSeal}, func(fs []testcase.Field, b string) ([]testcase.Field, string) {
			for i := range fs {
				if fs[i].Name == "ARC-Seal" && strings.HasPrefix(fs[i].Value, " i=1;") {
					fs[i].Value = " i=1; x=1;" + strings.TrimPrefix(fs[i].Value, " i=1;")
				}
			}
			return fs, b
		}, ARCFail, "ARC-Seal 2"},
		{"set missing its AAR", []testcase.ARCSealing{listSeal, upstreamSeal}, drop("ARC-Authentication-Results", "1"), ARCFail, "set 1 incomplete"},
		{"set missing entirely", []testcase.ARCSealing{listSeal, upstreamSeal}, func(fs []testcase.Field, b string) ([]testcase.Field, string) {
			fs, _ = drop("ARC-Seal", "1")(fs, b)
			fs, _ = drop("ARC-Message-Signature", "1")(fs, b)
			fs, _ = drop("ARC-Authentication-Results", "1")(fs, b)
			return fs, b
		}, ARCFail, "set 1 incomplete"},
		{"duplicate set", []testcase.ARCSealing{listSeal, upstreamSeal}, func(fs []testcase.Field, b string) ([]testcase.Field, string) {
			return append([]testcase.Field{fs[0]}, fs...), b
		}, ARCFail, "two ARC fields"},
		{"cv=pass on the first set", []testcase.ARCSealing{func() testcase.ARCSealing { s := listSeal; s.CV = "pass"; return s }()}, nil, ARCFail, "cv=pass"},
		{"cv=none on a later set", []testcase.ARCSealing{listSeal, func() testcase.ARCSealing { s := upstreamSeal; s.CV = "none"; return s }()}, nil, ARCFail, "cv=none"},
		{"last sealer saw a failed chain", []testcase.ARCSealing{listSeal, func() testcase.ARCSealing { s := upstreamSeal; s.CV = "fail"; return s }()}, nil, ARCFail, "chain failed"},
		{"instance out of range", []testcase.ARCSealing{listSeal}, func(fs []testcase.Field, b string) ([]testcase.Field, string) {
			return append([]testcase.Field{{Name: "ARC-Seal", Value: " i=51; a=rsa-sha256; cv=pass; d=x.test; s=s; b=AAAA"}}, fs...), b
		}, ARCFail, "malformed i="},
		{"seal key unknown", []testcase.ARCSealing{listSeal, func() testcase.ARCSealing { s := upstreamSeal; s.Selector = "none"; return s }()}, nil, ARCFail, "ARC-Message-Signature 2"},
		{"seal key temporarily unavailable", []testcase.ARCSealing{listSeal, func() testcase.ARCSealing { s := upstreamSeal; s.Selector = "temp"; return s }()}, nil, ARCFail, "key unavailable"},
		{"seal made with another key", []testcase.ARCSealing{func() testcase.ARCSealing { s := listSeal; s.Selector = "arc"; return s }()}, func(fs []testcase.Field, b string) ([]testcase.Field, string) {
			// Seal set 1 anew with another RSA key under the same selector.
			fs = fs[3:]
			k, _ := testcase.LoadKey("../testdata/keys", "rsa2048-alt")
			fs, err := testcase.SealARC(fs, []byte(b), listSeal, k, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			return fs, b
		}, ARCFail, "did not verify"},
		{"h= in a seal", []testcase.ARCSealing{listSeal}, setField("ARC-Seal", "; h=from", "1"), ARCFail, "h= is not allowed"},
		{"garbage ARC field", nil, func(fs []testcase.Field, b string) ([]testcase.Field, string) {
			return append([]testcase.Field{{Name: "ARC-Seal", Value: " \x00junk;;=;"}}, fs...), b
		}, ARCFail, "malformed i="},
	}
	lk := arcLookup(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs, body := arcMessage(t, tt.seals, "", tt.mod)
			for _, chunk := range []int{1 << 20, 7} {
				r := checkARC(t, fs, body, lk, chunk)
				if r.Result != tt.want || !strings.Contains(r.Reason, tt.reason) {
					t.Fatalf("chunk %d: got %s (%s), want %s (%s)", chunk, r.Result, r.Reason, tt.want, tt.reason)
				}
				if r.Result == ARCPass && (r.Instance != strings.Count(fmtFields(fs), "\nARC-Seal:") || r.SealDomain == "" || r.AuthServID == "") {
					t.Fatalf("pass without the latest set's details: %+v", r)
				}
			}
		})
	}
	settle(t, base)
}

// TestARCReportsDMARCPass reads the sealed verdict of the latest set for
// one Author Domain only.
func TestARCReportsDMARCPass(t *testing.T) {
	tests := []struct {
		aar, dom string
		want     bool
	}{
		{" mx.up.example; dmarc=pass header.from=x.test", "x.test", true},
		{" mx.up.example; spf=pass; dmarc=pass (p=reject; sp=none) header.from=X.Test.", "x.test", true},
		{" mx.up.example; dmarc=pass header.from=x.test", "y.test", false},
		{" mx.up.example; dmarc=fail header.from=x.test", "x.test", false},
		{" mx.up.example; dmarc=pass", "x.test", false},
		{" mx.up.example; dmarc=pass (header.from=x.test) header.from=y.test", "x.test", false},
		{" mx.up.example; dkim=pass header.from=x.test", "x.test", false},
		// A sealer may have copied a forged field into its AAR.
		{" mx.up.example; dmarc=fail header.from=x.test; dmarc=pass header.from=x.test", "x.test", false},
		{" mx.up.example; dmarc=pass header.from=x.test; dmarc=none header.from=x.test", "x.test", false},
		{" mx.up.example; dmarc=pass header.from=x.test; dmarc=pass", "x.test", false},
		{` mx.up.example; dmarc=pass "header.from" = x.test`, "x.test", false},
		{" mx.up.example; dmarc=pass header.from=x.test header.from=y.test", "x.test", false},
		{" mx.up.example; dmarc=pass header.from x.test", "x.test", false},
		{` mx.up.example; dmarc=pass header.from="x.test"`, "x.test", true},
		{" mx.up.example; dmarc=fail header.from=y.test; dmarc=pass policy.dmarc=reject header.from=x.test", "x.test", true},
	}
	for _, tt := range tests {
		r := ARCResult{Result: ARCPass, AAR: tt.aar}
		if got := r.ReportsDMARCPass(tt.dom); got != tt.want {
			t.Errorf("%q for %s: %v, want %v", tt.aar, tt.dom, got, tt.want)
		}
	}
	if (ARCResult{Result: ARCFail, AAR: tests[0].aar}).ReportsDMARCPass("x.test") {
		t.Error("a failed chain vouches for nothing")
	}
}

// TestARCSharedSealKeyLookedUpOnce: seals by one key cost one lookup.
func TestARCSharedSealKeyLookedUpOnce(t *testing.T) {
	s := listSeal
	fs, body := arcMessage(t, []testcase.ARCSealing{s, s, s, s}, "", nil)
	lk := arcLookup(t)
	if r := checkARC(t, fs, body, lk, 1<<20); r.Result != ARCPass || r.Instance != 4 {
		t.Fatalf("got %+v", r)
	}
	if lk.calls != 1 {
		t.Fatalf("%d key lookups for one key", lk.calls)
	}
}

// TestARCAbort: an aborted message leaves nothing running and no pass.
func TestARCAbort(t *testing.T) {
	base := runtime.NumGoroutine()
	fs, body := arcMessage(t, []testcase.ARCSealing{listSeal, upstreamSeal}, "", nil)
	lk := arcLookup(t)
	lk.block = map[string]bool{"arc._domainkey.upstream.example": true, "arc._domainkey.list.example": true}
	v := NewDKIMVerifier(context.Background(), lk.lookup, 0)
	for _, f := range fs {
		v.AddHeader(f.Name, strings.ReplaceAll(f.Value, "\r\n", "\n"))
	}
	v.EndHeaders()
	_, _ = v.Write([]byte(body))
	v.Abort()
	v.Finish()
	if r := v.ARC(); r.Result != ARCFail {
		t.Fatalf("aborted: %+v", r)
	}
	settle(t, base)
}

func fmtFields(fs []testcase.Field) string {
	var b strings.Builder
	for _, f := range fs {
		b.WriteString("\n" + f.Name + ":" + f.Value)
	}
	return b.String()
}

// TestARCKeyLookupsBounded: a long chain by distinct sealers verifies,
// each key looked up once; text shaped like such a chain, with no valid
// seal, costs at most maxARCPrefetch lookups.
func TestARCKeyLookupsBounded(t *testing.T) {
	lk := arcLookup(t)
	var seals []testcase.ARCSealing
	for i := 0; i < 6; i++ {
		d := fmt.Sprintf("hop%d.example", i)
		lk.records["arc._domainkey."+d] = lk.records["arc._domainkey.list.example"]
		seals = append(seals, testcase.ARCSealing{Domain: d, Selector: "arc", AuthServID: "mx." + d, Results: "arc=pass"})
	}
	fs, body := arcMessage(t, seals, "", nil)
	if r := checkARC(t, fs, body, lk, 1<<20); r.Result != ARCPass || r.Instance != 6 {
		t.Fatalf("six sealers: %+v", r)
	}
	if lk.calls != 6 {
		t.Errorf("%d lookups for six keys", lk.calls)
	}

	// The same chain with every signature broken, as a forger would
	// write it without the keys.
	for i := range fs {
		if strings.HasPrefix(fs[i].Name, "ARC-") && fs[i].Name != "ARC-Authentication-Results" {
			fs[i].Value = strings.Replace(fs[i].Value, "b=", "b=AAAA", 1)
		}
	}
	lk.mu.Lock()
	lk.calls = 0
	lk.mu.Unlock()
	if r := checkARC(t, fs, body, lk, 1<<20); r.Result != ARCFail {
		t.Fatalf("forged chain: %+v", r)
	}
	// Prefetches the failure made moot may still be on their way.
	time.Sleep(50 * time.Millisecond)
	lk.mu.Lock()
	calls := lk.calls
	lk.mu.Unlock()
	if calls > maxARCPrefetch {
		t.Errorf("%d lookups for a chain that verifies nothing, want at most %d", calls, maxARCPrefetch)
	}
}

// TestSigFieldDeletesBWithWhitespace: RFC 6376 §3.7 deletes the b= value
// with all surrounding whitespace, also when b= is not the last tag.
func TestSigFieldDeletesBWithWhitespace(t *testing.T) {
	f := &arcField{value: " i=1; a=rsa-sha256; b= AAAA \r\n\t; cv=none; d=x.test; s=s"}
	s, _, err := newSealSig(f, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	if want := "ARC-Seal: i=1; a=rsa-sha256; b=; cv=none; d=x.test; s=s"; s.sigField != want {
		t.Fatalf("%q, want %q", s.sigField, want)
	}
}
