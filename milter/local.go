package milter

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/net/publicsuffix"

	"github.com/dmarc-milter/dmarc-milter/auth"
	"github.com/dmarc-milter/dmarc-milter/internal/domain"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

// modeRank orders recipient modes from the most lenient.
var modeRank = map[string]int{"off": 0, "monitor": 1, "enforce": 2}

// effectiveMode is the mode for this message: the global one, unless the
// recipients' domains have their own. AddRcpt keeps one mode per
// transaction; were several to get in anyway (a caller that ignores its
// reply), the most lenient wins.
func (t *Transaction) effectiveMode() (mode, why string) {
	mode = t.cfg.Mode
	if len(t.cfg.RecipientModes) == 0 || len(t.Rcpts) == 0 {
		return mode, ""
	}
	best, bestWhy := "", ""
	for _, r := range t.Rcpts {
		m, w := t.rcptMode(r)
		if best == "" || modeRank[m] < modeRank[best] {
			best, bestWhy = m, w
		}
	}
	return best, bestWhy
}

// rcptMode is the mode for one recipient: its domain's, the nearest
// parent's, or the global one.
func (t *Transaction) rcptMode(r string) (mode, why string) {
	at := strings.LastIndexByte(r, '@')
	if at < 0 {
		return t.cfg.Mode, ""
	}
	d, err := domain.Normalize(strings.Trim(r[at+1:], "<> "))
	if err != nil {
		return t.cfg.Mode, ""
	}
	for i := 0; i < 128; i++ {
		if rm, ok := t.cfg.RecipientModes[d]; ok {
			return rm, "recipient domain " + d + " is " + rm
		}
		dot := strings.IndexByte(d, '.')
		if dot < 0 {
			break
		}
		d = d[dot+1:]
	}
	return t.cfg.Mode, ""
}

// maxSealAge bounds the age of a trusted ARC seal (see trustedARC).
const maxSealAge = 7 * 24 * time.Hour

// trustedARC names the trusted upstream whose sealed verdict vouches for
// the Author Domain dom, or "". All must hold: our own validation of the
// ARC chain passed (RFC 8617 §5.2); the latest set, added by the hop that
// handed us the message, carries the upstream's authserv-id and was
// sealed by a domain that owns that name (d= is the authserv-id or a
// parent of it, not above its registrable domain: an authserv-id alone is
// text anyone can write into a set they seal themselves); the seal is
// fresh; and its sealed results say a clean dmarc=pass for dom. Earlier sets are not enough: whoever sealed after
// them may have changed the message. An unsealed Authentication-Results
// field is never trusted, whoever it names: any sender can write one.
func (t *Transaction) trustedARC(arc auth.ARCResult, dom string) string {
	if len(t.cfg.TrustedARC) == 0 || arc.Result != auth.ARCPass {
		return ""
	}
	for _, id := range t.cfg.TrustedARC {
		if !auth.SameAuthServID(arc.AuthServID, id) {
			continue
		}
		n, err := domain.Normalize(id)
		if err != nil || (n != arc.SealDomain && !strings.HasSuffix(n, "."+arc.SealDomain)) {
			continue
		}
		// Not above the id's registrable domain: a key under a public
		// suffix (co.uk, a hosting suffix) speaks for no one in it.
		if org, err := publicsuffix.EffectiveTLDPlusOne(n); err != nil || (arc.SealDomain != org && !strings.HasSuffix(arc.SealDomain, "."+org)) {
			continue
		}
		// A fresh seal only: a sealed message kept and replayed later
		// keeps its verdict but not its standing. Retries of a queued
		// message take days at most (Postfix: maximal_queue_lifetime 5d).
		if age := time.Since(arc.SealTime); arc.SealTime.IsZero() || age > maxSealAge || age < -time.Hour {
			continue
		}
		if arc.ReportsDMARCPass(dom) {
			return fmt.Sprintf("%s (ARC i=%d, d=%s)", id, arc.Instance, arc.SealDomain)
		}
	}
	return ""
}

// localFacts finds what the local policy needs to know about the client,
// DNS included, only when a failure makes it matter.
func (t *Transaction) localFacts() policy.LocalFacts {
	if t.facts != nil {
		return *t.facts
	}
	var f policy.LocalFacts
	var unsure, unsureML string
	f.Forwarder, unsure = t.matchClient(t.cfg.Forwarders, t.cfg.ForwarderHosts)
	if f.Forwarder == "" {
		f.MailingList, unsureML = t.matchClient(t.cfg.MailingLists, t.cfg.MailingListHosts)
	}
	if f.Forwarder == "" && f.MailingList == "" {
		t.clientUnsure = cmp.Or(unsure, unsureML)
	}
	t.facts = &f
	return f
}

// matchClient reports the network or host name the client matches. Host
// names count only when forward-confirmed: the PTR name must resolve back
// to the client address, or anyone controlling their own reverse zone
// could claim to be a trusted forwarder. unsure says why a temporary DNS
// failure left the question open.
func (t *Transaction) matchClient(nets []netip.Prefix, hosts policy.DomainSet) (match, unsure string) {
	ip, ok := netip.AddrFromSlice(t.Conn.IP)
	if !ok {
		return "", ""
	}
	ip = ip.Unmap()
	for _, p := range nets {
		if p.Contains(ip) {
			return p.String(), ""
		}
	}
	if len(hosts) == 0 {
		return "", ""
	}
	names, err := t.srv.deps.Resolver.LookupAddr(t.ctx, ip.String())
	if err != nil {
		t.srv.log.Debug("forwarder check: PTR lookup failed", "ip", ip.String(), "err", err)
		if temporary(err) {
			return "", "PTR lookup failed"
		}
		return "", ""
	}
	for i, n := range names {
		if i >= 5 {
			break
		}
		d, err := domain.Normalize(n)
		if err != nil {
			continue
		}
		m, ok := hosts.Match(d)
		if !ok {
			continue
		}
		addrs, err := t.srv.deps.Resolver.LookupIPAddr(t.ctx, d)
		if err != nil {
			if temporary(err) && unsure == "" {
				unsure = "address lookup of " + d + " failed"
			}
			continue
		}
		for _, a := range addrs {
			if a.IP.Equal(net.IP(ip.AsSlice())) {
				return d + " (" + m + ")", ""
			}
		}
	}
	return "", unsure
}

// temporary reports a DNS failure that may go away (SERVFAIL, timeout, a
// resolver out of reach), as opposed to an answer.
func temporary(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && (de.IsTemporary || de.IsTimeout)
}
