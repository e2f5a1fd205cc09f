package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestDaemon builds dnstestd, serves a zone with a DKIM key from two files,
// queries it over UDP and TCP and stops it with SIGTERM.
func TestDaemon(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "dnstestd")
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command in PATH")
	}
	build := exec.Command(goBin, "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	z1 := filepath.Join(dir, "base.json")
	z2 := filepath.Join(dir, "case.json")
	z3 := filepath.Join(dir, "conflict.json")
	os.WriteFile(z3, []byte(`[{"name": "LAB.test", "type": "MX", "value": "20 other.lab.test."}]`), 0o600)
	os.WriteFile(z1, []byte(`[{"name": "lab.test", "type": "MX", "value": "10 mx.lab.test."}]`), 0o600)
	os.WriteFile(z2, []byte(`[{"name": "sel._domainkey.d.test", "dkim_key": "ed25519", "type": "TXT"}]`), 0o600)
	keys := filepath.Join("..", "..", "..", "..", "testdata", "keys")

	tests := []struct {
		name  string
		args  []string
		ok    bool
		check func(t *testing.T, addr string)
	}{
		{"serves", []string{"-listen", "127.0.0.1:0", "-zone", z1, "-zone", z2, "-keys", keys}, true, func(t *testing.T, addr string) {
			for _, network := range []string{"udp", "tcp"} {
				m := new(dns.Msg)
				m.SetQuestion("SEL._domainkey.d.test.", dns.TypeTXT)
				r, _, err := (&dns.Client{Net: network, Timeout: 2 * time.Second}).Exchange(m, addr)
				if err != nil || len(r.Answer) != 1 || !strings.HasPrefix(r.Answer[0].(*dns.TXT).Txt[0], "v=DKIM1") {
					t.Errorf("%s: %v %v", network, r, err)
				}
			}
		}},
		{"same file twice is no conflict", []string{"-listen", "127.0.0.1:0", "-zone", z1, "-zone", z1}, true, nil},
		{"conflict between files", []string{"-listen", "127.0.0.1:0", "-zone", z1, "-zone", z3}, false, nil},
		{"missing zone", []string{"-zone", filepath.Join(dir, "nope.json")}, false, nil},
		{"stray argument", []string{"-listen", "127.0.0.1:0", "extra"}, false, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, tc.args...)
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			line, _ := bufio.NewReader(stdout).ReadString('\n')
			if !tc.ok {
				if err := cmd.Wait(); err == nil {
					t.Fatalf("exit 0, want failure (printed %q)", line)
				}
				return
			}
			addr, found := strings.CutPrefix(strings.TrimSpace(line), "listening on ")
			if !found {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("first line %q", line)
			}
			if tc.check != nil {
				tc.check(t, addr)
			}
			cmd.Process.Signal(syscall.SIGTERM)
			if err := cmd.Wait(); err != nil {
				t.Errorf("exit after SIGTERM: %v", err)
			}
		})
	}
}
