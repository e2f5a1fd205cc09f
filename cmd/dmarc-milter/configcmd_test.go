package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// goldenCompare compares got with testdata/<dir>/<name>, or rewrites it
// with -update.
func goldenCompare(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -update writes it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs:\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

// hostLine hides the host name, the one default that depends on the
// machine.
func hostLine(b []byte) []byte {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return b
	}
	return bytes.ReplaceAll(b, []byte(fmt.Sprintf("authserv_id = %q\n", h)), []byte("authserv_id = \"<hostname>\"\n"))
}

// hostWarnings are the warnings of config check about this host rather
// than the file (TestConfigCheckHostWarnings covers them): its
// resolv.conf, socket directories, syslog socket, and host name as the
// default authserv-id.
func hostWarnings() *regexp.Regexp {
	h, _ := os.Hostname()
	return regexp.MustCompile(`(?m)^warning: (dns is empty and /etc/resolv.conf is unusable|listen: the socket's directory|log_output = "syslog", but|authserv_id ` + regexp.QuoteMeta(strconv.Quote(h)) + ` has no dot).*\n`)
}

func runConfig(args ...string) (rc int, stdout, stderr []byte) {
	var out, errb bytes.Buffer
	rc = run(append([]string{"config"}, args...), &out, &errb)
	return rc, out.Bytes(), errb.Bytes()
}

// TestConfigCheckGolden runs `config check` on good and broken files and
// compares exit code, stdout and stderr with golden files.
func TestConfigCheckGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/config/*.toml")
	if err != nil || len(files) < 5 {
		t.Fatalf("test files: %v %v", files, err)
	}
	cases := append([]string{""}, files...)
	for _, f := range cases {
		name := strings.TrimSuffix(filepath.Base(f), ".toml")
		args := []string{"check"}
		if f == "" {
			name = "defaults"
		} else {
			args = append(args, f)
		}
		t.Run(name, func(t *testing.T) {
			rc, out, errb := runConfig(args...)
			if strings.HasPrefix(name, "bad-") != (rc == 1) || (rc != 0 && rc != 1) {
				t.Errorf("rc %d for %s: %s", rc, name, errb)
			}
			if rc == 1 && (len(out) != 0 || !bytes.HasPrefix(errb, []byte("dmarc-milter config check: "+f))) {
				t.Errorf("an error must name the file first and print no configuration: %q %q", out, errb)
			}
			// Whether this host's resolv.conf is usable is not the file's
			// business.
			errb = hostWarnings().ReplaceAll(errb, nil)
			got := fmt.Appendf(nil, "rc %d\n--- stdout\n%s--- stderr\n%s", rc, hostLine(out), errb)
			goldenCompare(t, filepath.Join("testdata", "config", name+".golden"), got)
		})
	}
	rc, out, _ := runConfig("defaults")
	_, out2, _ := runConfig("check")
	if rc != 0 || !bytes.Equal(out, out2) {
		t.Errorf("config defaults (rc %d) differs from config check with no file", rc)
	}
}

// TestConfigCheckRoundTrip: what config check prints loads back, through
// the same loader, to the same settings, and prints the same again.
func TestConfigCheckRoundTrip(t *testing.T) {
	for _, f := range []string{"", "testdata/config/full.toml", "../../deploy/dmarc-milter.toml"} {
		st, err := checkSettings(f, io.Discard)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		var first bytes.Buffer
		if err := writeSettings(&first, st); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), "effective.toml")
		if err := os.WriteFile(p, first.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		st2, err := checkSettings(p, io.Discard)
		if err != nil {
			t.Fatalf("%s: printed configuration does not load: %v\n%s", f, err, first.Bytes())
		}
		var second bytes.Buffer
		if err := writeSettings(&second, st2); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(first.Bytes(), second.Bytes()) {
			t.Errorf("%s: not stable:\n%s\nthen\n%s", f, first.Bytes(), second.Bytes())
		}
		if f == "testdata/config/full.toml" && !reflect.DeepEqual(st, st2) {
			t.Errorf("%s: settings differ after the round trip:\n%+v\n%+v", f, st, st2)
		}
	}
}

// TestConfigCheckIsServe: config check and serve -config give the same
// settings for the same file.
func TestConfigCheckIsServe(t *testing.T) {
	for _, f := range []string{"testdata/config/full.toml", "../../deploy/dmarc-milter.toml"} {
		served, _, err := loadSettings([]string{"-config", f}, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		checked, err := checkSettings(f, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(served, checked) {
			t.Errorf("%s: serve %+v\ncheck %+v", f, served, checked)
		}
	}
	for _, f := range []string{"testdata/config/bad-value.toml", "testdata/config/bad-unknown-key.toml"} {
		if _, _, err := loadSettings([]string{"-config", f}, io.Discard); err == nil {
			t.Errorf("serve accepts %s", f)
		}
	}
}

// TestEveryKeyPrinted: a key added to the loader but not to the printer
// makes config check fail instead of printing a partial configuration.
func TestEveryKeyPrinted(t *testing.T) {
	fc := fileFrom(defaultSettings())
	if missing := unsetKeys(&fc); len(missing) > 0 {
		t.Errorf("not printed: %v", missing)
	}
	var empty fileConfig
	keys := walkKeys(&empty)
	top := 0
	for _, k := range keys {
		if !strings.Contains(k.name, ".") {
			top++
		}
	}
	if len(keys) < 30 || len(unsetKeys(&empty)) != top {
		t.Errorf("walkKeys found %d keys, %d unset, in an empty fileConfig with %d top-level ones", len(keys), len(unsetKeys(&empty)), top)
	}
}

// TestSampleConfig keeps deploy/dmarc-milter.toml honest: it loads as is,
// it sets exactly the defaults, and every key the loader accepts is in it
// (set, or commented out where the default depends on the host) with a
// "Default:" line in the comment above it.
func TestSampleConfig(t *testing.T) {
	const sample = "../../deploy/dmarc-milter.toml"
	rc, out, errb := runConfig("check", sample)
	if rc != 0 {
		t.Fatalf("config check %s: rc %d: %s", sample, rc, errb)
	}
	_, def, _ := runConfig("defaults")
	strip := func(b []byte) []byte { _, rest, _ := bytes.Cut(b, []byte("\n")); return rest }
	if !bytes.Equal(strip(out), strip(def)) {
		t.Errorf("the sample does not set the defaults:\n%s\ndefaults:\n%s", out, def)
	}

	data, err := os.ReadFile(sample)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	var fc fileConfig
	for _, k := range walkKeys(&fc) {
		if k.table {
			if !strings.Contains(string(data), "\n["+k.name+"]\n") {
				t.Errorf("no [%s] table in the sample", k.name)
			}
			continue
		}
		table, key := "", k.name
		if t, sub, ok := strings.Cut(k.name, "."); ok {
			table, key = t, sub
		}
		set := regexp.MustCompile(`^(# )?` + regexp.QuoteMeta(key) + ` = `)
		cur, found := "", -1
		for i, l := range lines {
			if strings.HasPrefix(l, "[") {
				cur = strings.Trim(l, "[]")
			}
			if cur == table && set.MatchString(l) {
				found = i
				break
			}
		}
		if found < 0 {
			t.Errorf("key %s is not in the sample", k.name)
			continue
		}
		documented := false
		for i := found - 1; i >= 0 && strings.HasPrefix(lines[i], "#"); i-- {
			if strings.HasPrefix(lines[i], "# Default:") {
				documented = true
				break
			}
		}
		if !documented {
			t.Errorf("key %s (line %d) has no \"# Default:\" line in the comment above it", k.name, found+1)
		}
	}
}

func TestConfigUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"frobnicate"}, {"check", "a", "b"}, {"check", "-mode", "monitor"}, {"defaults", "x"}} {
		if rc, _, _ := runConfig(args...); rc != 2 {
			t.Errorf("config %q: rc %d, want 2", args, rc)
		}
	}
	if rc, out, _ := runConfig("help"); rc != 0 || !bytes.Contains(out, []byte("from-opendmarc")) {
		t.Errorf("config help: %d %s", rc, out)
	}
	if rc, _, errb := runConfig("check", "/nonexistent/dmarc-milter.toml"); rc != 1 || !bytes.Contains(errb, []byte("/nonexistent/dmarc-milter.toml")) {
		t.Errorf("missing file: %d %s", rc, errb)
	}
}

// TestConfigCheckHostWarnings: config check warns, and still succeeds,
// about what would stop serve on this host although the file is valid: a
// unix socket in a directory that does not exist (OpenDMARC's, after a
// conversion), syslog without a local syslog socket, an authserv-id
// without a dot, and an empty file (a failed conversion redirected to it).
func TestConfigCheckHostWarnings(t *testing.T) {
	dir := t.TempDir()
	syslogPaths = []string{filepath.Join(dir, "no-log")}
	t.Cleanup(func() { syslogPaths = []string{"/dev/log", "/var/run/syslog", "/var/run/log"} })
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		file string
		want []string // warnings, in order
	}{
		{write("opendmarc-socket.toml", "listen = \"local:"+dir+"/opendmarc/opendmarc.sock\"\nauthserv_id = \"mx.example.com\"\n"),
			[]string{"warning: listen: the socket's directory " + dir + "/opendmarc does not exist on this host: serve would fail to bind"}},
		{write("socket-ok.toml", "listen = \"unix:"+dir+"/dmarc-milter.sock\"\nauthserv_id = \"mx.example.com\"\n"), nil},
		{write("package-runtime.toml", "listen = \"unix:/run/dmarc-milter/dmarc-milter.sock\"\nauthserv_id = \"mx.example.com\"\n"), nil},
		{write("syslog.toml", "log_output = \"syslog\"\nauthserv_id = \"mx.example.com\"\n"),
			[]string{`warning: log_output = "syslog", but this host has no local syslog socket (` + dir + `/no-log): serve would not start here; start a syslog daemon`}},
		{write("short-id.toml", "authserv_id = \"vm\"\n"),
			[]string{`warning: authserv_id "vm" has no dot: set it to this MX's fully qualified name`}},
		{write("empty.toml", ""), []string{"warning: " + dir + "/empty.toml is empty: every setting is the default"}},
		{write("comments.toml", "# nothing yet\n"), []string{"warning: " + dir + "/comments.toml sets no key"}},
	}
	for _, tt := range tests {
		rc, out, errb := runConfig("check", tt.file)
		if rc != 0 || len(out) == 0 {
			t.Errorf("%s: rc %d, %d bytes out: %s", tt.file, rc, len(out), errb)
			continue
		}
		var got []string
		for _, l := range strings.Split(strings.TrimSpace(string(errb)), "\n") {
			if l != "" && !strings.HasPrefix(l, "warning: dns is empty") {
				got = append(got, l)
			}
		}
		if filepath.Base(tt.file) == "empty.toml" || filepath.Base(tt.file) == "comments.toml" {
			// The default authserv-id is the host name.
			got = slices.DeleteFunc(got, func(l string) bool { return strings.HasPrefix(l, "warning: authserv_id") })
		}
		if len(got) != len(tt.want) {
			t.Errorf("%s: warnings\n%s\nwant %q", tt.file, strings.Join(got, "\n"), tt.want)
			continue
		}
		for i, w := range tt.want {
			if !strings.HasPrefix(got[i], w) {
				t.Errorf("%s: warning %q, want it to start %q", tt.file, got[i], w)
			}
		}
	}
}
