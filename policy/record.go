package policy

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Sentinel errors. Evaluation.Err and Discovery.Err wrap them, so callers
// test with errors.Is.
var (
	// ErrNotDMARC: the TXT record does not start with "v=DMARC1".
	ErrNotDMARC = errors.New("policy: not a DMARC record")
	// ErrSyntax: a DMARC record that cannot be used (no usable p and no
	// valid rua, or too long).
	ErrSyntax = errors.New("policy: unusable DMARC record")
	// ErrMultipleRecords: more than one DMARC record at one name.
	ErrMultipleRecords = errors.New("policy: multiple DMARC records")
	// ErrDNS: a temporary DNS failure; the policy cannot be applied.
	ErrDNS = errors.New("policy: DNS error")
	// ErrNoAuthorDomain: the Author Domain is empty or not a host name.
	ErrNoAuthorDomain = errors.New("policy: no usable author domain")
)

// MaxRecordLen bounds the record text we parse. A TXT RRset cannot exceed
// one 64 KiB DNS message, so nothing legitimate is longer.
const MaxRecordLen = 64 * 1024

// Bounds on what a record can make us keep. Parsing stays linear in the
// record length; these only cap memory and log volume.
const (
	maxURIs     = 64 // per list; the rest is dropped with a warning
	maxWarnings = 16
)

// Record is one parsed DMARC Policy Record.
type Record struct {
	Raw string

	P, SP, NP   Policy
	HasSP       bool
	HasNP       bool
	ADKIM, ASPF Alignment
	// PSD is 'y', 'n' or 'u' (RFC 9989 §4.7); always 'u' in RFC 7489 mode.
	PSD byte
	// Testing is t=y (RFC 9989 §4.7); always false in RFC 7489 mode.
	Testing bool
	// Pct is the legacy pct tag (RFC 7489 §6.3), honoured in both modes;
	// 100 when absent or invalid.
	Pct    int
	HasPct bool
	RUA    []string
	RUF    []string
	FO     string
	// Warnings says what was discarded or defaulted, for the
	// Authentication-Results comment, the log and the record CLI.
	Warnings []string
}

func (r *Record) warnf(format string, args ...any) {
	if len(r.Warnings) < maxWarnings {
		r.Warnings = append(r.Warnings, fmt.Sprintf(format, args...))
	} else if len(r.Warnings) == maxWarnings {
		r.Warnings = append(r.Warnings, "further warnings omitted")
	}
}

// isWSP is WSP of RFC 5234: space and horizontal tab.
func isWSP(c byte) bool { return c == ' ' || c == '\t' }

func trimWSP(s string) string {
	i, j := 0, len(s)
	for i < j && isWSP(s[i]) {
		i++
	}
	for j > i && isWSP(s[j-1]) {
		j--
	}
	return s[i:j]
}

// hasVersion reports whether txt starts with the version tag.
// RFC 9989 §4.8: dmarc-version = "v" equals %s"DMARC1"; the tag name is
// case-insensitive (RFC 5234 §2.3), the value is not (RFC 9989 §4.7).
// Leading WSP is tolerated: publishers add it and it cannot be ambiguous.
func hasVersion(txt string) bool {
	s := trimWSP(txt)
	if len(s) == 0 || (s[0] != 'v' && s[0] != 'V') {
		return false
	}
	s = strings.TrimLeft(s[1:], " \t")
	if !strings.HasPrefix(s, "=") {
		return false
	}
	s = strings.TrimLeft(s[1:], " \t")
	if !strings.HasPrefix(s, "DMARC1") {
		return false
	}
	rest := strings.TrimLeft(s[len("DMARC1"):], " \t")
	return rest == "" || rest[0] == ';'
}

// ParseRecord parses one TXT record (its character-strings already joined,
// RFC 9989 §4.5).
//
// It returns ErrNotDMARC if the record does not start with "v=DMARC1"
// (RFC 9989 §4.7: such a record MUST be ignored). Otherwise it returns a
// Record, parsed tolerantly: unknown tags are ignored and an invalid
// optional value falls back to its default (RFC 9989 §4.8), each noted in
// Warnings. If the record has no usable policy (RFC 9989 §4.10.1,
// RFC 7489 §6.6.3 step 6) or is longer than MaxRecordLen, the error wraps
// ErrSyntax and the returned Record, if not nil, is for diagnostics only.
func ParseRecord(txt string, spec Spec) (*Record, error) {
	if !hasVersion(txt) {
		return nil, ErrNotDMARC
	}
	if len(txt) > MaxRecordLen {
		return nil, fmt.Errorf("%w: record is %d bytes, limit %d", ErrSyntax, len(txt), MaxRecordLen)
	}
	spec = spec.normal()
	r := &Record{
		Raw:   txt,
		ADKIM: AlignRelaxed, // RFC 9989 §4.7: adkim default r
		ASPF:  AlignRelaxed, // RFC 9989 §4.7: aspf default r
		PSD:   'u',          // RFC 9989 §4.7: psd default u
		Pct:   100,          // RFC 7489 §6.3: pct default 100
	}
	var (
		hasP, badP, badSP, badNP bool
		seen                     = map[string]bool{}
	)
	// The version tag was checked above; the tag list after it is split at
	// ';' (RFC 9989 §4.8: dmarc-value excludes ';', so this is exact).
	parts := strings.Split(txt, ";")
	for i, part := range parts[1:] {
		part = trimWSP(part)
		if part == "" {
			continue // empty tag-spec or the optional trailing separator
		}
		eq := strings.IndexByte(part, '=')
		if eq < 0 {
			r.warnf("tag %d %q has no '=', ignored", i+2, clip(part))
			continue
		}
		name := strings.ToLower(trimWSP(part[:eq]))
		value := trimWSP(part[eq+1:])
		if !isAlpha(name) {
			r.warnf("tag name %q is not alphabetic, ignored", clip(name))
			continue
		}
		if seen[name] {
			// RFC 6376 §3.2 (whose tag-list syntax DMARC uses) forbids
			// duplicates; keeping the first is the least surprising.
			r.warnf("duplicate tag %s ignored", name)
			continue
		}
		seen[name] = true
		switch name {
		case "v":
			r.warnf("repeated v tag ignored")
		case "p":
			hasP = true
			if p, ok := parsePolicy(value); ok {
				r.P = p
			} else {
				badP = true
				r.warnf("invalid p=%q", clip(value))
			}
		case "sp":
			if p, ok := parsePolicy(value); ok {
				r.SP, r.HasSP = p, true
			} else {
				badSP = true
				r.warnf("invalid sp=%q", clip(value))
			}
		case "np", "psd", "t":
			if spec == SpecRFC7489 {
				// RFC 7489 §6.3: not defined there, so an unknown tag.
				r.warnf("tag %s is not defined in RFC 7489, ignored", name)
				continue
			}
			switch name {
			case "np": // RFC 9989 §4.7
				if p, ok := parsePolicy(value); ok {
					r.NP, r.HasNP = p, true
				} else {
					badNP = true
					r.warnf("invalid np=%q", clip(value))
				}
			case "psd": // RFC 9989 §4.7
				switch strings.ToLower(value) {
				case "y", "n", "u":
					r.PSD = strings.ToLower(value)[0]
				default:
					r.warnf("invalid psd=%q, using u", clip(value))
				}
			case "t": // RFC 9989 §4.7
				switch strings.ToLower(value) {
				case "y":
					r.Testing = true
				case "n":
				default:
					r.warnf("invalid t=%q, using n", clip(value))
				}
			}
		case "adkim", "aspf":
			a := AlignRelaxed
			switch strings.ToLower(value) {
			case "r":
			case "s":
				a = AlignStrict
			default:
				// RFC 9989 §4.8: syntax errors fall back to the default.
				r.warnf("invalid %s=%q, using r", name, clip(value))
			}
			if name == "adkim" {
				r.ADKIM = a
			} else {
				r.ASPF = a
			}
		case "pct":
			// RFC 7489 §6.3: 1*3DIGIT, 0 to 100. RFC 9989 removed it
			// (Appendix A.6); we honour it in both modes (LIBRARIES.md).
			n, err := strconv.Atoi(value)
			if err != nil || n < 0 || n > 100 || len(value) > 3 {
				r.warnf("invalid pct=%q, using 100", clip(value))
			} else {
				r.Pct, r.HasPct = n, true
			}
		case "rua", "ruf":
			uris, bad, dropped := parseURIList(value)
			if bad > 0 {
				r.warnf("%s: %d invalid URI(s) ignored", name, bad)
			}
			if dropped > 0 {
				r.warnf("%s: %d URI(s) beyond %d ignored", name, dropped, maxURIs)
			}
			if name == "rua" {
				r.RUA = uris
			} else {
				r.RUF = uris
			}
		case "fo":
			if validFO(value) {
				r.FO = value
			} else {
				r.warnf("invalid fo=%q, using 0", clip(value))
			}
		case "rf", "ri":
			// RFC 7489 §6.3 reporting tags, removed by RFC 9989 (Appendix
			// C.5.2); nothing here uses them.
		default:
			// RFC 9989 §4.7: unknown tags MUST be ignored.
			r.warnf("unknown tag %s ignored", clip(name))
		}
	}
	if r.FO == "" {
		r.FO = "0"
	}

	// Missing or invalid policy tags. RFC 9989 §4.7: a missing p means
	// p=none. RFC 9989 §4.10.1 and RFC 7489 §6.6.3 step 6: an invalid p
	// (RFC 7489: also a missing one) or an invalid sp (RFC 9989: or np)
	// acts as p=none if rua holds a valid URI, else the record is unusable.
	broken := badP || badSP || badNP || (!hasP && spec == SpecRFC7489)
	if !hasP && !broken {
		r.P = PolicyNone
		r.warnf("no p tag, using p=none")
	}
	if broken {
		r.P, r.SP, r.NP, r.HasSP, r.HasNP = PolicyNone, "", "", false, false
		if len(r.RUA) == 0 {
			return r, fmt.Errorf("%w: no valid policy and no valid rua", ErrSyntax)
		}
		r.warnf("no valid policy but a valid rua: acting as p=none")
	}
	return r, nil
}

// parsePolicy reads dmarc-request (RFC 9989 §4.8); ABNF strings are
// case-insensitive (RFC 5234 §2.3).
func parsePolicy(v string) (Policy, bool) {
	switch strings.ToLower(v) {
	case "none":
		return PolicyNone, true
	case "quarantine":
		return PolicyQuarantine, true
	case "reject":
		return PolicyReject, true
	}
	return "", false
}

func isAlpha(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// validFO checks dmarc-fo (RFC 9989 §4.8) loosely: a colon-separated list
// of 0, 1, d, s with 0 and 1 mutually exclusive and nothing repeated.
func validFO(v string) bool {
	if v == "" {
		return false
	}
	var seen [256]bool
	for _, f := range strings.Split(v, ":") {
		f = trimWSP(f)
		if len(f) != 1 || !strings.Contains("01ds", f) || seen[f[0]] {
			return false
		}
		seen[f[0]] = true
	}
	return !(seen['0'] && seen['1'])
}

// parseURIList splits dmarc-urilist (RFC 9989 §4.8) and keeps the valid
// URIs, without the obsolete "!size" suffix, up to maxURIs.
func parseURIList(v string) (uris []string, bad, dropped int) {
	for _, u := range strings.Split(v, ",") {
		u = trimWSP(u)
		u = stripReportSize(u)
		if !validURI(u) {
			bad++
			continue
		}
		if len(uris) >= maxURIs {
			dropped++
			continue
		}
		uris = append(uris, u)
	}
	return uris, bad, dropped
}

// stripReportSize removes obs-dmarc-report-size (RFC 9989 §4.8), which
// reporters ignore; a literal '!' inside a URI must be encoded, so the
// last '!' starts it.
func stripReportSize(u string) string {
	i := strings.LastIndexByte(u, '!')
	if i < 0 {
		return u
	}
	size := strings.TrimRight(u[i+1:], "kmgtKMGT")
	if size == "" || len(u[i+1:])-len(size) > 1 {
		return u
	}
	for j := 0; j < len(size); j++ {
		if size[j] < '0' || size[j] > '9' {
			return u
		}
	}
	return u[:i]
}

// validURI checks the shape of an absolute URI (RFC 3986 §3): a scheme,
// ':', and a non-empty rest of visible characters. Mail receivers need
// mailto:, but any syntactically valid URI makes rua "valid" for the
// p=none rule of RFC 9989 §4.10.1.
func validURI(u string) bool {
	colon := strings.IndexByte(u, ':')
	if colon < 1 || colon == len(u)-1 {
		return false
	}
	for i := 0; i < colon; i++ {
		c := u[i]
		alpha := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if i == 0 && !alpha || !(alpha || c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.') {
			return false
		}
	}
	for i := colon + 1; i < len(u); i++ {
		if c := u[i]; c <= ' ' || c >= 0x7f || c == '!' {
			return false
		}
	}
	return true
}

// clip shortens attacker-chosen text before it goes into a warning.
func clip(s string) string { return clipN(s, 40) }

func clipN(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
