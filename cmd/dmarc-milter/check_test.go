package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
)

var update = flag.Bool("update", false, "rewrite golden files")

func startDNS(t *testing.T) string {
	t.Helper()
	z := dnstest.NewZone(dnstest.Options{KeyDir: "../../testdata/keys"})
	recs, err := dnstest.LoadFile("../../testdata/zones/milter.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := z.Add(recs...); err != nil {
		t.Fatal(err)
	}
	s, err := dnstest.Start(z)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s.Addr()
}

var timeLine = regexp.MustCompile(`(?m)^  time: .*$`)

// TestCheckGolden runs `dmarc-milter check` on saved messages against the
// in-process DNS server and compares the whole output with golden files.
func TestCheckGolden(t *testing.T) {
	dns := startDNS(t)
	tests := []struct {
		name string
		args []string
	}{
		{"received-spf-pass", []string{"testdata/check/received.eml"}},
		{"spoof-reject", []string{"-ip", "198.51.100.7", "-helo", "mx.attacker.example.org", "-mail-from", "x@attacker.example.org", "../../testdata/messages/spoof.eml"}},
		{"spoof-monitor", []string{"-mode", "monitor", "-ip", "198.51.100.7", "-helo", "mx.attacker.example.org", "-mail-from", "x@attacker.example.org", "../../testdata/messages/spoof.eml"}},
		{"quarantine-hold", []string{"-quarantine", "hold", "-ip", "198.51.100.8", "-helo", "h.example", "-mail-from", "x@quar.example", "../../testdata/messages/quarantine.eml"}},
		{"servfail", []string{"-ip", "198.51.100.10", "-helo", "h.example", "-mail-from", "x@broken.example", "../../testdata/messages/servfail.eml"}},
		{"subdomain-sp", []string{"-ip", "198.51.100.11", "-helo", "h.example", "-mail-from", "<>", "../../testdata/messages/two-domains.eml"}},
		{"forged-ar", []string{"-ip", "198.51.100.9", "-helo", "h.example", "-mail-from", "x@monitor.example", "-rcpt", "bob@lab.test", "../../testdata/messages/forged-ar.eml"}},
		{"trusted-client", []string{"-ip", "127.0.0.1", "-helo", "localhost", "-mail-from", "x@attacker.example.org", "../../testdata/messages/spoof.eml"}},
		// A forwarded message sealed by an upstream that saw it pass; not
		// trusted here, so the trace shows the chain and DMARC still fails.
		{"arc-forwarded", []string{"-ip", "198.51.100.12", "-helo", "mx.upstream.example", "-mail-from", "fwd@upstream.example", "../../testdata/messages/arc-forwarded.eml"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			args := append([]string{"-dns", dns, "-authserv-id", "lab.test", "-dns-timeout", "500ms"}, tt.args...)
			if rc := checkCmd(args, &out, &errb); rc != 0 {
				t.Fatalf("rc %d: %s", rc, errb.String())
			}
			got := timeLine.ReplaceAll(out.Bytes(), []byte("  time: <t>"))
			got = regexp.MustCompile(`127\.0\.0\.1:\d+`).ReplaceAll(got, []byte("<dns>"))
			path := filepath.Join("testdata", "check", tt.name+".golden")
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
				t.Errorf("got:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

func TestCheckUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if rc := checkCmd([]string{"-dns", "127.0.0.1:1", "/nonexistent.eml"}, &out, &errb); rc != 2 {
		t.Errorf("missing file: rc %d", rc)
	}
	if rc := checkCmd([]string{"-dns", "127.0.0.1:1", "../../testdata/messages/spoof.eml"}, &out, &errb); rc != 2 || !bytes.Contains(errb.Bytes(), []byte("-ip")) {
		t.Errorf("no client address: rc %d, %s", rc, errb.String())
	}
}
