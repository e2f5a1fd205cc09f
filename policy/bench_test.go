package policy

import (
	"context"
	"strings"
	"testing"
)

func BenchmarkParseRecord(b *testing.B) {
	for _, bc := range []struct{ name, txt string }{
		{"small", "v=DMARC1; p=reject; sp=quarantine; adkim=s; rua=mailto:d@example.com; fo=1"},
		{"12KB", "v=DMARC1; p=reject; rua=" + strings.Repeat("mailto:r@oversize.test,", 480) + "mailto:x@oversize.test"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := ParseRecord(bc.txt, SpecRFC9989); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkEvaluate(b *testing.B) {
	res := &fakeResolver{txt: evalZone}
	e := NewEvaluator(res, Options{})
	ctx := context.Background()
	in := Input{FromDomain: "shop.brand.co.test", SPF: AuthResult{Result: "pass", Domain: "bounce.shop.brand.co.test"},
		DKIM: []AuthResult{{Result: "pass", Domain: "c1.esp.example.net"}}}
	b.ReportAllocs()
	for b.Loop() {
		ev := e.Evaluate(ctx, e.Discover(ctx, in.FromDomain), in)
		if ev.Result != ResultPass {
			b.Fatal(ev.Result)
		}
	}
}
