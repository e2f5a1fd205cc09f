package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
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
	DNS               *strList  `toml:"dns"`
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
	TrustedNetworks   *strList  `toml:"trusted_networks"`
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

// duration is a Go duration in the file ("20s"). A value that does not
// parse is kept in bad and refused by apply, which names the key: the TOML
// decoder's own message would name neither key nor remedy.
type duration struct {
	time.Duration
	bad string
}

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		d.bad = string(b)
		return nil
	}
	d.Duration = v
	return nil
}

// get returns the duration, or the error apply reports under key.
func (d *duration) get(key string) (time.Duration, error) {
	if d.bad == "" {
		return d.Duration, nil
	}
	if _, err := strconv.ParseFloat(d.bad, 64); err == nil {
		// message_timeout = 20: TOML hands the number over as text.
		return 0, fmt.Errorf("%s: %s has no unit: write it as a string with one, like \"%ss\"", key, d.bad, d.bad)
	}
	return 0, fmt.Errorf("%s: %q is not a duration like \"20s\" or \"500ms\"", key, d.bad)
}

// strList is a list key that takes what its flag takes: a list of
// strings, or one string of comma-separated items (dns = "127.0.0.1"
// as -dns 127.0.0.1). Like duration, a wrong TOML type is kept in bad for
// apply to report under the key's name.
type strList struct {
	items []string
	bad   string
}

func (l *strList) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case string:
		l.items = []string{v}
	case []any:
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				l.bad = fmt.Sprintf("%v is not a string: quote each item, as in [\"127.0.0.1:53\"]", e)
				return nil
			}
			l.items = append(l.items, s)
		}
	default:
		l.bad = fmt.Sprintf("%v is not a string or a list of strings", v)
	}
	return nil
}

// MarshalTOML writes the list as a TOML array, so that config check
// prints the shape the sample file uses.
func (l strList) MarshalTOML() ([]byte, error) {
	q := make([]string, len(l.items))
	for i, s := range l.items {
		q[i] = tomlString(s)
	}
	return []byte("[" + strings.Join(q, ", ") + "]"), nil
}

// split returns the items, each further split at commas (as the flag's
// value is), without empty ones, or the error apply reports under key.
func (l *strList) split(key string) ([]string, error) {
	if l.bad != "" {
		return nil, fmt.Errorf("%s: %s", key, l.bad)
	}
	var out []string
	for _, s := range l.items {
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out, nil
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
		if m := tomlTypeError.FindStringSubmatch(err.Error()); m != nil {
			key := strings.Replace(m[2], ".", ": ", 1)
			return nil, fmt.Errorf("%s:%s: %s: want %s, not %s", path, m[1], key, tomlWant(m[4]), tomlGot(m[3]))
		}
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

// tomlTypeError is the decoder's message for a value of the wrong TOML
// type (mode = 1), which it words in Go types.
var tomlTypeError = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]+)"\): incompatible types: TOML value has type (\S+); destination has type (\S+)$`)

func tomlWant(goType string) string {
	switch goType {
	case "string":
		return "a string in double quotes"
	case "boolean":
		return "true or false (no quotes)"
	case "integer":
		return "a whole number (no quotes)"
	case "slice":
		return `a list like ["a", "b"]`
	case "map", "struct":
		return "a table"
	}
	return goType
}

func tomlGot(tomlType string) string {
	switch {
	case tomlType == "string":
		return "a string"
	case strings.HasPrefix(tomlType, "int"), strings.HasPrefix(tomlType, "float"):
		return "a number"
	case tomlType == "bool":
		return "a boolean"
	case strings.HasPrefix(tomlType, "map"):
		return "a table"
	case strings.HasPrefix(tomlType, "[]"):
		return "a list"
	}
	return tomlType
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
		servers, err := fc.DNS.split("dns")
		if err != nil {
			return err
		}
		st.DNS = nil
		for _, p := range servers {
			// An address alone means port 53, as in resolv.conf.
			if _, _, err := net.SplitHostPort(p); err != nil {
				if a := strings.Trim(p, "[]"); net.ParseIP(a) != nil {
					p = net.JoinHostPort(a, "53")
				}
			}
			st.DNS = append(st.DNS, p)
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
		nets, err := fc.TrustedNetworks.split("trusted_networks")
		if err != nil {
			return err
		}
		mc.TrustedNetworks = nil
		for _, p := range nets {
			pfx, err := parsePrefix(p)
			if err != nil {
				return fmt.Errorf("trusted_networks: %w", err)
			}
			mc.TrustedNetworks = append(mc.TrustedNetworks, pfx)
		}
	}
	if fc.SkipAuthenticated != nil {
		mc.SkipAuthenticated = *fc.SkipAuthenticated
	}
	for _, d := range []struct {
		key string
		src *duration
		dst *time.Duration
	}{
		{"message_timeout", fc.MessageTimeout, &mc.MessageTimeout},
		{"dns_timeout", fc.DNSTimeout, &st.DNSTimeout},
		{"idle_timeout", fc.IdleTimeout, &mc.IdleTimeout},
	} {
		if d.src == nil {
			continue
		}
		v, err := d.src.get(d.key)
		if err != nil {
			return err
		}
		*d.dst = v
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
			return fmt.Errorf("dns: %q is not an address or ADDRESS:PORT", s)
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
