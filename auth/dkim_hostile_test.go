package auth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/testcase"
)

// hostileRun feeds extra fields on top of msg's and returns the results
// and how many key lookups were made.
func hostileRun(t *testing.T, msg string, extra []field, maxSigs int) ([]DKIMResult, int) {
	t.Helper()
	base := runtime.NumGoroutine()
	lk := lengthLookup(t)
	v := NewDKIMVerifier(context.Background(), lk.lookup, maxSigs)
	fs, body := split(t, msg)
	for _, f := range append(extra, fs...) {
		v.AddHeader(f.name, f.value)
	}
	v.EndHeaders()
	_, _ = v.Write(body)
	r := v.Finish()
	v.Abort()
	settle(t, base)
	return r, lk.calls
}

func sigFields(t *testing.T, msg string) []field {
	fs, _ := split(t, msg)
	var out []field
	for _, f := range fs {
		if strings.EqualFold(f.name, "DKIM-Signature") {
			out = append(out, f)
		}
	}
	return out
}

// TestDKIMManySignatures: a message carrying 200 copies of valid
// signatures, with and without l=, gets only the bound verified; the rest
// are "policy", and the key lookups stay within the bound.
func TestDKIMManySignatures(t *testing.T) {
	for _, withL := range []bool{false, true} {
		t.Run(fmt.Sprintf("l=%v", withL), func(t *testing.T) {
			msg := buildSigned(t, lengthBody, testcase.Signing{Domain: "x.test", Selector: "sel", Key: "rsa2048", BodyLength: withL})
			sig := sigFields(t, msg)[0]
			extra := make([]field, 199)
			for i := range extra {
				extra[i] = sig
			}
			r, calls := hostileRun(t, msg, extra, 4)
			if len(r) != 200 {
				t.Fatalf("%d results", len(r))
			}
			for i, res := range r {
				// The bottom-most four are verified (PreferDomains is not
				// given here).
				want := DKIMPass
				if i < len(r)-4 {
					want = DKIMPolicy
				}
				if res.Result != want || (want == DKIMPolicy && !errors.Is(res.Err, ErrDKIMLimit)) {
					t.Fatalf("signature %d: %s (%v), want %s", i, res.Result, res.Err, want)
				}
			}
			// The library looks up one key per verified signature; with
			// l= our own verification looks it up too.
			if max := 4 * (1 + btoi(withL)); calls > max {
				t.Errorf("%d key lookups, want at most %d", calls, max)
			}
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestDKIMHugeSignedHeaderList: a correctly signed signature whose h=
// names 1000 fields over a header of 2000 fields is refused before any
// key lookup or hashing (neither our code nor go-msgauth's quadratic
// header selection runs), and a good signature beside it still passes.
func TestDKIMHugeSignedHeaderList(t *testing.T) {
	hdrs := []testcase.HeaderPair{{Name: "From", Value: "alice@x.test"}}
	for i := 0; i < 2000; i++ {
		hdrs = append(hdrs, testcase.HeaderPair{Name: "X-Pad", Value: "p"})
	}
	names := []string{"from"}
	for i := 0; i < 1000; i++ {
		names = append(names, "x-pad")
	}
	for _, withL := range []bool{false, true} {
		t.Run(fmt.Sprintf("l=%v", withL), func(t *testing.T) {
			c := &testcase.Case{ID: "huge-h", Message: testcase.Message{Headers: hdrs, Body: "body\n"},
				DKIM: []testcase.Signing{
					{Domain: "r.test", Selector: "sel", Key: "rsa2048"},
					{Domain: "x.test", Selector: "sel", Key: "rsa2048", Headers: names, BodyLength: withL},
				}}
			msg, err := c.Build("../testdata/keys", time.Now())
			if err != nil {
				t.Fatal(err)
			}
			r, calls := hostileRun(t, string(msg), nil, 0)
			if len(r) != 2 || r[0].Result != DKIMPermError || !strings.Contains(r[0].Reason, "h= names 1001 fields") || r[0].Domain != "x.test" {
				t.Fatalf("huge h=: %+v", r)
			}
			if r[1].Result != DKIMPass || calls != 1 {
				t.Fatalf("good signature: %+v, %d lookups", r[1], calls)
			}
		})
	}
}

// TestDKIMHugeSignatureValue: a DKIM-Signature of 100 KB is refused
// before any lookup; one of 1 MB pushes the header past its bound, and
// nothing is verified at all ("policy").
func TestDKIMHugeSignatureValue(t *testing.T) {
	msg := buildSigned(t, lengthBody, testcase.Signing{Domain: "x.test", Selector: "sel", Key: "rsa2048"})
	big := func(n int) []field {
		return []field{{"DKIM-Signature", " v=1; a=rsa-sha256; d=x.test; s=sel; h=from; bh=AAAA; b=AAAA; z=" + strings.Repeat("A", n)}}
	}
	r, calls := hostileRun(t, msg, big(100<<10), 0)
	if len(r) != 2 || r[0].Result != DKIMPermError || !strings.Contains(r[0].Reason, "too large") || r[1].Result != DKIMPass || calls != 1 {
		t.Fatalf("100 KB: %+v, %d lookups", r, calls)
	}
	// The 1 MB field comes below the good signature here, so the good one
	// is recorded before the bound is hit.
	fs, body := split(t, msg)
	var b strings.Builder
	for _, f := range append(fs, big(1<<20)...) {
		b.WriteString(f.name + ":" + strings.ReplaceAll(f.value, "\n", "\r\n") + "\r\n")
	}
	r, calls = hostileRun(t, b.String()+"\r\n"+string(body), nil, 0)
	if len(r) != 1 || r[0].Result != DKIMPolicy || !errors.Is(r[0].Err, ErrDKIMLimit) || calls != 0 {
		t.Fatalf("1 MB: %+v, %d lookups", r, calls)
	}
}

// TestDKIMHostileTags: broken signatures and key records through both
// paths (go-msgauth without l=, our own with l=) reach the same verdicts,
// and DNS trouble is never a fail.
func TestDKIMHostileTags(t *testing.T) {
	for _, withL := range []bool{false, true} {
		signed := func(sel string) string {
			return buildSigned(t, lengthBody, testcase.Signing{Domain: "x.test", Selector: sel, Key: "rsa2048", BodyLength: withL})
		}
		msg := signed("sel")
		edit := func(old, new string) string {
			if !strings.Contains(msg, old) {
				t.Fatalf("%q not in message", old)
			}
			return strings.Replace(msg, old, new, 1)
		}
		tests := []struct{ name, msg, result string }{
			{"control", msg, DKIMPass},
			{"duplicate tag", edit("DKIM-Signature: ", "DKIM-Signature: d=x.test; "), DKIMPermError},
			{"duplicate b=", edit("DKIM-Signature: ", "DKIM-Signature: b=AAAA; "), DKIMPermError},
			{"missing bh=", edit("\tbh=", "\txh="), DKIMPermError},
			{"missing d=", edit(" d=x.test;", " e=x.test;"), DKIMPermError},
			{"missing v=", edit(" v=1;", " w=1;"), DKIMPermError},
			{"v=2", edit(" v=1;", " v=2;"), DKIMPermError},
			{"tag without =", edit("DKIM-Signature: ", "DKIM-Signature: junk; "), DKIMPermError},
			{"bad tag name", edit("DKIM-Signature: ", "DKIM-Signature: 9x=1; "), DKIMPermError},
			{"bad b= base64", edit("\tb=", "\tb=%%%"), DKIMPermError},
			{"bad bh= base64", edit("\tbh=", "\tbh=%%%"), DKIMPermError},
			{"truncated b=", msg[:strings.LastIndex(msg, "\r\n\r\n")-10] + msg[strings.LastIndex(msg, "\r\n\r\n"):], DKIMFail},
			{"key record garbage", signed("junk"), DKIMPermError},
			{"key revoked", signed("rev"), DKIMPermError},
			{"key type mismatch", signed("kind"), DKIMPermError},
			{"key SERVFAIL", signed("fail"), DKIMTempError},
			{"key timeout", signed("slow"), DKIMTempError},
			{"x= expired", edit("DKIM-Signature: ", "DKIM-Signature: x=1780000001; "), DKIMPermError},
			{"empty d=", edit(" d=x.test;", " d=;"), DKIMPermError},
			{"NUL in value", edit(" s=sel;", " s=s\x00el;"), DKIMPermError},
		}
		for _, tc := range tests {
			t.Run(fmt.Sprintf("l=%v/%s", withL, tc.name), func(t *testing.T) {
				r, _ := hostileRun(t, tc.msg, nil, 0)
				if len(r) != 1 || r[0].Result != tc.result {
					t.Fatalf("got %+v, want %s", r, tc.result)
				}
			})
		}
	}
}

// TestDKIMKeyDNSErrors: every kind of DNS failure on the key of an l=
// signature is temperror, NXDOMAIN and NODATA are permerror (RFC 6376
// §6.1.2).
func TestDKIMKeyDNSErrors(t *testing.T) {
	msg := buildSigned(t, lengthBody, testcase.Signing{Domain: "x.test", Selector: "sel", Key: "rsa2048", BodyLength: true})
	tests := []struct {
		err     error
		records []string
		want    string
	}{
		{&net.DNSError{Err: "SERVFAIL", IsTemporary: true}, nil, DKIMTempError},
		{&net.DNSError{Err: "timeout", IsTimeout: true}, nil, DKIMTempError},
		{fmt.Errorf("wrapped: %w", &net.DNSError{Err: "refused", IsTemporary: true}), nil, DKIMTempError},
		{errors.New("resolver exploded"), nil, DKIMTempError},
		{context.DeadlineExceeded, nil, DKIMTempError},
		{&net.DNSError{Err: "NXDOMAIN", IsNotFound: true}, nil, DKIMPermError},
		{nil, []string{}, DKIMPermError},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.err), func(t *testing.T) {
			lookup := func(ctx context.Context, name string) ([]string, error) { return tc.records, tc.err }
			v := NewDKIMVerifier(context.Background(), lookup, 0)
			fs, body := split(t, msg)
			for _, f := range fs {
				v.AddHeader(f.name, f.value)
			}
			_, _ = v.Write(body)
			if r := v.Finish(); len(r) != 1 || r[0].Result != tc.want {
				t.Fatalf("got %+v, want %s", r, tc.want)
			}
		})
	}
}
