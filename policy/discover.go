package policy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/dmarc-milter/dmarc-milter/internal/domain"
)

// walkLimit is the query bound of the DNS Tree Walk (RFC 9989 §4.10).
const walkLimit = 8

// maxTrace bounds the trace of one evaluation.
const maxTrace = 64

// maxDiscarded bounds the discard notes of one discovery (they go into a
// header comment).
const maxDiscarded = 4

// Evaluator discovers DMARC policies and evaluates messages against them.
// It is safe for concurrent use; it keeps no state between messages (the
// Resolver caches).
type Evaluator struct {
	r       Resolver
	spec    Spec
	psl     PublicSuffixList
	sampler Sampler
	maxWalk int
}

// NewEvaluator returns an Evaluator using r for every DNS query.
func NewEvaluator(r Resolver, opts Options) *Evaluator {
	e := &Evaluator{r: r, spec: opts.Spec.normal(), psl: opts.PSL, sampler: opts.Sampler, maxWalk: opts.MaxWalk}
	if e.psl == nil {
		e.psl = bundledPSL{}
	}
	if e.sampler == nil {
		e.sampler = RandSampler{}
	}
	if e.maxWalk <= 0 || e.maxWalk > walkLimit {
		e.maxWalk = walkLimit
	}
	return e
}

// Spec returns the specification the Evaluator follows.
func (e *Evaluator) Spec() Spec { return e.spec }

// Discovery is the DNS part of one evaluation, for one Author Domain. The
// milter starts it as soon as the From field is parsed and hands it to
// Evaluate at the end of the message.
type Discovery struct {
	Spec       Spec
	FromDomain string // normalised Author Domain
	// Record is the DMARC Policy Record that applies; nil with none.
	Record *Record
	// PolicyDomain is where Record was found (RFC 9989 §3.2.5).
	PolicyDomain string
	// OrgDomain is the Organizational Domain of FromDomain; empty when
	// OrgErr is set.
	OrgDomain string
	// OrgErr: the tree walk for the Organizational Domain failed after the
	// policy itself was found; relaxed alignment against other names then
	// ends in temperror.
	OrgErr error
	// Exists says whether FromDomain exists in the DNS (RFC 9989 §3.2.13),
	// meaningful when ExistsChecked; it is checked only when np could
	// apply. ExistsErr is a failed check.
	Exists        bool
	ExistsChecked bool
	ExistsErr     error
	// Err wraps ErrNoAuthorDomain or ErrSyntax (permerror) or ErrDNS
	// (temperror); nil otherwise, also when no record exists.
	Err   error
	Trace []string
	// Discarded says, in a few words each, which records were discarded
	// on the way (several DMARC records at one name, an unusable record,
	// TXT records that are not DMARC records), for the A-R comment.
	Discarded []string
}

// tlog is where discovery steps write: the trace, and the short notes on
// discarded records (nil where nobody reads them).
type tlog struct {
	lines     *[]string
	discarded *[]string
}

func (d *Discovery) log() tlog { return tlog{&d.Trace, &d.Discarded} }

func (d *Discovery) tracef(format string, args ...any) {
	if len(d.Trace) < maxTrace {
		d.Trace = append(d.Trace, fmt.Sprintf(format, args...))
	}
}

// Discover finds the DMARC Policy Record for fromDomain: RFC 9989 §4.10.1
// (DNS Tree Walk) or, in RFC 7489 mode, RFC 7489 §6.6.3 (public suffix
// list). It always returns a Discovery; its Err explains failures.
func (e *Evaluator) Discover(ctx context.Context, fromDomain string) *Discovery {
	d := &Discovery{Spec: e.spec}
	from, err := domain.Normalize(fromDomain)
	if err != nil {
		d.Err = fmt.Errorf("%w: %q", ErrNoAuthorDomain, clip(fromDomain))
		d.tracef("author domain %q is not a valid domain name", clip(fromDomain))
		return d
	}
	d.FromDomain = from
	if e.spec == SpecRFC7489 {
		e.discover7489(ctx, d)
	} else {
		e.discover9989(ctx, d)
	}
	return d
}

// discover7489 is RFC 7489 §6.6.3.
func (e *Evaluator) discover7489(ctx context.Context, d *Discovery) {
	from := d.FromDomain
	d.OrgDomain = pslOrgDomain(e.psl, from) // RFC 7489 §3.2
	d.tracef("organizational domain %s (public suffix list)", d.OrgDomain)
	names := []string{from}
	if d.OrgDomain != from {
		names = append(names, d.OrgDomain) // RFC 7489 §6.6.3 step 3
	}
	for _, name := range names {
		rec, err := e.fetch(ctx, name, d.log())
		switch {
		case errors.Is(err, ErrMultipleRecords):
			// RFC 7489 §6.6.3 step 5: DMARC processing is not applied.
			d.tracef("policy discovery ends: DMARC not applied")
			return
		case err != nil:
			d.Err = err
			return
		case rec != nil:
			d.Record, d.PolicyDomain = rec, name
			return
		}
	}
}

// discover9989 is RFC 9989 §4.10.1.
func (e *Evaluator) discover9989(ctx context.Context, d *Discovery) {
	from := d.FromDomain
	rec, err := e.fetch(ctx, from, d.log())
	switch {
	case errors.Is(err, ErrMultipleRecords):
		// RFC 9989 §4.10 step 2: all discarded, the walk goes on.
	case err != nil:
		// A temporary error, or an unusable record at the Author Domain
		// (RFC 9989 §4.10.1: no DMARC processing).
		d.Err = err
		return
	case rec != nil:
		d.Record, d.PolicyDomain = rec, from
		if rec.PSD == 'y' || rec.PSD == 'n' {
			// RFC 9989 §4.10 step 2 stops here; §4.10.2 makes the
			// Author Domain its own Organizational Domain.
			d.OrgDomain = from
			d.tracef("psd=%c at %s: it is the organizational domain", rec.PSD, from)
			return
		}
		// The policy is known; the rest of the walk only finds the
		// Organizational Domain for relaxed alignment (RFC 9989 §4.10.2).
		steps, werr := e.walkFrom(ctx, from, d.log())
		if werr != nil {
			d.OrgErr = werr
			d.tracef("organizational domain unknown: %v", werr)
			return
		}
		d.OrgDomain = orgFromWalk(from, append([]walkStep{{name: from, rec: rec}}, steps...))
		d.tracef("organizational domain %s", d.OrgDomain)
		return
	}

	// No usable record at the Author Domain: the DNS Tree Walk. Any
	// temporary failure could hide the record that would apply, so it is
	// a temperror (RFC 9989 §5.3.6).
	steps, werr := e.walkFrom(ctx, from, d.log())
	if werr != nil {
		d.Err = werr
		return
	}
	steps = append([]walkStep{{name: from}}, steps...)
	d.OrgDomain = orgFromWalk(from, steps)
	d.tracef("organizational domain %s", d.OrgDomain)
	// RFC 9989 §4.10.1: the Organizational Domain's record, else the
	// Public Suffix Domain's.
	var psd *walkStep
	for i := range steps {
		s := &steps[i]
		if s.rec == nil {
			continue
		}
		if s.name == d.OrgDomain {
			d.Record, d.PolicyDomain = s.rec, s.name
		}
		if s.rec.PSD == 'y' {
			psd = s
		}
	}
	if d.Record == nil && psd != nil {
		d.Record, d.PolicyDomain = psd.rec, psd.name
		d.tracef("using the public suffix domain's record at %s", psd.name)
	}
	if d.Record == nil {
		d.tracef("no DMARC policy record found")
		return
	}
	d.tracef("policy record from %s", d.PolicyDomain)
	// RFC 9989 §4.10.1: np applies if the Author Domain does not exist;
	// only then does existence matter.
	if d.Record.HasNP && d.PolicyDomain != from {
		exists, err := e.r.DomainExists(ctx, from)
		d.ExistsChecked = true
		if err != nil {
			d.ExistsErr = fmt.Errorf("%w: existence of %s: %v", ErrDNS, from, err)
			d.tracef("existence of %s unknown: %v", from, err)
		} else {
			d.Exists = exists
			d.tracef("%s exists: %t", from, exists)
		}
	}
}

// walkStep is one name of a tree walk and the single usable DMARC record
// found there, if any.
type walkStep struct {
	name string
	rec  *Record
}

// walkTargets lists the names a DNS Tree Walk queries after start
// (RFC 9989 §4.10 steps 3, 4 and 7): with 8 or more labels jump to the
// last 7, then drop one label at a time.
func walkTargets(start string, budget int) []string {
	labels := strings.Split(start, ".")
	var out []string
	n := len(labels)
	if n >= walkLimit {
		n = walkLimit - 1
	} else {
		n--
	}
	for ; n >= 1 && len(out) < budget; n-- {
		out = append(out, strings.Join(labels[len(labels)-n:], "."))
	}
	return out
}

// walkFrom continues a DNS Tree Walk above start (whose own query the
// caller made). It stops at a record with a psd tag (RFC 9989 §4.10 step
// 6) and at the first DNS failure, which it returns.
func (e *Evaluator) walkFrom(ctx context.Context, start string, trace tlog) ([]walkStep, error) {
	var steps []walkStep
	for _, name := range walkTargets(start, e.maxWalk-1) {
		rec, err := e.fetch(ctx, name, trace)
		if err != nil && errors.Is(err, ErrDNS) {
			return steps, err
		}
		// Discarded sets and unusable records count as no record here.
		if err != nil {
			rec = nil
		}
		steps = append(steps, walkStep{name: name, rec: rec})
		if rec != nil && (rec.PSD == 'y' || rec.PSD == 'n') {
			break
		}
	}
	return steps, nil
}

// orgFromWalk selects the Organizational Domain from a walk that started
// at start (RFC 9989 §4.10.2): longest to shortest, psd=n is it, psd=y
// (not at the start) makes the name one label below it, otherwise the
// record with the fewest labels; with no record, start itself.
func orgFromWalk(start string, steps []walkStep) string {
	org := start
	for _, s := range steps {
		if s.rec == nil {
			continue
		}
		if s.rec.PSD == 'n' {
			return s.name
		}
		if s.rec.PSD == 'y' && s.name != start {
			return childTowards(start, s.name)
		}
		org = s.name
	}
	return org
}

// childTowards returns the ancestor of name (or name) that has one label
// more than parent.
func childTowards(name, parent string) string {
	labels := strings.Split(name, ".")
	want := strings.Count(parent, ".") + 2
	if want > len(labels) {
		return name
	}
	return strings.Join(labels[len(labels)-want:], ".")
}

// OrgDomain returns the Organizational Domain of name: the DNS Tree Walk
// of RFC 9989 §4.10.2, or the public suffix list in RFC 7489 mode
// (RFC 7489 §3.2). Errors wrap ErrNoAuthorDomain (bad name) or ErrDNS.
func (e *Evaluator) OrgDomain(ctx context.Context, name string) (string, error) {
	n, err := domain.Normalize(name)
	if err != nil {
		return "", fmt.Errorf("%w: %q", ErrNoAuthorDomain, clip(name))
	}
	var discard []string
	return e.orgDomain(ctx, n, tlog{lines: &discard})
}

func (e *Evaluator) orgDomain(ctx context.Context, name string, trace tlog) (string, error) {
	if e.spec == SpecRFC7489 {
		return pslOrgDomain(e.psl, name), nil
	}
	rec, err := e.fetch(ctx, name, trace)
	if err != nil && errors.Is(err, ErrDNS) {
		return "", err
	}
	if err != nil {
		rec = nil
	}
	steps := []walkStep{{name: name, rec: rec}}
	if rec == nil || (rec.PSD != 'y' && rec.PSD != 'n') {
		more, err := e.walkFrom(ctx, name, trace)
		if err != nil {
			return "", err
		}
		steps = append(steps, more...)
	}
	return orgFromWalk(name, steps), nil
}

// fetch queries _dmarc.<name> and returns its single usable DMARC record.
// (nil, nil) means no record: NXDOMAIN, NODATA or no TXT that starts with
// v=DMARC1. Errors wrap ErrMultipleRecords (RFC 9989 §4.10 step 2: all
// discarded), ErrSyntax (one record, unusable) or ErrDNS (temporary).
func (e *Evaluator) fetch(ctx context.Context, name string, trace tlog) (*Record, error) {
	q := "_dmarc." + name
	tr := func(format string, args ...any) {
		if len(*trace.lines) < maxTrace {
			*trace.lines = append(*trace.lines, q+": "+fmt.Sprintf(format, args...))
		}
	}
	discarded := func(format string, args ...any) {
		if trace.discarded != nil && len(*trace.discarded) < maxDiscarded {
			*trace.discarded = append(*trace.discarded, fmt.Sprintf(format, args...)+" at "+q)
		}
	}
	if len(q) > 253 {
		// No such name can exist in the DNS (RFC 1035 §2.3.4).
		tr("name too long, no record")
		return nil, nil
	}
	if err := ctx.Err(); err != nil {
		tr("not queried: %v", err)
		return nil, fmt.Errorf("%w: %s: %v", ErrDNS, q, err)
	}
	txts, err := e.r.LookupTXT(ctx, q)
	if err != nil {
		var de *net.DNSError
		if errors.As(err, &de) && de.IsNotFound {
			tr("NXDOMAIN")
			return nil, nil
		}
		// Anything else may be transient: never read it as "no policy",
		// which would let a DNS fault switch DMARC off.
		tr("DNS error: %v", err)
		return nil, fmt.Errorf("%w: %s: %v", ErrDNS, q, err)
	}
	var dmarc []string
	others := 0
	for _, t := range txts {
		if hasVersion(t) {
			dmarc = append(dmarc, t)
		} else {
			others++ // RFC 9989 §4.10 step 2: discarded
		}
	}
	switch {
	case len(dmarc) == 0:
		if others > 0 {
			tr("%d TXT record(s), none a DMARC record", others)
			discarded("discarded %d non-DMARC TXT", others)
		} else {
			tr("no TXT record")
		}
		return nil, nil
	case len(dmarc) > 1:
		tr("%d DMARC records, all discarded", len(dmarc))
		discarded("discarded %d DMARC records", len(dmarc))
		return nil, fmt.Errorf("%w at %s", ErrMultipleRecords, q)
	}
	rec, err := ParseRecord(dmarc[0], e.spec)
	if err != nil {
		tr("unusable record: %v", err)
		discarded("discarded unusable record")
		return nil, fmt.Errorf("%s: %w", q, err)
	}
	tr("record %q", clipN(rec.Raw, 200))
	for _, w := range rec.Warnings {
		tr("warning: %s", w)
	}
	return rec, nil
}
