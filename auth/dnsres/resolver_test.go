package dnsres

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"blitiri.com.ar/go/spf"
	"github.com/miekg/dns"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

var (
	_ spf.DNSResolver = (*Resolver)(nil)
	_ policy.Resolver = (*Resolver)(nil)
)

var big = strings.Repeat("0123456789abcdef", 750) // 12,000 bytes

var zoneRecords = []dnstest.Record{
	{Name: "example.test", Type: "TXT", Value: "v=spf1 -all"},
	{Name: "example.test", Type: "TXT", Value: "second record"},
	{Name: "example.test", Type: "A", Value: "192.0.2.1"},
	{Name: "example.test", Type: "AAAA", Value: "2001:db8::1"},
	{Name: "example.test", Type: "MX", Value: "20 mx2.example.test."},
	{Name: "example.test", Type: "MX", Value: "10 mx1.example.test."},
	{Name: "v4only.test", Type: "A", Value: "192.0.2.4"},
	{Name: "split.test", Type: "TXT", Strings: []string{"v=DMARC1; p=rej", "ect", ""}},
	{Name: "bytes.test", Type: "TXT", Value: "a \"q\" \\ ;(\x00\xff"},
	{Name: "big.test", Type: "TXT", Value: big},
	{Name: "we(ir;d.test", Type: "TXT", Value: "special"},
	{Name: "alias1.test", Type: "CNAME", Value: "alias2.test."},
	{Name: "alias2.test", Type: "CNAME", Value: "target.test."},
	{Name: "target.test", Type: "TXT", Value: "at the end"},
	{Name: "dangling.test", Type: "CNAME", Value: "nowhere.test."},
	{Name: "leaf.ent.test", Type: "TXT", Value: "leaf"},
	{Name: "sf.test", Behavior: "servfail"},
	{Name: "ref.test", Behavior: "refused"},
	{Name: "nx.test", Behavior: "nxdomain"},
	{Name: "silent.test", Behavior: "timeout"},
	{Name: "silent-a.test", Type: "A", Behavior: "timeout"},
	{Name: "silent-a.test", Type: "MX", Value: "10 mx.test."},
	{Name: "1.2.0.192.in-addr.arpa", Type: "PTR", Value: "host.example.test."},
	{Name: "ttl0.test", Type: "TXT", Value: "zero", TTL: 1},
	{Name: "long.test", Type: "TXT", Value: "long", TTL: 7200},
	{Name: "neg.test", Type: "SOA", Value: "ns.neg.test. h.neg.test. 1 3600 600 86400 5", TTL: 60},
}

func startDNS(t testing.TB, recs ...dnstest.Record) *dnstest.Server {
	t.Helper()
	z := dnstest.NewZone(dnstest.Options{})
	if err := z.Add(recs...); err != nil {
		t.Fatal(err)
	}
	s, err := dnstest.Start(z)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newResolver(t testing.TB, cfg Config) *Resolver {
	t.Helper()
	if cfg.Timeout == 0 {
		cfg.Timeout = 300 * time.Millisecond
	}
	if cfg.Attempts == 0 {
		cfg.Attempts = 1
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// deadAddr is a local UDP and TCP address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

// fakeClock lets cache tests move time.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type errKind int

const (
	kindOK errKind = iota
	kindNotFound
	kindTemp
	kindTimeout
)

func checkErr(t *testing.T, err error, want errKind) {
	t.Helper()
	if want == kindOK {
		if err != nil {
			t.Fatalf("err = %v, want none", err)
		}
		return
	}
	// The libraries assert the concrete type: no wrapping allowed.
	de, ok := err.(*net.DNSError)
	if !ok {
		t.Fatalf("err = %T %v, want *net.DNSError", err, err)
	}
	switch want {
	case kindNotFound:
		if !de.IsNotFound || de.IsTemporary || de.IsTimeout || !IsNotFound(err) || IsTemporary(err) {
			t.Errorf("err = %+v, want not found", de)
		}
	case kindTemp:
		if !de.IsTemporary || de.IsNotFound || de.IsTimeout || !IsTemporary(err) {
			t.Errorf("err = %+v, want temporary, no timeout", de)
		}
	case kindTimeout:
		if !de.IsTemporary || !de.IsTimeout || de.IsNotFound || !IsTemporary(err) {
			t.Errorf("err = %+v, want temporary timeout", de)
		}
	}
}

func TestLookupTXT(t *testing.T) {
	s := startDNS(t, zoneRecords...)
	r := newResolver(t, Config{Servers: []string{s.Addr()}, Timeout: 150 * time.Millisecond})
	tests := []struct {
		name string
		want []string
		kind errKind
	}{
		{"example.test", []string{"v=spf1 -all", "second record"}, kindOK},
		{"EXAMPLE.Test.", []string{"v=spf1 -all", "second record"}, kindOK},
		{"split.test", []string{"v=DMARC1; p=reject"}, kindOK},
		{"bytes.test", []string{"a \"q\" \\ ;(\x00\xff"}, kindOK},
		{"big.test", []string{big}, kindOK},
		{"we(ir;d.test", []string{"special"}, kindOK},
		{"WE(IR;D.test.", []string{"special"}, kindOK},
		{"alias1.test", []string{"at the end"}, kindOK},
		{"example.test.missing", nil, kindNotFound},
		{"missing.example.test", nil, kindNotFound},
		{"dangling.test", nil, kindNotFound},
		{"ent.test", nil, kindOK},    // empty non-terminal: NODATA
		{"v4only.test", nil, kindOK}, // NODATA
		{"nx.test", nil, kindNotFound},
		{"sf.test", nil, kindTemp},
		{"ref.test", nil, kindTemp},
		{"silent.test", nil, kindTimeout},
		{"", nil, kindNotFound},
		{".", nil, kindNotFound},
		{"a..test", nil, kindNotFound},
		{strings.Repeat("a", 64) + ".test", nil, kindNotFound},
		{strings.Repeat("abcdefgh.", 28) + "test", nil, kindNotFound}, // 256 bytes
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := r.LookupTXT(context.Background(), tc.name)
			checkErr(t, err, tc.kind)
			if de, ok := err.(*net.DNSError); ok && de.Name != tc.name {
				t.Errorf("error names %q, want the name asked %q", de.Name, tc.name)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %d records %.80q, want %.80q", len(got), got, tc.want)
			}
		})
	}
	st := r.Stats()
	if st.TCPFallbacks != 1 {
		t.Errorf("TCPFallbacks = %d, want 1 (big.test)", st.TCPFallbacks)
	}
	if st.Timeout != 1 || st.ServFail != 1 || st.Refused != 1 || st.Invalid != 5 {
		t.Errorf("stats %+v", st)
	}
	// Over UDP the 12 KB record is truncated, so it took UDP then TCP.
	if n := s.QueriesFor("big.test", dns.TypeTXT); n != 2 {
		t.Errorf("big.test queries = %d, want 2", n)
	}
}

func TestOtherLookups(t *testing.T) {
	s := startDNS(t, zoneRecords...)
	r := newResolver(t, Config{Servers: []string{s.Addr()}, Timeout: 150 * time.Millisecond})
	ctx := context.Background()

	mx, err := r.LookupMX(ctx, "example.test")
	checkErr(t, err, kindOK)
	var hosts []string
	for _, m := range mx {
		hosts = append(hosts, m.Host)
	}
	if !slices.Equal(hosts, []string{"mx1.example.test.", "mx2.example.test."}) {
		t.Errorf("MX %v, want by preference", hosts)
	}
	_, err = r.LookupMX(ctx, "nope.test")
	checkErr(t, err, kindNotFound)

	ips := []struct {
		host string
		want []string
		kind errKind
	}{
		{"example.test", []string{"192.0.2.1", "2001:db8::1"}, kindOK},
		{"v4only.test", []string{"192.0.2.4"}, kindOK},
		{"ent.test", nil, kindOK},
		{"nope.test", nil, kindNotFound},
		{"sf.test", nil, kindTemp},
		{"silent-a.test", nil, kindTimeout},
	}
	for _, tc := range ips {
		got, err := r.LookupIPAddr(ctx, tc.host)
		checkErr(t, err, tc.kind)
		var s []string
		for _, ip := range got {
			s = append(s, ip.IP.String())
		}
		if !slices.Equal(s, tc.want) {
			t.Errorf("LookupIPAddr(%s) = %v, want %v", tc.host, s, tc.want)
		}
	}

	names, err := r.LookupAddr(ctx, "192.0.2.1")
	checkErr(t, err, kindOK)
	if !slices.Equal(names, []string{"host.example.test."}) {
		t.Errorf("LookupAddr = %v", names)
	}
	_, err = r.LookupAddr(ctx, "192.0.2.99")
	checkErr(t, err, kindNotFound)
	if _, err := r.LookupAddr(ctx, "not-an-ip"); err == nil {
		t.Error("LookupAddr(not-an-ip): no error")
	}

	exists := []struct {
		name string
		want bool
		kind errKind
	}{
		{"example.test", true, kindOK},
		{"ent.test", true, kindOK},      // empty non-terminal (RFC 8020)
		{"v4only.test", true, kindOK},   // NODATA for other types
		{"dangling.test", true, kindOK}, // an alias exists
		{"nope.test", false, kindOK},
		{"nx.test", false, kindOK},
		{"a..test", false, kindOK},
		{"silent-a.test", true, kindOK}, // A times out, AAAA says NODATA
		{"sf.test", false, kindTemp},
	}
	for _, tc := range exists {
		got, err := r.DomainExists(ctx, tc.name)
		checkErr(t, err, tc.kind)
		if got != tc.want {
			t.Errorf("DomainExists(%s) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestQueryAnswer(t *testing.T) {
	s := startDNS(t, zoneRecords...)
	r := newResolver(t, Config{Servers: []string{s.Addr()}})
	a, err := r.Query(context.Background(), "Alias1.test", dns.TypeTXT)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.RRs) != 1 || a.NXDomain || a.FromCache || a.Rcode != dns.RcodeSuccess {
		t.Errorf("answer %+v", a)
	}
	if !slices.Equal(a.Chain, []string{"alias2.test.", "target.test."}) {
		t.Errorf("chain %v", a.Chain)
	}
	a, err = r.Query(context.Background(), "alias1.test", dns.TypeCNAME)
	if err != nil || len(a.RRs) != 1 || a.RRs[0].(*dns.CNAME).Target != "alias2.test." {
		t.Errorf("CNAME query: %+v %v", a, err)
	}
	a, err = r.Query(context.Background(), "nope.test", dns.TypeTXT)
	if err != nil || !a.NXDomain || a.Rcode != dns.RcodeNameError || len(a.RRs) != 0 {
		t.Errorf("NXDOMAIN query: %+v %v", a, err)
	}
}

func TestNetworkErrors(t *testing.T) {
	s := startDNS(t, zoneRecords...)
	dead := deadAddr(t)
	tests := []struct {
		name    string
		servers []string
		kind    errKind
	}{
		{"nothing listens", []string{dead}, kindTemp},
		{"first dead", []string{dead, s.Addr()}, kindOK},
		{"last dead", []string{s.Addr(), dead}, kindOK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newResolver(t, Config{Servers: tc.servers, Attempts: 2})
			_, err := r.LookupTXT(context.Background(), "example.test")
			checkErr(t, err, tc.kind)
		})
	}
}

func TestServfailFromFirstServer(t *testing.T) {
	bad := startDNS(t, dnstest.Record{Name: "example.test", Behavior: "servfail"})
	good := startDNS(t, zoneRecords...)
	r := newResolver(t, Config{Servers: []string{bad.Addr(), good.Addr()}, Attempts: 3})
	got, err := r.LookupTXT(context.Background(), "example.test")
	checkErr(t, err, kindOK)
	if len(got) != 2 {
		t.Errorf("got %q", got)
	}
	// A SERVFAIL is an answer: the first server is asked once, not per round.
	if n := bad.QueriesFor("example.test", dns.TypeTXT); n != 1 {
		t.Errorf("bad server asked %d times", n)
	}

	r2 := newResolver(t, Config{Servers: []string{bad.Addr(), bad.Addr()}, Attempts: 3})
	_, err = r2.LookupTXT(context.Background(), "example.test")
	checkErr(t, err, kindTemp)
	if n := bad.QueriesFor("example.test", dns.TypeTXT); n != 3 {
		t.Errorf("bad server asked %d times in all, want 3", n)
	}
}

func TestTimeoutBounded(t *testing.T) {
	s := startDNS(t, zoneRecords...)
	r := newResolver(t, Config{Servers: []string{s.Addr(), s.Addr()}, Timeout: 100 * time.Millisecond, Attempts: 2})
	start := time.Now()
	_, err := r.LookupTXT(context.Background(), "silent.test")
	checkErr(t, err, kindTimeout)
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("took %v", el)
	}
	if n := s.QueriesFor("silent.test", dns.TypeTXT); n != 4 {
		t.Errorf("%d attempts, want 2 servers x 2", n)
	}

	// The caller's deadline ends the wait sooner than the attempts.
	r2 := newResolver(t, Config{Servers: []string{s.Addr()}, Timeout: 2 * time.Second, Attempts: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = r2.LookupTXT(ctx, "silent.test")
	checkErr(t, err, kindTimeout)
	if el := time.Since(start); el > time.Second {
		t.Errorf("deadline ignored: %v", el)
	}
}

func TestCache(t *testing.T) {
	s := startDNS(t, zoneRecords...)
	clk := &fakeClock{t: time.Unix(1_000_000, 0)}
	r := newResolver(t, Config{Servers: []string{s.Addr()}, MaxTTL: time.Hour, ServfailTTL: 3 * time.Second})
	r.now = clk.now
	ctx := context.Background()
	count := func(name string, qtype uint16) int64 { return s.QueriesFor(name, qtype) }

	steps := []struct {
		name      string
		advance   time.Duration
		qname     string
		qtype     uint16
		wantCount int64 // upstream queries for qname so far
		fromCache bool
		ttl       time.Duration
	}{
		{"first", 0, "example.test", dns.TypeTXT, 1, false, 30 * time.Second},
		{"cached", 10 * time.Second, "EXAMPLE.test.", dns.TypeTXT, 1, true, 20 * time.Second},
		{"other type not cached", 0, "example.test", dns.TypeA, 1, false, 30 * time.Second},
		{"expired", 21 * time.Second, "example.test", dns.TypeTXT, 2, false, 30 * time.Second},
		{"ttl capped", 0, "long.test", dns.TypeTXT, 1, false, time.Hour},
		{"ttl floor", 0, "ttl0.test", dns.TypeTXT, 1, false, time.Second},
		{"nxdomain default soa", 0, "gone.test", dns.TypeTXT, 1, false, 30 * time.Second},
		{"nxdomain cached", 29 * time.Second, "gone.test", dns.TypeTXT, 1, true, time.Second},
		{"nxdomain expired", 2 * time.Second, "gone.test", dns.TypeTXT, 2, false, 30 * time.Second},
		{"negative ttl from soa minimum", 0, "x.neg.test", dns.TypeTXT, 1, false, 5 * time.Second},
		{"negative cached", 4 * time.Second, "x.neg.test", dns.TypeTXT, 1, true, time.Second},
		{"negative expired", 2 * time.Second, "x.neg.test", dns.TypeTXT, 2, false, 5 * time.Second},
		{"nodata cached", 0, "v4only.test", dns.TypeTXT, 1, false, 30 * time.Second},
		{"nodata hit", 1 * time.Second, "v4only.test", dns.TypeTXT, 1, true, 29 * time.Second},
	}
	for _, st := range steps {
		clk.add(st.advance)
		a, err := r.Query(ctx, st.qname, st.qtype)
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got := count(st.qname, st.qtype); got != st.wantCount {
			t.Errorf("%s: %d upstream queries, want %d", st.name, got, st.wantCount)
		}
		if a.FromCache != st.fromCache || a.TTL != st.ttl {
			t.Errorf("%s: FromCache=%v TTL=%v, want %v %v", st.name, a.FromCache, a.TTL, st.fromCache, st.ttl)
		}
	}

	// Temporary failures are cached for ServfailTTL only.
	for i, want := range []int64{1, 1, 2} {
		if i == 2 {
			clk.add(4 * time.Second)
		}
		_, err := r.LookupTXT(ctx, "sf.test")
		checkErr(t, err, kindTemp)
		if got := count("sf.test", dns.TypeTXT); got != want {
			t.Errorf("servfail lookup %d: %d upstream queries, want %d", i, got, want)
		}
	}
	st := r.Stats()
	if st.CacheHits == 0 || st.CacheMisses == 0 || st.CacheEntries == 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestCacheDisabled(t *testing.T) {
	s := startDNS(t, zoneRecords...)
	r := newResolver(t, Config{Servers: []string{s.Addr()}, CacheSize: -1, ServfailTTL: -1})
	for i := 0; i < 3; i++ {
		if _, err := r.LookupTXT(context.Background(), "example.test"); err != nil {
			t.Fatal(err)
		}
		r.LookupTXT(context.Background(), "sf.test")
	}
	if n := s.QueriesFor("example.test", dns.TypeTXT); n != 3 {
		t.Errorf("%d upstream queries with cache disabled, want 3", n)
	}
	if n := s.QueriesFor("sf.test", dns.TypeTXT); n != 3 {
		t.Errorf("%d upstream servfail queries, want 3", n)
	}

	// With the cache on but ServfailTTL < 0, failures are not cached.
	r2 := newResolver(t, Config{Servers: []string{s.Addr()}, ServfailTTL: -1})
	r2.LookupTXT(context.Background(), "sf.test")
	r2.LookupTXT(context.Background(), "sf.test")
	if n := s.QueriesFor("sf.test", dns.TypeTXT); n != 5 {
		t.Errorf("%d upstream servfail queries, want 5", n)
	}
}

func TestCacheEviction(t *testing.T) {
	s := startDNS(t, zoneRecords...)
	r := newResolver(t, Config{Servers: []string{s.Addr()}, CacheSize: 2})
	ctx := context.Background()
	for _, n := range []string{"example.test", "split.test", "target.test", "split.test"} {
		if _, err := r.LookupTXT(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	if got := r.Stats().CacheEntries; got != 2 {
		t.Errorf("%d entries, want 2", got)
	}
	r.LookupTXT(ctx, "example.test") // evicted first, so asked again
	if n := s.QueriesFor("example.test", dns.TypeTXT); n != 2 {
		t.Errorf("example.test asked %d times, want 2", n)
	}
	if n := s.QueriesFor("split.test", dns.TypeTXT); n != 1 {
		t.Errorf("split.test asked %d times, want 1", n)
	}
}

// slowProxy forwards queries to upstream after delay, to make lookups
// overlap.
func slowProxy(t *testing.T, upstream string, delay time.Duration) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		time.Sleep(delay)
		c := &dns.Client{Timeout: time.Second, UDPSize: 4096}
		if resp, _, err := c.Exchange(req, upstream); err == nil {
			w.WriteMsg(resp)
		}
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	wg.Add(1)
	go func() { defer wg.Done(); srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { srv.Shutdown(); wg.Wait() })
	return pc.LocalAddr().String()
}

func TestSingleflight(t *testing.T) {
	s := startDNS(t, zoneRecords...)
	proxy := slowProxy(t, s.Addr(), 200*time.Millisecond)
	r := newResolver(t, Config{Servers: []string{proxy}, Timeout: 2 * time.Second})
	const n = 25
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := r.LookupTXT(context.Background(), "example.test")
			if err == nil && len(got) != 2 {
				err = &net.DNSError{Err: "wrong answer"}
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if q := s.QueriesFor("example.test", dns.TypeTXT); q != 1 {
		t.Errorf("%d upstream queries for %d concurrent lookups, want 1", q, n)
	}
	if st := r.Stats(); st.Resolutions != 1 {
		t.Errorf("Resolutions = %d, want 1", st.Resolutions)
	}
}

func TestCancelOneWaiter(t *testing.T) {
	s := startDNS(t, zoneRecords...)
	proxy := slowProxy(t, s.Addr(), 300*time.Millisecond)
	r := newResolver(t, Config{Servers: []string{proxy}, Timeout: 2 * time.Second})

	patient := make(chan error, 1)
	go func() {
		_, err := r.LookupTXT(context.Background(), "example.test")
		patient <- err
	}()
	time.Sleep(20 * time.Millisecond) // let the patient caller start the query
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	_, err := r.LookupTXT(ctx, "example.test")
	checkErr(t, err, kindTemp)
	if el := time.Since(start); el > 250*time.Millisecond {
		t.Errorf("canceled caller waited %v", el)
	}
	if err := <-patient; err != nil {
		t.Errorf("the other waiter failed: %v", err)
	}
	a, err := r.Query(context.Background(), "example.test", dns.TypeTXT)
	if err != nil || !a.FromCache {
		t.Errorf("shared answer not cached: %+v %v", a, err)
	}
	if r.Stats().Canceled != 1 {
		t.Errorf("Canceled = %d", r.Stats().Canceled)
	}
}

func TestClose(t *testing.T) {
	s := startDNS(t, zoneRecords...)
	r, err := New(Config{Servers: []string{s.Addr()}, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := r.LookupTXT(context.Background(), "silent.test")
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	r.Close()
	checkErr(t, <-done, kindTemp)
	if el := time.Since(start); el > time.Second {
		t.Errorf("Close took %v", el)
	}
	_, err = r.LookupTXT(context.Background(), "example.test")
	checkErr(t, err, kindTemp)
}

func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		z := dnstest.NewZone(dnstest.Options{})
		if err := z.Add(zoneRecords...); err != nil {
			t.Fatal(err)
		}
		s, err := dnstest.Start(z)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		r, err := New(Config{Servers: []string{s.Addr()}, Timeout: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		defer cancel()
		r.LookupTXT(ctx, "silent.test") // leaves early; the query goes on
		for _, n := range []string{"example.test", "big.test", "sf.test", "nope.test"} {
			r.LookupTXT(context.Background(), n)
			r.LookupIPAddr(context.Background(), n)
		}
	}()
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines, %d before\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

func TestServersFromResolvConf(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		body string
		want []string
	}{
		{"mixed", "# comment\nsearch example.com\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n; other\nnameserver fe80::1%eth0\noptions ndots:2\n",
			[]string{"192.0.2.53:53", "[2001:db8::53]:53", "[fe80::1%eth0]:53"}},
		{"bad entries skipped", "nameserver\nnameserver not-an-ip\nnameserver 10.0.0.1 extra\n", []string{"10.0.0.1:53"}},
		{"none", "search example.com\n", nil},
		{"empty", "", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name)
			os.WriteFile(p, []byte(tc.body), 0o600)
			got, err := ServersFromResolvConf(p)
			if (err != nil) != (tc.want == nil) {
				t.Fatalf("err = %v", err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
	if _, err := ServersFromResolvConf(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file: no error")
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		servers []string
		want    []string
		ok      bool
	}{
		{[]string{"127.0.0.1:5353"}, []string{"127.0.0.1:5353"}, true},
		{[]string{"192.0.2.1", "2001:db8::1", "[2001:db8::2]"}, []string{"192.0.2.1:53", "[2001:db8::1]:53", "[2001:db8::2]:53"}, true},
		{[]string{"resolver.example"}, nil, false},
		{make([]string, 17), nil, false},
	}
	for _, tc := range tests {
		r, err := New(Config{Servers: tc.servers})
		if (err == nil) != tc.ok {
			t.Errorf("New(%q): %v", tc.servers, err)
			continue
		}
		if err == nil {
			if !slices.Equal(r.servers, tc.want) {
				t.Errorf("servers %q, want %q", r.servers, tc.want)
			}
			if r.cfg.Timeout != DefaultTimeout || r.cfg.Attempts != DefaultAttempts || r.cfg.MaxTTL != DefaultMaxTTL ||
				r.cfg.ServfailTTL != DefaultServfailTTL || r.cache == nil || r.cache.max != DefaultCacheSize {
				t.Errorf("defaults %+v", r.cfg)
			}
			r.Close()
		}
	}
}

func TestUnescape(t *testing.T) {
	tests := []struct{ in, want string }{
		{`plain`, "plain"},
		{`a\"b`, `a"b`},
		{`a\\b`, `a\b`},
		{`\000\255x`, "\x00\xffx"},
		{`\256`, "256"},
		{`\12`, "12"},
		{`end\`, `end\`},
		{`\;\(`, ";("},
	}
	for _, tc := range tests {
		if got := unescape(tc.in); got != tc.want {
			t.Errorf("unescape(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func BenchmarkCachedLookupTXT(b *testing.B) {
	s := startDNS(b, zoneRecords...)
	r := newResolver(b, Config{Servers: []string{s.Addr()}})
	ctx := context.Background()
	if _, err := r.LookupTXT(ctx, "example.test"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := r.LookupTXT(ctx, "example.test"); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
