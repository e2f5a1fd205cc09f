package dnsres

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sync/singleflight"
)

// Config configures a Resolver. Zero values take the defaults.
type Config struct {
	Servers     []string      // "host:port"; empty = from /etc/resolv.conf
	Timeout     time.Duration // per attempt, default 2s
	Attempts    int           // per server, default 2
	CacheSize   int           // entries, default 100000; <0 disables cache
	MaxTTL      time.Duration // default 1h
	ServfailTTL time.Duration // default 5s; <0 disables caching of failures
}

// Defaults and bounds.
const (
	DefaultTimeout     = 2 * time.Second
	DefaultAttempts    = 2
	DefaultCacheSize   = 100000
	DefaultMaxTTL      = time.Hour
	DefaultServfailTTL = 5 * time.Second

	// ednsSize is the UDP buffer we advertise (RFC 6891 §6.2.5), the
	// DNS Flag Day 2020 value that avoids IP fragmentation.
	ednsSize = 1232
	// minTTL keeps a TTL-0 answer for a moment, so that a burst of
	// identical lookups in one message does not hit the network again.
	minTTL = time.Second
	// maxChain bounds the CNAME chain followed in an answer.
	maxChain = 16
	// maxServers and maxAttempts bound the work of one query.
	maxServers  = 16
	maxAttempts = 5
	// maxResolvConf bounds the bytes read from resolv.conf.
	maxResolvConf = 1 << 20
)

// Answer is the outcome of one query that reached a definite answer.
// RRs and the records in it are shared with the cache: read only.
type Answer struct {
	RRs       []dns.RR // records of the type asked, owned by the name or its CNAME chain
	Rcode     int      // dns.RcodeSuccess or dns.RcodeNameError
	NXDomain  bool     // the name (or the end of its CNAME chain) does not exist
	TTL       time.Duration
	FromCache bool
	Chain     []string // CNAME targets followed from the name asked, in order
}

// Stats is a snapshot of the resolver's counters.
type Stats struct {
	Queries      uint64 // exchanges sent upstream, UDP and TCP
	TCPFallbacks uint64 // truncated UDP replies repeated over TCP
	CacheHits    uint64
	CacheMisses  uint64
	Resolutions  uint64 // shared upstream resolutions; CacheMisses - Resolutions were collapsed
	CacheEntries int

	// Outcomes of resolutions, and of callers that stopped waiting.
	NXDomain uint64
	NoData   uint64
	ServFail uint64
	Refused  uint64
	Rcode    uint64 // other unexpected rcodes (FORMERR, NOTIMP, ...)
	Timeout  uint64
	Network  uint64 // connection refused, unreachable, bad replies
	Canceled uint64 // the caller's context ended first
	Invalid  uint64 // names that cannot be queried
}

// Resolver is a caching stub resolver, safe for concurrent use by all
// sessions.
type Resolver struct {
	cfg     Config
	servers []string
	cache   *cache // nil when disabled
	sf      singleflight.Group
	now     func() time.Time

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup

	st counters
}

// ServersFromResolvConf returns the nameserver addresses of a
// resolv.conf file as "host:53" (IPv6 bracketed).
func ServersFromResolvConf(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(io.LimitReader(f, maxResolvConf))
	for sc.Scan() && len(out) < maxServers {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		host, _, _ := strings.Cut(fields[1], "%")
		if net.ParseIP(host) == nil {
			continue
		}
		out = append(out, net.JoinHostPort(fields[1], "53"))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("dnsres: %s: %w", path, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("dnsres: %s: no nameserver lines", path)
	}
	return out, nil
}

// New returns a Resolver for cfg.
func New(cfg Config) (*Resolver, error) {
	servers := cfg.Servers
	if len(servers) == 0 {
		s, err := ServersFromResolvConf("/etc/resolv.conf")
		if err != nil {
			return nil, err
		}
		servers = s
	}
	if len(servers) > maxServers {
		return nil, fmt.Errorf("dnsres: %d servers, at most %d", len(servers), maxServers)
	}
	var norm []string
	for _, s := range servers {
		if _, _, err := net.SplitHostPort(s); err != nil {
			if net.ParseIP(strings.Trim(s, "[]")) == nil {
				return nil, fmt.Errorf("dnsres: server %q: want host:port", s)
			}
			s = net.JoinHostPort(strings.Trim(s, "[]"), "53")
		}
		norm = append(norm, s)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = DefaultAttempts
	}
	cfg.Attempts = min(cfg.Attempts, maxAttempts)
	if cfg.CacheSize == 0 {
		cfg.CacheSize = DefaultCacheSize
	}
	if cfg.MaxTTL <= 0 {
		cfg.MaxTTL = DefaultMaxTTL
	}
	if cfg.ServfailTTL == 0 {
		cfg.ServfailTTL = DefaultServfailTTL
	}
	cfg.Servers = norm
	r := &Resolver{cfg: cfg, servers: norm, now: time.Now}
	if cfg.CacheSize > 0 {
		r.cache = newCache(cfg.CacheSize)
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	return r, nil
}

// Close cancels queries in flight and waits for them. Later lookups that
// miss the cache fail with a temporary error.
func (r *Resolver) Close() error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
	return nil
}

// enter registers a resolution unless the resolver is closed.
func (r *Resolver) enter() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.wg.Add(1)
	return true
}

// Stats returns a snapshot of the counters.
func (r *Resolver) Stats() Stats {
	s := r.st.snapshot()
	if r.cache != nil {
		s.CacheEntries = r.cache.len()
	}
	return s
}

// Query asks for name and qtype, through the cache. NXDOMAIN is an Answer
// with NXDomain set and a nil error; the error is a *net.DNSError, for
// temporary failures (IsTemporary) and unusable names (IsNotFound).
func (r *Resolver) Query(ctx context.Context, name string, qtype uint16) (*Answer, error) {
	qname, ok := queryName(name)
	if !ok {
		r.st.invalid.Add(1)
		return nil, &net.DNSError{Err: "invalid domain name", Name: name, IsNotFound: true}
	}
	key := qname + "/" + strconv.Itoa(int(qtype))
	if r.cache != nil {
		if e, ok := r.cache.get(key, r.now()); ok {
			r.st.hits.Add(1)
			return e.result(name, r.now(), true)
		}
	}
	r.st.misses.Add(1)
	if err := ctx.Err(); err != nil {
		r.st.canceled.Add(1)
		return nil, ctxError(name, err)
	}
	ch := r.sf.DoChan(key, func() (any, error) {
		return r.resolve(key, qname, qtype), nil
	})
	select {
	case res := <-ch:
		return res.Val.(*entry).result(name, r.now(), false)
	case <-ctx.Done():
		// The resolution goes on for the other waiters and the cache.
		r.st.canceled.Add(1)
		return nil, ctxError(name, ctx.Err())
	}
}

func ctxError(name string, err error) error {
	return &net.DNSError{
		Err:         err.Error(),
		Name:        name,
		IsTemporary: true,
		IsTimeout:   errors.Is(err, context.DeadlineExceeded),
	}
}

// resolve performs one shared upstream resolution and caches its outcome.
func (r *Resolver) resolve(key, qname string, qtype uint16) *entry {
	if !r.enter() {
		return &entry{err: &net.DNSError{Err: "resolver closed", IsTemporary: true}}
	}
	defer r.wg.Done()
	r.st.resolutions.Add(1)
	resp, server, err := r.exchangeAll(qname, qtype)
	e := r.classify(qname, qtype, resp, server, err)
	if r.cache != nil && e.ttl > 0 && r.ctx.Err() == nil {
		e.expires = r.now().Add(e.ttl)
		r.cache.put(key, e)
	}
	return e
}

// exchangeAll tries each server in turn, Attempts rounds at most. A server
// that answered SERVFAIL, REFUSED or another error rcode is not asked again:
// it gave its answer, a retry would repeat it.
func (r *Resolver) exchangeAll(qname string, qtype uint16) (*dns.Msg, string, error) {
	var (
		lastResp   *dns.Msg
		lastServer string
		lastErr    error
	)
	answered := make([]bool, len(r.servers))
	for round := 0; round < r.cfg.Attempts; round++ {
		for i, srv := range r.servers {
			if answered[i] {
				continue
			}
			if err := r.ctx.Err(); err != nil {
				return nil, srv, errClosed
			}
			resp, err := r.exchange(srv, qname, qtype)
			if err != nil {
				lastResp, lastServer, lastErr = nil, srv, err
				continue
			}
			if resp.Rcode == dns.RcodeSuccess || resp.Rcode == dns.RcodeNameError {
				return resp, srv, nil
			}
			answered[i] = true
			lastResp, lastServer, lastErr = resp, srv, nil
		}
	}
	return lastResp, lastServer, lastErr
}

var (
	errClosed   = errors.New("resolver closed")
	errMismatch = errors.New("reply does not match the question")
)

// exchange sends one query to server: UDP with EDNS0, then TCP when the
// reply is truncated (RFC 7766 §5; miekg/dns does not fall back itself).
func (r *Resolver) exchange(server, qname string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(qname, qtype)
	m.RecursionDesired = true
	m.SetEdns0(ednsSize, false) // RFC 6891 §6.2.5
	resp, err := r.exchangeNet("udp", server, m)
	if resp != nil && resp.Truncated {
		r.st.tcp.Add(1)
		resp, err = r.exchangeNet("tcp", server, m)
	}
	if err != nil {
		return nil, err
	}
	// RFC 5452 §9.1: the reply must answer our question, not another.
	if len(resp.Question) != 1 || resp.Question[0].Qtype != qtype ||
		!strings.EqualFold(resp.Question[0].Name, qname) {
		return nil, errMismatch
	}
	return resp, nil
}

func (r *Resolver) exchangeNet(network, server string, m *dns.Msg) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.Timeout)
	defer cancel()
	c := &dns.Client{Net: network, UDPSize: ednsSize, Timeout: r.cfg.Timeout}
	r.st.queries.Add(1)
	conn, err := c.DialContext(ctx, server)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// Close unblocks the read at once when the resolver is closed; the
	// per-attempt deadline is the connection's own.
	stop := context.AfterFunc(r.ctx, func() { conn.Close() })
	defer stop()
	resp, _, err := c.ExchangeWithConnContext(ctx, m, conn)
	if err != nil && r.ctx.Err() != nil {
		return nil, errClosed
	}
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if err != nil && resp != nil && resp.Truncated {
		// A reply cut mid-record may not unpack; TC still says "use TCP".
		return resp, nil
	}
	return resp, err
}

// classify turns the outcome of exchangeAll into a cache entry.
func (r *Resolver) classify(qname string, qtype uint16, resp *dns.Msg, server string, err error) *entry {
	if err != nil || resp == nil {
		if err == nil {
			err = errors.New("no reply")
		}
		de := &net.DNSError{Err: err.Error(), Server: server, IsTemporary: true}
		var ne net.Error
		switch {
		case errors.Is(err, errClosed):
			return &entry{err: de}
		case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, context.DeadlineExceeded):
			de.Err = "i/o timeout"
			de.IsTimeout = true
			r.st.timeout.Add(1)
		default:
			r.st.network.Add(1)
		}
		return &entry{err: de, ttl: r.failTTL()}
	}
	switch resp.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
	case dns.RcodeServerFailure:
		// RFC 2308 §7.1: a server failure may be cached, briefly.
		r.st.servfail.Add(1)
		return &entry{err: &net.DNSError{Err: "server misbehaving (SERVFAIL)", Server: server, IsTemporary: true}, ttl: r.failTTL()}
	case dns.RcodeRefused:
		r.st.refused.Add(1)
		return &entry{err: &net.DNSError{Err: "query refused (REFUSED)", Server: server, IsTemporary: true}, ttl: r.failTTL()}
	default:
		r.st.rcode.Add(1)
		return &entry{err: &net.DNSError{Err: "server misbehaving (" + dns.RcodeToString[resp.Rcode] + ")", Server: server, IsTemporary: true}, ttl: r.failTTL()}
	}

	a := Answer{Rcode: resp.Rcode, NXDomain: resp.Rcode == dns.RcodeNameError}
	ttl := uint32(1<<32 - 1)
	// RFC 1034 §4.3.2 / RFC 2181 §10.1.1: the recursive resolver returns
	// the CNAME chain; the data is owned by its last name.
	owners := map[string]bool{strings.ToLower(qname): true}
	cur := strings.ToLower(qname)
	if qtype != dns.TypeCNAME {
		for hop := 0; hop < maxChain; hop++ {
			var next *dns.CNAME
			for _, rr := range resp.Answer {
				if c, ok := rr.(*dns.CNAME); ok && strings.EqualFold(c.Hdr.Name, cur) {
					next = c
					break
				}
			}
			if next == nil {
				break
			}
			ttl = min(ttl, next.Hdr.Ttl)
			cur = strings.ToLower(next.Target)
			if owners[cur] {
				break // a loop: stop where it closes
			}
			owners[cur] = true
			a.Chain = append(a.Chain, next.Target)
		}
	}
	for _, rr := range resp.Answer {
		h := rr.Header()
		if h.Rrtype == qtype && h.Class == dns.ClassINET && owners[strings.ToLower(h.Name)] {
			a.RRs = append(a.RRs, rr)
			ttl = min(ttl, h.Ttl)
		}
	}

	if len(a.RRs) > 0 && !a.NXDomain {
		d := max(min(time.Duration(ttl)*time.Second, r.cfg.MaxTTL), minTTL)
		a.TTL = d
		return &entry{ans: a, ttl: d}
	}
	if a.NXDomain {
		r.st.nxdomain.Add(1)
	} else {
		r.st.nodata.Add(1)
	}
	// RFC 2308 §5: the negative TTL is min(SOA TTL, SOA MINIMUM); without
	// an SOA the answer is not cached.
	var neg time.Duration
	for _, rr := range resp.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			neg = time.Duration(min(soa.Hdr.Ttl, soa.Minttl)) * time.Second
			neg = min(neg, r.cfg.MaxTTL, time.Duration(ttl)*time.Second)
			break
		}
	}
	a.TTL = neg
	return &entry{ans: a, ttl: neg}
}

func (r *Resolver) failTTL() time.Duration {
	if r.cfg.ServfailTTL < 0 {
		return 0
	}
	return r.cfg.ServfailTTL
}

// queryName turns a caller's name into the lower-case FQDN presentation
// form miekg/dns uses: every byte but the dot is a label byte, escaped
// where the presentation format needs it.
func queryName(name string) (string, bool) {
	name = strings.TrimSuffix(name, ".")
	if name == "" || len(name) > 253 {
		return "", false
	}
	wire := make([]byte, 0, len(name)+2)
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 {
			return "", false
		}
		wire = append(wire, byte(len(label)))
		for i := 0; i < len(label); i++ {
			c := label[i]
			if c >= 'A' && c <= 'Z' {
				c += 'a' - 'A'
			}
			wire = append(wire, c)
		}
	}
	wire = append(wire, 0)
	s, _, err := dns.UnpackDomainName(wire, 0)
	if err != nil {
		return "", false
	}
	return s, true
}

func notFound(name string) error {
	return &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

// LookupTXT returns each TXT record's character-strings joined (RFC 7208
// §3.3, RFC 6376 §3.6.2.2), as raw bytes.
func (r *Resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	a, err := r.Query(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	if a.NXDomain {
		return nil, notFound(name)
	}
	var out []string
	for _, rr := range a.RRs {
		if t, ok := rr.(*dns.TXT); ok {
			var b strings.Builder
			for _, s := range t.Txt {
				b.WriteString(unescape(s))
			}
			out = append(out, b.String())
		}
	}
	return out, nil
}

// LookupMX returns the MX records, lowest preference first, as
// net.Resolver does; hosts keep their trailing dot.
func (r *Resolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	a, err := r.Query(ctx, name, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	if a.NXDomain {
		return nil, notFound(name)
	}
	var out []*net.MX
	for _, rr := range a.RRs {
		if mx, ok := rr.(*dns.MX); ok {
			out = append(out, &net.MX{Host: unescape(mx.Mx), Pref: mx.Preference})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Pref < out[j].Pref })
	return out, nil
}

// LookupIPAddr returns the A and AAAA addresses of host, IPv4 first. A
// temporary failure of either query fails the lookup: a partial address
// list could turn a temperror into a wrong SPF fail (RFC 7208 §5).
func (r *Resolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	type res struct {
		a   *Answer
		err error
	}
	ch := make(chan res, 1)
	go func() {
		a, err := r.Query(ctx, host, dns.TypeAAAA)
		ch <- res{a, err}
	}()
	a4, err4 := r.Query(ctx, host, dns.TypeA)
	r6 := <-ch
	if err4 != nil {
		return nil, err4
	}
	if r6.err != nil {
		return nil, r6.err
	}
	var out []net.IPAddr
	for _, ans := range []*Answer{a4, r6.a} {
		for _, rr := range ans.RRs {
			switch v := rr.(type) {
			case *dns.A:
				out = append(out, net.IPAddr{IP: v.A})
			case *dns.AAAA:
				out = append(out, net.IPAddr{IP: v.AAAA})
			}
		}
	}
	if len(out) == 0 && (a4.NXDomain || r6.a.NXDomain) {
		return nil, notFound(host)
	}
	return out, nil
}

// LookupAddr returns the PTR names of addr (RFC 1035 §3.5, RFC 3596 §2.5),
// with their trailing dot.
func (r *Resolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	rev, err := dns.ReverseAddr(addr)
	if err != nil {
		return nil, &net.DNSError{Err: "unrecognized address", Name: addr}
	}
	a, err := r.Query(ctx, rev, dns.TypePTR)
	if err != nil {
		return nil, err
	}
	if a.NXDomain {
		return nil, notFound(addr)
	}
	var out []string
	for _, rr := range a.RRs {
		if p, ok := rr.(*dns.PTR); ok {
			out = append(out, unescape(p.Ptr))
		}
	}
	return out, nil
}

// DomainExists reports whether name exists in the DNS. RFC 8020 §2: an
// NXDOMAIN for any type means nothing exists at or below the name, and
// NODATA means it exists; so the A query decides, and AAAA and MX are asked
// only when it fails temporarily. RFC 9989 §3.2.13 needs exactly this
// distinction for np. A name that cannot exist (invalid) does not.
func (r *Resolver) DomainExists(ctx context.Context, name string) (bool, error) {
	var lastErr error
	for _, t := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeMX} {
		a, err := r.Query(ctx, name, t)
		if err != nil {
			if IsNotFound(err) {
				return false, nil
			}
			lastErr = err
			if ctx.Err() != nil {
				break
			}
			continue
		}
		// An alias exists even when its target does not.
		return !a.NXDomain || len(a.Chain) > 0, nil
	}
	return false, lastErr
}

// IsNotFound reports whether err says the name does not exist.
func IsNotFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

// IsTemporary reports whether err is a DNS failure worth retrying later
// (temperror in SPF, DKIM and DMARC terms).
func IsTemporary(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && (de.IsTemporary || de.IsTimeout)
}

// unescape turns miekg/dns presentation escapes (\X and \DDD) back into
// the raw bytes of the wire.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' || i+1 == len(s) {
			b = append(b, c)
			continue
		}
		if i+3 < len(s) && isDigit(s[i+1]) && isDigit(s[i+2]) && isDigit(s[i+3]) {
			v := int(s[i+1]-'0')*100 + int(s[i+2]-'0')*10 + int(s[i+3]-'0')
			if v <= 255 {
				b = append(b, byte(v))
				i += 3
				continue
			}
		}
		b = append(b, s[i+1])
		i++
	}
	return string(b)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
