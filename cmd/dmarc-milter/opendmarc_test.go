package main

import (
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// loadConverted writes converted TOML to a file and loads it with config
// check. A psl path missing on this host (Debian's publicsuffix package is
// not installed everywhere) is pointed at the policy test list, so that
// the rest of the file is still checked.
func loadConverted(t *testing.T, toml []byte) (Settings, string) {
	t.Helper()
	const debPSL = "/usr/share/publicsuffix/public_suffix_list.dat"
	if _, err := os.Stat(debPSL); err != nil {
		toml = bytes.ReplaceAll(toml, []byte(`psl = "`+debPSL+`"`), []byte(`psl = "../../policy/testdata/psl.dat"`))
	}
	p := filepath.Join(t.TempDir(), "converted.toml")
	if err := os.WriteFile(p, toml, 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if rc := configCmd([]string{"check", p}, &out, &errb); rc != 0 {
		t.Fatalf("config check of the converted file: rc %d: %s\n%s", rc, errb.String(), toml)
	}
	st, err := checkSettings(p, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	return st, p
}

// TestFromOpenDMARCGolden converts Debian 12's own opendmarc.conf, a busy
// site's configuration with an IgnoreHosts dataset, and a broken one;
// compares stdout and stderr with golden files; and loads each result with
// config check to see that the behaviour carried over.
func TestFromOpenDMARCGolden(t *testing.T) {
	for _, name := range []string{"debian12", "site", "bad"} {
		t.Run(name, func(t *testing.T) {
			conf := filepath.Join("testdata", "opendmarc", name+"-opendmarc.conf")
			var out, errb bytes.Buffer
			rc := run([]string{"config", "from-opendmarc", conf}, &out, &errb)
			if (name == "bad") != (rc == 1) || (rc != 0 && rc != 1) || (rc == 1 && out.Len() != 0) {
				t.Fatalf("rc %d: %s", rc, errb.String())
			}
			goldenCompare(t, filepath.Join("testdata", "opendmarc", name+".toml.golden"), out.Bytes())
			goldenCompare(t, filepath.Join("testdata", "opendmarc", name+".report.golden"), errb.Bytes())
			if rc != 0 {
				return
			}
			st, _ := loadConverted(t, out.Bytes())
			mc := st.Milter
			switch name {
			case "debian12":
				// Debian's file sets no RejectFailures: OpenDMARC never
				// rejected, and neither may we after the switch.
				// OpenDMARC's socket directory is not ours, and Postfix
				// connects through group postfix, not opendmarc.
				if mc.Mode != "monitor" || st.Listen != "unix:/run/dmarc-milter/dmarc-milter.sock" || st.SocketGroup != "postfix" || st.SocketMode != 0o664 ||
					st.LogOutput != "syslog" || st.Spec != "rfc7489" || mc.SkipAuthenticated || mc.OnMalformedFrom != "accept" ||
					!slices.Equal(mc.TrustedNetworks, []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}) {
					t.Errorf("debian12 converted to %+v", st)
				}
			case "site":
				// 10.0.0.0/8 minus "!10.9.9.9": OpenDMARC evaluated that
				// host, so it must not be trusted; the rest of the /8 is,
				// in the 24 prefixes that cover exactly the rest.
				want := []string{"127.0.0.1/32", "::1/128", "192.0.2.25/32", "2001:db8:25::/48", "198.51.100.0/24",
					"10.0.0.0/13", "10.8.0.0/16", "10.9.0.0/21", "10.9.8.0/24", "10.9.9.0/29", "10.9.9.8/32",
					"10.9.9.10/31", "10.9.9.12/30", "10.9.9.16/28", "10.9.9.32/27", "10.9.9.64/26", "10.9.9.128/25",
					"10.9.10.0/23", "10.9.12.0/22", "10.9.16.0/20", "10.9.32.0/19", "10.9.64.0/18", "10.9.128.0/17",
					"10.10.0.0/15", "10.12.0.0/14", "10.16.0.0/12", "10.32.0.0/11", "10.64.0.0/10", "10.128.0.0/9"}
				var got []string
				for _, p := range mc.TrustedNetworks {
					got = append(got, p.String())
				}
				if !slices.Equal(got, want) {
					t.Errorf("trusted networks %v, want %v", got, want)
				}
				for a, trusted := range map[string]bool{"10.9.9.9": false, "10.9.9.8": true, "10.9.9.10": true, "10.0.0.0": true, "10.255.255.255": true, "11.0.0.0": false} {
					if got := slices.ContainsFunc(mc.TrustedNetworks, func(p netip.Prefix) bool { return p.Contains(netip.MustParseAddr(a)) }); got != trusted {
						t.Errorf("%s trusted: %v, want %v", a, got, trusted)
					}
				}
				if _, ok := mc.Local.AllowFrom.Match("partner.example"); !ok || mc.Mode != "enforce" || mc.AuthServID != "mx1.hosting.example" ||
					st.SocketGroup != "" || st.DNSTimeout.Seconds() != 5 || mc.OnMalformedFrom != "reject" || mc.Quarantine != "tag" {
					t.Errorf("site converted to %+v", st)
				}
				if len(mc.TrustedARC) != 0 {
					t.Errorf("TrustedAuthservIDs must only be suggested, got %v", mc.TrustedARC)
				}
			}
		})
	}
}

// TestFromOpenDMARCEveryKey: every key OpenDMARC knows, and one it does
// not, gets its own report line naming its line: nothing vanishes.
func TestFromOpenDMARCEveryKey(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hosts"), []byte("192.0.2.1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	values := map[string]string{
		"AuthservID": "mx.example.com", "TrustedAuthservIDs": "mx.example.com,relay.example",
		"Socket": "local:/run/x.sock", "UMask": "007", "UserID": "opendmarc", "IgnoreHosts": "hosts",
		"IgnoreMailFrom": "a.example", "DNSTimeout": "3", "PublicSuffixList": "../../policy/testdata/psl.dat",
		"SyslogFacility": "mail", "AutoRestartRate": "10/1h", "AutoRestartCount": "3", "DomainWhitelistSize": "10",
		"MilterDebug": "1", "BaseDirectory": dir, "ChangeRootDirectory": "/var/chroot",
	}
	var conf strings.Builder
	for _, k := range openDMARCKeys {
		v, ok := values[k]
		if !ok {
			v = "true"
		}
		// Mixed case and tabs, as OpenDMARC accepts them.
		fmt.Fprintf(&conf, "%s\t %s  # comment\n", strings.ToUpper(k[:1])+strings.ToLower(k[1:]), v)
	}
	conf.WriteString("NoSuchKey yes\n\n# done\n")
	p := filepath.Join(dir, "opendmarc.conf")
	if err := os.WriteFile(p, []byte(conf.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	out, report, err := convertOpenDMARC(p)
	if err != nil {
		t.Fatalf("%v\n%s", err, strings.Join(report, "\n"))
	}
	for i, k := range append(slices.Clone(openDMARCKeys), "NoSuchKey") {
		prefix := fmt.Sprintf("%s:%d: %s: ", p, i+1, k)
		n := 0
		for _, l := range report {
			if strings.HasPrefix(l, prefix) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s: %d report lines, want 1", k, n)
		}
	}
	if len(report) != len(openDMARCKeys)+1 {
		t.Errorf("%d report lines for %d keys (every key set, so no defaults to report):\n%s", len(report), len(openDMARCKeys)+1, strings.Join(report, "\n"))
	}
	st, _ := loadConverted(t, out)
	if st.SocketMode != 0o660 || st.Listen != "unix:/run/dmarc-milter/dmarc-milter.sock" || st.SocketGroup != "postfix" || st.Milter.Quarantine != "hold" || !st.Milter.RejectMultiDomainFrom {
		t.Errorf("converted to %+v", st)
	}
}

func TestParseOpenDMARC(t *testing.T) {
	keys, err := parseOpenDMARC(strings.NewReader("  socket\tinet:8893@[127.0.0.1]\t \r\n# x\nRejectString rejected by DMARC policy for %s # why\nPidFile\n\t\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []odKey{{"Socket", "inet:8893@[127.0.0.1]", 1}, {"RejectString", "rejected by DMARC policy for %s", 3}, {"PidFile", "", 4}}
	if !slices.Equal(keys, want) {
		t.Errorf("got %+v, want %+v", keys, want)
	}
	for v, want := range map[string]bool{"true": true, "Yes": true, "1": true, "False": false, "no": false, "0": false} {
		if got, err := odBool(v); err != nil || got != want {
			t.Errorf("odBool(%q) = %v, %v", v, got, err)
		}
	}
	if _, err := odBool("maybe"); err == nil {
		t.Error("odBool(maybe) accepted")
	}
}

func TestODPrefix(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"192.0.2.1", "192.0.2.1/32"},
		{"192.0.2.0/24", "192.0.2.0/24"},
		{"192.0.2.77/24", "192.0.2.0/24"},
		{"10.1.0.0/255.255.0.0", "10.1.0.0/16"},
		{"10.0.0.0/255.0.255.0", ""},
		{"0.0.0.0/0.0.0.0", "0.0.0.0/0"},
		{"::1", "::1/128"},
		{"[2001:db8::]/32", "2001:db8::/32"},
		{"2001:db8::/129", ""},
		{"::ffff:192.0.2.1", "192.0.2.1/32"},
		{"mail.example.com", ""},
		{"10.0.0.0/x", ""},
	}
	for _, tt := range tests {
		p, ok := odPrefix(tt.in)
		got := ""
		if ok {
			got = p.Masked().String()
		}
		if got != tt.want {
			t.Errorf("odPrefix(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestTOMLString(t *testing.T) {
	for in, want := range map[string]string{`a"b\c`: `"a\"b\\c"`, "tab\there": `"tab\u0009here"`, "é": `"é"`} {
		if got := tomlString(in); got != want {
			t.Errorf("tomlString(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestFromOpenDMARCUsage(t *testing.T) {
	var errb bytes.Buffer
	if rc := run([]string{"config", "from-opendmarc"}, io.Discard, &errb); rc != 2 {
		t.Errorf("no file: rc %d", rc)
	}
	if rc := run([]string{"config", "from-opendmarc", "/nonexistent/opendmarc.conf"}, io.Discard, &errb); rc != 1 {
		t.Errorf("missing file: rc %d", rc)
	}
}

// FuzzFromOpenDMARC: any opendmarc.conf converts without a panic, and a
// conversion reported as successful always loads as our configuration.
func FuzzFromOpenDMARC(f *testing.F) {
	for _, name := range []string{"debian12", "site", "bad"} {
		b, err := os.ReadFile(filepath.Join("testdata", "opendmarc", name+"-opendmarc.conf"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("Socket inet:0@[::1]\nUMask 0x1ff\nIgnoreMailFrom ,,\nAuthservID a;b\n"))
	dir := f.TempDir()
	hosts, err := os.ReadFile(filepath.Join("testdata", "opendmarc", "ignore.hosts"))
	if err != nil {
		f.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ignore.hosts"), hosts, 0o600); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, conf []byte) {
		p := filepath.Join(t.TempDir(), "opendmarc.conf")
		// BaseDirectory is forced so that IgnoreHosts reads only our file.
		data := append(conf, []byte("\nBaseDirectory "+dir+"\n")...)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		out, report, err := convertOpenDMARC(p)
		if len(report) == 0 {
			t.Fatal("no report")
		}
		if err != nil {
			return
		}
		q := filepath.Join(t.TempDir(), "converted.toml")
		out = bytes.ReplaceAll(out, []byte("\npsl = "), []byte("\n# psl = "))
		if err := os.WriteFile(q, out, 0o600); err != nil {
			t.Fatal(err)
		}
		fs, _ := flagSet(io.Discard)
		if _, err := settingsFrom(fs, q); err != nil {
			t.Fatalf("converted without error but does not load: %v\n%s", err, out)
		}
	})
}

// TestPrefixDifference checks the difference against address membership,
// for IPv4 and IPv6, and that it is minimal: no two prefixes of the
// result could be merged into their parent.
func TestPrefixDifference(t *testing.T) {
	pp := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	tests := []struct {
		p     string
		excl  []netip.Prefix
		n     int      // prefixes in the result
		in    []string // addresses the result must hold
		notIn []string
	}{
		{"10.0.0.0/8", pp("10.9.9.9/32"), 24, []string{"10.9.9.8", "10.9.9.10", "10.0.0.0", "10.255.255.255"}, []string{"10.9.9.9", "11.0.0.0", "9.255.255.255"}},
		{"192.0.2.0/24", pp("192.0.2.0/25", "192.0.2.200/32"), 7, []string{"192.0.2.128", "192.0.2.199", "192.0.2.201", "192.0.2.255"}, []string{"192.0.2.0", "192.0.2.127", "192.0.2.200"}},
		{"192.0.2.0/24", pp("192.0.2.0/24"), 0, nil, []string{"192.0.2.1"}},
		{"192.0.2.0/24", pp("192.0.0.0/16"), 0, nil, []string{"192.0.2.1"}},
		{"192.0.2.0/24", pp("198.51.100.0/24", "2001:db8::/32"), 1, []string{"192.0.2.1"}, nil},
		{"0.0.0.0/0", pp("0.0.0.0/32"), 32, []string{"0.0.0.1", "255.255.255.255"}, []string{"0.0.0.0"}},
		{"2001:db8:25::/48", pp("2001:db8:25::7/128"), 80, []string{"2001:db8:25::6", "2001:db8:25::8", "2001:db8:25:ffff:ffff:ffff:ffff:ffff"}, []string{"2001:db8:25::7", "2001:db8:26::"}},
		{"2001:db8::/32", pp("2001:db8:1::/48", "2001:db8:1:2::/64"), 16, []string{"2001:db8::1", "2001:db8:2::"}, []string{"2001:db8:1::1", "2001:db8:1:2::1"}},
	}
	for _, tt := range tests {
		got, ok := prefixDifference(netip.MustParsePrefix(tt.p), tt.excl, maxDifference)
		if !ok || len(got) != tt.n {
			t.Errorf("%s minus %v: %d prefixes (%v), want %d: %v", tt.p, tt.excl, len(got), ok, tt.n, got)
			continue
		}
		holds := func(a string) bool {
			return slices.ContainsFunc(got, func(p netip.Prefix) bool { return p.Contains(netip.MustParseAddr(a)) })
		}
		for _, a := range tt.in {
			if !holds(a) {
				t.Errorf("%s minus %v: %s missing", tt.p, tt.excl, a)
			}
		}
		for _, a := range tt.notIn {
			if holds(a) {
				t.Errorf("%s minus %v: %s included", tt.p, tt.excl, a)
			}
		}
		for i, a := range got {
			for _, b := range got[i+1:] {
				if a.Overlaps(b) {
					t.Errorf("%s minus %v: %s and %s overlap", tt.p, tt.excl, a, b)
				}
				if pa, _ := a.Addr().Prefix(a.Bits() - 1); a.Bits() == b.Bits() && a.Bits() > 0 && pa.Contains(b.Addr()) {
					t.Errorf("%s minus %v: %s and %s make %s: not minimal", tt.p, tt.excl, a, b, pa)
				}
			}
		}
	}
	// Past the limit it gives up rather than write hundreds of networks.
	if got, ok := prefixDifference(netip.MustParsePrefix("2001:db8::/32"), pp("2001:db8::1/128", "2001:db8:ffff::1/128"), maxDifference); ok {
		t.Errorf("two IPv6 hosts out of a /32: %d prefixes, want over the limit", len(got))
	}
}

// TestIgnoreHostsExclusions converts IgnoreHosts datasets with
// exclusions and checks, address by address, that what we trust is what
// OpenDMARC ignored: the longest listed prefix wins, an exclusion beating
// an entry of the same prefix.
func TestIgnoreHostsExclusions(t *testing.T) {
	tests := []struct {
		name    string
		hosts   string
		trusted []string
		not     []string
		report  []string // in the report
	}{
		{
			name:    "host out of a network, IPv4 and IPv6",
			hosts:   "10.0.0.0/8\n!10.9.9.9\n2001:db8:25::/48\n![2001:db8:25::7]\n",
			trusted: []string{"10.9.9.8", "10.1.2.3", "2001:db8:25::6", "2001:db8:25:1::"},
			not:     []string{"10.9.9.9", "2001:db8:25::7", "11.0.0.1"},
			report:  []string{`"10.0.0.0/8" minus "!10.9.9.9" (hosts:2) -> 24 networks`, `"2001:db8:25::/48" minus "![2001:db8:25::7]" (hosts:4) -> 80 networks`},
		},
		{
			name:    "a network inside an exclusion is trusted again",
			hosts:   "10.0.0.0/8\n!10.1.0.0/16\n10.1.1.0/24\n",
			trusted: []string{"10.2.0.1", "10.1.1.1"},
			not:     []string{"10.1.2.1"},
		},
		{
			name:   "exclusion of the network itself wins",
			hosts:  "192.0.2.0/24\n!192.0.2.0/255.255.255.0\n",
			not:    []string{"192.0.2.1"},
			report: []string{`"192.0.2.0/24" left out: "!192.0.2.0/255.255.255.0" (hosts:2) excludes all of it`},
		},
		{
			name:    "exclusion around a network does not touch it",
			hosts:   "192.0.2.0/24\n!192.0.0.0/16\n!198.51.100.1\n",
			trusted: []string{"192.0.2.1"},
			not:     []string{"192.0.3.1"},
			report:  []string{`hosts:3: "!198.51.100.1": nothing to convert: no network listed contains it`},
		},
		{
			name:    "too many networks: left out, loudly",
			hosts:   "2001:db8::/32\n!2001:db8::1\n!2001:db8:ffff::1\n192.0.2.1\n",
			trusted: []string{"192.0.2.1"},
			not:     []string{"2001:db8::2", "2001:db8::1"},
			report:  []string{`hosts:1: WARNING: "2001:db8::/32" left out, so every host in it is evaluated`, "(1 entries from", "1 not converted"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "hosts"), []byte(tt.hosts), 0o600); err != nil {
				t.Fatal(err)
			}
			conf := filepath.Join(dir, "opendmarc.conf")
			if err := os.WriteFile(conf, []byte("IgnoreHosts hosts\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			out, report, err := convertOpenDMARC(conf)
			if err != nil {
				t.Fatalf("%v\n%s", err, strings.Join(report, "\n"))
			}
			rep := strings.Join(report, "\n")
			for _, w := range tt.report {
				if !strings.Contains(rep, w) {
					t.Errorf("report lacks %q:\n%s", w, rep)
				}
			}
			st, _ := loadConverted(t, out)
			holds := func(a string) bool {
				return slices.ContainsFunc(st.Milter.TrustedNetworks, func(p netip.Prefix) bool { return p.Contains(netip.MustParseAddr(a)) })
			}
			for _, a := range tt.trusted {
				if !holds(a) {
					t.Errorf("%s not trusted: %v", a, st.Milter.TrustedNetworks)
				}
			}
			for _, a := range tt.not {
				if holds(a) {
					t.Errorf("%s trusted: %v", a, st.Milter.TrustedNetworks)
				}
			}
		})
	}
}

// TestFromOpenDMARCSocket: a unix socket moves to the package's socket
// directory of the same layout, given to group postfix, and the report says
// what smtpd_milters becomes; an inet socket is kept, with a word on the
// shared port; a UMask under which group postfix could not connect does
// not become socket_mode.
func TestFromOpenDMARCSocket(t *testing.T) {
	tests := []struct {
		conf, listen, group string
		mode                os.FileMode
		report              []string
	}{
		{"Socket local:/var/spool/postfix/opendmarc/opendmarc.sock\nUserID opendmarc:opendmarc\nUMask 007\n",
			"unix:/var/spool/postfix/dmarc-milter/dmarc-milter.sock", "postfix", 0o660,
			[]string{"replace OpenDMARC's entry in smtpd_milters (unix:/opendmarc/opendmarc.sock, or local:opendmarc/opendmarc.sock) with unix:/dmarc-milter/dmarc-milter.sock",
				`UserID: not converted: we run as the user of our systemd unit (dmarc-milter), not "opendmarc"; the socket's group is socket_group = "postfix" (see Socket), not "opendmarc"`}},
		{"Socket unix:/var/run/opendmarc/opendmarc.sock\nUMask 0022\n",
			"unix:/run/dmarc-milter/dmarc-milter.sock", "postfix", 0o660,
			[]string{"with unix:/run/dmarc-milter/dmarc-milter.sock; a chrooted smtpd", "UMask: not converted: under it the socket would be 0644, which group postfix could not connect to"}},
		{"Socket inet:8893@localhost\nUserID opendmarc:opendmarc\n", "inet:8893@localhost", "", 0o660,
			[]string{"stop OpenDMARC before dmarc-milter starts", "an inet socket needs no group"}},
	}
	for _, tt := range tests {
		p := filepath.Join(t.TempDir(), "opendmarc.conf")
		if err := os.WriteFile(p, []byte(tt.conf), 0o600); err != nil {
			t.Fatal(err)
		}
		out, report, err := convertOpenDMARC(p)
		if err != nil {
			t.Fatalf("%q: %v\n%s", tt.conf, err, strings.Join(report, "\n"))
		}
		rep := strings.Join(report, "\n")
		for _, w := range tt.report {
			if !strings.Contains(rep, w) {
				t.Errorf("%q: report lacks %q:\n%s", tt.conf, w, rep)
			}
		}
		st, _ := loadConverted(t, out)
		if st.Listen != tt.listen || st.SocketGroup != tt.group || st.SocketMode != tt.mode {
			t.Errorf("%q: listen %q, socket_group %q, socket_mode %o", tt.conf, st.Listen, st.SocketGroup, st.SocketMode)
		}
	}
}
