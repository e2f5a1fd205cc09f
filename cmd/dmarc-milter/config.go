package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/dmarc-milter/dmarc-milter/internal/domain"
	"github.com/dmarc-milter/dmarc-milter/milter"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

// fileConfig is the TOML file and the flag set in one shape: every key is
// also a flag of the same name with '-' for '_'. Pointers tell "not set"
// from a zero value, so defaults < file < flags.
type fileConfig struct {
	Listen            *string   `toml:"listen"`
	DNS               *[]string `toml:"dns"`
	AuthServID        *string   `toml:"authserv_id"`
	Mode              *string   `toml:"mode"`
	Quarantine        *string   `toml:"quarantine"`
	QuarantineHeader  *string   `toml:"quarantine_header"`
	OnTempError       *string   `toml:"on_temperror"`
	OnError           *string   `toml:"on_error"`
	OnMalformedFrom   *string   `toml:"on_malformed_from"`
	RejectMultiDomain *bool     `toml:"reject_multi_domain_from"`
	Spec              *string   `toml:"spec"`
	PSL               *string   `toml:"psl"`
	TrustedNetworks   *[]string `toml:"trusted_networks"`
	SkipAuthenticated *bool     `toml:"skip_authenticated"`
	MessageTimeout    *duration `toml:"message_timeout"`
	DNSTimeout        *duration `toml:"dns_timeout"`
	IdleTimeout       *duration `toml:"idle_timeout"`
	MaxDKIMSignatures *int      `toml:"max_dkim_signatures"`
	LogFormat         *string   `toml:"log_format"`
	LogLevel          *string   `toml:"log_level"`
	SocketMode        *string   `toml:"socket_mode"`
	SocketGroup       *string   `toml:"socket_group"`
	LogOutput         *string   `toml:"log_output"`
	MetricsListen     *string   `toml:"metrics_listen"`
	MaxHeaderBytes    *int      `toml:"max_header_bytes"`

	LocalPolicy *localPolicyConfig `toml:"local_policy"`
}

// localPolicyConfig is the [local_policy] table.
type localPolicyConfig struct {
	AllowFrom        []string          `toml:"allow_from"`
	RejectFrom       []string          `toml:"reject_from"`
	Forwarders       []string          `toml:"forwarders"`
	MailingLists     []string          `toml:"mailing_lists"`
	TrustedARC       []string          `toml:"trusted_arc_authserv_ids"`
	RecipientDomains map[string]string `toml:"recipient_domains"`
}

type duration struct{ time.Duration }

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// Settings is the effective configuration of the daemon.
type Settings struct {
	Listen     string
	DNS        []string
	Spec       policy.Spec
	PSL        string
	DNSTimeout time.Duration
	LogFormat  string
	LogLevel   string
	LogOutput  string
	SocketMode os.FileMode
	// SocketGroup owns the unix socket, so that the MTA's user can connect.
	SocketGroup   string
	MetricsListen string
	Milter        milter.Config
}

func defaultSettings() Settings {
	mc := milter.DefaultConfig()
	if h, err := os.Hostname(); err == nil && h != "" {
		mc.AuthServID = h
	}
	return Settings{
		Listen:     "inet:127.0.0.1:8893",
		Spec:       policy.SpecRFC9989,
		DNSTimeout: 2 * time.Second,
		LogFormat:  "text",
		LogLevel:   "info",
		LogOutput:  "stderr",
		SocketMode: 0o660,
		Milter:     mc,
	}
}

// loadFile reads a TOML file strictly: an unknown key is an error, so a
// typo cannot silently leave a default in force.
func loadFile(path string) (*fileConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var fc fileConfig
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&fc)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return nil, fmt.Errorf("%s: unknown key(s): %s", path, strings.Join(keys, ", "))
	}
	return &fc, nil
}

// apply lays fc over st and checks every value.
func (fc *fileConfig) apply(st *Settings) error {
	mc := &st.Milter
	set := func(dst *string, src *string) {
		if src != nil {
			*dst = strings.TrimSpace(*src)
		}
	}
	set(&st.Listen, fc.Listen)
	if fc.DNS != nil {
		st.DNS = nil
		for _, s := range *fc.DNS {
			for _, p := range strings.Split(s, ",") {
				if p = strings.TrimSpace(p); p != "" {
					st.DNS = append(st.DNS, p)
				}
			}
		}
	}
	set(&mc.AuthServID, fc.AuthServID)
	set(&mc.Mode, fc.Mode)
	set(&mc.Quarantine, fc.Quarantine)
	set(&mc.QuarantineHeader, fc.QuarantineHeader)
	set(&mc.OnTempError, fc.OnTempError)
	set(&mc.OnError, fc.OnError)
	set(&mc.OnMalformedFrom, fc.OnMalformedFrom)
	if fc.RejectMultiDomain != nil {
		mc.RejectMultiDomainFrom = *fc.RejectMultiDomain
	}
	if fc.Spec != nil {
		st.Spec = policy.Spec(strings.TrimSpace(*fc.Spec))
	}
	set(&st.PSL, fc.PSL)
	if fc.TrustedNetworks != nil {
		mc.TrustedNetworks = nil
		for _, s := range *fc.TrustedNetworks {
			for _, p := range strings.Split(s, ",") {
				p = strings.TrimSpace(p)
				if p == "" {
					continue
				}
				pfx, err := parsePrefix(p)
				if err != nil {
					return fmt.Errorf("trusted_networks: %w", err)
				}
				mc.TrustedNetworks = append(mc.TrustedNetworks, pfx)
			}
		}
	}
	if fc.SkipAuthenticated != nil {
		mc.SkipAuthenticated = *fc.SkipAuthenticated
	}
	if fc.MessageTimeout != nil {
		mc.MessageTimeout = fc.MessageTimeout.Duration
	}
	if fc.DNSTimeout != nil {
		st.DNSTimeout = fc.DNSTimeout.Duration
	}
	if fc.IdleTimeout != nil {
		mc.IdleTimeout = fc.IdleTimeout.Duration
	}
	if fc.MaxDKIMSignatures != nil {
		mc.MaxDKIMSignatures = *fc.MaxDKIMSignatures
	}
	set(&st.LogFormat, fc.LogFormat)
	set(&st.LogLevel, fc.LogLevel)
	if fc.SocketMode != nil {
		m, err := strconv.ParseUint(strings.TrimSpace(*fc.SocketMode), 8, 32)
		if err != nil || m > 0o777 {
			return fmt.Errorf("socket_mode: %q is not an octal file mode like 0660", *fc.SocketMode)
		}
		st.SocketMode = os.FileMode(m)
	}
	set(&st.SocketGroup, fc.SocketGroup)
	set(&st.LogOutput, fc.LogOutput)
	set(&st.MetricsListen, fc.MetricsListen)
	if fc.MaxHeaderBytes != nil {
		mc.MaxHeaderBytes = *fc.MaxHeaderBytes
	}
	if lp := fc.LocalPolicy; lp != nil {
		if err := lp.apply(mc); err != nil {
			return fmt.Errorf("local_policy: %w", err)
		}
	}
	return nil
}

func (lp *localPolicyConfig) apply(mc *milter.Config) error {
	var err error
	if mc.Local.AllowFrom, err = policy.NewDomainSet(lp.AllowFrom); err != nil {
		return fmt.Errorf("allow_from: %w", err)
	}
	if mc.Local.RejectFrom, err = policy.NewDomainSet(lp.RejectFrom); err != nil {
		return fmt.Errorf("reject_from: %w", err)
	}
	if mc.Forwarders, mc.ForwarderHosts, err = netsAndHosts(lp.Forwarders); err != nil {
		return fmt.Errorf("forwarders: %w", err)
	}
	if mc.MailingLists, mc.MailingListHosts, err = netsAndHosts(lp.MailingLists); err != nil {
		return fmt.Errorf("mailing_lists: %w", err)
	}
	mc.TrustedARC = append([]string(nil), lp.TrustedARC...)
	mc.RecipientModes = map[string]string{}
	for d, m := range lp.RecipientDomains {
		nd, err := domain.Normalize(d)
		if err != nil {
			return fmt.Errorf("recipient_domains: %q is not a domain name", d)
		}
		mc.RecipientModes[nd] = strings.TrimSpace(m)
	}
	return nil
}

// netsAndHosts splits a list of addresses, networks and host names: a
// name matches itself and its subdomains once forward-confirmed.
func netsAndHosts(list []string) ([]netip.Prefix, policy.DomainSet, error) {
	var nets []netip.Prefix
	var names []string
	for _, e := range list {
		e = strings.TrimSpace(e)
		if p, err := parsePrefix(e); err == nil {
			nets = append(nets, p)
			continue
		}
		names = append(names, e)
	}
	hosts, err := policy.NewDomainSet(names)
	return nets, hosts, err
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an address or network", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address or network", s)
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

// validate checks what milter.Config.Validate does not.
func (st *Settings) validate() error {
	if _, _, err := parseListen(st.Listen); err != nil {
		return err
	}
	switch st.Spec {
	case policy.SpecRFC9989, policy.SpecRFC7489:
	default:
		return fmt.Errorf("spec: %q is not one of rfc9989, rfc7489", st.Spec)
	}
	if st.PSL != "" {
		if _, err := os.Stat(st.PSL); err != nil {
			return fmt.Errorf("psl: %w", err)
		}
	}
	for _, s := range st.DNS {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return fmt.Errorf("dns: %q is not HOST:PORT", s)
		}
	}
	if st.DNSTimeout <= 0 || st.DNSTimeout > st.Milter.MessageTimeout {
		return fmt.Errorf("dns_timeout: %s must be positive and at most message_timeout (%s)", st.DNSTimeout, st.Milter.MessageTimeout)
	}
	switch st.LogFormat {
	case "text", "json":
	default:
		return fmt.Errorf("log_format: %q is not one of text, json", st.LogFormat)
	}
	switch st.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level: %q is not one of debug, info, warn, error", st.LogLevel)
	}
	switch st.LogOutput {
	case "stderr", "syslog":
	default:
		return fmt.Errorf("log_output: %q is not one of stderr, syslog", st.LogOutput)
	}
	if st.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(st.MetricsListen); err != nil {
			return fmt.Errorf("metrics_listen: %q is not HOST:PORT", st.MetricsListen)
		}
	}
	return st.Milter.Validate()
}

// parseListen accepts Postfix's spelling (inet:HOST:PORT, unix:/path) and
// Sendmail/OpenDMARC's (inet:PORT@HOST, local:/path, unix:/path).
func parseListen(s string) (network, address string, err error) {
	kind, rest, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok || rest == "" {
		return "", "", fmt.Errorf("listen: %q is not inet:HOST:PORT, inet:PORT@HOST, unix:/path or local:/path", s)
	}
	switch kind {
	case "unix", "local":
		if !strings.HasPrefix(rest, "/") {
			return "", "", fmt.Errorf("listen: %q: the socket path must be absolute", s)
		}
		return "unix", rest, nil
	case "inet", "inet6", "tcp":
		if port, host, ok := strings.Cut(rest, "@"); ok {
			if _, err := strconv.ParseUint(port, 10, 16); err != nil {
				return "", "", fmt.Errorf("listen: %q: bad port %q", s, port)
			}
			return "tcp", net.JoinHostPort(strings.Trim(host, "[]"), port), nil
		}
		host, port, err := net.SplitHostPort(rest)
		if err != nil {
			// "inet:8893" alone: loopback, the safe default.
			if _, perr := strconv.ParseUint(rest, 10, 16); perr == nil {
				return "tcp", net.JoinHostPort("127.0.0.1", rest), nil
			}
			return "", "", fmt.Errorf("listen: %q: %v", s, err)
		}
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return "", "", fmt.Errorf("listen: %q: bad port %q", s, port)
		}
		return "tcp", net.JoinHostPort(host, port), nil
	}
	return "", "", errors.New("listen: " + strconv.Quote(s) + ": unknown socket type " + strconv.Quote(kind) + " (inet, unix or local)")
}
