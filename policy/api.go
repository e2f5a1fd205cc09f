package policy

import (
	"context"
)

// Result is the DMARC result, spelled as in Authentication-Results
// (RFC 8601 §2.7.1 and the result names registry, RFC 9989 §9.2).
type Result string

const (
	ResultPass      Result = "pass"
	ResultFail      Result = "fail"
	ResultNone      Result = "none"      // no policy record found
	ResultTempError Result = "temperror" // DNS failure, policy cannot be applied
	ResultPermError Result = "permerror" // unusable record or author domain
)

// Policy is a requested or applied Domain Owner policy / disposition.
type Policy string

const (
	PolicyNone       Policy = "none"
	PolicyQuarantine Policy = "quarantine"
	PolicyReject     Policy = "reject"
)

// Spec selects the specification whose semantics are applied.
type Spec string

// normal maps the zero value to the default, RFC 9989.
func (s Spec) normal() Spec {
	if s == SpecRFC7489 {
		return s
	}
	return SpecRFC9989
}

const (
	SpecRFC9989 Spec = "rfc9989" // default: DNS tree walk, np, psd, t
	SpecRFC7489 Spec = "rfc7489" // public suffix list, np/psd/t ignored
)

// Resolver is the DNS this package needs. Errors follow LIBRARIES.md:
// NXDOMAIN is *net.DNSError{IsNotFound: true}, NODATA is (nil, nil),
// temporary failures are *net.DNSError{IsTemporary: true}.
type Resolver interface {
	// LookupTXT returns each TXT record's strings joined (RFC 7208 §3.3).
	LookupTXT(ctx context.Context, name string) ([]string, error)
	// DomainExists reports whether name exists in the DNS: false when
	// the A, AAAA and MX queries all get NXDOMAIN (RFC 9989 §3.2.13 / RFC 8020).
	DomainExists(ctx context.Context, name string) (bool, error)
}

// Sampler decides whether a failing message is selected for the published
// policy: it returns true with probability percent/100.
type Sampler interface {
	Sample(percent int) bool
}

// Alignment mode (adkim/aspf).
type Alignment byte

const (
	AlignRelaxed Alignment = 'r'
	AlignStrict  Alignment = 's'
)

// AuthResult is one SPF or DKIM outcome the evaluation considers.
// Result uses the RFC 8601 words: pass, fail, softfail, neutral, none,
// temperror, permerror, policy.
type AuthResult struct {
	Result   string
	Domain   string // SPF: MAIL FROM (or HELO) domain; DKIM: d=
	Selector string // DKIM only
}

// Input is what the evaluation needs besides DNS.
type Input struct {
	FromDomain string       // Author Domain, RFC 5322.From, any case, may be U-label
	SPF        AuthResult   // RFC 9989 uses only the MAIL FROM identity
	DKIM       []AuthResult // every signature
}

// Override is a local-policy or sampling deviation from the published
// policy, with the RFC 9990 reason type.
type Override struct {
	Type    string // sampled_out, trusted_forwarder, local_policy, mailing_list, ...
	Comment string
}

// Evaluation is the complete outcome; the header, the log, the reports and
// the CLI all explain the same decision from it.
type Evaluation struct {
	Result       Result
	FromDomain   string // normalised Author Domain
	PolicyDomain string // the domain whose record applied ("" if none)
	OrgDomain    string // organizational domain of FromDomain
	Record       *Record
	// Applied names the tag that applied: "p", "sp" or "np" (empty with no record).
	Applied       string
	Policy        Policy // the published policy that applied
	Disposition   Policy // after sampling/testing (and later local overrides)
	SPFAligned    bool
	DKIMAligned   bool
	AlignedDomain string // the identifier that produced pass, if any
	Overrides     []Override
	Reasons       []string // human-readable trace lines, in order
	Discarded     []string // records discarded during discovery (Discovery.Discarded)
	Err           error    // why temperror/permerror, wrapped sentinel
}

// Options configure an Evaluator.
type Options struct {
	Spec    Spec
	PSL     PublicSuffixList // RFC 7489 mode; nil means the bundled list
	Sampler Sampler          // nil means crypto/rand
	MaxWalk int              // tree-walk query budget, default and maximum 8 (RFC 9989 §4.10)
}

// PublicSuffixList answers "what is the public suffix of name".
type PublicSuffixList interface {
	PublicSuffix(name string) string
}
