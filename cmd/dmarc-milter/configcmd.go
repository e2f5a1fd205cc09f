package main

// The config subcommands: check and print the effective configuration,
// and convert an OpenDMARC configuration (opendmarc.go).

import (
	"bufio"
	"bytes"
	"encoding"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/dmarc-milter/dmarc-milter/auth/dnsres"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

func configUsage(w io.Writer) {
	fmt.Fprint(w, `usage:
  dmarc-milter config check FILE     validate FILE as "serve -config FILE" would and print
                                     the effective configuration (every key) as TOML
  dmarc-milter config check          (or: config defaults) print the built-in defaults
  dmarc-milter config from-opendmarc /etc/opendmarc.conf
                                     convert an OpenDMARC configuration: TOML on stdout,
                                     one line per OpenDMARC key on stderr
`)
}

func configCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		configUsage(stderr)
		return 2
	}
	switch args[0] {
	case "check":
		return configCheck(args[1:], stdout, stderr)
	case "defaults":
		if len(args) > 1 {
			configUsage(stderr)
			return 2
		}
		return configCheck(nil, stdout, stderr)
	case "from-opendmarc":
		return fromOpenDMARCCmd(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		configUsage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "dmarc-milter config: unknown subcommand %q\n", args[0])
	configUsage(stderr)
	return 2
}

func configCheck(args []string, stdout, stderr io.Writer) int {
	if len(args) > 1 || (len(args) == 1 && strings.HasPrefix(args[0], "-")) {
		configUsage(stderr)
		return 2
	}
	var path string
	if len(args) == 1 {
		path = args[0]
	}
	st, err := checkSettings(path, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "dmarc-milter config check: %v\n", err)
		return 1
	}
	src := "the built-in defaults"
	if path != "" {
		src = path
	}
	fmt.Fprintf(stdout, "# Effective configuration of dmarc-milter from %s:\n# every key, with the defaults filled in.\n", src)
	if err := writeSettings(stdout, st); err != nil {
		fmt.Fprintf(stderr, "dmarc-milter config check: %v\n", err)
		return 1
	}
	return 0
}

// checkSettings loads path through the same settingsFrom as serve (no
// flags given), then does the start-up steps of serve that can fail on the
// configuration alone. Checks that depend on this host rather than on the
// file (resolv.conf, the socket group) only warn: the file may be checked
// on another machine than the one it is for.
func checkSettings(path string, stderr io.Writer) (Settings, error) {
	fs, _ := flagSet(io.Discard)
	st, err := settingsFrom(fs, path)
	if err != nil {
		return Settings{}, err
	}
	if st.PSL != "" {
		if _, err := policy.LoadPSL(st.PSL); err != nil {
			return Settings{}, withLine(path, fmt.Errorf("psl: %w", err))
		}
	}
	if len(st.DNS) == 0 {
		if _, err := dnsres.ServersFromResolvConf("/etc/resolv.conf"); err != nil {
			fmt.Fprintf(stderr, "warning: dns is empty and /etc/resolv.conf is unusable on this host (%v): serve would not start here\n", err)
		}
	}
	if network, addr, _ := parseListen(st.Listen); network == "unix" {
		if st.SocketGroup != "" {
			if _, err := user.LookupGroup(st.SocketGroup); err != nil {
				fmt.Fprintf(stderr, "warning: socket_group %q: %v: serve would not start on this host\n", st.SocketGroup, err)
			}
		}
		// systemd creates the unit's RuntimeDirectory at each start and
		// removes it at stop, so its absence says nothing.
		if dir := filepath.Dir(addr); dir != runtimeDir {
			if _, err := os.Stat(dir); err != nil {
				fmt.Fprintf(stderr, "warning: listen: the socket's directory %s does not exist on this host: serve would fail to bind; the package provides %s (inside Postfix's chroot) and %s\n", dir, chrootSocketDir, runtimeDir)
			}
		}
	}
	if shortAuthservID(st.Milter.AuthServID) {
		fmt.Fprintf(stderr, "warning: authserv_id %q has no dot: %s\n", st.Milter.AuthServID, authservIDHint)
	}
	if st.LogOutput == "syslog" && syslogNetwork == "" && !localSyslog() {
		fmt.Fprintf(stderr, "warning: log_output = \"syslog\", but this host has no local syslog socket (%s): serve would not start here; %s\n", strings.Join(syslogPaths, ", "), syslogRemedy)
	}
	if path != "" {
		if w := emptyFileWarning(path); w != "" {
			fmt.Fprintf(stderr, "warning: %s\n", w)
		}
	}
	return st, nil
}

// The package's socket directories (deploy/systemd/dmarc-milter.service,
// deploy/nfpm.yaml).
const (
	runtimeDir      = "/run/dmarc-milter"
	chrootSocketDir = "/var/spool/postfix/dmarc-milter"
)

// emptyFileWarning says when the file sets no key: it then validates as
// the defaults, which is what `from-opendmarc ... > FILE` leaves behind
// when the conversion fails.
func emptyFileWarning(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return path + " is empty: every setting is the default (a failed `config from-opendmarc ... > FILE` leaves it so)"
	}
	var m map[string]any
	if _, err := toml.Decode(string(data), &m); err == nil && len(m) == 0 {
		return path + " sets no key: every setting is the default"
	}
	return ""
}

// errKey finds the key an error names: loader and validation messages start
// with it ("mode: ...", "local_policy: allow_from: ..."), some in flag
// spelling ("message-timeout: ...").
var errKey = regexp.MustCompile(`^([a-z][a-z_-]*): (?:([a-z][a-z_]*): )?`)

// withLine puts the file and line of the offending key in front of an
// error about a setting ("FILE:LINE: key: why"), so that the operator need
// not hunt for it. TOML syntax errors carry their own line already.
func withLine(path string, err error) error {
	if path == "" {
		return err
	}
	data, rerr := os.ReadFile(path)
	if rerr != nil {
		return err
	}
	msg := strings.TrimPrefix(err.Error(), path+": ")
	if list, ok := strings.CutPrefix(msg, "unknown key(s): "); ok {
		keys := strings.Split(list, ", ")
		for i, k := range keys {
			table, key := "", k
			if dot := strings.LastIndexByte(k, '.'); dot >= 0 {
				table, key = k[:dot], k[dot+1:]
			}
			if n := keyLine(data, table, key); n > 0 {
				keys[i] = fmt.Sprintf("%s (line %d)", k, n)
			}
		}
		return fmt.Errorf("%s: unknown key(s): %s", path, strings.Join(keys, ", "))
	}
	m := errKey.FindStringSubmatch(msg)
	if m == nil {
		return err
	}
	key, sub := strings.ReplaceAll(m[1], "-", "_"), m[2]
	table := ""
	if sub != "" {
		table, key = key, sub
	}
	n := keyLine(data, table, key)
	if n == 0 && table == "" {
		// Validation names some table keys without their table.
		n = keyLine(data, "*", key)
	}
	if n > 0 {
		return fmt.Errorf("%s:%d: %s", path, n, msg)
	}
	return fmt.Errorf("%s: %s", path, msg)
}

// keyLine returns the 1-based line where key is set inside table ("" for
// the top level, "*" for any), or 0. It reads TOML only as far as needed to locate a
// key the decoder already accepted.
func keyLine(data []byte, table, key string) int {
	cur := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "[") {
			cur = strings.TrimSpace(strings.Trim(line, "[]"))
			continue
		}
		k, _, ok := strings.Cut(line, "=")
		if ok && (cur == table || table == "*") && strings.Trim(strings.TrimSpace(k), `"`) == key {
			return n
		}
	}
	return 0
}

// MarshalText lets the effective configuration print durations the way
// the loader reads them.
func (d duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// fileFrom turns effective settings back into the file shape with every
// key set, so that printing it and loading it again gives the same
// settings.
func fileFrom(st Settings) fileConfig {
	mc := st.Milter
	str := func(s string) *string { return &s }
	list := func(l []string) *strList { return &strList{items: l} }
	nets := func(ps []netip.Prefix) []string {
		out := []string{}
		for _, p := range ps {
			out = append(out, p.String())
		}
		return out
	}
	b := func(v bool) *bool { return &v }
	n := func(v int) *int { return &v }
	lp := &localPolicyConfig{
		AllowFrom:        sortedDomains(mc.Local.AllowFrom),
		RejectFrom:       sortedDomains(mc.Local.RejectFrom),
		Forwarders:       append(nets(mc.Forwarders), sortedDomains(mc.ForwarderHosts)...),
		MailingLists:     append(nets(mc.MailingLists), sortedDomains(mc.MailingListHosts)...),
		TrustedARC:       append([]string{}, mc.TrustedARC...),
		RecipientDomains: map[string]string{},
	}
	for d, m := range mc.RecipientModes {
		lp.RecipientDomains[d] = m
	}
	return fileConfig{
		Listen:            str(st.Listen),
		DNS:               list(st.DNS),
		AuthServID:        str(mc.AuthServID),
		Mode:              str(mc.Mode),
		Quarantine:        str(mc.Quarantine),
		QuarantineHeader:  str(mc.QuarantineHeader),
		OnTempError:       str(mc.OnTempError),
		OnError:           str(mc.OnError),
		OnMalformedFrom:   str(mc.OnMalformedFrom),
		RejectMultiDomain: b(mc.RejectMultiDomainFrom),
		Spec:              str(string(st.Spec)),
		PSL:               str(st.PSL),
		TrustedNetworks:   list(nets(mc.TrustedNetworks)),
		SkipAuthenticated: b(mc.SkipAuthenticated),
		MessageTimeout:    &duration{Duration: mc.MessageTimeout},
		DNSTimeout:        &duration{Duration: st.DNSTimeout},
		IdleTimeout:       &duration{Duration: mc.IdleTimeout},
		MaxDKIMSignatures: n(mc.MaxDKIMSignatures),
		LogFormat:         str(st.LogFormat),
		LogLevel:          str(st.LogLevel),
		SocketMode:        str(fmt.Sprintf("%04o", st.SocketMode.Perm())),
		SocketGroup:       str(st.SocketGroup),
		LogOutput:         str(st.LogOutput),
		MetricsListen:     str(st.MetricsListen),
		MaxHeaderBytes:    n(mc.MaxHeaderBytes),
		LocalPolicy:       lp,
	}
}

func sortedDomains(s policy.DomainSet) []string {
	out := []string{}
	for k := range s {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// writeSettings prints st as TOML. The encoder writes the keys in the
// order of fileConfig and the [local_policy] table last.
func writeSettings(w io.Writer, st Settings) error {
	fc := fileFrom(st)
	if missing := unsetKeys(&fc); len(missing) > 0 {
		// A key added to fileConfig but not to fileFrom would be left out
		// of the output; refuse rather than print a partial configuration.
		return fmt.Errorf("internal: effective value unknown for %s", strings.Join(missing, ", "))
	}
	enc := toml.NewEncoder(w)
	enc.Indent = ""
	return enc.Encode(fc)
}

// unsetKeys lists the nil pointer fields of fc by TOML name.
func unsetKeys(fc *fileConfig) []string {
	var out []string
	for _, k := range walkKeys(fc) {
		if k.unset {
			out = append(out, k.name)
		}
	}
	return out
}

type tomlKey struct {
	name  string // "mode", "local_policy.allow_from"
	unset bool   // a nil pointer in fc
	table bool   // a [table] of further keys
}

// walkKeys lists every key the loader accepts, by the toml tags of
// fileConfig and of its tables, so that the printer and the sample
// config test follow the loader when a key is added.
func walkKeys(fc *fileConfig) []tomlKey {
	var out []tomlKey
	var walk func(prefix string, v reflect.Value)
	walk = func(prefix string, v reflect.Value) {
		t := v.Type()
		for i := range t.NumField() {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ",")
			if name == "" || name == "-" {
				continue
			}
			f := v.Field(i)
			// A table is a struct of further keys; duration and strList
			// are structs that decode one value.
			if f.Kind() == reflect.Pointer && f.Type().Elem().Kind() == reflect.Struct &&
				!f.Type().Implements(reflect.TypeFor[encoding.TextUnmarshaler]()) && !f.Type().Implements(reflect.TypeFor[toml.Unmarshaler]()) {
				out = append(out, tomlKey{name: prefix + name, unset: f.IsNil(), table: true})
				if f.IsNil() {
					f = reflect.New(f.Type().Elem())
				}
				walk(prefix+name+".", f.Elem())
				continue
			}
			out = append(out, tomlKey{name: prefix + name, unset: f.Kind() == reflect.Pointer && f.IsNil()})
		}
	}
	walk("", reflect.ValueOf(fc).Elem())
	return out
}
