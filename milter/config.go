package milter

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/dmarc-milter/dmarc-milter/policy"
)

// Config is what the milter needs to decide; cmd fills it from flags and
// the TOML file. The zero value is not usable: start from DefaultConfig.
type Config struct {
	// AuthServID is written in our Authentication-Results and identifies
	// forged ones (RFC 8601 §5).
	AuthServID string
	// Mode is "enforce" or "monitor" (evaluate and write the header, never
	// reject or quarantine).
	Mode string
	// Quarantine is "tag" (deliver, add QuarantineHeader) or "hold"
	// (milter quarantine action: the Postfix hold queue).
	Quarantine string
	// QuarantineHeader is "Name: value", added in tag mode for Sieve or
	// Junk filing.
	QuarantineHeader string
	// OnTempError is "tempfail" (451 4.7.x) or "accept" for a DMARC
	// temperror (RFC 9989 §5.3.x allows both; never reject).
	OnTempError string
	// OnError is "accept" or "tempfail": what a message gets when the milter
	// itself fails (panic, internal error). Never a reject.
	OnError string
	// OnMalformedFrom is "reject" or "accept" for a message without a usable
	// Author Domain (no From, no domain, empty group).
	OnMalformedFrom string
	// RejectMultiDomainFrom rejects a From with several distinct domains
	// outright instead of evaluating each one.
	RejectMultiDomainFrom bool
	// TrustedNetworks are not evaluated (accepted at connect, no header).
	TrustedNetworks []netip.Prefix
	// SkipAuthenticated skips SASL-authenticated clients ({auth_authen}).
	SkipAuthenticated bool
	// MessageTimeout bounds the DNS work for one message (SPF, DKIM keys,
	// DMARC discovery); it must fit in Postfix's milter_content_timeout.
	MessageTimeout time.Duration
	// IdleTimeout closes a milter connection whose MTA stays silent.
	IdleTimeout time.Duration
	// MaxDKIMSignatures bounds the signatures verified per message.
	MaxDKIMSignatures int
	// MaxHeaderBytes bounds the header bytes kept per message; past it the
	// rest is neither kept nor verified (the MTA's own limits apply first).
	MaxHeaderBytes int

	// Local is the per-From-domain local policy (allow, force-reject).
	Local policy.LocalPolicy
	// Forwarders are clients whose DMARC failures are overridden
	// (trusted_forwarder): networks, or host names (and their subdomains)
	// verified by forward-confirmed reverse DNS.
	Forwarders     []netip.Prefix
	ForwarderHosts policy.DomainSet
	// MailingLists are like Forwarders, recorded as mailing_list.
	MailingLists     []netip.Prefix
	MailingListHosts policy.DomainSet
	// TrustedARC are upstream authserv-ids whose ARC-sealed dmarc=pass
	// overrides a DMARC failure, when the chain validates and their set is
	// the latest (trustedARC says why each condition is needed). Only list
	// upstreams that remove forged Authentication-Results carrying their
	// id (RFC 8601 §5) before they seal: some copy such fields into their
	// ARC-Authentication-Results.
	TrustedARC []string
	// RecipientModes maps a recipient domain (and its subdomains) to
	// "enforce", "monitor" or "off", for shared hosting. One milter reply
	// covers the whole message, so Transaction.AddRcpt defers recipients
	// whose mode differs from the first one's.
	RecipientModes map[string]string
}

// DefaultConfig returns the embedded defaults (no config file needed).
func DefaultConfig() Config {
	return Config{
		AuthServID:        "localhost",
		Mode:              "enforce",
		Quarantine:        "tag",
		QuarantineHeader:  "X-DMARC-Quarantine: yes",
		OnTempError:       "tempfail",
		OnError:           "accept",
		OnMalformedFrom:   "reject",
		TrustedNetworks:   []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")},
		SkipAuthenticated: true,
		MessageTimeout:    20 * time.Second,
		IdleTimeout:       10 * time.Minute,
		MaxDKIMSignatures: 5,
		MaxHeaderBytes:    1 << 20,
	}
}

// Validate reports the first setting that cannot work, in words an
// operator can act on.
func (c *Config) Validate() error {
	oneOf := func(name, v string, allowed ...string) error {
		for _, a := range allowed {
			if v == a {
				return nil
			}
		}
		return fmt.Errorf("%s: %q is not one of %s", name, v, strings.Join(allowed, ", "))
	}
	if c.AuthServID == "" || strings.ContainsAny(c.AuthServID, " \t\r\n;()\"") {
		return fmt.Errorf("authserv-id: %q must be a non-empty token (RFC 8601 §2.2)", c.AuthServID)
	}
	for _, e := range []error{
		oneOf("mode", c.Mode, "enforce", "monitor"),
		oneOf("quarantine", c.Quarantine, "tag", "hold"),
		oneOf("on-temperror", c.OnTempError, "tempfail", "accept"),
		oneOf("on-error", c.OnError, "accept", "tempfail"),
		oneOf("on-malformed-from", c.OnMalformedFrom, "reject", "accept"),
	} {
		if e != nil {
			return e
		}
	}
	if c.Quarantine == "tag" {
		name, _, ok := strings.Cut(c.QuarantineHeader, ":")
		if !ok || !validFieldName(strings.TrimSpace(name)) {
			return fmt.Errorf("quarantine-header: %q is not \"Name: value\"", c.QuarantineHeader)
		}
	}
	if c.MessageTimeout <= 0 || c.MessageTimeout > 280*time.Second {
		return fmt.Errorf("message-timeout: %s must be between 0 and 280s (inside Postfix's milter_content_timeout of 300s)", c.MessageTimeout)
	}
	if c.IdleTimeout <= 0 {
		return fmt.Errorf("idle-timeout: %s must be positive", c.IdleTimeout)
	}
	if c.MaxDKIMSignatures < 1 || c.MaxDKIMSignatures > 50 {
		return fmt.Errorf("max-dkim-signatures: %d must be between 1 and 50", c.MaxDKIMSignatures)
	}
	if c.MaxHeaderBytes < 64<<10 {
		return fmt.Errorf("max-header-bytes: %d must be at least 65536", c.MaxHeaderBytes)
	}
	for d, m := range c.RecipientModes {
		if err := oneOf("recipient mode for "+d, m, "enforce", "monitor", "off"); err != nil {
			return err
		}
	}
	for _, id := range c.TrustedARC {
		if id == "" || strings.ContainsAny(id, " \t;()\"") {
			return fmt.Errorf("trusted-arc-authserv-ids: %q is not an authserv-id", id)
		}
		if strings.EqualFold(id, c.AuthServID) {
			return fmt.Errorf("trusted-arc-authserv-ids: %q is our own authserv-id", id)
		}
	}
	return nil
}

// validFieldName follows RFC 5322 §3.6.8: printable ASCII except colon.
func validFieldName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 33 || s[i] > 126 || s[i] == ':' {
			return false
		}
	}
	return true
}
