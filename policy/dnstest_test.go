package policy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
)

// stubResolver is a minimal Resolver over miekg/dns for these tests, with
// the error conventions of LIBRARIES.md; the production one (auth/dnsres)
// adds caching and more. It keeps this package's tests independent of it.
type stubResolver struct{ addr string }

func (s stubResolver) query(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.SetEdns0(1232, false)
	c := &dns.Client{Timeout: 300 * time.Millisecond}
	r, _, err := c.ExchangeContext(ctx, m, s.addr)
	if err == nil && r.Truncated {
		c.Net = "tcp" // miekg/dns does not fall back by itself
		r, _, err = c.ExchangeContext(ctx, m, s.addr)
	}
	if err != nil {
		return nil, &net.DNSError{Err: err.Error(), Name: name, IsTemporary: true, IsTimeout: true}
	}
	switch r.Rcode {
	case dns.RcodeSuccess:
		return r, nil
	case dns.RcodeNameError:
		return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	}
	return nil, &net.DNSError{Err: dns.RcodeToString[r.Rcode], Name: name, IsTemporary: true}
}

func (s stubResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	r, err := s.query(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range r.Answer {
		if t, ok := rr.(*dns.TXT); ok {
			out = append(out, strings.Join(t.Txt, ""))
		}
	}
	return out, nil
}

func (s stubResolver) DomainExists(ctx context.Context, name string) (bool, error) {
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeMX} {
		_, err := s.query(ctx, name, qt)
		var de *net.DNSError
		if errors.As(err, &de) && de.IsNotFound {
			continue
		}
		if err != nil {
			return false, err
		}
		return true, nil
	}
	return false, nil
}

// TestEvaluateOverDNS runs acceptance-case shapes through a real DNS
// server: string splitting, a 12 KB record over TCP, SERVFAIL, a timeout,
// NXDOMAIN versus NODATA for np.
func TestEvaluateOverDNS(t *testing.T) {
	var big strings.Builder
	big.WriteString("v=DMARC1; p=reject; rua=")
	for i := 0; i < 400; i++ {
		if i > 0 {
			big.WriteByte(',')
		}
		fmt.Fprintf(&big, "mailto:r%03d@oversize128.test", i)
	}
	z := dnstest.NewZone(dnstest.Options{})
	err := z.Add(
		dnstest.Record{Name: "_dmarc.split-record.test", Type: "TXT", Strings: []string{"v=DMARC1; p=rej", "ect; adkim=r"}},
		dnstest.Record{Name: "_dmarc.oversize128.test", Type: "TXT", Value: big.String()},
		dnstest.Record{Name: "_dmarc.servfail.test", Behavior: "servfail"},
		dnstest.Record{Name: "_dmarc.timeout.test", Behavior: "timeout"},
		dnstest.Record{Name: "_dmarc.np139.test", Type: "TXT", Value: "v=DMARC1; p=none; sp=none; np=reject"},
		dnstest.Record{Name: "live.np139.test", Type: "A", Value: "192.0.2.1"},
		dnstest.Record{Name: "_dmarc.multi-record.test", Type: "TXT", Value: "v=DMARC1; p=reject"},
		dnstest.Record{Name: "_dmarc.multi-record.test", Type: "TXT", Value: "v=DMARC1; p=none"},
		dnstest.Record{Name: "_dmarc.other-txt.test", Type: "TXT", Value: "v=DMARC1; p=reject"},
		dnstest.Record{Name: "_dmarc.other-txt.test", Type: "TXT", Value: "hello world, not a policy"},
		dnstest.Record{Name: "_dmarc.relax.test", Type: "TXT", Value: "v=DMARC1; p=reject"},
	)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := dnstest.Start(z)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	tests := []struct {
		spec   Spec
		in     Input
		result Result
		disp   Policy
	}{
		{SpecRFC9989, Input{FromDomain: "split-record.test"}, ResultFail, PolicyReject},
		{SpecRFC9989, Input{FromDomain: "oversize128.test"}, ResultFail, PolicyReject},
		{SpecRFC7489, Input{FromDomain: "oversize128.test"}, ResultFail, PolicyReject},
		{SpecRFC9989, Input{FromDomain: "servfail.test"}, ResultTempError, PolicyNone},
		{SpecRFC9989, Input{FromDomain: "timeout.test"}, ResultTempError, PolicyNone},
		{SpecRFC9989, Input{FromDomain: "ghost.np139.test"}, ResultFail, PolicyReject},
		{SpecRFC7489, Input{FromDomain: "ghost.np139.test"}, ResultFail, PolicyNone},
		{SpecRFC9989, Input{FromDomain: "live.np139.test"}, ResultFail, PolicyNone},
		{SpecRFC9989, Input{FromDomain: "multi-record.test"}, ResultNone, PolicyNone},
		{SpecRFC9989, Input{FromDomain: "other-txt.test"}, ResultFail, PolicyReject},
		{SpecRFC9989, Input{FromDomain: "relax.test", SPF: AuthResult{Result: "pass", Domain: "bounce.mail.relax.test"}}, ResultPass, PolicyNone},
	}
	psl, err := ParsePSL(strings.NewReader("test\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(string(tt.spec)+"/"+tt.in.FromDomain, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			e := NewEvaluator(stubResolver{addr: srv.Addr()}, Options{Spec: tt.spec, PSL: psl})
			ev := e.Evaluate(ctx, e.Discover(ctx, tt.in.FromDomain), tt.in)
			if ev.Result != tt.result || ev.Disposition != tt.disp {
				t.Errorf("%s/%s, want %s/%s\n%s", ev.Result, ev.Disposition, tt.result, tt.disp, strings.Join(ev.Reasons, "\n"))
			}
		})
	}
}

// TestDiscardedNotes: every record discovery throws away is named in
// Discarded (for the A-R comment), in both spec modes; records that are
// used or merely ignored tags are not.
func TestDiscardedNotes(t *testing.T) {
	z := dnstest.NewZone(dnstest.Options{})
	err := z.Add(
		dnstest.Record{Name: "_dmarc.two.test", Type: "TXT", Value: "v=DMARC1; p=reject"},
		dnstest.Record{Name: "_dmarc.two.test", Type: "TXT", Value: "v=DMARC1; p=none"},
		dnstest.Record{Name: "_dmarc.sub.up.test", Type: "TXT", Value: "v=DMARC1; p=none"},
		dnstest.Record{Name: "_dmarc.sub.up.test", Type: "TXT", Value: "v=DMARC1; p=quarantine"},
		dnstest.Record{Name: "_dmarc.up.test", Type: "TXT", Value: "v=DMARC1; p=reject"},
		dnstest.Record{Name: "_dmarc.txt.test", Type: "TXT", Value: "google-site-verification=x"},
		dnstest.Record{Name: "_dmarc.txt.test", Type: "TXT", Value: "v=dmarc1; p=reject"},
		dnstest.Record{Name: "_dmarc.bad.test", Type: "TXT", Value: "v=DMARC1; p=bogus"},
		dnstest.Record{Name: "_dmarc.fine.test", Type: "TXT", Value: "v=DMARC1; p=reject; x=unknown"},
		dnstest.Record{Name: "_dmarc.fine.test", Type: "TXT", Value: "other"},
	)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := dnstest.Start(z)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	tests := []struct {
		spec   Spec
		from   string
		result Result
		want   []string
	}{
		{SpecRFC7489, "two.test", ResultNone, []string{"discarded 2 DMARC records at _dmarc.two.test"}},
		{SpecRFC9989, "two.test", ResultNone, []string{"discarded 2 DMARC records at _dmarc.two.test"}},
		{SpecRFC7489, "sub.up.test", ResultNone, []string{"discarded 2 DMARC records at _dmarc.sub.up.test"}},
		{SpecRFC9989, "sub.up.test", ResultFail, []string{"discarded 2 DMARC records at _dmarc.sub.up.test"}},
		{SpecRFC9989, "txt.test", ResultNone, []string{"discarded 2 non-DMARC TXT at _dmarc.txt.test"}},
		{SpecRFC7489, "bad.test", ResultPermError, []string{"discarded unusable record at _dmarc.bad.test"}},
		{SpecRFC9989, "fine.test", ResultFail, nil},
	}
	for _, tt := range tests {
		e := NewEvaluator(stubResolver{srv.Addr()}, Options{Spec: tt.spec})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ev := e.Evaluate(ctx, nil, Input{FromDomain: tt.from})
		cancel()
		if ev.Result != tt.result {
			t.Errorf("%s %s: result %s, want %s (%v)", tt.spec, tt.from, ev.Result, tt.result, ev.Reasons)
		}
		if strings.Join(ev.Discarded, "|") != strings.Join(tt.want, "|") {
			t.Errorf("%s %s: discarded %q, want %q", tt.spec, tt.from, ev.Discarded, tt.want)
		}
	}
}

// TestTreeWalkQueryBound counts what reaches the DNS server: discovery for
// a deep Author Domain with no record anywhere makes at most 8 _dmarc
// queries (RFC 9989 §4.10), and the labels between the Author Domain and
// the last seven are never asked.
func TestTreeWalkQueryBound(t *testing.T) {
	z := dnstest.NewZone(dnstest.Options{})
	// A record on a skipped label must not be seen.
	if err := z.Add(dnstest.Record{Name: "_dmarc.d.e.f.g.h.i.j.k.deep.test", Type: "TXT", Value: "v=DMARC1; p=none; psd=n"}); err != nil {
		t.Fatal(err)
	}
	srv, err := dnstest.Start(z)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	from := "a.b.c.d.e.f.g.h.i.j.k.deep.test" // 13 labels
	e := NewEvaluator(stubResolver{srv.Addr()}, Options{Spec: SpecRFC9989})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	before := srv.Queries()
	d := e.Discover(ctx, from)
	if n := srv.Queries() - before; n > 8 {
		t.Errorf("%d queries, want at most 8: %q", n, d.Trace)
	}
	if d.Record != nil || d.Err != nil {
		t.Errorf("record %+v err %v: the 11-label name must not be queried", d.Record, d.Err)
	}
	if n := srv.QueriesFor("_dmarc.d.e.f.g.h.i.j.k.deep.test", dns.TypeTXT); n != 0 {
		t.Errorf("skipped name queried %d times", n)
	}
	if n := srv.QueriesFor("_dmarc.g.h.i.j.k.deep.test", dns.TypeTXT); n != 1 {
		t.Errorf("the seven-label name queried %d times, want 1", n)
	}
}
