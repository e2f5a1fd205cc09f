package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseListen(t *testing.T) {
	tests := []struct {
		in, network, addr string
		err               bool
	}{
		{"inet:127.0.0.1:8893", "tcp", "127.0.0.1:8893", false},
		{"inet:[::1]:8893", "tcp", "[::1]:8893", false},
		{"inet:8893@localhost", "tcp", "localhost:8893", false},
		{"inet:8893@[::1]", "tcp", "[::1]:8893", false},
		{"inet:8893", "tcp", "127.0.0.1:8893", false},
		{"unix:/run/dmarc-milter/s.sock", "unix", "/run/dmarc-milter/s.sock", false},
		{"local:/var/spool/postfix/x.sock", "unix", "/var/spool/postfix/x.sock", false},
		{"unix:relative.sock", "", "", true},
		{"inet:99999@localhost", "", "", true},
		{"inet:host:port", "", "", true},
		{"tcp6", "", "", true},
		{"udp:1.2.3.4:5", "", "", true},
		{"", "", "", true},
	}
	for _, tt := range tests {
		n, a, err := parseListen(tt.in)
		if (err != nil) != tt.err || n != tt.network || a != tt.addr {
			t.Errorf("parseListen(%q) = %q, %q, %v", tt.in, n, a, err)
		}
	}
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.toml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLoadSettings checks precedence (defaults < file < flags) and that
// every broken setting is refused with a message naming it.
func TestLoadSettings(t *testing.T) {
	good := writeTemp(t, `
listen = "unix:/run/x.sock"
dns = ["127.0.0.1:53", "10.0.0.1:53"]
authserv_id = "mx.example.com"
mode = "monitor"
quarantine = "hold"
trusted_networks = ["10.0.0.0/8", "192.0.2.1"]
message_timeout = "15s"
[local_policy]
allow_from = ["partner.example"]
reject_from = ["bank.example"]
forwarders = ["203.0.113.0/24", "relay.example"]
trusted_arc_authserv_ids = ["mx.upstream.example"]
recipient_domains = { "Customer.Example" = "off" }
`)
	st, _, err := loadSettings([]string{"-config", good, "-mode", "enforce"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	mc := st.Milter
	if st.Listen != "unix:/run/x.sock" || len(st.DNS) != 2 || mc.AuthServID != "mx.example.com" || mc.Quarantine != "hold" {
		t.Errorf("file not applied: %+v", st)
	}
	if mc.Mode != "enforce" {
		t.Errorf("flag did not override file: mode %q", mc.Mode)
	}
	if len(mc.TrustedNetworks) != 2 || mc.TrustedNetworks[1].String() != "192.0.2.1/32" || mc.MessageTimeout != 15*time.Second {
		t.Errorf("trusted networks/timeout: %v %v", mc.TrustedNetworks, mc.MessageTimeout)
	}
	if _, ok := mc.Local.RejectFrom.Match("mail.bank.example"); !ok || len(mc.Forwarders) != 1 || len(mc.ForwarderHosts) != 1 || mc.RecipientModes["customer.example"] != "off" {
		t.Errorf("local policy: %+v", mc)
	}

	st, _, err = loadSettings(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if st.Listen != "inet:127.0.0.1:8893" || st.Milter.Mode != "enforce" || len(st.Milter.TrustedNetworks) != 2 {
		t.Errorf("defaults: %+v", st)
	}
	if st, _, err = loadSettings([]string{"-trusted-networks", ""}, io.Discard); err != nil || len(st.Milter.TrustedNetworks) != 0 {
		t.Errorf("empty trusted networks: %v %v", st.Milter.TrustedNetworks, err)
	}

	bad := []struct{ file, flag, want string }{
		{`mode = "monitr"`, "", "mode"},
		{`modee = "monitor"`, "", "unknown key"},
		{`[local_policy]
allow_fromm = ["x.example"]`, "", "unknown key"},
		{`listen = "inet:host"`, "", "listen"},
		{`dns = ["resolver.example"]`, "", "c.toml:1: dns: "},
		{`dns = [53]`, "", "c.toml:1: dns: 53 is not a string"},
		{`trusted_networks = ["10.0.0.0/33"]`, "", "trusted_networks"},
		{`message_timeout = "10m"`, "", "c.toml:1: message_timeout: 10m0s must be"},
		{`message_timeout = "10s"`, "-message-timeout=10m", "message-timeout: 10m0s must be"},
		{`message_timeout = "ten"`, "", `c.toml:1: message_timeout: "ten" is not a duration`},
		{`mode = 1`, "", "c.toml:1: mode: want a string in double quotes, not a number"},
		{"[local_policy]\nallow_from = \"x.example\"", "", `c.toml:2: local_policy: allow_from: want a list like ["a", "b"], not a string`},
		{`spec = "rfc1234"`, "", "spec"},
		{`psl = "/nonexistent/psl.dat"`, "", "psl"},
		{`authserv_id = "a b"`, "", "c.toml:1: authserv_id: "},
		{"", "-authserv-id=a;b", "authserv-id: "},
		{`quarantine_header = "no colon"`, "", "c.toml:1: quarantine_header: "},
		{`[local_policy]
recipient_domains = { "x.example" = "sometimes" }`, "", "sometimes"},
		{`[local_policy]
reject_from = ["not a domain"]`, "", "reject_from"},
		{`[local_policy]
trusted_arc_authserv_ids = ["lab.test"]`, "-authserv-id=lab.test", "c.toml:2: local_policy: trusted_arc_authserv_ids: \"lab.test\" is our own authserv-id"},
		{`log_output = "file"`, "", "log_output"},
		{`socket_mode = "rw"`, "", "socket_mode"},
		{`this is not toml`, "", "c.toml"},
		{"", "-on-temperror=reject", "on-temperror"},
		{"", "-trusted-networks=10.0.0.0/33", "trusted-networks: "},
		{"", "-socket-mode=rw", "socket-mode: "},
		{"", "-max-dkim-signatures=0", "max-dkim-signatures"},
	}
	for _, b := range bad {
		args := []string{"-config", writeTemp(t, b.file)}
		if b.flag != "" {
			args = append(args, b.flag)
		}
		_, _, err := loadSettings(args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%q %q: err %v, want mention of %q", b.file, b.flag, err, b.want)
		}
	}
}

func TestRunSubcommands(t *testing.T) {
	var out strings.Builder
	if rc := run([]string{"version"}, &out, io.Discard); rc != 0 || !strings.HasPrefix(out.String(), "dmarc-milter ") {
		t.Errorf("version: %d %q", rc, out.String())
	}
	if rc := run([]string{"frobnicate"}, io.Discard, io.Discard); rc != 2 {
		t.Errorf("unknown command: %d", rc)
	}
	if rc := run([]string{"serve", "-mode", "bogus"}, io.Discard, io.Discard); rc != 2 {
		t.Errorf("bad flag value: %d", rc)
	}
}

// TestFileTakesWhatFlagTakes: a list key takes what its flag takes (one
// string of comma-separated items, an address without port), and the file
// and the flag give the same settings.
func TestFileTakesWhatFlagTakes(t *testing.T) {
	wantDNS := []string{"127.0.0.1:53", "[::1]:5353", "[2001:db8::53]:53"}
	wantNets := []string{"10.0.0.0/8", "192.0.2.1/32"}
	for _, tt := range []struct{ file, dns, nets string }{
		{file: `dns = ["127.0.0.1", "[::1]:5353", "2001:db8::53"]` + "\n" + `trusted_networks = ["10.0.0.0/8", "192.0.2.1"]`},
		{file: `dns = "127.0.0.1, [::1]:5353,[2001:db8::53]"` + "\n" + `trusted_networks = "10.0.0.0/8, 192.0.2.1"`},
		{dns: "127.0.0.1,[::1]:5353,2001:db8::53", nets: "10.0.0.0/8,192.0.2.1"},
	} {
		args := []string{"-config", writeTemp(t, tt.file)}
		if tt.dns != "" {
			args = append(args, "-dns", tt.dns, "-trusted-networks", tt.nets)
		}
		st, _, err := loadSettings(args, io.Discard)
		if err != nil {
			t.Errorf("%q %q: %v", tt.file, tt.dns, err)
			continue
		}
		var nets []string
		for _, p := range st.Milter.TrustedNetworks {
			nets = append(nets, p.String())
		}
		if !slices.Equal(st.DNS, wantDNS) || !slices.Equal(nets, wantNets) {
			t.Errorf("%q %q: dns %q, trusted_networks %q", tt.file, tt.dns, st.DNS, nets)
		}
	}
}

// TestEveryKeyIsAFlag: the sample file says every top-level key is also a
// flag of serve ('-' for '_'), and the flags are exactly the keys plus
// -config.
func TestEveryKeyIsAFlag(t *testing.T) {
	fs, _ := flagSet(io.Discard)
	flags := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { flags[f.Name] = true })
	var fc fileConfig
	for _, k := range walkKeys(&fc) {
		if k.table || strings.Contains(k.name, ".") {
			continue
		}
		name := strings.ReplaceAll(k.name, "_", "-")
		if !flags[name] {
			t.Errorf("key %s has no flag -%s", k.name, name)
		}
		delete(flags, name)
	}
	delete(flags, "config")
	for f := range flags {
		t.Errorf("flag -%s is no key of the file", f)
	}
	st, _, err := loadSettings([]string{"-max-header-bytes", "131072"}, io.Discard)
	if err != nil || st.Milter.MaxHeaderBytes != 131072 {
		t.Errorf("-max-header-bytes: %d %v", st.Milter.MaxHeaderBytes, err)
	}
}

// TestREADMEListsEveryFlag: the README's flag table has one row per flag
// of serve, so that it can say it lists them all.
func TestREADMEListsEveryFlag(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `-([a-z-]+)`").FindAllStringSubmatch(string(data), -1) {
		rows[m[1]] = true
	}
	fs, _ := flagSet(io.Discard)
	fs.VisitAll(func(f *flag.Flag) {
		if !rows[f.Name] {
			t.Errorf("README.md: no row for -%s", f.Name)
		}
		delete(rows, f.Name)
	})
	for r := range rows {
		t.Errorf("README.md: row for -%s, which serve does not have", r)
	}
}

// TestHelp: -h and --help at the top level name every command as well as
// the daemon's flags; check -h lists the flags that can change its
// evaluation and not the daemon's socket and log flags.
func TestHelp(t *testing.T) {
	for _, h := range []string{"-h", "-help", "--help"} {
		var out, errb strings.Builder
		if rc := run([]string{h}, &out, &errb); rc != 0 {
			t.Errorf("%s: rc %d", h, rc)
		}
		for _, want := range []string{"config from-opendmarc", "dmarc-milter check", "dmarc-milter record", "-listen", "-max-header-bytes"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("%s: no %q in\n%s", h, want, out.String())
			}
		}
	}
	var errb strings.Builder
	if rc := run([]string{"check", "-h"}, io.Discard, &errb); rc != 0 {
		t.Errorf("check -h: rc %d", rc)
	}
	for _, want := range []string{"-ip", "-rcpt", "-config", "-dns", "-mode", "-trusted-networks"} {
		if !strings.Contains(errb.String(), "  "+want+" ") {
			t.Errorf("check -h lacks %s:\n%s", want, errb.String())
		}
	}
	for name := range notForCheck {
		if strings.Contains(errb.String(), "  -"+name+" ") || strings.Contains(errb.String(), "  -"+name+"\n") {
			t.Errorf("check -h lists -%s:\n%s", name, errb.String())
		}
	}
}
