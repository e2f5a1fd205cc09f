package policy

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// evalZone is the DNS of the evaluation tests; names follow the
// acceptance cases they mirror.
var evalZone = map[string][]string{
	"_dmarc.spf-only.test":         {"v=DMARC1; p=reject"},
	"_dmarc.strict-spf.test":       {"v=DMARC1; p=reject; aspf=s"},
	"_dmarc.strictpar.test":        {"v=DMARC1; p=reject; adkim=s"},
	"_dmarc.p-none.test":           {"v=DMARC1; p=none"},
	"_dmarc.p-quarantine.test":     {"v=DMARC1; p=quarantine"},
	"_dmarc.sp-reject.test":        {"v=DMARC1; p=none; sp=reject"},
	"_dmarc.news.spign.test":       {"v=DMARC1; p=quarantine; sp=reject"},
	"_dmarc.spign.test":            {"v=DMARC1; p=none"},
	"_dmarc.multi-record.test":     {"v=DMARC1; p=reject", "v=DMARC1; p=none; rua=mailto:d@multi-record.test"},
	"_dmarc.v-not-first.test":      {"p=reject; v=DMARC1"},
	"_dmarc.invalid-p.test":        {"v=DMARC1; p=bogus; rua=mailto:r@invalid-p.test"},
	"_dmarc.pct0.test":             {"v=DMARC1; p=quarantine; pct=0"},
	"_dmarc.pct50.test":            {"v=DMARC1; p=reject; pct=50"},
	"_dmarc.tmode.test":            {"v=DMARC1; p=reject; t=y"},
	"_dmarc.tmode-none.test":       {"v=DMARC1; p=none; t=y"},
	"_dmarc.tpct.test":             {"v=DMARC1; p=reject; t=y; pct=100"},
	"_dmarc.np.test":               {"v=DMARC1; p=none; sp=none; np=reject"},
	"_dmarc.brand.co.test":         {"v=DMARC1; p=reject"},
	"_dmarc.co.test":               {"v=DMARC1; p=none"},
	"_dmarc.q.test":                {"v=DMARC1; p=reject"},
	"_dmarc.z.test":                {"v=DMARC1; p=none"},
	"_dmarc.xn--zrich-kva.test":    {"v=DMARC1; p=reject"},
	"_dmarc.orgerr.test":           {"v=DMARC1; p=reject"},
	"_dmarc.npx.test":              {"v=DMARC1; p=none; np=reject"},
	"_dmarc.npsame.test":           {"v=DMARC1; p=reject; np=reject"},
	"_dmarc.mail.split.test":       {"v=DMARC1; p=reject; psd=n"},
	"_dmarc.split.test":            {"v=DMARC1; p=reject"},
	"_dmarc.alignfail.test":        {"v=DMARC1; p=reject"},
	"_dmarc.sub.alignfail.test":    {"v=DMARC1; p=reject"},
	"_dmarc.uptag.test":            {"V=DMARC1; P=reject"},
	"_dmarc.mail.case205.test":     nil,
	"_dmarc.case205.test":          {"v=DMARC1; p=reject; aspf=r"},
	"_dmarc.news.pctsub.test":      nil,
	"_dmarc.pctsub.test":           {"v=DMARC1; p=reject; sp=quarantine; pct=0"},
	"_dmarc.dkimtemp.test":         {"v=DMARC1; p=reject"},
	"_dmarc.oversize.test":         {"v=DMARC1; p=reject; rua=" + strings.Repeat("mailto:r@oversize.test,", 400) + "mailto:last@oversize.test"},
	"_dmarc.ntxt.test":             {"v=DMARC1; p=reject; sp=quarantine"},
	"_dmarc.sub.ntxt.test":         {"site-verification=abc123"},
	"ghost-free.np.test":           nil,
	"exists.npx.test":              {"v=spf1 -all"},
	"_dmarc.c41.esp.example.net":   nil,
	"_dmarc.third-party.test":      {"v=DMARC1; p=quarantine"},
	"_dmarc.sub.walkfail.test":     nil,
	"_dmarc.walkfail-parent.test":  nil,
	"_dmarc.mid.walkfail.test":     nil,
	"_dmarc.deep.walkfail.test":    nil,
	"_dmarc.nxsub.sp-reject2.test": nil,
}

var evalFail = map[string]bool{
	"_dmarc.servfail.test":     true,
	"_dmarc.walkfail.test":     true,
	"_dmarc.test":              false,
	"_dmarc.orgerr-side.test":  true,
	"_dmarc.mail.orgerr.test":  true,
	"_dmarc.other.orgerr.test": true,
}

func TestEvaluate(t *testing.T) {
	pass := func(d string) AuthResult { return AuthResult{Result: "pass", Domain: d} }
	type want struct {
		result      Result
		applied     string
		policy      Policy
		disposition Policy
		err         error
		override    string
		spfAligned  bool
		dkimAligned bool
	}
	tests := []struct {
		name string
		spec Spec // "" runs both modes
		in   Input
		want want
	}{
		{"aligned SPF only (case 001)", "", Input{FromDomain: "spf-only.test", SPF: pass("spf-only.test")},
			want{result: ResultPass, applied: "p", policy: PolicyReject, disposition: PolicyNone, spfAligned: true}},
		{"aligned DKIM, unaligned SPF (case 002)", "", Input{FromDomain: "spf-only.test", SPF: pass("c02.esp.example.net"), DKIM: []AuthResult{pass("spf-only.test")}},
			want{result: ResultPass, applied: "p", policy: PolicyReject, disposition: PolicyNone, dkimAligned: true}},
		{"SPF pass unaligned (case 005)", "", Input{FromDomain: "spf-only.test", SPF: pass("c05.esp.example.net")},
			want{result: ResultFail, applied: "p", policy: PolicyReject, disposition: PolicyReject}},
		{"relaxed SPF subdomain (case 006)", "", Input{FromDomain: "spf-only.test", SPF: pass("mail.spf-only.test")},
			want{result: ResultPass, applied: "p", policy: PolicyReject, disposition: PolicyNone, spfAligned: true}},
		{"strict SPF subdomain (case 007)", "", Input{FromDomain: "strict-spf.test", SPF: pass("mail.strict-spf.test")},
			want{result: ResultFail, applied: "p", policy: PolicyReject, disposition: PolicyReject}},
		{"relaxed DKIM subdomain (case 009)", "", Input{FromDomain: "spf-only.test", DKIM: []AuthResult{pass("mail.spf-only.test")}},
			want{result: ResultPass, applied: "p", policy: PolicyReject, disposition: PolicyNone, dkimAligned: true}},
		{"strict DKIM, signer is the parent (case 142)", "", Input{FromDomain: "mail.strictpar.test", DKIM: []AuthResult{pass("strictpar.test")}},
			want{result: ResultFail, applied: "p", policy: PolicyReject, disposition: PolicyReject}},
		{"p=none fail (case 013)", "", Input{FromDomain: "p-none.test", SPF: AuthResult{Result: "fail", Domain: "p-none.test"}},
			want{result: ResultFail, applied: "p", policy: PolicyNone, disposition: PolicyNone}},
		{"p=quarantine fail (case 014)", "", Input{FromDomain: "p-quarantine.test"},
			want{result: ResultFail, applied: "p", policy: PolicyQuarantine, disposition: PolicyQuarantine}},
		{"sp for a non-existent subdomain without np (case 016)", "", Input{FromDomain: "pay.sp-reject.test"},
			want{result: ResultFail, applied: "sp", policy: PolicyReject, disposition: PolicyReject}},
		{"sp not applied to the domain itself (case 019)", "", Input{FromDomain: "sp-reject.test"},
			want{result: ResultFail, applied: "p", policy: PolicyNone, disposition: PolicyNone}},
		{"subdomain record's own p (case 137)", "", Input{FromDomain: "news.spign.test"},
			want{result: ResultFail, applied: "p", policy: PolicyQuarantine, disposition: PolicyQuarantine}},
		{"no record (case 021)", "", Input{FromDomain: "no-record.test", SPF: AuthResult{Result: "fail", Domain: "no-record.test"}},
			want{result: ResultNone, disposition: PolicyNone}},
		{"multiple records (case 025)", "", Input{FromDomain: "multi-record.test"}, want{result: ResultNone, disposition: PolicyNone}},
		{"v not first (case 026)", "", Input{FromDomain: "v-not-first.test"}, want{result: ResultNone, disposition: PolicyNone}},
		{"invalid p with rua (case 027)", "", Input{FromDomain: "invalid-p.test"},
			want{result: ResultFail, applied: "p", policy: PolicyNone, disposition: PolicyNone}},
		{"upper-case tags (case 130)", "", Input{FromDomain: "uptag.test"},
			want{result: ResultFail, applied: "p", policy: PolicyReject, disposition: PolicyReject}},
		{"pct=0 quarantine becomes none (case 031)", "", Input{FromDomain: "pct0.test"},
			want{result: ResultFail, applied: "p", policy: PolicyQuarantine, disposition: PolicyNone, override: OverrideSampledOut}},
		{"pct=50 selected by the sampler", "", Input{FromDomain: "pct50.test"},
			want{result: ResultFail, applied: "p", policy: PolicyReject, disposition: PolicyReject}},
		{"pct=0 on sp (sampling applies to the applied policy)", "", Input{FromDomain: "news.pctsub.test"},
			want{result: ResultFail, applied: "sp", policy: PolicyQuarantine, disposition: PolicyNone, override: OverrideSampledOut}},
		{"t=y: one level weaker (case 216)", SpecRFC9989, Input{FromDomain: "tmode.test"},
			want{result: ResultFail, applied: "p", policy: PolicyReject, disposition: PolicyQuarantine, override: OverridePolicyTestMode}},
		{"t ignored in RFC 7489 (case 216)", SpecRFC7489, Input{FromDomain: "tmode.test"},
			want{result: ResultFail, applied: "p", policy: PolicyReject, disposition: PolicyReject}},
		{"t=y wins over pct=100", SpecRFC9989, Input{FromDomain: "tpct.test"},
			want{result: ResultFail, applied: "p", policy: PolicyReject, disposition: PolicyQuarantine, override: OverridePolicyTestMode}},
		{"t=y has no effect on none", SpecRFC9989, Input{FromDomain: "tmode-none.test"},
			want{result: ResultFail, applied: "p", policy: PolicyNone, disposition: PolicyNone}},
		{"t=y does not touch a pass", SpecRFC9989, Input{FromDomain: "tmode.test", SPF: pass("tmode.test")},
			want{result: ResultPass, applied: "p", policy: PolicyReject, disposition: PolicyNone, spfAligned: true}},
		{"np for a non-existent subdomain (case 139)", SpecRFC9989, Input{FromDomain: "ghost.np.test"},
			want{result: ResultFail, applied: "np", policy: PolicyReject, disposition: PolicyReject}},
		{"np unknown in RFC 7489 (case 139)", SpecRFC7489, Input{FromDomain: "ghost.np.test"},
			want{result: ResultFail, applied: "sp", policy: PolicyNone, disposition: PolicyNone}},
		{"np not for an existing subdomain", SpecRFC9989, Input{FromDomain: "exists.npx.test"},
			want{result: ResultFail, applied: "p", policy: PolicyNone, disposition: PolicyNone}},
		{"existing subdomain below a non-DMARC TXT (case 210)", "", Input{FromDomain: "sub.ntxt.test"},
			want{result: ResultFail, applied: "sp", policy: PolicyQuarantine, disposition: PolicyQuarantine}},
		{"tree walk: fewest labels (case 061)", SpecRFC9989, Input{FromDomain: "shop.brand.co.test"},
			want{result: ResultFail, applied: "p", policy: PolicyNone, disposition: PolicyNone}},
		{"PSL: brand.co.test (case 061)", SpecRFC7489, Input{FromDomain: "shop.brand.co.test"},
			want{result: ResultFail, applied: "p", policy: PolicyReject, disposition: PolicyReject}},
		{"one-letter labels are separate orgs (case 145)", "", Input{FromDomain: "q.test", SPF: pass("z.test"), DKIM: []AuthResult{pass("z.test")}},
			want{result: ResultFail, applied: "p", policy: PolicyReject, disposition: PolicyReject}},
		{"third party only (case 041)", "", Input{FromDomain: "third-party.test", SPF: pass("c41.esp.example.net"), DKIM: []AuthResult{pass("c41.esp.example.net")}},
			want{result: ResultFail, applied: "p", policy: PolicyQuarantine, disposition: PolicyQuarantine}},
		{"aligned signature fails, unaligned passes (case 147)", "", Input{FromDomain: "spf-only.test", SPF: pass("c147.esp.example.net"),
			DKIM: []AuthResult{{Result: "fail", Domain: "spf-only.test"}, pass("c147.esp.example.net")}},
			want{result: ResultFail, applied: "p", policy: PolicyReject, disposition: PolicyReject}},
		{"only a pass counts: softfail (case 049)", "", Input{FromDomain: "spf-only.test", SPF: AuthResult{Result: "softfail", Domain: "spf-only.test"}},
			want{result: ResultFail, applied: "p", policy: PolicyReject, disposition: PolicyReject}},
		{"case-insensitive alignment (cases 055, 205)", "", Input{FromDomain: "Case205.TEST", SPF: pass("MAIL.CASE205.TEST")},
			want{result: ResultPass, applied: "p", policy: PolicyReject, disposition: PolicyNone, spfAligned: true}},
		{"trailing dot (case 057)", "", Input{FromDomain: "spf-only.test."},
			want{result: ResultFail, applied: "p", policy: PolicyReject, disposition: PolicyReject}},
		{"U-label author domain (case 060)", "", Input{FromDomain: "zürich.test", DKIM: []AuthResult{pass("xn--zrich-kva.test")}},
			want{result: ResultPass, applied: "p", policy: PolicyReject, disposition: PolicyNone, dkimAligned: true}},
		{"large record (case 128)", "", Input{FromDomain: "oversize.test"},
			want{result: ResultFail, applied: "p", policy: PolicyReject, disposition: PolicyReject}},
		{"SERVFAIL on _dmarc (case 032)", "", Input{FromDomain: "servfail.test", SPF: AuthResult{Result: "fail", Domain: "servfail.test"}},
			want{result: ResultTempError, disposition: PolicyNone, err: ErrDNS}},
		{"SERVFAIL during the walk", SpecRFC9989, Input{FromDomain: "deep.walkfail.test"},
			want{result: ResultTempError, disposition: PolicyNone, err: ErrDNS}},
		{"aligned DKIM temperror, no pass (case 222)", "", Input{FromDomain: "dkimtemp.test", DKIM: []AuthResult{{Result: "temperror", Domain: "dkimtemp.test"}}},
			want{result: ResultTempError, applied: "p", policy: PolicyReject, disposition: PolicyNone, err: ErrDNS}},
		{"aligned SPF temperror, no pass", "", Input{FromDomain: "dkimtemp.test", SPF: AuthResult{Result: "temperror", Domain: "dkimtemp.test"}},
			want{result: ResultTempError, applied: "p", policy: PolicyReject, disposition: PolicyNone, err: ErrDNS}},
		{"aligned temperror but another aligned pass", "", Input{FromDomain: "dkimtemp.test", SPF: pass("dkimtemp.test"), DKIM: []AuthResult{{Result: "temperror", Domain: "dkimtemp.test"}}},
			want{result: ResultPass, applied: "p", policy: PolicyReject, disposition: PolicyNone, spfAligned: true}},
		{"unaligned temperror is just a fail", "", Input{FromDomain: "dkimtemp.test", DKIM: []AuthResult{{Result: "temperror", Domain: "esp.example.net"}}},
			want{result: ResultFail, applied: "p", policy: PolicyReject, disposition: PolicyReject}},
		{"relaxed alignment needs a walk that fails", SpecRFC9989, Input{FromDomain: "orgerr.test", DKIM: []AuthResult{pass("x.other.orgerr.test")}},
			want{result: ResultTempError, applied: "p", policy: PolicyReject, disposition: PolicyNone, err: ErrDNS}},
		{"psd=n splits the organization", SpecRFC9989, Input{FromDomain: "split.test", DKIM: []AuthResult{pass("x.mail.split.test")}},
			want{result: ResultFail, applied: "p", policy: PolicyReject, disposition: PolicyReject}},
		{"psd=n ignored by RFC 7489", SpecRFC7489, Input{FromDomain: "split.test", DKIM: []AuthResult{pass("x.mail.split.test")}},
			want{result: ResultPass, applied: "p", policy: PolicyReject, disposition: PolicyNone, dkimAligned: true}},
		{"invalid author domain (case 107)", "", Input{FromDomain: "billing@"},
			want{result: ResultPermError, disposition: PolicyNone, err: ErrNoAuthorDomain}},
		{"garbage identifiers are ignored", "", Input{FromDomain: "spf-only.test", SPF: AuthResult{Result: "pass", Domain: "a..b"}, DKIM: []AuthResult{{Result: "PASS", Domain: strings.Repeat("x", 300)}}},
			want{result: ResultFail, applied: "p", policy: PolicyReject, disposition: PolicyReject}},
	}
	for _, tt := range tests {
		specs := []Spec{SpecRFC9989, SpecRFC7489}
		if tt.spec != "" {
			specs = []Spec{tt.spec}
		}
		for _, spec := range specs {
			t.Run(string(spec)+"/"+tt.name, func(t *testing.T) {
				psl, err := ParsePSL(strings.NewReader("test\nco.test\nnet\n"))
				if err != nil {
					t.Fatal(err)
				}
				res := &fakeResolver{txt: evalZone, fail: evalFail}
				e := NewEvaluator(res, Options{Spec: spec, PSL: psl, Sampler: FixedSampler(true)})
				ctx := context.Background()
				d := e.Discover(ctx, tt.in.FromDomain)
				ev := e.Evaluate(ctx, d, tt.in)
				w := tt.want
				got := want{result: ev.Result, applied: ev.Applied, policy: ev.Policy, disposition: ev.Disposition,
					err: w.err, spfAligned: ev.SPFAligned, dkimAligned: ev.DKIMAligned}
				if len(ev.Overrides) > 0 {
					got.override = ev.Overrides[0].Type
				}
				if got != w || !errors.Is(ev.Err, w.err) || (w.err == nil && ev.Err != nil) {
					t.Errorf("got  %+v err=%v\nwant %+v\nreasons:\n  %s", got, ev.Err, w, strings.Join(ev.Reasons, "\n  "))
				}
				// A DNS failure must never lead to reject or quarantine.
				if ev.Result != ResultFail && ev.Disposition != PolicyNone {
					t.Errorf("disposition %s with result %s", ev.Disposition, ev.Result)
				}
				if len(ev.Reasons) == 0 {
					t.Errorf("no reasons")
				}
			})
		}
	}
}

// Evaluate discovers by itself when given no Discovery or one made for
// another domain or spec.
func TestEvaluateRediscovers(t *testing.T) {
	res := &fakeResolver{txt: evalZone}
	e := NewEvaluator(res, Options{})
	ctx := context.Background()
	for _, d := range []*Discovery{nil, e.Discover(ctx, "p-none.test"), {Spec: SpecRFC7489, FromDomain: "spf-only.test"}} {
		ev := e.Evaluate(ctx, d, Input{FromDomain: "SPF-only.test"})
		if ev.Result != ResultFail || ev.Policy != PolicyReject || ev.FromDomain != "spf-only.test" {
			t.Errorf("got %s %s %s", ev.Result, ev.Policy, ev.FromDomain)
		}
	}
}

// When np and sp differ, a failed existence check must not pick one.
func TestEvaluateExistenceUnknown(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		from string
		want Result
	}{
		{"ghost.npx.test", ResultTempError}, // np=reject vs p=none
		{"ghost.npsame.test", ResultFail},   // np=reject vs p=reject: no difference
	}
	for _, tt := range tests {
		res := &fakeResolver{txt: evalZone, failExists: map[string]bool{tt.from: true}}
		e := NewEvaluator(res, Options{})
		ev := e.Evaluate(ctx, e.Discover(ctx, tt.from), Input{FromDomain: tt.from})
		if ev.Result != tt.want {
			t.Errorf("%s: %s, want %s\n%s", tt.from, ev.Result, tt.want, strings.Join(ev.Reasons, "\n"))
		}
		if tt.want == ResultTempError && (!errors.Is(ev.Err, ErrDNS) || ev.Disposition != PolicyNone) {
			t.Errorf("%s: err %v disposition %s", tt.from, ev.Err, ev.Disposition)
		}
	}
}

// pct between 0 and 100 asks the sampler; not selected means weaker.
func TestEvaluateSampler(t *testing.T) {
	ctx := context.Background()
	for _, selected := range []bool{true, false} {
		e := NewEvaluator(&fakeResolver{txt: evalZone}, Options{Sampler: FixedSampler(selected)})
		ev := e.Evaluate(ctx, nil, Input{FromDomain: "pct50.test"})
		want := PolicyReject
		if !selected {
			want = PolicyQuarantine
		}
		if ev.Disposition != want || (len(ev.Overrides) > 0) == selected {
			t.Errorf("selected=%t: disposition %s overrides %v", selected, ev.Disposition, ev.Overrides)
		}
	}
}

// Unaligned third-party domains cost no tree walk.
func TestEvaluateNoNeedlessWalks(t *testing.T) {
	res := &fakeResolver{txt: evalZone}
	e := NewEvaluator(res, Options{})
	ctx := context.Background()
	d := e.Discover(ctx, "third-party.test")
	before := len(res.queried())
	e.Evaluate(ctx, d, Input{FromDomain: "third-party.test", SPF: AuthResult{Result: "pass", Domain: "c41.esp.example.net"},
		DKIM: []AuthResult{{Result: "pass", Domain: "c41.esp.example.net"}}})
	if q := res.queried()[before:]; len(q) != 0 {
		t.Errorf("needless queries %q", q)
	}
}

func TestWeakerAndSamplers(t *testing.T) {
	for p, want := range map[Policy]Policy{PolicyReject: PolicyQuarantine, PolicyQuarantine: PolicyNone, PolicyNone: PolicyNone, "bogus": PolicyNone} {
		if got := Weaker(p); got != want {
			t.Errorf("Weaker(%s) = %s", p, got)
		}
	}
	for _, s := range []Sampler{RandSampler{}, FixedSampler(true), FixedSampler(false)} {
		if s.Sample(0) || s.Sample(-1) || !s.Sample(100) || !s.Sample(1000) {
			t.Errorf("%T: 0 or 100 misread", s)
		}
	}
	if !FixedSampler(true).Sample(1) || FixedSampler(false).Sample(99) {
		t.Errorf("FixedSampler ignores its value")
	}
	var yes, no int
	for i := 0; i < 2000 && (yes == 0 || no == 0); i++ {
		if (RandSampler{}).Sample(50) {
			yes++
		} else {
			no++
		}
	}
	if yes == 0 || no == 0 {
		t.Errorf("RandSampler(50) is constant")
	}
}
