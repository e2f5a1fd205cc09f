package dnstest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// Record is one entry of the cases' `dns` list: a resource record, or a DNS
// fault when Behavior is set.
type Record struct {
	Name     string   `json:"name"`
	Type     string   `json:"type,omitempty"`
	TTL      int      `json:"ttl,omitempty"`
	Value    string   `json:"value,omitempty"`
	Strings  []string `json:"strings,omitempty"`
	DKIMKey  string   `json:"dkim_key,omitempty"`
	Behavior string   `json:"behavior,omitempty"`
}

// Options configure a Zone.
type Options struct {
	// KeyDir is where dkim_key NAME resolves to KeyDir/NAME.txt.
	KeyDir string
}

// Behaviors a Record may ask for instead of data.
const (
	BehaviorServfail = "servfail"
	BehaviorTimeout  = "timeout"
	BehaviorNXDomain = "nxdomain"
	BehaviorRefused  = "refused"
)

const (
	defaultTTL = 30
	// maxTXTString is the longest character-string (RFC 1035 §3.3).
	maxTXTString = 255
	// maxRecords bounds one zone so that a broken generator cannot
	// exhaust memory in a test.
	maxRecords = 1 << 20
	// maxKeyFile bounds a DKIM key file read from KeyDir.
	maxKeyFile = 64 << 10
	// maxLoadFile bounds a zone file read by LoadFile.
	maxLoadFile = 64 << 20
)

type rrset struct {
	rrs  []dns.RR
	keys []string // sorted presentation forms, to compare sets
}

type node struct {
	sets     map[uint16]*rrset
	types    []uint16 // in the order first added, for ANY
	faultAll string
	faults   map[uint16]string
}

// fault returns the behavior that covers qtype at this node, if any.
func (n *node) fault(qtype uint16) string {
	if n.faultAll != "" {
		return n.faultAll
	}
	return n.faults[qtype]
}

// Zone is a merged set of records, safe for concurrent use.
type Zone struct {
	opts Options

	mu     sync.RWMutex
	nodes  map[string]*node // key: lower-case presentation form, with trailing dot
	exists map[string]bool  // names with anything at or below them
	count  int
}

// NewZone returns an empty zone.
func NewZone(opts Options) *Zone {
	return &Zone{opts: opts, nodes: map[string]*node{}, exists: map[string]bool{}}
}

// LoadFile reads a JSON array of Record (the format of zone/base.json).
// Unknown keys are an error so that a format change is noticed.
func LoadFile(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return decodeRecords(io.LimitReader(f, maxLoadFile), path)
}

func decodeRecords(r io.Reader, what string) ([]Record, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var recs []Record
	if err := dec.Decode(&recs); err != nil {
		return nil, fmt.Errorf("dnstest: %s: %w", what, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("dnstest: %s: data after the JSON array", what)
	}
	return recs, nil
}

// staged is one Add call, validated but not merged yet.
type staged struct {
	sets     map[string]map[uint16]*rrset
	types    map[string][]uint16
	faultAll map[string]string
	faults   map[string]map[uint16]string
	names    []string // in first-seen order
}

// Add merges recs into the zone as one unit: either all of them are added
// or, on any invalid record or conflict, none.
func (z *Zone) Add(recs ...Record) error {
	st := &staged{
		sets:     map[string]map[uint16]*rrset{},
		types:    map[string][]uint16{},
		faultAll: map[string]string{},
		faults:   map[string]map[uint16]string{},
	}
	seen := map[string]bool{}
	for i, rec := range recs {
		name, err := ownerName(rec.Name)
		if err != nil {
			return fmt.Errorf("dnstest: record %d (%q): %w", i, rec.Name, err)
		}
		if !seen[name] {
			seen[name] = true
			st.names = append(st.names, name)
		}
		if err := z.stage(st, name, rec); err != nil {
			return fmt.Errorf("dnstest: record %d (%s %s): %w", i, rec.Name, rec.Type, err)
		}
	}
	for _, name := range st.names {
		if err := checkDataVsFaults(st.sets[name], st.faultAll[name], st.faults[name]); err != nil {
			return fmt.Errorf("dnstest: %s: %w", name, err)
		}
	}

	z.mu.Lock()
	defer z.mu.Unlock()
	if z.count+len(recs) > maxRecords {
		return fmt.Errorf("dnstest: more than %d records", maxRecords)
	}
	for _, name := range st.names {
		if err := z.conflict(st, name); err != nil {
			return fmt.Errorf("dnstest: conflict at %s: %w", name, err)
		}
	}
	for _, name := range st.names {
		n := z.nodes[name]
		if n == nil {
			n = &node{sets: map[uint16]*rrset{}, faults: map[uint16]string{}}
			z.nodes[name] = n
		}
		for _, t := range st.types[name] {
			if _, ok := n.sets[t]; !ok {
				n.sets[t] = st.sets[name][t]
				n.types = append(n.types, t)
			}
		}
		if f := st.faultAll[name]; f != "" {
			n.faultAll = f
		}
		for t, f := range st.faults[name] {
			n.faults[t] = f
		}
		z.markExists(name)
	}
	z.count += len(recs)
	return nil
}

// stage validates rec and adds it to st.
func (z *Zone) stage(st *staged, name string, rec Record) error {
	typ := strings.ToUpper(strings.TrimSpace(rec.Type))
	var qtype uint16
	if typ != "" {
		t, ok := dns.StringToType[typ]
		if !ok || t == dns.TypeOPT || t == dns.TypeANY || t == dns.TypeNone {
			return fmt.Errorf("unknown or unusable type %q", rec.Type)
		}
		qtype = t
	}
	if rec.TTL < 0 || rec.TTL > 1<<31-1 {
		return fmt.Errorf("ttl %d out of range", rec.TTL)
	}

	if rec.Behavior != "" {
		switch rec.Behavior {
		case BehaviorServfail, BehaviorTimeout, BehaviorNXDomain, BehaviorRefused:
		default:
			return fmt.Errorf("unknown behavior %q", rec.Behavior)
		}
		if rec.Value != "" || rec.Strings != nil || rec.DKIMKey != "" {
			return errors.New("behavior together with data")
		}
		if qtype == 0 {
			if old := st.faultAll[name]; old != "" && old != rec.Behavior {
				return fmt.Errorf("behaviors %s and %s", old, rec.Behavior)
			}
			st.faultAll[name] = rec.Behavior
			return nil
		}
		if st.faults[name] == nil {
			st.faults[name] = map[uint16]string{}
		}
		if old := st.faults[name][qtype]; old != "" && old != rec.Behavior {
			return fmt.Errorf("behaviors %s and %s", old, rec.Behavior)
		}
		st.faults[name][qtype] = rec.Behavior
		return nil
	}

	if qtype == 0 {
		return errors.New("type required without behavior")
	}
	rr, err := z.buildRR(name, qtype, rec)
	if err != nil {
		return err
	}
	if st.sets[name] == nil {
		st.sets[name] = map[uint16]*rrset{}
	}
	set := st.sets[name][qtype]
	if set == nil {
		set = &rrset{}
		st.sets[name][qtype] = set
		st.types[name] = append(st.types[name], qtype)
	}
	set.rrs = append(set.rrs, rr)
	set.keys = append(set.keys, rrKey(rr))
	slices.Sort(set.keys)
	return nil
}

// rrKey is the canonical presentation of rr, TTL included: two RRsets are
// the same only when every record and TTL is.
func rrKey(rr dns.RR) string {
	c := dns.Copy(rr)
	c.Header().Name = strings.ToLower(c.Header().Name)
	return c.String()
}

func (z *Zone) buildRR(name string, qtype uint16, rec Record) (dns.RR, error) {
	ttl := uint32(defaultTTL)
	if rec.TTL > 0 {
		ttl = uint32(rec.TTL)
	}
	hdr := dns.RR_Header{Name: name, Rrtype: qtype, Class: dns.ClassINET, Ttl: ttl}
	if qtype == dns.TypeTXT {
		n := 0
		if rec.Value != "" {
			n++
		}
		if rec.Strings != nil {
			n++
		}
		if rec.DKIMKey != "" {
			n++
		}
		if n > 1 {
			return nil, errors.New("TXT needs exactly one of value, strings, dkim_key")
		}
		var parts []string
		switch {
		case rec.Strings != nil:
			if len(rec.Strings) == 0 {
				return nil, errors.New("empty strings list")
			}
			for _, s := range rec.Strings {
				if len(s) > maxTXTString {
					return nil, fmt.Errorf("character-string of %d bytes (max %d)", len(s), maxTXTString)
				}
				parts = append(parts, s)
			}
		case rec.DKIMKey != "":
			v, err := z.readKey(rec.DKIMKey)
			if err != nil {
				return nil, err
			}
			parts = splitTXT(v)
		default:
			parts = splitTXT(rec.Value)
		}
		txt := &dns.TXT{Hdr: hdr}
		for _, p := range parts {
			txt.Txt = append(txt.Txt, escapeTXT(p))
		}
		return txt, nil
	}
	if rec.Strings != nil || rec.DKIMKey != "" {
		return nil, errors.New("strings and dkim_key are for TXT only")
	}
	if strings.TrimSpace(rec.Value) == "" {
		return nil, errors.New("value required")
	}
	if strings.ContainsAny(rec.Value, "\n\r") {
		return nil, errors.New("value spans lines")
	}
	// Parse the RDATA under a placeholder owner: the real owner may hold
	// bytes that zone-file syntax treats specially.
	rr, err := dns.NewRR(". 0 IN " + dns.TypeToString[qtype] + " " + rec.Value)
	if err != nil {
		return nil, fmt.Errorf("value %q: %w", rec.Value, err)
	}
	if rr == nil || rr.Header().Rrtype != qtype {
		return nil, fmt.Errorf("value %q does not parse as %s", rec.Value, dns.TypeToString[qtype])
	}
	*rr.Header() = hdr
	return rr, nil
}

func (z *Zone) readKey(name string) (string, error) {
	if name == "" || strings.ContainsAny(name, `/\`) || name == "." || name == ".." {
		return "", fmt.Errorf("bad dkim_key name %q", name)
	}
	if z.opts.KeyDir == "" {
		return "", fmt.Errorf("dkim_key %q without Options.KeyDir", name)
	}
	f, err := os.Open(filepath.Join(z.opts.KeyDir, name+".txt"))
	if err != nil {
		return "", fmt.Errorf("dkim_key: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return "", fmt.Errorf("dkim_key: %w", err)
	}
	if len(b) > maxKeyFile {
		return "", fmt.Errorf("dkim_key %q: file too large", name)
	}
	return string(bytes.TrimSpace(b)), nil
}

// splitTXT cuts s into character-strings of at most 255 bytes (RFC 1035
// §3.3.14); readers concatenate them (RFC 7208 §3.3, RFC 6376 §3.6.2.2).
func splitTXT(s string) []string {
	if s == "" {
		return []string{""}
	}
	var out []string
	for len(s) > maxTXTString {
		out = append(out, s[:maxTXTString])
		s = s[maxTXTString:]
	}
	return append(out, s)
}

// escapeTXT turns raw bytes into the presentation form miekg/dns packs
// TXT strings from: it interprets backslash escapes, so every byte that
// is not plain printable ASCII is written as \DDD.
func escapeTXT(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' || c == '"':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < ' ' || c > '~':
			fmt.Fprintf(&b, "\\%03d", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// ownerName turns a case's literal name into the lower-case presentation
// form miekg/dns uses for question names, with a trailing dot. Only dots
// separate labels; every other byte is a label byte.
func ownerName(raw string) (string, error) {
	raw = strings.TrimSuffix(raw, ".")
	if raw == "" {
		return "", errors.New("empty name")
	}
	labels := strings.Split(raw, ".")
	wire := make([]byte, 0, len(raw)+2)
	for _, l := range labels {
		if l == "" {
			return "", errors.New("empty label")
		}
		if len(l) > 63 {
			return "", errors.New("label longer than 63 bytes")
		}
		wire = append(wire, byte(len(l)))
		for i := 0; i < len(l); i++ {
			c := l[i]
			if c >= 'A' && c <= 'Z' {
				c += 'a' - 'A'
			}
			wire = append(wire, c)
		}
	}
	wire = append(wire, 0)
	if len(wire) > 255 {
		return "", errors.New("name longer than 255 bytes on the wire")
	}
	name, _, err := dns.UnpackDomainName(wire, 0)
	if err != nil {
		return "", err
	}
	return name, nil
}

// canonical lower-cases a presentation-form name and re-escapes it the
// way miekg/dns unpacks names, so that equal names compare equal.
func canonical(name string) string {
	buf := make([]byte, 256)
	n, err := dns.PackDomainName(dns.Fqdn(name), buf, 0, nil, false)
	if err != nil {
		return strings.ToLower(dns.Fqdn(name))
	}
	wire := buf[:n]
	// Length octets are at most 63, below 'A', so lower-casing the whole
	// wire form only touches label bytes.
	for i, c := range wire {
		if c >= 'A' && c <= 'Z' {
			wire[i] = c + 'a' - 'A'
		}
	}
	s, _, err := dns.UnpackDomainName(wire, 0)
	if err != nil {
		return strings.ToLower(dns.Fqdn(name))
	}
	return s
}

func checkDataVsFaults(sets map[uint16]*rrset, all string, faults map[uint16]string) error {
	if all != "" && len(sets) > 0 {
		return fmt.Errorf("data and behavior %s for all types", all)
	}
	for t, f := range faults {
		if _, ok := sets[t]; ok {
			return fmt.Errorf("%s data and behavior %s", dns.TypeToString[t], f)
		}
		if all != "" && all != f {
			return fmt.Errorf("behaviors %s and %s", all, f)
		}
	}
	return nil
}

// conflict checks one staged name against the zone; z.mu is held.
func (z *Zone) conflict(st *staged, name string) error {
	n := z.nodes[name]
	if n == nil {
		return nil
	}
	for t, set := range st.sets[name] {
		if old, ok := n.sets[t]; ok && !slices.Equal(old.keys, set.keys) {
			return fmt.Errorf("%s RRset declared twice with different records", dns.TypeToString[t])
		}
	}
	sets := map[uint16]*rrset{}
	for t, s := range n.sets {
		sets[t] = s
	}
	for t, s := range st.sets[name] {
		sets[t] = s
	}
	all := n.faultAll
	if f := st.faultAll[name]; f != "" {
		if all != "" && all != f {
			return fmt.Errorf("behaviors %s and %s", all, f)
		}
		all = f
	}
	faults := map[uint16]string{}
	for t, f := range n.faults {
		faults[t] = f
	}
	for t, f := range st.faults[name] {
		if old := faults[t]; old != "" && old != f {
			return fmt.Errorf("behaviors %s and %s for %s", old, f, dns.TypeToString[t])
		}
		faults[t] = f
	}
	return checkDataVsFaults(sets, all, faults)
}

// markExists records name and its ancestors as existing; z.mu is held.
func (z *Zone) markExists(name string) {
	for _, off := range dns.Split(name) {
		z.exists[name[off:]] = true
	}
	z.exists["."] = true
}

// soa returns the SOA for a negative answer about name: the closest
// enclosing SOA record in the zone, else a synthetic one at the top-level
// label. z.mu is held for reading.
func (z *Zone) soa(name string) dns.RR {
	offs := dns.Split(name)
	for _, off := range offs {
		if n := z.nodes[name[off:]]; n != nil {
			if set := n.sets[dns.TypeSOA]; set != nil && len(set.rrs) > 0 {
				return set.rrs[0]
			}
		}
	}
	owner := "."
	if len(offs) > 0 {
		owner = name[offs[len(offs)-1]:]
	}
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: owner, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: defaultTTL},
		Ns:      "ns.lab.test.",
		Mbox:    "hostmaster.lab.test.",
		Serial:  1,
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  defaultTTL,
	}
}

// maxChain bounds CNAME following inside the zone.
const maxChain = 16

// reply is what the zone says about one question.
type reply struct {
	drop   bool
	rcode  int
	answer []dns.RR
	ns     []dns.RR
}

// lookup answers one question (RFC 1034 §4.3.2, without delegations).
func (z *Zone) lookup(qname string, qtype uint16) reply {
	z.mu.RLock()
	defer z.mu.RUnlock()
	name := canonical(qname)
	var r reply
	visited := map[string]bool{}
	for hop := 0; hop <= maxChain; hop++ {
		if visited[name] {
			break
		}
		visited[name] = true
		n := z.nodes[name]
		if n != nil {
			switch n.fault(qtype) {
			case BehaviorTimeout:
				return reply{drop: true}
			case BehaviorServfail:
				return reply{rcode: dns.RcodeServerFailure}
			case BehaviorRefused:
				return reply{rcode: dns.RcodeRefused}
			case BehaviorNXDomain:
				r.rcode = dns.RcodeNameError
				r.ns = []dns.RR{z.soa(name)}
				return r
			}
			if qtype == dns.TypeANY && len(n.types) > 0 {
				for _, t := range n.types {
					r.answer = append(r.answer, n.sets[t].rrs...)
				}
				return r
			}
			if set := n.sets[qtype]; set != nil {
				r.answer = append(r.answer, set.rrs...)
				return r
			}
			if set := n.sets[dns.TypeCNAME]; set != nil && len(set.rrs) > 0 {
				r.answer = append(r.answer, set.rrs[0])
				name = canonical(set.rrs[0].(*dns.CNAME).Target)
				continue
			}
		}
		if !z.exists[name] {
			r.rcode = dns.RcodeNameError
		}
		r.ns = []dns.RR{z.soa(name)}
		return r
	}
	return reply{rcode: dns.RcodeServerFailure}
}
