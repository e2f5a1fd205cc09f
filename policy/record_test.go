package policy

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestParseRecord(t *testing.T) {
	type want struct {
		err            error
		p, sp, np      Policy
		hasSP, hasNP   bool
		adkim, aspf    Alignment
		psd            byte
		testing        bool
		pct            int
		hasPct         bool
		rua, ruf       int
		fo             string
		warnContaining string
	}
	def := func(w want) want {
		if w.adkim == 0 {
			w.adkim = AlignRelaxed
		}
		if w.aspf == 0 {
			w.aspf = AlignRelaxed
		}
		if w.psd == 0 {
			w.psd = 'u'
		}
		if w.pct == 0 && !w.hasPct {
			w.pct = 100
		}
		if w.fo == "" {
			w.fo = "0"
		}
		return w
	}
	tests := []struct {
		name string
		txt  string
		spec Spec
		want want
	}{
		{"minimal", "v=DMARC1; p=reject", SpecRFC9989, want{p: PolicyReject}},
		{"upper-case tag names (case 130)", "V=DMARC1; P=reject", SpecRFC9989, want{p: PolicyReject}},
		{"policy value any case", "v=DMARC1; p=Quarantine", SpecRFC9989, want{p: PolicyQuarantine}},
		{"white space around = and ;", "v = DMARC1 ;  p = reject ; ", SpecRFC9989, want{p: PolicyReject}},
		{"leading white space", "  v=DMARC1; p=none", SpecRFC9989, want{p: PolicyNone}},
		{"version value is case-sensitive (case 065)", "v=dmarc1; p=reject", SpecRFC9989, want{err: ErrNotDMARC}},
		{"v not first (case 026)", "p=reject; v=DMARC1", SpecRFC9989, want{err: ErrNotDMARC}},
		{"v glued to the next tag", "v=DMARC1p=reject", SpecRFC9989, want{err: ErrNotDMARC}},
		{"other version", "v=DMARC2; p=reject", SpecRFC9989, want{err: ErrNotDMARC}},
		{"not DMARC at all (case 066)", "hello world, not a policy", SpecRFC9989, want{err: ErrNotDMARC}},
		{"empty", "", SpecRFC9989, want{err: ErrNotDMARC}},
		{"p after rua (case 208)", "v=DMARC1; rua=mailto:d@x.test; p=reject", SpecRFC9989, want{p: PolicyReject, rua: 1}},
		{"p after rua, RFC 7489 read leniently", "v=DMARC1; rua=mailto:d@x.test; p=reject", SpecRFC7489, want{p: PolicyReject, rua: 1}},
		{"unknown tags ignored (case 029)", "v=DMARC1; p=reject; foo=bar; zz=plural", SpecRFC9989, want{p: PolicyReject, warnContaining: "unknown tag foo"}},
		{"bad optional values fall back (case 124)", "v=DMARC1; p=reject; fo=2; adkim=x", SpecRFC9989, want{p: PolicyReject, warnContaining: "adkim"}},
		{"all tags", "v=DMARC1; p=quarantine; sp=reject; np=reject; adkim=s; aspf=s; psd=n; t=y; pct=20; rua=mailto:a@x.test,mailto:b@x.test; ruf=mailto:f@x.test; fo=d:s",
			SpecRFC9989, want{p: PolicyQuarantine, sp: PolicyReject, hasSP: true, np: PolicyReject, hasNP: true, adkim: AlignStrict, aspf: AlignStrict, psd: 'n', testing: true, pct: 20, hasPct: true, rua: 2, ruf: 1, fo: "d:s"}},
		{"np psd t are unknown in RFC 7489", "v=DMARC1; p=reject; np=none; psd=y; t=y", SpecRFC7489, want{p: PolicyReject, warnContaining: "not defined in RFC 7489"}},
		{"missing p is none in RFC 9989 (case 117)", "v=DMARC1; rua=mailto:r@x.test", SpecRFC9989, want{p: PolicyNone, rua: 1}},
		{"missing p without rua is none in RFC 9989", "v=DMARC1", SpecRFC9989, want{p: PolicyNone}},
		{"missing p with rua is none in RFC 7489 (case 117)", "v=DMARC1; rua=mailto:r@x.test", SpecRFC7489, want{p: PolicyNone, rua: 1}},
		{"missing p without rua is unusable in RFC 7489", "v=DMARC1; adkim=s", SpecRFC7489, want{err: ErrSyntax}},
		{"invalid p with rua acts as none (case 027)", "v=DMARC1; p=bogus; rua=mailto:r@x.test", SpecRFC9989, want{p: PolicyNone, rua: 1, warnContaining: "acting as p=none"}},
		{"invalid p without rua is unusable", "v=DMARC1; p=bogus", SpecRFC9989, want{err: ErrSyntax}},
		{"invalid p with only a bad rua is unusable", "v=DMARC1; p=bogus; rua=not a uri", SpecRFC9989, want{err: ErrSyntax}},
		{"invalid sp with rua: whole record acts as none", "v=DMARC1; p=reject; sp=bogus; rua=mailto:r@x.test", SpecRFC9989, want{p: PolicyNone, rua: 1}},
		{"invalid np without rua is unusable", "v=DMARC1; p=reject; np=bogus", SpecRFC9989, want{err: ErrSyntax}},
		{"invalid np is just unknown in RFC 7489", "v=DMARC1; p=reject; np=bogus", SpecRFC7489, want{p: PolicyReject}},
		{"pct 0 (case 031)", "v=DMARC1; p=quarantine; pct=0", SpecRFC9989, want{p: PolicyQuarantine, pct: 0, hasPct: true}},
		{"pct out of range means 100", "v=DMARC1; p=reject; pct=150", SpecRFC9989, want{p: PolicyReject, warnContaining: "pct"}},
		{"pct not a number means 100", "v=DMARC1; p=reject; pct=-5", SpecRFC9989, want{p: PolicyReject, warnContaining: "pct"}},
		{"pct with leading zeros beyond 3 digits", "v=DMARC1; p=reject; pct=0050", SpecRFC9989, want{p: PolicyReject, warnContaining: "pct"}},
		{"bad psd and t", "v=DMARC1; p=reject; psd=x; t=maybe", SpecRFC9989, want{p: PolicyReject, warnContaining: "psd"}},
		{"report size suffix stripped", "v=DMARC1; p=none; rua=mailto:a@x.test!10m, mailto:b@x.test", SpecRFC9989, want{p: PolicyNone, rua: 2}},
		{"invalid URIs dropped", "v=DMARC1; p=none; rua=mailto:a@x.test,:nothing,noscheme", SpecRFC9989, want{p: PolicyNone, rua: 1, warnContaining: "invalid URI"}},
		{"duplicate tag keeps the first", "v=DMARC1; p=none; p=reject", SpecRFC9989, want{p: PolicyNone, warnContaining: "duplicate"}},
		{"tag without =", "v=DMARC1; p=reject; garbage", SpecRFC9989, want{p: PolicyReject, warnContaining: "no '='"}},
		{"non-alphabetic tag name", "v=DMARC1; p=reject; p2=none", SpecRFC9989, want{p: PolicyReject, warnContaining: "not alphabetic"}},
		{"fo 0 and 1 exclusive", "v=DMARC1; p=none; fo=0:1", SpecRFC9989, want{p: PolicyNone, warnContaining: "fo"}},
		{"split strings joined (case 063)", "v=DMARC1; p=rej" + "ect; adkim=r", SpecRFC9989, want{p: PolicyReject}},
		{"oversized record is unusable", "v=DMARC1; p=reject; x=" + strings.Repeat("a", MaxRecordLen), SpecRFC9989, want{err: ErrSyntax}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := def(tt.want)
			r, err := ParseRecord(tt.txt, tt.spec)
			if w.err != nil {
				if !errors.Is(err, w.err) {
					t.Fatalf("err = %v, want %v", err, w.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error %v", err)
			}
			got := want{p: r.P, sp: r.SP, np: r.NP, hasSP: r.HasSP, hasNP: r.HasNP, adkim: r.ADKIM, aspf: r.ASPF,
				psd: r.PSD, testing: r.Testing, pct: r.Pct, hasPct: r.HasPct, rua: len(r.RUA), ruf: len(r.RUF), fo: r.FO,
				warnContaining: w.warnContaining}
			if got != w {
				t.Errorf("got  %+v\nwant %+v", got, w)
			}
			if r.Raw != tt.txt {
				t.Errorf("Raw = %q", r.Raw)
			}
			if w.warnContaining != "" && !strings.Contains(strings.Join(r.Warnings, "|"), w.warnContaining) {
				t.Errorf("warnings %q lack %q", r.Warnings, w.warnContaining)
			}
		})
	}
}

// A 12 KB record (case 128) parses; its URI list is capped.
func TestParseRecordLarge(t *testing.T) {
	var b strings.Builder
	b.WriteString("v=DMARC1; p=reject; rua=")
	for i := 0; i < 400; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "mailto:r%03d@oversize128.test", i)
	}
	r, err := ParseRecord(b.String(), SpecRFC9989)
	if err != nil {
		t.Fatal(err)
	}
	if r.P != PolicyReject || len(r.RUA) != maxURIs {
		t.Fatalf("p=%s, %d URIs", r.P, len(r.RUA))
	}
	if !strings.Contains(strings.Join(r.Warnings, "|"), "beyond") {
		t.Errorf("no warning about dropped URIs: %q", r.Warnings)
	}
}

// Warnings stay bounded however hostile the record.
func TestParseRecordWarningsBounded(t *testing.T) {
	txt := "v=DMARC1; p=none" + strings.Repeat("; x1=y", 5000)
	r, err := ParseRecord(txt, SpecRFC9989)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Warnings) > maxWarnings+1 {
		t.Fatalf("%d warnings", len(r.Warnings))
	}
}

func TestValidURI(t *testing.T) {
	for u, want := range map[string]bool{
		"mailto:a@example.com":   true,
		"https://r.example/x":    true,
		"mailto:":                false,
		":x":                     false,
		"1mailto:a@b":            false,
		"mailto:a b@c":           false,
		"mailto:a!b":             false,
		"ma_ilto:a@b":            false,
		"x-y+z.w:opaque":         true,
		"mailto:caf\xc3\xa9@x.y": false,
	} {
		if got := validURI(u); got != want {
			t.Errorf("validURI(%q) = %t, want %t", u, got, want)
		}
	}
}
