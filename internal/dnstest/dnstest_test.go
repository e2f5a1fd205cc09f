package dnstest

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// testRecords covers every rule of "Building the zone".
var testRecords = []Record{
	{Name: "Example.TEST", Type: "TXT", Value: "v=spf1 -all"},
	{Name: "example.test", Type: "A", Value: "192.0.2.1"},
	{Name: "example.test", Type: "MX", Value: "10 mx.example.test."},
	{Name: "order.test", Type: "TXT", Value: "first"},
	{Name: "order.test", Type: "TXT", Value: "second"},
	{Name: "order.test", Type: "TXT", Value: "third"},
	{Name: "split.test", Type: "TXT", Strings: []string{"v=DMARC1; p=rej", "ect", ""}},
	{Name: "quote.test", Type: "TXT", Value: `a "quoted" \ back` + "\x00\xff"},
	{Name: "leaf.ent.deep.test", Type: "TXT", Value: "leaf"},
	{Name: "alias1.test", Type: "CNAME", Value: "alias2.test."},
	{Name: "alias2.test", Type: "CNAME", Value: "Target.test."},
	{Name: "target.test", Type: "TXT", Value: "at the end", TTL: 300},
	{Name: "dangling.test", Type: "CNAME", Value: "nowhere.test."},
	{Name: "loop1.test", Type: "CNAME", Value: "loop2.test."},
	{Name: "loop2.test", Type: "CNAME", Value: "loop1.test."},
	{Name: "sf.test", Behavior: "servfail"},
	{Name: "ref.test", Type: "TXT", Behavior: "refused"},
	{Name: "nx.test", Behavior: "nxdomain"},
	{Name: "silent.test", Behavior: "timeout"},
	{Name: "below.sf2.test", Behavior: "servfail"},
	{Name: "to-sf.test", Type: "CNAME", Value: "sf.test."},
	{Name: "we(ir;d.test", Type: "TXT", Value: "special"},
	{Name: `sp ace\back"q.test`, Type: "TXT", Value: "more special"},
	{Name: "soa.test", Type: "SOA", Value: "ns.soa.test. h.soa.test. 7 3600 600 86400 5", TTL: 60},
	{Name: "sub.soa.test", Type: "A", Value: "192.0.2.2"},
}

func startZone(t *testing.T, recs ...Record) (*Server, *Zone) {
	t.Helper()
	z := NewZone(Options{KeyDir: filepath.Join("..", "..", "testdata", "keys")})
	if err := z.Add(recs...); err != nil {
		t.Fatal(err)
	}
	s, err := Start(z)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s, z
}

type qopts struct {
	net  string // "udp" (default) or "tcp"
	edns uint16 // 0: no OPT record
}

func ask(t *testing.T, addr, name string, qtype uint16, o qopts) (*dns.Msg, error) {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if o.edns != 0 {
		m.SetEdns0(o.edns, false)
	}
	c := &dns.Client{Net: o.net, Timeout: 2 * time.Second, UDPSize: 65535}
	if o.net == "" {
		c.Net = "udp"
	}
	r, _, err := c.Exchange(m, addr)
	return r, err
}

// rrText renders the answer as "TYPE rdata" lines for comparison.
func rrText(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		s := rr.String()
		hdr := rr.Header().String()
		out = append(out, dns.TypeToString[rr.Header().Rrtype]+" "+strings.TrimPrefix(s, hdr))
	}
	return out
}

func TestAnswers(t *testing.T) {
	s, _ := startZone(t, testRecords...)
	tests := []struct {
		name   string
		qname  string
		qtype  uint16
		rcode  int
		answer []string
		soa    string // owner of the SOA in authority, "" for none
	}{
		{"txt", "example.test.", dns.TypeTXT, dns.RcodeSuccess, []string{`TXT "v=spf1 -all"`}, ""},
		{"case insensitive", "EXAMPLE.Test.", dns.TypeA, dns.RcodeSuccess, []string{"A 192.0.2.1"}, ""},
		{"mx", "example.test.", dns.TypeMX, dns.RcodeSuccess, []string{"MX 10 mx.example.test."}, ""},
		{"nodata", "example.test.", dns.TypeAAAA, dns.RcodeSuccess, nil, "test."},
		{"nxdomain", "missing.example.test.", dns.TypeTXT, dns.RcodeNameError, nil, "test."},
		{"order kept", "order.test.", dns.TypeTXT, dns.RcodeSuccess, []string{`TXT "first"`, `TXT "second"`, `TXT "third"`}, ""},
		{"strings exact", "split.test.", dns.TypeTXT, dns.RcodeSuccess, []string{`TXT "v=DMARC1; p=rej" "ect" ""`}, ""},
		{"escaped bytes", "quote.test.", dns.TypeTXT, dns.RcodeSuccess, []string{`TXT "a \"quoted\" \\ back\000\255"`}, ""},
		{"empty non-terminal", "ent.deep.test.", dns.TypeTXT, dns.RcodeSuccess, nil, "test."},
		{"empty non-terminal above", "deep.test.", dns.TypeA, dns.RcodeSuccess, nil, "test."},
		{"sibling of ent", "other.deep.test.", dns.TypeTXT, dns.RcodeNameError, nil, "test."},
		{"below a leaf", "x.leaf.ent.deep.test.", dns.TypeTXT, dns.RcodeNameError, nil, "test."},
		{"cname chain", "alias1.test.", dns.TypeTXT, dns.RcodeSuccess,
			[]string{"CNAME alias2.test.", "CNAME Target.test.", `TXT "at the end"`}, ""},
		{"cname asked", "alias1.test.", dns.TypeCNAME, dns.RcodeSuccess, []string{"CNAME alias2.test."}, ""},
		{"cname chain nodata", "alias1.test.", dns.TypeA, dns.RcodeSuccess,
			[]string{"CNAME alias2.test.", "CNAME Target.test."}, "test."},
		{"dangling cname", "dangling.test.", dns.TypeTXT, dns.RcodeNameError, []string{"CNAME nowhere.test."}, "test."},
		{"cname loop", "loop1.test.", dns.TypeTXT, dns.RcodeServerFailure, nil, ""},
		{"servfail all types", "sf.test.", dns.TypeA, dns.RcodeServerFailure, nil, ""},
		{"servfail txt", "SF.test.", dns.TypeTXT, dns.RcodeServerFailure, nil, ""},
		{"refused txt", "ref.test.", dns.TypeTXT, dns.RcodeRefused, nil, ""},
		{"refused only txt", "ref.test.", dns.TypeA, dns.RcodeSuccess, nil, "test."},
		{"behavior nxdomain", "nx.test.", dns.TypeMX, dns.RcodeNameError, nil, "test."},
		{"fault makes parent exist", "sf2.test.", dns.TypeTXT, dns.RcodeSuccess, nil, "test."},
		{"cname to servfail", "to-sf.test.", dns.TypeTXT, dns.RcodeServerFailure, nil, ""},
		{"special bytes", `we\(ir\;d.test.`, dns.TypeTXT, dns.RcodeSuccess, []string{`TXT "special"`}, ""},
		{"special bytes ddd", `we\040ir\059d.TEST.`, dns.TypeTXT, dns.RcodeSuccess, []string{`TXT "special"`}, ""},
		{"space backslash quote", `sp\ ace\\back\"q.test.`, dns.TypeTXT, dns.RcodeSuccess, []string{`TXT "more special"`}, ""},
		{"own soa", "gone.sub.soa.test.", dns.TypeA, dns.RcodeNameError, nil, "soa.test."},
		{"root exists", ".", dns.TypeA, dns.RcodeSuccess, nil, "."},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, o := range []qopts{{net: "udp"}, {net: "tcp", edns: 1232}} {
				r, err := ask(t, s.Addr(), tc.qname, tc.qtype, o)
				if err != nil {
					t.Fatalf("%s: %v", o.net, err)
				}
				if r.Rcode != tc.rcode {
					t.Errorf("%s: rcode %s, want %s", o.net, dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
				}
				if !r.Authoritative || !r.RecursionAvailable {
					t.Errorf("%s: AA=%v RA=%v, want both", o.net, r.Authoritative, r.RecursionAvailable)
				}
				if got := rrText(r.Answer); !slices.Equal(got, tc.answer) {
					t.Errorf("%s: answer %q, want %q", o.net, got, tc.answer)
				}
				var soa string
				for _, rr := range r.Ns {
					if rr.Header().Rrtype == dns.TypeSOA {
						soa = rr.Header().Name
					}
				}
				if soa != tc.soa {
					t.Errorf("%s: SOA owner %q, want %q", o.net, soa, tc.soa)
				}
			}
		})
	}
}

func TestTimeoutBehavior(t *testing.T) {
	s, _ := startZone(t, testRecords...)
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			m := new(dns.Msg)
			m.SetQuestion("silent.test.", dns.TypeTXT)
			c := &dns.Client{Net: network, Timeout: 200 * time.Millisecond}
			_, _, err := c.Exchange(m, s.Addr())
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("err = %v, want a timeout", err)
			}
		})
	}
	if n := s.QueriesFor("SILENT.test", dns.TypeTXT); n != 2 {
		t.Errorf("QueriesFor = %d, want 2 (dropped queries count)", n)
	}
}

func TestTruncation(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 750) // 12,000 bytes
	mid := strings.Repeat("x", 700)
	s, _ := startZone(t,
		Record{Name: "big.test", Type: "TXT", Value: big},
		Record{Name: "mid.test", Type: "TXT", Value: mid},
	)
	tests := []struct {
		name  string
		qname string
		o     qopts
		tc    bool
		want  string // joined TXT, when not truncated
		opt   bool   // reply carries OPT
	}{
		{"big udp plain", "big.test.", qopts{net: "udp"}, true, "", false},
		{"big udp edns 4096", "big.test.", qopts{net: "udp", edns: 4096}, true, "", true},
		{"big tcp", "big.test.", qopts{net: "tcp"}, false, big, false},
		{"big tcp edns", "big.test.", qopts{net: "tcp", edns: 1232}, false, big, true},
		{"mid udp plain 512", "mid.test.", qopts{net: "udp"}, true, "", false},
		{"mid udp edns 1232", "mid.test.", qopts{net: "udp", edns: 1232}, false, mid, true},
		{"mid udp edns below 512", "mid.test.", qopts{net: "udp", edns: 100}, true, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ask(t, s.Addr(), tc.qname, dns.TypeTXT, tc.o)
			if err != nil {
				t.Fatal(err)
			}
			if r.Truncated != tc.tc {
				t.Errorf("TC = %v, want %v", r.Truncated, tc.tc)
			}
			if (r.IsEdns0() != nil) != tc.opt {
				t.Errorf("OPT present = %v, want %v", r.IsEdns0() != nil, tc.opt)
			}
			if tc.tc {
				if len(r.Answer) != 0 {
					t.Errorf("truncated reply kept %d records", len(r.Answer))
				}
				return
			}
			if len(r.Answer) != 1 {
				t.Fatalf("answer has %d records", len(r.Answer))
			}
			if got := strings.Join(r.Answer[0].(*dns.TXT).Txt, ""); got != tc.want {
				t.Errorf("TXT of %d bytes, want %d", len(got), len(tc.want))
			}
		})
	}
}

func TestDKIMKey(t *testing.T) {
	s, _ := startZone(t, Record{Name: "sel._domainkey.k.test", Type: "TXT", DKIMKey: "rsa2048"})
	want, err := os.ReadFile(filepath.Join("..", "..", "testdata", "keys", "rsa2048.txt"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := ask(t, s.Addr(), "sel._domainkey.k.test.", dns.TypeTXT, qopts{net: "tcp"})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Answer) != 1 {
		t.Fatalf("answer %v", r.Answer)
	}
	parts := r.Answer[0].(*dns.TXT).Txt
	if len(parts) < 2 {
		t.Errorf("a 2048-bit key record should need several strings, got %d", len(parts))
	}
	if got := strings.Join(parts, ""); got != strings.TrimSpace(string(want)) {
		t.Errorf("key record %q", got)
	}
}

func TestAddErrors(t *testing.T) {
	base := []Record{
		{Name: "a.test", Type: "TXT", Value: "one"},
		{Name: "a.test", Type: "TXT", Value: "two"},
		{Name: "f.test", Behavior: "servfail"},
		{Name: "g.test", Type: "TXT", Behavior: "refused"},
	}
	tests := []struct {
		name string
		add  []Record
		ok   bool
	}{
		{"same rrset again", []Record{{Name: "A.test.", Type: "txt", Value: "two"}, {Name: "a.test", Type: "TXT", Value: "one"}}, true},
		{"subset of rrset", []Record{{Name: "a.test", Type: "TXT", Value: "one"}}, false},
		{"different rrset", []Record{{Name: "a.test", Type: "TXT", Value: "three"}}, false},
		{"different ttl", []Record{{Name: "a.test", Type: "TXT", Value: "one", TTL: 60}, {Name: "a.test", Type: "TXT", Value: "two"}}, false},
		{"other type same name", []Record{{Name: "a.test", Type: "A", Value: "192.0.2.9"}}, true},
		{"behavior on data", []Record{{Name: "a.test", Behavior: "timeout"}}, false},
		{"typed behavior on data", []Record{{Name: "a.test", Type: "TXT", Behavior: "timeout"}}, false},
		{"typed behavior other type", []Record{{Name: "a.test", Type: "MX", Behavior: "timeout"}}, true},
		{"data under all-type behavior", []Record{{Name: "f.test", Type: "A", Value: "192.0.2.1"}}, false},
		{"same behavior again", []Record{{Name: "f.test", Behavior: "servfail"}}, true},
		{"other behavior", []Record{{Name: "f.test", Behavior: "refused"}}, false},
		{"data of the typed behavior", []Record{{Name: "g.test", Type: "TXT", Value: "x"}}, false},
		{"data of another type", []Record{{Name: "g.test", Type: "A", Value: "192.0.2.1"}}, true},
		{"all-type behavior over typed other", []Record{{Name: "g.test", Behavior: "servfail"}}, false},
		{"conflict inside one add", []Record{{Name: "n.test", Type: "TXT", Value: "x"}, {Name: "n.test", Behavior: "servfail"}}, false},
		{"unknown behavior", []Record{{Name: "n.test", Behavior: "slow"}}, false},
		{"unknown type", []Record{{Name: "n.test", Type: "BOGUS", Value: "x"}}, false},
		{"no type", []Record{{Name: "n.test", Value: "x"}}, false},
		{"empty name", []Record{{Name: "", Type: "TXT", Value: "x"}}, false},
		{"empty label", []Record{{Name: "a..test", Type: "TXT", Value: "x"}}, false},
		{"long label", []Record{{Name: strings.Repeat("a", 64) + ".test", Type: "TXT", Value: "x"}}, false},
		{"long name", []Record{{Name: strings.Repeat("abcdefghi.", 26) + "test", Type: "TXT", Value: "x"}}, false},
		{"two txt sources", []Record{{Name: "n.test", Type: "TXT", Value: "x", Strings: []string{"y"}}}, false},
		{"string too long", []Record{{Name: "n.test", Type: "TXT", Strings: []string{strings.Repeat("y", 256)}}}, false},
		{"empty strings", []Record{{Name: "n.test", Type: "TXT", Strings: []string{}}}, false},
		{"bad A", []Record{{Name: "n.test", Type: "A", Value: "not an address"}}, false},
		{"empty A", []Record{{Name: "n.test", Type: "A"}}, false},
		{"multi-line value", []Record{{Name: "n.test", Type: "A", Value: "192.0.2.1\nn2.test. 30 IN A 192.0.2.2"}}, false},
		{"strings on A", []Record{{Name: "n.test", Type: "A", Value: "192.0.2.1", Strings: []string{"x"}}}, false},
		{"missing key", []Record{{Name: "n.test", Type: "TXT", DKIMKey: "nope"}}, false},
		{"key path escape", []Record{{Name: "n.test", Type: "TXT", DKIMKey: "../keys/rsa2048"}}, false},
		{"negative ttl", []Record{{Name: "n.test", Type: "TXT", Value: "x", TTL: -1}}, false},
		{"behavior with data", []Record{{Name: "n.test", Type: "TXT", Value: "x", Behavior: "servfail"}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			z := NewZone(Options{KeyDir: filepath.Join("..", "..", "testdata", "keys")})
			if err := z.Add(base...); err != nil {
				t.Fatal(err)
			}
			err := z.Add(tc.add...)
			if (err == nil) != tc.ok {
				t.Fatalf("Add: %v, want ok=%v", err, tc.ok)
			}
			if err != nil {
				// A failed Add leaves the zone as it was.
				if r := z.lookup("n.test.", dns.TypeTXT); r.rcode != dns.RcodeNameError {
					t.Errorf("failed Add left data behind: %+v", r)
				}
				if r := z.lookup("a.test.", dns.TypeTXT); len(r.answer) != 2 {
					t.Errorf("failed Add changed a.test: %+v", r)
				}
			}
		})
	}
}

func TestLoadFile(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		body string
		n    int
		ok   bool
	}{
		{"base", `[{"name": "lab.test", "type": "MX", "value": "10 mx.lab.test."},
			{"name": "mx.lab.test", "type": "A", "value": "127.0.0.1"}]`, 2, true},
		{"all keys", `[{"name":"a.test","type":"TXT","ttl":5,"strings":["x"]},{"name":"b.test","behavior":"timeout"},{"name":"c.test","type":"TXT","dkim_key":"ed25519"}]`, 3, true},
		{"unknown key", `[{"name": "a.test", "type": "TXT", "value": "x", "colour": "red"}]`, 0, false},
		{"not an array", `{"name": "a.test"}`, 0, false},
		{"trailing data", `[] []`, 0, false},
		{"empty", ``, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name+".json")
			if err := os.WriteFile(p, []byte(tc.body), 0o600); err != nil {
				t.Fatal(err)
			}
			recs, err := LoadFile(p)
			if (err == nil) != tc.ok {
				t.Fatalf("LoadFile: %v, want ok=%v", err, tc.ok)
			}
			if len(recs) != tc.n {
				t.Errorf("%d records, want %d", len(recs), tc.n)
			}
		})
	}
	if _, err := LoadFile(filepath.Join(dir, "missing.json")); err == nil {
		t.Error("missing file: no error")
	}
}

func TestSetZoneAndCounters(t *testing.T) {
	s, _ := startZone(t, Record{Name: "swap.test", Type: "TXT", Value: "old"})
	get := func() []string {
		r, err := ask(t, s.Addr(), "swap.test.", dns.TypeTXT, qopts{})
		if err != nil {
			t.Fatal(err)
		}
		return rrText(r.Answer)
	}
	if got := get(); !slices.Equal(got, []string{`TXT "old"`}) {
		t.Fatalf("before: %q", got)
	}
	z2 := NewZone(Options{})
	if err := z2.Add(Record{Name: "swap.test", Type: "TXT", Value: "new"}); err != nil {
		t.Fatal(err)
	}
	s.SetZone(z2)
	if got := get(); !slices.Equal(got, []string{`TXT "new"`}) {
		t.Fatalf("after: %q", got)
	}
	if _, err := ask(t, s.Addr(), "swap.test.", dns.TypeA, qopts{}); err != nil {
		t.Fatal(err)
	}
	if n := s.QueriesFor("swap.test.", dns.TypeTXT); n != 2 {
		t.Errorf("QueriesFor TXT = %d, want 2", n)
	}
	if n := s.QueriesFor("Swap.Test", dns.TypeA); n != 1 {
		t.Errorf("QueriesFor A = %d, want 1", n)
	}
	if n := s.Queries(); n != 3 {
		t.Errorf("Queries = %d, want 3", n)
	}
}

func TestHostilePackets(t *testing.T) {
	s, _ := startZone(t, Record{Name: "ok.test", Type: "TXT", Value: "still here"})
	conn, err := net.Dial("udp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	junk := [][]byte{
		{},
		{0x12},
		[]byte("garbage that is not a DNS message at all"),
		{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 16, 0, 1}, // self-pointing name
	}
	for _, j := range junk {
		conn.Write(j)
	}
	// No question, and a non-QUERY opcode: clean error replies.
	m := new(dns.Msg)
	m.Id = dns.Id()
	r, err := dns.Exchange(m, s.Addr())
	if err != nil || r.Rcode != dns.RcodeFormatError {
		t.Errorf("no question: %v %v", r, err)
	}
	m = new(dns.Msg)
	m.SetNotify("ok.test.")
	r, err = dns.Exchange(m, s.Addr())
	if err != nil || r.Rcode != dns.RcodeNotImplemented {
		t.Errorf("notify: %v %v", r, err)
	}
	r, err = ask(t, s.Addr(), "ok.test.", dns.TypeTXT, qopts{})
	if err != nil || len(r.Answer) != 1 {
		t.Fatalf("server hurt by junk: %v %v", r, err)
	}
}

func TestCloseReleasesGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	z := NewZone(Options{})
	if err := z.Add(testRecords...); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		s, err := Start(z)
		if err != nil {
			t.Fatal(err)
		}
		// A TCP connection left open by a timed-out client must not keep
		// the server alive.
		c := &dns.Client{Net: "tcp", Timeout: 100 * time.Millisecond}
		m := new(dns.Msg)
		m.SetQuestion("silent.test.", dns.TypeA)
		c.Exchange(m, s.Addr())
		m.SetQuestion("example.test.", dns.TypeA)
		if _, err := ask(t, s.Addr(), "example.test.", dns.TypeA, qopts{}); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines after Close, %d before\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

func TestListenFixedPort(t *testing.T) {
	s1, _ := startZone(t)
	// The port is taken: Listen on it must fail rather than pick another.
	if s2, err := Listen(NewZone(Options{}), s1.Addr()); err == nil {
		s2.Close()
		t.Fatal("Listen on a busy port succeeded")
	}
	if _, err := Listen(NewZone(Options{}), "no-port"); err == nil {
		t.Fatal("Listen without port succeeded")
	}
}
