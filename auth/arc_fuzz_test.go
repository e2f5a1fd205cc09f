package auth

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/testcase"
)

// FuzzARCChain feeds hostile ARC fields, mixed with a real sealed chain,
// to the verifier: whatever the fields, the result is one of the three
// RFC 8617 values, a pass has its latest set's details, and nothing hangs
// or panics. Lines of the input are fields ("Name: value"); a line
// starting with "=" is replaced by the fields of a genuine two-set chain.
func FuzzARCChain(f *testing.F) {
	for _, s := range []string{
		"=",
		"=\nARC-Seal: i=1; a=rsa-sha256; cv=none; d=x.test; s=s; b=AAAA",
		"ARC-Seal: i=1; cv=none\nARC-Message-Signature: i=1\nARC-Authentication-Results: i=1; x",
		"ARC-Authentication-Results: i=0; x\nARC-Seal: i=50; cv=pass",
		"arc-seal: i = 2 ; cv = fail ; b = ;\n=",
		"ARC-Message-Signature: i=1; a=ed25519-sha256; h=from; bh=; b=; d=.; s=-",
	} {
		f.Add(s)
	}
	lk := arcLookup(f)
	chain, body := arcMessage(f, []testcase.ARCSealing{listSeal, upstreamSeal}, "", nil)
	f.Fuzz(func(t *testing.T, s string) {
		if len(s) > 1<<16 {
			return
		}
		var fs []testcase.Field
		for _, line := range strings.Split(s, "\n") {
			if strings.HasPrefix(line, "=") {
				fs = append(fs, chain...)
				continue
			}
			name, value, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			fs = append(fs, testcase.Field{Name: name, Value: value})
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		v := NewDKIMVerifier(ctx, lk.lookup, 0)
		defer v.Abort()
		for _, fl := range fs {
			v.AddHeader(fl.Name, fl.Value)
		}
		v.EndHeaders()
		_, _ = v.Write([]byte(body))
		v.Finish()
		r := v.ARC()
		switch r.Result {
		case ARCNone, ARCFail:
		case ARCPass:
			if r.Instance < 1 || r.Instance > MaxARCSets || r.SealDomain == "" {
				t.Fatalf("pass without its set: %+v", r)
			}
		default:
			t.Fatalf("result %q", r.Result)
		}
	})
}
