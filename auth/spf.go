package auth

import (
	"context"
	"errors"
	"net"
	"strings"

	"blitiri.com.ar/go/spf"

	"github.com/dmarc-milter/dmarc-milter/internal/domain"
)

// SPF results, spelled as in RFC 8601 §2.7.2 and RFC 7208 §2.6.
const (
	SPFPass      = "pass"      // RFC 7208 §2.6.3: the client is authorised
	SPFFail      = "fail"      // RFC 7208 §2.6.4: explicitly not authorised
	SPFSoftFail  = "softfail"  // RFC 7208 §2.6.5: probably not authorised
	SPFNeutral   = "neutral"   // RFC 7208 §2.6.2: no assertion
	SPFNone      = "none"      // RFC 7208 §2.6.1: no record, or no usable domain
	SPFTempError = "temperror" // RFC 7208 §2.6.6: transient DNS trouble
	SPFPermError = "permerror" // RFC 7208 §2.6.7: the record cannot be used
)

// SPF identities (RFC 7208 §2.3, §2.4), as the smtp.mailfrom / smtp.helo
// property names of RFC 8601 §2.7.2.
const (
	SPFIdentityMailFrom = "mailfrom"
	SPFIdentityHELO     = "helo"
)

// Errors CheckSPF reports in SPFResult.Err when it does not ask the library.
var (
	ErrSPFNoDomain = errors.New("auth: SPF identity has no usable domain")
	ErrSPFBadIP    = errors.New("auth: invalid client IP")
)

// SPFResult is the outcome of one SPF check.
type SPFResult struct {
	Result   string // RFC 8601 words: pass fail softfail neutral none temperror permerror
	Identity string // "mailfrom" or "helo" (RFC 7208 §2.3, §2.4)
	Domain   string // domain of the identity checked (normalised); smtp.mailfrom / smtp.helo value
	Sender   string // the address checked (postmaster@<helo> for a null reverse path)
	Err      error  // diagnostic; the library returns one even on pass
}

// CheckSPF checks the MAIL FROM identity; for a null reverse path
// (mailFrom == "") it checks "postmaster@"+helo instead (RFC 7208 §2.4),
// the only identity RFC 9989 uses. The library enforces the limits of 10
// DNS-querying terms and 2 void lookups (RFC 7208 §4.6.4); ctx bounds the
// whole evaluation. A malformed or single-label domain gives "none"
// (RFC 7208 §4.3), an invalid client IP "permerror".
func CheckSPF(ctx context.Context, r spf.DNSResolver, ip net.IP, helo, mailFrom string) SPFResult {
	res := SPFResult{Identity: SPFIdentityMailFrom}
	mailFrom = strings.TrimSpace(mailFrom)
	mailFrom = strings.TrimSuffix(strings.TrimPrefix(mailFrom, "<"), ">")
	local, dom := "", ""
	if mailFrom == "" {
		res.Identity = SPFIdentityHELO
		local, dom = "postmaster", helo // RFC 7208 §2.4
	} else if at := strings.LastIndexByte(mailFrom, '@'); at >= 0 {
		// The last "@": a quoted local-part may hold another one.
		local, dom = mailFrom[:at], mailFrom[at+1:]
	}
	if local == "" {
		local = "postmaster" // RFC 7208 §4.3: substitute for an empty local-part
	}
	if strings.ContainsAny(local, "@ \t\r\n") {
		// blitiri splits the sender at its first "@"; a local-part that
		// would mislead it only matters for macros, so it is replaced.
		local = "postmaster"
	}
	d, err := domain.Normalize(dom)
	if err != nil || !strings.Contains(d, ".") {
		// RFC 7208 §4.3: a malformed or single-label domain is "none"; an
		// address literal as HELO (RFC 7208 §2.3) ends here too.
		res.Result, res.Domain, res.Err = SPFNone, d, ErrSPFNoDomain
		return res
	}
	res.Domain = d
	res.Sender = local + "@" + d
	if ip.To16() == nil {
		res.Result, res.Err = SPFPermError, ErrSPFBadIP
		return res
	}
	if err := ctx.Err(); err != nil {
		res.Result, res.Err = SPFTempError, err
		return res
	}
	heloArg := helo
	if res.Identity == SPFIdentityHELO {
		heloArg = d
	}
	out, err := spf.CheckHostWithSender(ip, heloArg, res.Sender,
		spf.WithContext(ctx),
		spf.WithResolver(spfResolver{r}),
	)
	res.Err = err
	switch s := string(out); s {
	case SPFPass, SPFFail, SPFSoftFail, SPFNeutral, SPFNone, SPFTempError, SPFPermError:
		res.Result = s
	default:
		res.Result = SPFPermError
	}
	if ctx.Err() != nil && res.Result != SPFPass {
		// A deadline cut the evaluation short: a mechanism skipped for lack
		// of an answer may have matched, so only a pass found before it is
		// a verdict (RFC 7208 §4.6.2 evaluates left to right).
		res.Result, res.Err = SPFTempError, ctx.Err()
	}
	return res
}

// spfResolver hands blitiri errors in the one shape it understands: it
// classifies DNS failures by the concrete type *net.DNSError and calls a
// wrapped timeout a permerror (LIBRARIES.md).
type spfResolver struct{ r spf.DNSResolver }

func (s spfResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	v, err := s.r.LookupTXT(ctx, name)
	return v, dnsError(ctx, name, err)
}

func (s spfResolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	v, err := s.r.LookupMX(ctx, name)
	return v, dnsError(ctx, name, err)
}

func (s spfResolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	v, err := s.r.LookupIPAddr(ctx, host)
	return v, dnsError(ctx, host, err)
}

func (s spfResolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	v, err := s.r.LookupAddr(ctx, addr)
	return v, dnsError(ctx, addr, err)
}

// dnsError returns err as an unwrapped *net.DNSError. Context errors and
// errors of unknown kind count as temporary: nothing proves them permanent.
func dnsError(ctx context.Context, name string, err error) error {
	if err == nil {
		return nil
	}
	var de *net.DNSError
	if errors.As(err, &de) {
		return de
	}
	timeout := errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil
	return &net.DNSError{Err: err.Error(), Name: name, IsTimeout: timeout, IsTemporary: true}
}
