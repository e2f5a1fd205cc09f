package policy

import (
	"fmt"
	"strings"

	"github.com/dmarc-milter/dmarc-milter/internal/domain"
)

// RFC 9990 §x (as RFC 7489 Appendix C) PolicyOverrideType values that local
// policy records; sampled_out and policy_test_mode come from the record.
const (
	OverrideTrustedForwarder = "trusted_forwarder"
	OverrideLocalPolicy      = "local_policy"
	OverrideMailingList      = "mailing_list"
)

// DomainSet matches a domain and all its subdomains.
type DomainSet map[string]struct{}

// NewDomainSet normalises names (lower case, A-labels, no trailing dot).
func NewDomainSet(names []string) (DomainSet, error) {
	s := DomainSet{}
	for _, n := range names {
		d, err := domain.Normalize(strings.TrimPrefix(strings.TrimSpace(n), "*."))
		if err != nil {
			return nil, fmt.Errorf("%q is not a domain name", n)
		}
		s[d] = struct{}{}
	}
	return s, nil
}

// Match returns the listed name that d is, or is under, and whether there
// is one. d must be normalised.
func (s DomainSet) Match(d string) (string, bool) {
	for i := 0; len(s) > 0 && i < 128; i++ {
		if _, ok := s[d]; ok {
			return d, true
		}
		dot := strings.IndexByte(d, '.')
		if dot < 0 {
			break
		}
		d = d[dot+1:]
	}
	return "", false
}

// LocalPolicy is the operator's policy on top of the published one. It
// changes only the disposition of a failing message, never the DMARC
// result, and records every change as an Override with its RFC 9990 type
// (DESIGN.md: local policy in one place, each override with its reason).
//
// Order: the per-domain rules first (they name the domain, so they are the
// most specific statement of the operator's intent), then the forwarder
// and ARC rules.
type LocalPolicy struct {
	// AllowFrom: failures from these Author Domains are delivered.
	AllowFrom DomainSet
	// RejectFrom: failures from these Author Domains are rejected whatever
	// the domain publishes, p=none included.
	RejectFrom DomainSet
}

// LocalFacts are what the milter found out about the message for the local
// policy: each non-empty field names the matching rule.
type LocalFacts struct {
	// Forwarder is the trusted forwarder the client matched (network or
	// verified host name).
	Forwarder string
	// MailingList is the mailing-list host the client matched.
	MailingList string
	// ARCPass names the trusted upstream whose ARC-sealed results say the
	// Author Domain passed DMARC there (the milter checks the chain).
	ARCPass string
}

// Apply changes ev's disposition per the local policy and records why.
// Only a failing evaluation is touched: a pass needs no help, and a
// temperror or permerror must not become a reject through local policy.
func (lp *LocalPolicy) Apply(ev *Evaluation, f LocalFacts) {
	if ev.Result != ResultFail {
		return
	}
	if lp != nil {
		if d, ok := lp.AllowFrom.Match(ev.FromDomain); ok {
			lp.override(ev, PolicyNone, OverrideLocalPolicy, "allow_from "+d)
			return
		}
		if d, ok := lp.RejectFrom.Match(ev.FromDomain); ok {
			lp.override(ev, PolicyReject, OverrideLocalPolicy, "reject_from "+d)
			return
		}
	}
	switch {
	case f.Forwarder != "":
		lp.override(ev, PolicyNone, OverrideTrustedForwarder, f.Forwarder)
	case f.MailingList != "":
		lp.override(ev, PolicyNone, OverrideMailingList, f.MailingList)
	case f.ARCPass != "":
		// Large receivers report ARC-based overrides as local_policy
		// with the comment "arc=pass".
		lp.override(ev, PolicyNone, OverrideLocalPolicy, "arc=pass from "+f.ARCPass)
	}
}

func (*LocalPolicy) override(ev *Evaluation, to Policy, typ, comment string) {
	if ev.Disposition == to {
		return
	}
	ev.Overrides = append(ev.Overrides, Override{Type: typ, Comment: comment})
	ev.Reasons = append(ev.Reasons, fmt.Sprintf("local policy: %s %s -> %s (%s)", typ, ev.Disposition, to, comment))
	ev.Disposition = to
}
