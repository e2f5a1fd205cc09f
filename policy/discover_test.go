package policy

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestWalkTargets(t *testing.T) {
	tests := []struct {
		start string
		want  []string
	}{
		// RFC 9989 §4.10: the example of eight queries.
		{"a.b.c.d.e.f.g.h.i.j.mail.example.com", []string{
			"g.h.i.j.mail.example.com", "h.i.j.mail.example.com", "i.j.mail.example.com",
			"j.mail.example.com", "mail.example.com", "example.com", "com"}},
		// RFC 9989 §5.1.8: ten labels, the psd=n zone cut is skipped.
		{"mail.a.b.c.d.e.f.g.example.com", []string{
			"c.d.e.f.g.example.com", "d.e.f.g.example.com", "e.f.g.example.com",
			"f.g.example.com", "g.example.com", "example.com", "com"}},
		// Eight labels: the parent has seven either way.
		{"a.b.c.d.e.f.g.h", []string{"b.c.d.e.f.g.h", "c.d.e.f.g.h", "d.e.f.g.h", "e.f.g.h", "f.g.h", "g.h", "h"}},
		{"x.y.org-fallback.test", []string{"y.org-fallback.test", "org-fallback.test", "test"}},
		{"test", nil},
	}
	for _, tt := range tests {
		if got := walkTargets(tt.start, walkLimit-1); !slices.Equal(got, tt.want) {
			t.Errorf("walkTargets(%s) = %q, want %q", tt.start, got, tt.want)
		}
	}
	if got := walkTargets("a.b.c.d", 2); len(got) != 2 {
		t.Errorf("budget not honoured: %q", got)
	}
}

func TestOrgFromWalk(t *testing.T) {
	rec := func(psd byte) *Record { return &Record{P: PolicyNone, PSD: psd} }
	tests := []struct {
		name  string
		start string
		steps []walkStep
		want  string
	}{
		{"no record: the start itself", "a.mail.example.com", []walkStep{{name: "a.mail.example.com"}, {name: "mail.example.com"}, {name: "example.com"}, {name: "com"}}, "a.mail.example.com"},
		// RFC 9989 §4.10.2 examples.
		{"fewest labels", "a.mail.example.com", []walkStep{{name: "a.mail.example.com"}, {name: "mail.example.com", rec: rec('u')}, {name: "example.com", rec: rec('u')}, {name: "com"}}, "example.com"},
		{"psd=n", "a.mail.example.com", []walkStep{{name: "a.mail.example.com"}, {name: "mail.example.com", rec: rec('n')}}, "mail.example.com"},
		{"psd=y above", "a.mail.example.com", []walkStep{{name: "a.mail.example.com"}, {name: "mail.example.com"}, {name: "example.com"}, {name: "com", rec: rec('y')}}, "example.com"},
		{"psd=y at the start is its own", "co.test", []walkStep{{name: "co.test", rec: rec('y')}}, "co.test"},
		{"psd=y directly above", "brand.co.test", []walkStep{{name: "brand.co.test", rec: rec('u')}, {name: "co.test", rec: rec('y')}}, "brand.co.test"},
	}
	for _, tt := range tests {
		if got := orgFromWalk(tt.start, tt.steps); got != tt.want {
			t.Errorf("%s: got %s, want %s", tt.name, got, tt.want)
		}
	}
}

func TestDiscover(t *testing.T) {
	zone := map[string][]string{
		"_dmarc.example.com":          {"v=DMARC1; p=reject; sp=quarantine"},
		"_dmarc.sub.example.com":      {"site-verification=abc", "v=DMARC1; p=none"},
		"_dmarc.multi.test":           {"v=DMARC1; p=reject", "v=DMARC1; p=none"},
		"_dmarc.brand.co.test":        {"v=DMARC1; p=reject"},
		"_dmarc.co.test":              {"v=DMARC1; p=none"},
		"_dmarc.shop.psd.test":        {"v=DMARC1; p=quarantine"},
		"_dmarc.psd.test":             {"v=DMARC1; p=reject; psd=y"},
		"_dmarc.broken.test":          {"v=DMARC1; p=bogus"},
		"_dmarc.np.test":              {"v=DMARC1; p=none; np=reject"},
		"live.np.test":                {"v=spf1 -all"},
		"_dmarc.deep.example.com":     {"v=DMARC1; p=none; psd=n"},
		"_dmarc.x.deep.example.com":   {"v=dmarc1; p=reject"},
		"_dmarc.nodmarc.example.com":  {"v=spf1 -all"},
		"_dmarc.tldpsd.example":       {"v=DMARC1; p=reject; psd=y"},
		"_dmarc.a.own.tldpsd.example": {"v=DMARC1; p=quarantine"},
	}
	fail := map[string]bool{"_dmarc.servfail.test": true, "_dmarc.mid.walk.test": true, "_dmarc.walk.test": true}
	tests := []struct {
		name       string
		spec       Spec
		from       string
		wantDomain string // policy domain
		wantOrg    string
		wantP      Policy
		wantErr    error
		wantExists string // "", "yes", "no"
	}{
		{"record at the author domain", SpecRFC9989, "example.com", "example.com", "example.com", PolicyReject, nil, ""},
		{"author domain normalised", SpecRFC9989, "EXAMPLE.com.", "example.com", "example.com", PolicyReject, nil, ""},
		{"non-DMARC TXT beside one record (case 066)", SpecRFC9989, "sub.example.com", "sub.example.com", "example.com", PolicyNone, nil, ""},
		{"walk to the organizational domain (case 022)", SpecRFC9989, "x.y.example.com", "example.com", "example.com", PolicyReject, nil, ""},
		{"no DMARC TXT at the name, walk on (case 210)", SpecRFC9989, "nodmarc.example.com", "example.com", "example.com", PolicyReject, nil, ""},
		{"no record anywhere (case 021)", SpecRFC9989, "nothing.test", "", "nothing.test", "", nil, ""},
		{"multiple records discarded, walk on (case 025)", SpecRFC9989, "multi.test", "", "multi.test", "", nil, ""},
		{"multiple records end RFC 7489 discovery", SpecRFC7489, "multi.test", "", "multi.test", "", nil, ""},
		{"tree walk takes the fewest labels (case 061)", SpecRFC9989, "shop.brand.co.test", "co.test", "co.test", PolicyNone, nil, ""},
		{"PSL takes brand.co.test (case 061)", SpecRFC7489, "shop.brand.co.test", "brand.co.test", "brand.co.test", PolicyReject, nil, ""},
		{"psd=y makes the name below it the org domain", SpecRFC9989, "a.shop.psd.test", "shop.psd.test", "shop.psd.test", PolicyQuarantine, nil, ""},
		{"psd=y record applies when the org domain has none", SpecRFC9989, "a.b.tldpsd.example", "tldpsd.example", "b.tldpsd.example", PolicyReject, nil, ""},
		{"psd=n stops the walk", SpecRFC9989, "y.x.deep.example.com", "deep.example.com", "deep.example.com", PolicyNone, nil, ""},
		{"unusable record at the author domain", SpecRFC9989, "broken.test", "", "", "", ErrSyntax, ""},
		{"SERVFAIL at the author domain (case 032)", SpecRFC9989, "servfail.test", "", "", "", ErrDNS, ""},
		{"SERVFAIL at the author domain, RFC 7489", SpecRFC7489, "servfail.test", "", "servfail.test", "", ErrDNS, ""},
		{"SERVFAIL in the walk", SpecRFC9989, "a.mid.walk.test", "", "", "", ErrDNS, ""},
		{"np: author domain does not exist", SpecRFC9989, "ghost.np.test", "np.test", "np.test", PolicyNone, nil, "no"},
		{"np: author domain exists", SpecRFC9989, "live.np.test", "np.test", "np.test", PolicyNone, nil, "yes"},
		{"invalid author domain", SpecRFC9989, "billing@", "", "", "", ErrNoAuthorDomain, ""},
		{"empty author domain", SpecRFC9989, "", "", "", "", ErrNoAuthorDomain, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			psl, err := ParsePSL(strings.NewReader("com\ntest\nco.test\nexample\n"))
			if err != nil {
				t.Fatal(err)
			}
			res := &fakeResolver{txt: zone, fail: fail}
			e := NewEvaluator(res, Options{Spec: tt.spec, PSL: psl})
			d := e.Discover(context.Background(), tt.from)
			if !errors.Is(d.Err, tt.wantErr) || (tt.wantErr == nil && d.Err != nil) {
				t.Fatalf("Err = %v, want %v\ntrace:\n%s", d.Err, tt.wantErr, strings.Join(d.Trace, "\n"))
			}
			if d.PolicyDomain != tt.wantDomain || d.OrgDomain != tt.wantOrg {
				t.Errorf("policy domain %q org %q, want %q %q\ntrace:\n%s", d.PolicyDomain, d.OrgDomain, tt.wantDomain, tt.wantOrg, strings.Join(d.Trace, "\n"))
			}
			if tt.wantP != "" && (d.Record == nil || d.Record.P != tt.wantP) {
				t.Errorf("record %+v, want p=%s", d.Record, tt.wantP)
			}
			if tt.wantP == "" && d.Record != nil {
				t.Errorf("unexpected record %q", d.Record.Raw)
			}
			switch tt.wantExists {
			case "yes", "no":
				if !d.ExistsChecked || d.Exists != (tt.wantExists == "yes") {
					t.Errorf("exists checked=%t exists=%t, want %s", d.ExistsChecked, d.Exists, tt.wantExists)
				}
			default:
				if d.ExistsChecked {
					t.Errorf("existence checked needlessly")
				}
			}
			if n := len(res.queried()); n > walkLimit+1 {
				t.Errorf("%d queries", n)
			}
		})
	}
}

// The walk never exceeds eight queries, however long the name (RFC 9989
// §4.10), and stops early when the budget says so.
func TestDiscoverQueryBound(t *testing.T) {
	long := strings.Repeat("a.", 20) + "example.com"
	for _, budget := range []int{0, 3, 8, 100} {
		res := &fakeResolver{txt: map[string][]string{}}
		e := NewEvaluator(res, Options{MaxWalk: budget})
		d := e.Discover(context.Background(), long)
		q := res.queried()
		max := budget
		if max <= 0 || max > walkLimit {
			max = walkLimit
		}
		if len(q) != max {
			t.Errorf("budget %d: %d queries: %q", budget, len(q), q)
		}
		if d.Err != nil || d.Record != nil {
			t.Errorf("budget %d: err %v record %v", budget, d.Err, d.Record)
		}
	}
}

// A name too long to carry the _dmarc prefix is no record, not an error.
func TestDiscoverNameTooLong(t *testing.T) {
	name := strings.Repeat("abcdefghi.", 24) + "example.com" // 251 characters
	res := &fakeResolver{txt: map[string][]string{"_dmarc.example.com": {"v=DMARC1; p=reject"}}}
	d := NewEvaluator(res, Options{}).Discover(context.Background(), name)
	if d.Err != nil || d.PolicyDomain != "example.com" {
		t.Fatalf("err %v policy domain %q", d.Err, d.PolicyDomain)
	}
}

// A cancelled context is a temporary failure, never "no policy".
func TestDiscoverCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res := &fakeResolver{txt: map[string][]string{"_dmarc.example.com": {"v=DMARC1; p=reject"}}}
	d := NewEvaluator(res, Options{}).Discover(ctx, "example.com")
	if !errors.Is(d.Err, ErrDNS) {
		t.Fatalf("err %v", d.Err)
	}
}

func TestOrgDomain(t *testing.T) {
	res := &fakeResolver{
		txt: map[string][]string{
			"_dmarc.example.com":   {"v=DMARC1; p=reject"},
			"_dmarc.q.test":        {"v=DMARC1; p=reject"},
			"_dmarc.z.test":        {"v=DMARC1; p=none"},
			"_dmarc.mail.corp.com": {"v=DMARC1; p=none; psd=n"},
		},
		fail: map[string]bool{"_dmarc.bad.test": true},
	}
	tests := []struct {
		spec    Spec
		name    string
		want    string
		wantErr error
	}{
		{SpecRFC9989, "a.b.example.com", "example.com", nil},
		{SpecRFC9989, "Q.test", "q.test", nil}, // case 145: one-letter labels
		{SpecRFC9989, "z.test", "z.test", nil},
		{SpecRFC9989, "x.mail.corp.com", "mail.corp.com", nil},
		{SpecRFC9989, "unknown.example.net", "unknown.example.net", nil},
		{SpecRFC9989, "x.bad.test", "", ErrDNS},
		{SpecRFC9989, "a..b", "", ErrNoAuthorDomain},
		{SpecRFC7489, "a.b.example.com", "example.com", nil},
		{SpecRFC7489, "x.bad.test", "bad.test", nil},
		{SpecRFC7489, "com", "com", nil},
	}
	for _, tt := range tests {
		e := NewEvaluator(res, Options{Spec: tt.spec})
		got, err := e.OrgDomain(context.Background(), tt.name)
		if got != tt.want || !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
			t.Errorf("%s OrgDomain(%s) = %q, %v; want %q, %v", tt.spec, tt.name, got, err, tt.want, tt.wantErr)
		}
	}
}
