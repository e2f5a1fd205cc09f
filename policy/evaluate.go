package policy

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/dmarc-milter/dmarc-milter/internal/domain"
)

// maxDKIM bounds the signatures one evaluation looks at; the milter caps
// verifications lower, this only keeps a hostile caller from making the
// loop unbounded.
const maxDKIM = 64

// Override types of the aggregate report format (RFC 9990 §3.1.6).
const (
	OverrideSampledOut     = "sampled_out"
	OverridePolicyTestMode = "policy_test_mode"
)

// Evaluate decides the DMARC result for one message (RFC 9989 §5.3.4 to
// §5.3.6). d comes from Discover; if it is nil, or was made for another
// Author Domain or spec, Evaluate discovers again. Relaxed alignment may
// need more DNS (the Organizational Domains of the SPF and DKIM domains,
// RFC 9989 §4.10.2). It always returns an Evaluation; Err explains a
// temperror or permerror. A DNS failure never yields a policy to apply.
func (e *Evaluator) Evaluate(ctx context.Context, d *Discovery, in Input) Evaluation {
	if d == nil || d.Spec != e.spec || !sameAuthor(d, in.FromDomain) {
		d = e.Discover(ctx, in.FromDomain)
	}
	ev := Evaluation{
		FromDomain:   d.FromDomain,
		PolicyDomain: d.PolicyDomain,
		OrgDomain:    d.OrgDomain,
		Record:       d.Record,
		Disposition:  PolicyNone,
	}
	ev.Reasons = append(ev.Reasons, d.Trace...)
	ev.Discarded = d.Discarded
	switch {
	case errors.Is(d.Err, ErrDNS):
		// RFC 9989 §5.3.6: the policy cannot be applied.
		ev.Result, ev.Err = ResultTempError, d.Err
		return ev
	case d.Err != nil:
		ev.Result, ev.Err = ResultPermError, d.Err
		return ev
	case d.Record == nil:
		// RFC 9989 §4.10.1: no record, DMARC does not apply.
		ev.Result = ResultNone
		return ev
	}
	rec := d.Record

	applied, pol, existsUnknown := e.applicable(d)
	ev.Applied, ev.Policy = applied, pol
	ev.reasonf("policy %s=%s from %s", applied, pol, d.PolicyDomain)

	var blocked []string // aligned identifiers whose check failed temporarily
	a := aligner{e: e, d: d, orgs: map[string]orgResult{}}

	sigs := in.DKIM
	if len(sigs) > maxDKIM {
		ev.reasonf("dkim: only the first %d of %d signatures considered", maxDKIM, len(sigs))
		sigs = sigs[:maxDKIM]
	}
	for _, s := range sigs {
		res := strings.ToLower(strings.TrimSpace(s.Result))
		if res != "pass" && res != "temperror" {
			continue
		}
		ok, why, err := a.aligned(ctx, s.Domain, rec.ADKIM)
		switch {
		case err != nil:
			blocked = append(blocked, "dkim d="+clip(s.Domain))
			ev.reasonf("dkim: %s for d=%s, alignment unknown: %v", res, clip(s.Domain), err)
		case !ok:
			ev.reasonf("dkim: %s for d=%s, not aligned (%s)", res, clip(s.Domain), why)
		case res == "temperror":
			// RFC 9989 §5.3.6: a DNS failure on an aligned signature
			// means the message can neither pass nor fail.
			blocked = append(blocked, "dkim d="+clip(s.Domain))
			ev.reasonf("dkim: temperror for aligned d=%s", clip(s.Domain))
		default:
			ev.reasonf("dkim: pass for d=%s, aligned (%s)", clip(s.Domain), why)
			if !ev.DKIMAligned {
				ev.DKIMAligned = true
				ev.AlignedDomain = domainOrRaw(s.Domain)
			}
		}
		if ev.DKIMAligned {
			break
		}
	}

	// RFC 9989 §4.4.2: only the MAIL FROM identity, and only a pass.
	spfRes := strings.ToLower(strings.TrimSpace(in.SPF.Result))
	if spfRes == "pass" || spfRes == "temperror" {
		ok, why, err := a.aligned(ctx, in.SPF.Domain, rec.ASPF)
		switch {
		case err != nil:
			blocked = append(blocked, "spf "+clip(in.SPF.Domain))
			ev.reasonf("spf: %s for %s, alignment unknown: %v", spfRes, clip(in.SPF.Domain), err)
		case !ok:
			ev.reasonf("spf: %s for %s, not aligned (%s)", spfRes, clip(in.SPF.Domain), why)
		case spfRes == "temperror":
			blocked = append(blocked, "spf "+clip(in.SPF.Domain))
			ev.reasonf("spf: temperror for aligned %s", clip(in.SPF.Domain))
		default:
			ev.SPFAligned = true
			ev.reasonf("spf: pass for %s, aligned (%s)", clip(in.SPF.Domain), why)
			if ev.AlignedDomain == "" {
				ev.AlignedDomain = domainOrRaw(in.SPF.Domain)
			}
		}
	} else if in.SPF.Result != "" {
		ev.reasonf("spf: %s for %s, not a pass", clip(spfRes), clip(in.SPF.Domain))
	}

	switch {
	case ev.DKIMAligned || ev.SPFAligned:
		ev.Result = ResultPass // RFC 9989 §5.3.5
		return ev
	case len(blocked) > 0:
		ev.Result = ResultTempError
		ev.Err = fmt.Errorf("%w: no aligned pass, and the check of %s failed temporarily", ErrDNS, strings.Join(blocked, ", "))
		return ev
	case existsUnknown:
		ev.Result = ResultTempError
		ev.Err = d.ExistsErr
		ev.reasonf("sp or np depends on whether %s exists, which is unknown", d.FromDomain)
		return ev
	}
	ev.Result = ResultFail
	ev.reasonf("no aligned pass: dmarc=fail")
	ev.Disposition = e.sample(&ev, rec, pol)
	return ev
}

// applicable picks p, sp or np (RFC 9989 §4.10.1; RFC 7489 §6.3 sp).
// existsUnknown: the choice between sp and np depends on a failed
// existence check.
func (e *Evaluator) applicable(d *Discovery) (applied string, p Policy, existsUnknown bool) {
	rec := d.Record
	if d.PolicyDomain == d.FromDomain {
		// RFC 9989 §4.10.1, RFC 7489 §6.3: sp and np concern subdomains
		// of the domain queried, not the domain itself.
		return "p", rec.P, false
	}
	sp, spTag := rec.P, "p"
	if rec.HasSP {
		sp, spTag = rec.SP, "sp"
	}
	if e.spec == SpecRFC7489 || !rec.HasNP {
		return spTag, sp, false
	}
	switch {
	case d.ExistsErr != nil || !d.ExistsChecked:
		// Report the sp choice; Evaluate turns a fail into temperror
		// only if np would have said something else.
		return spTag, sp, rec.NP != sp
	case !d.Exists:
		return "np", rec.NP, false // RFC 9989 §3.2.13, §4.7
	}
	return spTag, sp, false
}

// sample applies t=y (RFC 9989 §4.7) and the legacy pct (RFC 7489 §6.6.4):
// a failing message is selected for the published policy with probability
// 0 if t=y, else pct/100; one not selected gets the next weaker policy.
func (e *Evaluator) sample(ev *Evaluation, rec *Record, pol Policy) Policy {
	if pol != PolicyQuarantine && pol != PolicyReject {
		return pol // RFC 9989 §4.7: t has no effect on none
	}
	if rec.Testing && e.spec == SpecRFC9989 {
		w := Weaker(pol)
		ev.Overrides = append(ev.Overrides, Override{Type: OverridePolicyTestMode, Comment: "t=y"})
		ev.reasonf("t=y: %s applied instead of %s", w, pol)
		return w
	}
	if rec.HasPct {
		selected := rec.Pct >= 100 || rec.Pct > 0 && e.sampler.Sample(rec.Pct)
		if !selected {
			w := Weaker(pol)
			ev.Overrides = append(ev.Overrides, Override{Type: OverrideSampledOut, Comment: fmt.Sprintf("pct=%d", rec.Pct)})
			ev.reasonf("pct=%d: not selected, %s applied instead of %s", rec.Pct, w, pol)
			return w
		}
	}
	return pol
}

func (ev *Evaluation) reasonf(format string, args ...any) {
	if len(ev.Reasons) < 2*maxTrace {
		ev.Reasons = append(ev.Reasons, fmt.Sprintf(format, args...))
	}
}

// sameAuthor reports whether d was made for the Author Domain from.
func sameAuthor(d *Discovery, from string) bool {
	if from == "" {
		return true // the caller relies on d
	}
	n, err := domain.Normalize(from)
	if err != nil {
		return d.FromDomain == ""
	}
	return n == d.FromDomain
}

func domainOrRaw(s string) string {
	if n, err := domain.Normalize(s); err == nil {
		return n
	}
	return clip(s)
}

type orgResult struct {
	org string
	err error
}

// aligner tests Identifier Alignment (RFC 9989 §3.2.10, §4.4) for one
// evaluation, remembering Organizational Domains it looked up.
type aligner struct {
	e    *Evaluator
	d    *Discovery
	orgs map[string]orgResult
}

// aligned compares an authenticated domain with the Author Domain; why
// says how it decided, err is a DNS failure that prevents deciding.
func (a *aligner) aligned(ctx context.Context, id string, mode Alignment) (ok bool, why string, err error) {
	n, nerr := domain.Normalize(id)
	if nerr != nil {
		return false, "not a valid domain name", nil
	}
	from := a.d.FromDomain
	if n == from {
		// RFC 9989 §4.10.2: identical names need no tree walk.
		return true, "identical", nil
	}
	if mode == AlignStrict {
		return false, "strict: names differ", nil // RFC 9989 §3.2.10.2
	}
	// RFC 9989 §3.2.10.1: same Organizational Domain. An Organizational
	// Domain is the name or one of its ancestors, so a name outside the
	// Author Domain's one cannot match and needs no DNS.
	if a.d.OrgDomain != "" && !isAtOrBelow(n, a.d.OrgDomain) {
		return false, "outside organizational domain " + a.d.OrgDomain, nil
	}
	if a.d.OrgDomain == "" {
		if a.d.OrgErr == nil {
			return false, "no organizational domain", nil
		}
		if !shareLabel(n, from) {
			return false, "no common parent", nil
		}
		return false, "", a.d.OrgErr
	}
	r, seen := a.orgs[n]
	if !seen {
		var discard []string
		r.org, r.err = a.e.orgDomain(ctx, n, tlog{lines: &discard})
		a.orgs[n] = r
	}
	if r.err != nil {
		return false, "", r.err
	}
	if r.org == a.d.OrgDomain {
		return true, "relaxed: organizational domain " + r.org, nil
	}
	return false, fmt.Sprintf("relaxed: organizational domains %s and %s differ", r.org, a.d.OrgDomain), nil
}

func isAtOrBelow(name, parent string) bool {
	return name == parent || strings.HasSuffix(name, "."+parent)
}

func shareLabel(a, b string) bool {
	i, j := strings.LastIndexByte(a, '.'), strings.LastIndexByte(b, '.')
	return a[i+1:] == b[j+1:]
}
