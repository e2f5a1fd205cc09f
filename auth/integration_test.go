package auth

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/auth/dnsres"
	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
)

// TestThroughRealDNS runs SPF and DKIM through our resolver against the
// in-process DNS server, so the error shapes are the real ones.
func TestThroughRealDNS(t *testing.T) {
	z := dnstest.NewZone(dnstest.Options{KeyDir: "../testdata/keys"})
	if err := z.Add(
		dnstest.Record{Name: "spf.test", Type: "TXT", Value: "v=spf1 include:_spf.spf.test -all"},
		dnstest.Record{Name: "_spf.spf.test", Type: "TXT", Value: "v=spf1 ip4:192.0.2.0/24 -all"},
		dnstest.Record{Name: "broken.test", Type: "TXT", Value: "v=spf1 include:down.test -all"},
		dnstest.Record{Name: "down.test", Behavior: "servfail"},
		dnstest.Record{Name: "slow.test", Behavior: "timeout"},
		// RFC 7208 §4.6.4: NODATA is a void lookup as NXDOMAIN is; two
		// pass, the third is a permerror.
		dnstest.Record{Name: "void2.spf.test", Type: "TXT", Value: "v=spf1 a:nodata.spf.test mx:nx.spf.test ip4:192.0.2.0/24 -all"},
		dnstest.Record{Name: "void3.spf.test", Type: "TXT", Value: "v=spf1 a:nodata.spf.test mx:nodata.spf.test exists:nodata.spf.test ip4:192.0.2.0/24 -all"},
		dnstest.Record{Name: "nodata.spf.test", Type: "TXT", Value: "no address here"},
		dnstest.Record{Name: "sel._domainkey.x.test", Type: "TXT", DKIMKey: "rsa2048"},
		dnstest.Record{Name: "dead._domainkey.x.test", Behavior: "servfail"},
	); err != nil {
		t.Fatal(err)
	}
	srv, err := dnstest.Start(z)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	r, err := dnsres.New(dnsres.Config{Servers: []string{srv.Addr()}, Timeout: 200 * time.Millisecond, Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx := context.Background()
	ip := net.ParseIP("192.0.2.5")

	spfTests := []struct{ from, want string }{
		{"a@spf.test", SPFPass},
		{"a@broken.test", SPFTempError},
		{"a@slow.test", SPFTempError},
		{"a@nothing.test", SPFNone},
		{"a@void2.spf.test", SPFPass},
		{"a@void3.spf.test", SPFPermError},
	}
	for _, tc := range spfTests {
		if got := CheckSPF(ctx, r, ip, "h.test", tc.from); got.Result != tc.want {
			t.Errorf("CheckSPF(%s) = %+v, want %s", tc.from, got, tc.want)
		}
	}

	dkimTests := []struct{ sel, want string }{
		{"sel", DKIMPass},
		{"dead", DKIMTempError},
		{"absent", DKIMPermError},
	}
	for _, tc := range dkimTests {
		msg := sign(t, testMessage, "rsa2048", "x.test", tc.sel, nil)
		v := NewDKIMVerifier(ctx, r.LookupTXT, 0)
		fs, body := split(t, msg)
		for _, f := range fs {
			v.AddHeader(f.name, f.value)
		}
		_, _ = v.Write(body)
		if got := v.Finish(); len(got) != 1 || got[0].Result != tc.want {
			t.Errorf("DKIM s=%s: %+v, want %s", tc.sel, got, tc.want)
		}
	}
}
