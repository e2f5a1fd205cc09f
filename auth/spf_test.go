package auth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"

	"blitiri.com.ar/go/spf"
)

// fakeDNS is a map resolver for SPF tests: NXDOMAIN for unknown names,
// SERVFAIL for names in fail, a wrapped timeout for names in wrapped.
type fakeDNS struct {
	mu      sync.Mutex
	txt     map[string][]string
	ip      map[string][]string
	mx      map[string][]string
	fail    map[string]bool
	wrapped map[string]bool
	queries int
}

func (f *fakeDNS) lookup(name string) (string, error) {
	f.mu.Lock()
	f.queries++
	f.mu.Unlock()
	n := strings.TrimSuffix(strings.ToLower(name), ".")
	if f.fail[n] {
		return n, &net.DNSError{Err: "SERVFAIL", Name: name, IsTemporary: true}
	}
	if f.wrapped[n] {
		return n, fmt.Errorf("resolver: %w", &net.DNSError{Err: "i/o timeout", Name: name, IsTimeout: true, IsTemporary: true})
	}
	if _, ok := f.txt[n]; ok {
		return n, nil
	}
	if _, ok := f.ip[n]; ok {
		return n, nil
	}
	if _, ok := f.mx[n]; ok {
		return n, nil
	}
	return n, &net.DNSError{Err: "NXDOMAIN", Name: name, IsNotFound: true}
}

func (f *fakeDNS) LookupTXT(ctx context.Context, name string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	n, err := f.lookup(name)
	return f.txt[n], err
}

func (f *fakeDNS) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	n, err := f.lookup(name)
	var out []*net.MX
	for _, h := range f.mx[n] {
		out = append(out, &net.MX{Host: h, Pref: 10})
	}
	return out, err
}

func (f *fakeDNS) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	n, err := f.lookup(host)
	var out []net.IPAddr
	for _, a := range f.ip[n] {
		out = append(out, net.IPAddr{IP: net.ParseIP(a)})
	}
	return out, err
}

func (f *fakeDNS) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	return nil, &net.DNSError{Err: "NXDOMAIN", Name: addr, IsNotFound: true}
}

func TestCheckSPF(t *testing.T) {
	dns := &fakeDNS{
		txt: map[string][]string{
			"pass.test":          {"v=spf1 ip4:192.0.2.0/24 -all"},
			"fail.test":          {"v=spf1 -all"},
			"soft.test":          {"v=spf1 ~all"},
			"neutral.test":       {"v=spf1 ?all"},
			"norecord.test":      {"some other text"},
			"two.test":           {"v=spf1 -all", "v=spf1 +all"},
			"syntax.test":        {"v=spf1 ip4:not-an-ip -all"},
			"helo.test":          {"v=spf1 a -all"},
			"inc.test":           {"v=spf1 include:servfail.test -all"},
			"mx.test":            {"v=spf1 mx -all"},
			"chain0.test":        {"v=spf1 include:chain1.test -all"},
			"void.test":          {"v=spf1 a:nx1.test a:nx2.test a:nx3.test ip4:192.0.2.0/24 -all"},
			"wrap.test":          {"v=spf1 include:wrapped.test -all"},
			"xn--zrich-kva.test": {"v=spf1 ip4:192.0.2.0/24 -all"},
			// RFC 7208 §4.6.4: include, a, mx, ptr, exists and redirect
			// count; ten of them is still within the limit, the eleventh
			// is a permerror. The MX hosts' address lookups do not count.
			"ten.test":      {"v=spf1 include:ten-inc.test mx:ten-mx.test a:ten-a.test a:ten-a.test a:ten-a.test a:ten-a.test a:ten-a.test a:ten-a.test redirect=ten-last.test"},
			"eleven.test":   {"v=spf1 include:ten-inc.test mx:ten-mx.test a:ten-a.test a:ten-a.test a:ten-a.test a:ten-a.test a:ten-a.test a:ten-a.test a:ten-a.test redirect=ten-last.test"},
			"ten-inc.test":  {"v=spf1 -all"},
			"ten-last.test": {"v=spf1 a:ten-hit.test -all"},
			// RFC 7208 §4.6.4: a void lookup is NXDOMAIN or an empty
			// answer (NODATA); two are allowed, the third is a permerror,
			// also when it comes from an included record.
			"void2.test":        {"v=spf1 a:nx1.test mx:nodata1.test ip4:192.0.2.0/24 -all"},
			"void2nodata.test":  {"v=spf1 a:nodata1.test exists:nodata2.test ip4:192.0.2.0/24 -all"},
			"void3nodata.test":  {"v=spf1 a:nodata1.test mx:nodata2.test exists:nodata3.test ip4:192.0.2.0/24 -all"},
			"void3include.test": {"v=spf1 a:nx1.test include:void-inc.test ip4:192.0.2.0/24 -all"},
			"void-inc.test":     {"v=spf1 mx:nodata1.test a:nx2.test -all"},
			"nodata1.test":      {"not an address"},
			"nodata2.test":      {"not an address"},
			"nodata3.test":      {"not an address"},
		},
		ip: map[string][]string{"helo.test": {"192.0.2.7"}, "mail.mx.test": {"192.0.2.8"},
			"ten-a.test": {"192.0.2.200"}, "mail.ten-mx.test": {"192.0.2.201"}, "ten-hit.test": {"192.0.2.7"}},
		mx:      map[string][]string{"mx.test": {"mail.mx.test."}, "ten-mx.test": {"mail.ten-mx.test."}},
		fail:    map[string]bool{"servfail.test": true, "down.test": true},
		wrapped: map[string]bool{"wrapped.test": true, "wrappedtop.test": true},
	}
	for i := 1; i <= 11; i++ {
		dns.txt[fmt.Sprintf("chain%d.test", i)] = []string{fmt.Sprintf("v=spf1 include:chain%d.test -all", i+1)}
	}
	dns.txt["chain12.test"] = []string{"v=spf1 +all"}
	ip := net.ParseIP("192.0.2.7")
	tests := []struct {
		name                  string
		ip                    net.IP
		helo, mailFrom        string
		result, identity, dom string
		sender                string
	}{
		{"pass", ip, "mx.other.test", "user@pass.test", SPFPass, "mailfrom", "pass.test", "user@pass.test"},
		{"pass angle and case", ip, "mx.other.test", "<User@PASS.Test.>", SPFPass, "mailfrom", "pass.test", "User@pass.test"},
		{"fail", ip, "h.test", "a@fail.test", SPFFail, "mailfrom", "fail.test", "a@fail.test"},
		{"softfail", ip, "h.test", "a@soft.test", SPFSoftFail, "mailfrom", "soft.test", "a@soft.test"},
		{"neutral", ip, "h.test", "a@neutral.test", SPFNeutral, "mailfrom", "neutral.test", "a@neutral.test"},
		{"no spf record", ip, "h.test", "a@norecord.test", SPFNone, "mailfrom", "norecord.test", "a@norecord.test"},
		{"nxdomain", ip, "h.test", "a@missing.test", SPFNone, "mailfrom", "missing.test", "a@missing.test"},
		{"two records", ip, "h.test", "a@two.test", SPFPermError, "mailfrom", "two.test", "a@two.test"},
		{"syntax error", ip, "h.test", "a@syntax.test", SPFPermError, "mailfrom", "syntax.test", "a@syntax.test"},
		{"servfail", ip, "h.test", "a@down.test", SPFTempError, "mailfrom", "down.test", "a@down.test"},
		{"servfail in include", ip, "h.test", "a@inc.test", SPFTempError, "mailfrom", "inc.test", "a@inc.test"},
		{"wrapped timeout in include", ip, "h.test", "a@wrap.test", SPFTempError, "mailfrom", "wrap.test", "a@wrap.test"},
		{"wrapped timeout at top", ip, "h.test", "a@wrappedtop.test", SPFTempError, "mailfrom", "wrappedtop.test", "a@wrappedtop.test"},
		{"mx", net.ParseIP("192.0.2.8"), "h.test", "a@mx.test", SPFPass, "mailfrom", "mx.test", "a@mx.test"},
		{"lookup limit", ip, "h.test", "a@chain0.test", SPFPermError, "mailfrom", "chain0.test", "a@chain0.test"},
		{"void lookup limit", ip, "h.test", "a@void.test", SPFPermError, "mailfrom", "void.test", "a@void.test"},
		{"exactly ten lookups", ip, "h.test", "a@ten.test", SPFPass, "mailfrom", "ten.test", "a@ten.test"},
		{"eleven lookups", ip, "h.test", "a@eleven.test", SPFPermError, "mailfrom", "eleven.test", "a@eleven.test"},
		{"exactly two void lookups", ip, "h.test", "a@void2.test", SPFPass, "mailfrom", "void2.test", "a@void2.test"},
		{"two void lookups by nodata", ip, "h.test", "a@void2nodata.test", SPFPass, "mailfrom", "void2nodata.test", "a@void2nodata.test"},
		{"third void lookup by nodata", ip, "h.test", "a@void3nodata.test", SPFPermError, "mailfrom", "void3nodata.test", "a@void3nodata.test"},
		{"third void lookup in include", ip, "h.test", "a@void3include.test", SPFPermError, "mailfrom", "void3include.test", "a@void3include.test"},
		{"null path uses helo", ip, "HELO.test", "", SPFPass, "helo", "helo.test", "postmaster@helo.test"},
		{"null path helo fail", net.ParseIP("192.0.2.99"), "helo.test", "<>", SPFFail, "helo", "helo.test", "postmaster@helo.test"},
		{"null path address literal helo", ip, "[192.0.2.7]", "", SPFNone, "helo", "", ""},
		{"null path single label helo", ip, "localhost", "", SPFNone, "helo", "localhost", ""},
		{"no domain", ip, "helo.test", "user", SPFNone, "mailfrom", "", ""},
		{"empty domain", ip, "helo.test", "user@", SPFNone, "mailfrom", "", ""},
		{"empty local part", ip, "h.test", "@pass.test", SPFPass, "mailfrom", "pass.test", "postmaster@pass.test"},
		{"quoted local part with at", ip, "h.test", `"a@fail.test"@pass.test`, SPFPass, "mailfrom", "pass.test", "postmaster@pass.test"},
		{"verp local part", ip, "h.test", "bounce+x=y.test@pass.test", SPFPass, "mailfrom", "pass.test", "bounce+x=y.test@pass.test"},
		{"u-label", ip, "h.test", "a@zürich.test", SPFPass, "mailfrom", "xn--zrich-kva.test", "a@xn--zrich-kva.test"},
		{"hostile domain", ip, "h.test", "a@evil\x00.test", SPFNone, "mailfrom", "", ""},
		{"invalid ip", nil, "h.test", "a@pass.test", SPFPermError, "mailfrom", "pass.test", "a@pass.test"},
		{"ipv6 not listed", net.ParseIP("2001:db8::1"), "h.test", "a@pass.test", SPFFail, "mailfrom", "pass.test", "a@pass.test"},
	}
	// The limit rows must fail on the limit, not on something else.
	wantErr := map[string]error{
		"lookup limit":                 spf.ErrLookupLimitReached,
		"eleven lookups":               spf.ErrLookupLimitReached,
		"void lookup limit":            spf.ErrVoidLookupLimitReached,
		"third void lookup by nodata":  spf.ErrVoidLookupLimitReached,
		"third void lookup in include": spf.ErrVoidLookupLimitReached,
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := CheckSPF(context.Background(), dns, tc.ip, tc.helo, tc.mailFrom)
			if got.Result != tc.result || got.Identity != tc.identity || got.Domain != tc.dom || got.Sender != tc.sender {
				t.Errorf("got %+v; want %s %s %s %s", got, tc.result, tc.identity, tc.dom, tc.sender)
			}
			if want := wantErr[tc.name]; want != nil && !errors.Is(got.Err, want) {
				t.Errorf("error %v, want %v", got.Err, want)
			}
		})
	}
}

func TestCheckSPFContext(t *testing.T) {
	dns := &fakeDNS{txt: map[string][]string{"pass.test": {"v=spf1 ip4:192.0.2.0/24 -all"}}}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	got := CheckSPF(ctx, dns, net.ParseIP("192.0.2.1"), "h.test", "a@pass.test")
	if got.Result != SPFTempError || !errors.Is(got.Err, context.Canceled) {
		t.Errorf("cancelled context: %+v", got)
	}
	if dns.queries != 0 {
		t.Errorf("%d queries after cancel", dns.queries)
	}
}

func TestDNSError(t *testing.T) {
	ctx := context.Background()
	nx := &net.DNSError{IsNotFound: true}
	tests := []struct {
		name      string
		in        error
		notFound  bool
		temporary bool
	}{
		{"nxdomain kept", nx, true, false},
		{"wrapped nxdomain unwrapped", fmt.Errorf("x: %w", nx), true, false},
		{"deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), false, true},
		{"unknown", errors.New("boom"), false, true},
	}
	for _, tc := range tests {
		err := dnsError(ctx, "n.test", tc.in)
		de, ok := err.(*net.DNSError)
		if !ok || de.IsNotFound != tc.notFound || de.Temporary() != tc.temporary {
			t.Errorf("%s: got %#v", tc.name, err)
		}
	}
	if dnsError(ctx, "n", nil) != nil {
		t.Error("nil error changed")
	}
}
