package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/mail"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/publicsuffix"

	"github.com/dmarc-milter/dmarc-milter/auth/dnsres"
	"github.com/dmarc-milter/dmarc-milter/internal/domain"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

// recordCmd fetches a domain's DMARC policy through the daemon's resolver
// and discovery code and explains it: where it was found, every tag, and
// what a domain owner should fix. Exit 0: a valid policy applies; 1: none
// (no record, or an unusable one); 2: usage or DNS error.
func recordCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dmarc-milter record", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dnsFlag := fs.String("dns", "", "comma-separated resolvers, ADDRESS or ADDRESS:PORT (port 53 if none; default: /etc/resolv.conf)")
	spec := fs.String("spec", "rfc9989", "rfc9989 (DNS tree walk) or rfc7489 (public suffix list)")
	psl := fs.String("psl", "", "public suffix list `file` (default: bundled)")
	timeout := fs.Duration("dns-timeout", 2*time.Second, "timeout of one DNS query attempt")
	asJSON := fs.Bool("json", false, "print the explanation as JSON")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: dmarc-milter record [-dns HOST:PORT] [-spec rfc9989|rfc7489] [-psl FILE] [-json] example.com")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	st := defaultSettings()
	switch policy.Spec(*spec) {
	case policy.SpecRFC9989, policy.SpecRFC7489:
		st.Spec = policy.Spec(*spec)
	default:
		fmt.Fprintf(stderr, "dmarc-milter record: -spec %q: want rfc9989 or rfc7489\n", *spec)
		return 2
	}
	if *dnsFlag != "" {
		for _, s := range strings.Split(*dnsFlag, ",") {
			st.DNS = append(st.DNS, strings.TrimSpace(s))
		}
	}
	st.PSL, st.DNSTimeout = *psl, *timeout
	deps, res, err := buildDeps(st, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		fmt.Fprintf(stderr, "dmarc-milter record: %v\n", err)
		return 2
	}
	defer res.Close()
	var list policy.PublicSuffixList
	if st.PSL != "" {
		// buildDeps loaded it already; a second read cannot fail
		// differently in any way that matters here.
		list, _ = policy.LoadPSL(st.PSL)
	}

	ctx, cancel := context.WithTimeout(context.Background(), st.Milter.MessageTimeout)
	defer cancel()
	rep := explainRecord(ctx, deps.Evaluator, res, list, fs.Arg(0))

	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintf(stderr, "dmarc-milter record: %v\n", err)
			return 2
		}
	} else {
		w := bufio.NewWriter(stdout)
		rep.writeText(w)
		w.Flush()
	}
	return rep.exitCode()
}

// recordReport is the whole explanation; -json prints it as is.
type recordReport struct {
	Domain string `json:"domain"`
	Spec   string `json:"spec"`
	// Result: "policy" (a valid record applies), "none", "unusable",
	// "temperror" or "error" (the name cannot be looked up).
	Result       string        `json:"result"`
	Error        string        `json:"error,omitempty"`
	Lookups      []string      `json:"lookups"`
	PolicyDomain string        `json:"policy_domain,omitempty"`
	FoundAt      string        `json:"found_at,omitempty"`
	OrgDomain    string        `json:"org_domain,omitempty"`
	Record       string        `json:"record,omitempty"`
	CNAME        []string      `json:"cname_chain,omitempty"` // targets followed from _dmarc.<policy domain>
	Tags         []tagReport   `json:"tags,omitempty"`
	Applies      *appliesTo    `json:"applies,omitempty"`
	Discarded    []discardedAt `json:"discarded,omitempty"`
	Warnings     []string      `json:"warnings,omitempty"`
}

// tagReport explains one tag of the record, published or defaulted.
type tagReport struct {
	Tag   string `json:"tag"`
	Value string `json:"value"` // as published; empty when defaulted
	// Status: "ok", "default", "invalid", "unknown", "ignored",
	// "duplicate" or "malformed".
	Status    string `json:"status"`
	Effective string `json:"effective,omitempty"` // what applies, when it differs from Value
	Meaning   string `json:"meaning"`
}

// appliesTo is what the daemon applies to mail From the domain asked.
type appliesTo struct {
	Tag         string `json:"tag"`
	Policy      string `json:"policy"`
	Disposition string `json:"disposition_note,omitempty"`
}

// discardedAt lists DMARC records that discovery discarded at one name.
type discardedAt struct {
	Name    string   `json:"name"`
	Why     string   `json:"why"`
	Records []string `json:"records"`
}

func (r *recordReport) exitCode() int {
	switch r.Result {
	case "policy":
		return 0
	case "none", "unusable":
		return 1
	}
	return 2
}

func (r *recordReport) warnf(format string, args ...any) {
	r.Warnings = append(r.Warnings, fmt.Sprintf(format, args...))
}

// explainRecord runs the daemon's discovery for name and explains what it
// found.
func explainRecord(ctx context.Context, ev *policy.Evaluator, res *dnsres.Resolver, list policy.PublicSuffixList, name string) *recordReport {
	spec := ev.Spec()
	rep := &recordReport{Domain: name, Spec: string(spec), Lookups: []string{}}
	d := ev.Discover(ctx, name)
	for _, l := range d.Trace {
		// Record warnings are listed once, under the warnings.
		if !strings.Contains(l, ": warning: ") {
			rep.Lookups = append(rep.Lookups, l)
		}
	}
	if d.FromDomain != "" {
		rep.Domain = d.FromDomain
	}
	rep.OrgDomain = d.OrgDomain

	// Records discovery dropped along the way, read again from the
	// resolver's cache, so the owner sees exactly what was published.
	for _, line := range d.Trace {
		q, outcome, ok := strings.Cut(line, ": ")
		if !ok || !strings.HasPrefix(q, "_dmarc.") {
			continue
		}
		var why string
		switch {
		case strings.HasSuffix(outcome, "DMARC records, all discarded"):
			if spec == policy.SpecRFC7489 {
				why = "several DMARC records at one name: DMARC is not applied (RFC 7489 §6.6.3 step 5)"
			} else {
				why = "several DMARC records at one name: all are discarded (RFC 9989 §4.10 step 2)"
			}
		case strings.HasPrefix(outcome, "unusable record: "):
			if q == "_dmarc."+d.FromDomain && d.Err != nil {
				continue // the main finding, explained below
			}
			why = strings.TrimPrefix(outcome, "unusable record: ")
		default:
			continue
		}
		rep.Discarded = append(rep.Discarded, discardedAt{Name: q, Why: why, Records: dmarcTXT(ctx, res, q, spec)})
		rep.warnf("%s: %s", q, why)
	}

	switch {
	case errors.Is(d.Err, policy.ErrNoAuthorDomain):
		rep.Result, rep.Error = "error", fmt.Sprintf("%q is not a domain name that can have a DMARC record", name)
		return rep
	case errors.Is(d.Err, policy.ErrDNS):
		// RFC 9989 §5.3.6: the policy cannot be known, so the daemon
		// answers dmarc=temperror; never read as "no policy".
		rep.Result, rep.Error = "temperror", fmt.Sprintf("DNS failure, the daemon would answer dmarc=temperror: %v", d.Err)
		return rep
	case d.Err != nil:
		// An unusable record at the domain itself (RFC 9989 §4.10.1):
		// explain it anyway, it is what the owner has to fix.
		q := "_dmarc." + d.FromDomain
		rep.Result, rep.Error = "unusable", strings.TrimPrefix(d.Err.Error(), q+": ")
		if txts := dmarcTXT(ctx, res, q, spec); len(txts) == 1 {
			rep.PolicyDomain, rep.Record = d.FromDomain, txts[0]
			if rec, _ := policy.ParseRecord(txts[0], spec); rec != nil {
				rep.Tags = explainTags(rec, spec, d.FromDomain)
				rep.recordWarnings(ctx, res, rec, list, d.FromDomain, "")
			}
		}
		return rep
	case d.Record == nil:
		rep.Result = "none"
		if spec == policy.SpecRFC7489 {
			rep.Error = "no DMARC policy record at the domain or its organizational domain (RFC 7489 §6.6.3)"
		} else {
			rep.Error = "no DMARC policy record at the domain, its organizational domain or a public suffix domain (RFC 9989 §4.10.1)"
		}
		return rep
	}

	rec := d.Record
	rep.Result, rep.PolicyDomain, rep.Record = "policy", d.PolicyDomain, rec.Raw
	switch {
	case d.PolicyDomain == d.FromDomain:
		rep.FoundAt = "the domain itself"
	case spec == policy.SpecRFC7489:
		rep.FoundAt = "the organizational domain, from the public suffix list (RFC 7489 §6.6.3)"
	case d.PolicyDomain == d.OrgDomain:
		rep.FoundAt = "the organizational domain, by the DNS tree walk (RFC 9989 §4.10.1)"
	default:
		rep.FoundAt = "a public suffix domain, psd=y (RFC 9989 §4.10.1)"
	}
	rep.Tags = explainTags(rec, spec, d.PolicyDomain)
	// RFC 9989 §4.10 step 1 queries _dmarc.<name>; a CNAME there is
	// followed like any DNS answer, but the owner should see where the
	// record really lives.
	if a, err := res.Query(ctx, "_dmarc."+d.PolicyDomain, dns.TypeTXT); err == nil && len(a.Chain) > 0 {
		for _, c := range a.Chain {
			rep.CNAME = append(rep.CNAME, strings.TrimSuffix(c, "."))
		}
	}

	// The daemon's own choice of p, sp or np for mail from this domain.
	e := ev.Evaluate(ctx, d, policy.Input{FromDomain: d.FromDomain})
	if e.Applied != "" {
		a := &appliesTo{Tag: e.Applied, Policy: string(e.Policy)}
		switch {
		case spec == policy.SpecRFC9989 && rec.Testing && (e.Policy == policy.PolicyReject || e.Policy == policy.PolicyQuarantine):
			a.Disposition = fmt.Sprintf("t=y: failing mail gets %s instead", policy.Weaker(e.Policy))
		case rec.HasPct && rec.Pct < 100 && (e.Policy == policy.PolicyReject || e.Policy == policy.PolicyQuarantine):
			a.Disposition = fmt.Sprintf("pct=%d: %d%% of failing mail gets %s, the rest %s", rec.Pct, rec.Pct, e.Policy, policy.Weaker(e.Policy))
		}
		rep.Applies = a
	}
	if e.Result == policy.ResultTempError && e.Err != nil {
		rep.warnf("which of sp and np applies is unknown: %v", e.Err)
	}
	rep.recordWarnings(ctx, res, rec, list, d.PolicyDomain, d.OrgDomain)
	return rep
}

// dmarcTXT returns the TXT records at q that start with v=DMARC1.
func dmarcTXT(ctx context.Context, res *dnsres.Resolver, q string, spec policy.Spec) []string {
	txts, err := res.LookupTXT(ctx, q)
	if err != nil {
		return nil
	}
	var out []string
	for _, t := range txts {
		if _, err := policy.ParseRecord(t, spec); !errors.Is(err, policy.ErrNotDMARC) {
			out = append(out, t)
		}
	}
	return out
}

// recordWarnings adds what a domain owner should know about rec,
// published at policyDomain.
func (r *recordReport) recordWarnings(ctx context.Context, res *dnsres.Resolver, rec *policy.Record, list policy.PublicSuffixList, policyDomain, orgDomain string) {
	for _, w := range rec.Warnings {
		r.warnf("record: %s", w)
	}
	if rec.HasPct && r.Spec == string(policy.SpecRFC9989) {
		// RFC 9989 Appendix A.6 removed pct; receivers that follow it
		// alone ignore the tag.
		r.warnf("pct is not part of RFC 9989 (removed, Appendix A.6); this milter still honours it as RFC 7489 §6.6.4 did (pct=%d: that share of failing mail gets the policy, the rest the next weaker one), but other receivers may not: use t=y to test instead", rec.Pct)
	}
	if rec.P == policy.PolicyNone && len(rec.RUA) == 0 && r.Result != "unusable" {
		r.warnf("p=none without rua: the record asks for nothing and nobody receives aggregate reports; add rua=mailto:... to monitor, then move to quarantine or reject")
	}
	if r.Spec == string(policy.SpecRFC9989) {
		if rec.PSD == 'y' && !isPublicSuffix(list, policyDomain) {
			r.warnf("psd=y at %s, which is not on the public suffix list: receivers treat it as a Public Suffix Domain, so each of its subdomains becomes its own organizational domain and relaxed alignment between them fails (RFC 9989 §4.7); only public suffix operators should publish psd=y", policyDomain)
		}
		if rec.Testing {
			r.warnf("t=y (testing): receivers apply one level weaker than the published policy (reject as quarantine, quarantine as none) (RFC 9989 §4.7)")
		}
	}
	sub := rec.P
	if rec.HasSP {
		sub = rec.SP
	}
	switch {
	case sub == policy.PolicyNone && rec.P != policy.PolicyNone:
		r.warnf("sp=none: subdomains of %s are not protected, mail from any.%s failing DMARC is accepted", policyDomain, policyDomain)
	case rec.HasSP && rec.SP != rec.P:
		r.warnf("sp=%s: existing subdomains of %s get %s, not p=%s", rec.SP, policyDomain, rec.SP, rec.P)
	}
	if r.Spec == string(policy.SpecRFC9989) && rec.HasNP && rec.NP != sub {
		// RFC 9989 §3.2.13: "non-existent" means NXDOMAIN for A, AAAA and MX.
		r.warnf("np=%s: subdomains of %s that do not exist in the DNS get %s, existing ones %s", rec.NP, policyDomain, rec.NP, sub)
	}
	if orgDomain == "" {
		orgDomain = policyDomain
	}
	r.reportAuthorization(ctx, res, "rua", rec.RUA, policyDomain, orgDomain)
	r.reportAuthorization(ctx, res, "ruf", rec.RUF, policyDomain, orgDomain)
}

// reportAuthorization checks External Destination Verification (RFC 7489
// §7.1): a report address outside the policy's organizational domain
// must publish <policy domain>._report._dmarc.<its domain>, or reporters
// drop it.
func (r *recordReport) reportAuthorization(ctx context.Context, res *dnsres.Resolver, tag string, uris []string, policyDomain, orgDomain string) {
	seen := map[string]bool{}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil || !strings.EqualFold(pu.Scheme, "mailto") {
			r.warnf("%s %s: not a mailto: URI, reporters only send by mail", tag, u)
			continue
		}
		addr, err := mail.ParseAddress(pu.Opaque)
		if err != nil {
			r.warnf("%s %s: not a usable mail address", tag, u)
			continue
		}
		at := strings.LastIndexByte(addr.Address, '@')
		dest, err := domain.Normalize(addr.Address[at+1:])
		if err != nil {
			r.warnf("%s %s: not a usable mail domain", tag, u)
			continue
		}
		if dest == orgDomain || strings.HasSuffix(dest, "."+orgDomain) || seen[dest] {
			continue
		}
		seen[dest] = true
		q := policyDomain + "._report._dmarc." + dest
		txts, err := res.LookupTXT(ctx, q)
		switch {
		case err != nil && !dnsres.IsNotFound(err):
			r.warnf("%s to %s (outside %s): authorization %s could not be checked: %v", tag, dest, orgDomain, q, err)
		case !hasDMARC1(txts):
			r.warnf("%s to %s (outside %s): %s has no \"v=DMARC1\" TXT record, so reporters will not send there (RFC 7489 §7.1)", tag, dest, orgDomain, q)
		}
	}
}

func hasDMARC1(txts []string) bool {
	for _, t := range txts {
		if strings.HasPrefix(strings.TrimSpace(t), "v=DMARC1") {
			return true
		}
	}
	return false
}

// isPublicSuffix reports whether name is on the public suffix list (the
// -psl file, else the bundled one).
func isPublicSuffix(list policy.PublicSuffixList, name string) bool {
	if list != nil {
		return list.PublicSuffix(name) == name
	}
	s, _ := publicsuffix.PublicSuffix(name)
	return s == name
}

// tagMeaning is one line per tag, RFC 9989 §4.7 (RFC 7489 §6.3 for pct,
// rf, ri).
var tagMeaning = map[string]string{
	"v":     "version: DMARC1, must come first",
	"p":     "policy for mail from the domain itself",
	"sp":    "policy for existing subdomains (default: p)",
	"np":    "policy for subdomains that do not exist in the DNS (default: sp, else p)",
	"adkim": "DKIM alignment: r relaxed (same organizational domain), s strict (same name)",
	"aspf":  "SPF alignment: r relaxed (same organizational domain), s strict (same name)",
	"psd":   "public suffix domain: y it is one, n it is an organizational domain, u unknown",
	"t":     "testing: y asks receivers to apply one level weaker than the policy",
	"pct":   "share of failing mail the policy applies to (RFC 7489; removed in RFC 9989)",
	"rua":   "where aggregate reports go",
	"ruf":   "where failure reports go",
	"fo":    "when failure reports are wanted: 0 all fail, 1 any fail, d DKIM fail, s SPF fail",
	"rf":    "failure report format (RFC 7489; removed in RFC 9989)",
	"ri":    "aggregate report interval (RFC 7489; removed in RFC 9989)",
}

// explainTags lists the record's tags in the order published, then the
// ones left at their defaults. The parsed rec says what was used; the
// raw text says what was written, so the two together show what fell
// back. Splitting mirrors policy.ParseRecord (RFC 9989 §4.8).
func explainTags(rec *policy.Record, spec policy.Spec, policyDomain string) []tagReport {
	var out []tagReport
	seen := map[string]bool{}
	parts := strings.Split(rec.Raw, ";")
	for i, part := range parts {
		part = strings.Trim(part, " \t")
		if part == "" {
			continue
		}
		name, value, ok := strings.Cut(part, "=")
		name, value = strings.ToLower(strings.Trim(name, " \t")), strings.Trim(value, " \t")
		if !ok || !isTagName(name) {
			out = append(out, tagReport{Tag: part, Status: "malformed", Meaning: "not a tag=value pair, ignored"})
			continue
		}
		if i == 0 {
			out = append(out, tagReport{Tag: "v", Value: value, Status: "ok", Meaning: tagMeaning["v"]})
			seen["v"] = true
			continue
		}
		t := tagReport{Tag: name, Value: value, Status: "ok", Meaning: tagMeaning[name]}
		if seen[name] {
			t.Status, t.Meaning = "duplicate", "repeated tag, ignored (the first one counts)"
			out = append(out, t)
			continue
		}
		seen[name] = true
		lower := strings.ToLower(value)
		switch name {
		case "v":
			t.Status, t.Meaning = "duplicate", "repeated tag, ignored"
		case "p":
			if lower != string(rec.P) {
				t.Status, t.Effective = "invalid", fallbackPolicy(rec)
				if validPolicy(lower) {
					// Valid itself, overruled by an invalid sp or np.
					t.Status = "overridden"
				}
			}
			t.Meaning = "policy for mail from " + policyDomain + " itself"
		case "sp":
			if !rec.HasSP || lower != string(rec.SP) {
				t.Status, t.Effective = "invalid", fallbackPolicy(rec)
			}
		case "np", "psd", "t":
			if spec == policy.SpecRFC7489 {
				t.Status, t.Meaning = "ignored", "not defined in RFC 7489 (an RFC 9989 tag)"
				break
			}
			switch name {
			case "np":
				if !rec.HasNP || lower != string(rec.NP) {
					t.Status, t.Effective = "invalid", fallbackPolicy(rec)
				}
			case "psd":
				if lower != string(rec.PSD) {
					t.Status, t.Effective = "invalid", "u"
				}
			case "t":
				if (lower == "y") != rec.Testing || lower != "y" && lower != "n" {
					t.Status, t.Effective = "invalid", "n"
				}
			}
		case "adkim", "aspf":
			a := rec.ADKIM
			if name == "aspf" {
				a = rec.ASPF
			}
			if lower != string(rune(a)) {
				t.Status, t.Effective = "invalid", "r"
			}
		case "pct":
			if n, err := strconv.Atoi(value); !rec.HasPct || err != nil || n != rec.Pct {
				t.Status, t.Effective = "invalid", "100"
			}
		case "rua", "ruf":
			used := rec.RUA
			if name == "ruf" {
				used = rec.RUF
			}
			if n := len(strings.Split(value, ",")); n != len(used) {
				t.Status = "invalid"
				t.Effective = strings.Join(used, ",")
				if t.Effective == "" {
					t.Effective = "(none)"
				}
			}
		case "fo":
			if value != rec.FO {
				t.Status, t.Effective = "invalid", rec.FO
			}
		case "rf", "ri":
			t.Status = "ignored"
		default:
			t.Status, t.Meaning = "unknown", "not a DMARC tag, ignored (RFC 9989 §4.7)"
		}
		out = append(out, t)
	}

	// Tags left out, with the default that applies (RFC 9989 §4.7).
	defaults := []struct{ tag, value string }{
		{"p", "none"}, {"sp", "p=" + string(rec.P)}, {"np", ""}, {"adkim", "r"}, {"aspf", "r"},
		{"psd", "u"}, {"t", "n"}, {"pct", "100"}, {"rua", "(none)"}, {"ruf", "(none)"}, {"fo", "0"},
	}
	for _, df := range defaults {
		if seen[df.tag] {
			continue
		}
		switch df.tag {
		case "np", "psd", "t":
			if spec == policy.SpecRFC7489 {
				continue
			}
		case "pct":
			if spec == policy.SpecRFC9989 {
				continue // not a tag of RFC 9989 at all
			}
		}
		v := df.value
		if df.tag == "np" {
			v = "p=" + string(rec.P)
			if rec.HasSP {
				v = "sp=" + string(rec.SP)
			}
		}
		if df.tag == "p" && spec == policy.SpecRFC7489 {
			v = "(required)"
		}
		out = append(out, tagReport{Tag: df.tag, Status: "default", Effective: v, Meaning: tagMeaning[df.tag]})
	}
	return out
}

// fallbackPolicy says what an invalid policy tag left in force: RFC 9989
// §4.10.1 (and RFC 7489 §6.6.3 step 6) make such a record act as p=none
// when rua is valid, and unusable otherwise.
func fallbackPolicy(rec *policy.Record) string {
	if len(rec.RUA) > 0 {
		return "p=none for the whole record (a valid rua keeps it usable)"
	}
	return "none: the whole record is unusable"
}

func validPolicy(s string) bool {
	return s == string(policy.PolicyNone) || s == string(policy.PolicyQuarantine) || s == string(policy.PolicyReject)
}

func isTagName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z') {
			return false
		}
	}
	return true
}

func (r *recordReport) writeText(w io.Writer) {
	fmt.Fprintf(w, "DMARC policy for %s (%s)\n", r.Domain, r.Spec)
	if len(r.Lookups) > 0 {
		fmt.Fprintln(w, "\nlookups:")
		for _, l := range r.Lookups {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
	for _, d := range r.Discarded {
		fmt.Fprintf(w, "\ndiscarded at %s: %s\n", d.Name, d.Why)
		for _, rec := range d.Records {
			fmt.Fprintf(w, "  %q\n", rec)
		}
	}
	fmt.Fprintln(w)
	switch r.Result {
	case "policy":
		fmt.Fprintf(w, "found at _dmarc.%s: %s\n", r.PolicyDomain, r.FoundAt)
		if len(r.CNAME) > 0 {
			fmt.Fprintf(w, "via CNAME: _dmarc.%s -> %s\n", r.PolicyDomain, strings.Join(r.CNAME, " -> "))
		}
		if r.OrgDomain != "" {
			fmt.Fprintf(w, "organizational domain: %s\n", r.OrgDomain)
		}
	case "unusable":
		fmt.Fprintf(w, "UNUSABLE record at _dmarc.%s: %s\n", r.PolicyDomain, r.Error)
	case "none":
		fmt.Fprintf(w, "no policy: %s\n", r.Error)
	case "temperror":
		fmt.Fprintf(w, "temperror: %s\n", r.Error)
	default:
		fmt.Fprintf(w, "error: %s\n", r.Error)
	}
	if r.Record != "" {
		fmt.Fprintf(w, "record: %q\n", r.Record)
	}
	if len(r.Tags) > 0 {
		fmt.Fprintln(w, "\ntags:")
		for _, t := range r.Tags {
			val := t.Value
			if t.Status == "default" {
				val = "-"
			}
			status := t.Status
			if t.Effective != "" {
				if t.Status == "default" {
					status += ": " + t.Effective
				} else {
					status += ", using " + t.Effective
				}
			}
			fmt.Fprintf(w, "  %-6s %-20s %s\n", t.Tag, val, status)
			fmt.Fprintf(w, "         %s\n", t.Meaning)
		}
	}
	if r.Applies != nil {
		fmt.Fprintf(w, "\nmail from %s failing DMARC gets %s=%s", r.Domain, r.Applies.Tag, r.Applies.Policy)
		if r.Applies.Disposition != "" {
			fmt.Fprintf(w, " (%s)", r.Applies.Disposition)
		}
		fmt.Fprintln(w)
	}
	if len(r.Warnings) > 0 {
		fmt.Fprintln(w, "\nwarnings:")
		for _, wn := range r.Warnings {
			fmt.Fprintf(w, "  - %s\n", wn)
		}
	}
}
