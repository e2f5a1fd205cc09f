package policy

import (
	"context"
	"strings"
	"testing"
)

var fuzzSeeds = []string{
	"v=DMARC1; p=reject",
	"V=DMARC1; P=reject",
	"v=dmarc1; p=reject",
	"p=reject; v=DMARC1",
	"v=DMARC1; p=bogus; rua=mailto:r@x.test",
	"v=DMARC1; p=none; sp=reject; np=quarantine; psd=y; t=y; pct=0",
	"v=DMARC1; p=reject; fo=2; adkim=x; aspf=s; rua=mailto:a@b!10m,mailto:c@d",
	"v=DMARC1;;;=;p=;x",
}

// FuzzParseRecord: no panic, and every accepted record is usable.
func FuzzParseRecord(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, txt string) {
		for _, spec := range []Spec{SpecRFC9989, SpecRFC7489} {
			r, err := ParseRecord(txt, spec)
			if err != nil {
				continue
			}
			if _, ok := parsePolicy(string(r.P)); !ok {
				t.Fatalf("%q: p=%q", txt, r.P)
			}
			if r.HasSP != (r.SP != "") || r.HasNP != (r.NP != "") {
				t.Fatalf("%q: sp/np flags inconsistent", txt)
			}
			if r.ADKIM != AlignRelaxed && r.ADKIM != AlignStrict || r.ASPF != AlignRelaxed && r.ASPF != AlignStrict {
				t.Fatalf("%q: alignment %c %c", txt, r.ADKIM, r.ASPF)
			}
			if r.Pct < 0 || r.Pct > 100 || !strings.ContainsRune("ynu", rune(r.PSD)) {
				t.Fatalf("%q: pct %d psd %c", txt, r.Pct, r.PSD)
			}
			if len(r.RUA) > maxURIs || len(r.RUF) > maxURIs || len(r.Warnings) > maxWarnings+1 {
				t.Fatalf("%q: bounds exceeded", txt)
			}
			if spec == SpecRFC7489 && (r.Testing || r.HasNP || r.PSD != 'u') {
				t.Fatalf("%q: RFC 9989 tags set in RFC 7489 mode", txt)
			}
		}
	})
}

// FuzzEvaluate feeds a fuzzed record and From domain through discovery and
// evaluation: always a result, never a policy without a fail.
func FuzzEvaluate(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s, "a.b.example.test", "mail.example.test")
	}
	f.Fuzz(func(t *testing.T, txt, from, id string) {
		res := &fakeResolver{txt: map[string][]string{
			"_dmarc.example.test": {txt},
			"_dmarc.test":         {"v=DMARC1; p=none; psd=y"},
		}}
		for _, spec := range []Spec{SpecRFC9989, SpecRFC7489} {
			e := NewEvaluator(res, Options{Spec: spec, Sampler: FixedSampler(false)})
			ev := e.Evaluate(context.Background(), nil, Input{FromDomain: from,
				SPF: AuthResult{Result: "pass", Domain: id}, DKIM: []AuthResult{{Result: "temperror", Domain: id}}})
			switch ev.Result {
			case ResultPass, ResultFail, ResultNone, ResultTempError, ResultPermError:
			default:
				t.Fatalf("result %q", ev.Result)
			}
			if ev.Result != ResultFail && ev.Disposition != PolicyNone {
				t.Fatalf("%s with disposition %s", ev.Result, ev.Disposition)
			}
			if (ev.Result == ResultTempError || ev.Result == ResultPermError) && ev.Err == nil {
				t.Fatalf("%s without Err", ev.Result)
			}
		}
	})
}
