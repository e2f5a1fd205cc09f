package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
)

// daemonBinary returns DMARC_MILTER_BIN, or builds ./cmd/dmarc-milter into
// a temporary directory.
func daemonBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("DMARC_MILTER_BIN"); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("DMARC_MILTER_BIN: %v", err)
		}
		return bin
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	bin := filepath.Join(t.TempDir(), "dmarc-milter")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", bin, "./cmd/dmarc-milter")
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/dmarc-milter: %v\n%s", err, out)
	}
	return bin
}

// daemonConfigArgs returns "-config DMARC_MILTER_CONFIG" when that is set,
// so CI runs the installed binary with the installed configuration file
// (flags still override it: defaults < file < flags). The log goes to
// stderr for the test to show, and the metrics listener stays off since
// two daemons run at once and would both bind it.
func daemonConfigArgs(t *testing.T) []string {
	t.Helper()
	path := os.Getenv("DMARC_MILTER_CONFIG")
	if path == "" {
		return nil
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("DMARC_MILTER_CONFIG: %v", err)
	}
	return []string{"-config", path, "-log-output", "stderr", "-metrics-listen", ""}
}

// startDNS serves testdata/e2e/zone.json in-process until the test ends.
func startDNS(t *testing.T) string {
	t.Helper()
	recs, err := dnstest.LoadFile(filepath.Join(repoRoot, "testdata", "e2e", "zone.json"))
	if err != nil {
		t.Fatal(err)
	}
	z := dnstest.NewZone(dnstest.Options{KeyDir: filepath.Join(repoRoot, "testdata", "keys")})
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

// daemon is one running dmarc-milter process.
type daemon struct {
	name   string
	milter string // for smtpd_milters: inet:127.0.0.1:PORT
	log    string // its stderr
}

// startDaemon runs bin on a free loopback port with args added, waits until
// it listens, and stops it (SIGTERM, then SIGKILL) when the test ends.
func startDaemon(t *testing.T, bin, name string, args ...string) *daemon {
	t.Helper()
	addr := freeLoopbackAddr(t)
	logPath := filepath.Join(t.TempDir(), name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	base := append([]string{"serve", "-listen", "inet:" + addr}, daemonConfigArgs(t)...)
	cmd := exec.Command(bin, append(base, args...)...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		logf.Close()
		close(exited)
	}()
	d := &daemon{name: name, milter: "inet:" + addr, log: logPath}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
		})
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("dmarc-milter %s (%v) log:\n%s", name, waitErr, b)
		}
	})
	if err := waitListening(addr, exited); err != nil {
		stop()
		b, _ := os.ReadFile(logPath)
		t.Fatalf("dmarc-milter %s: %v (%v)\n%s", name, err, waitErr, b)
	}
	return d
}

func (d *daemon) String() string { return fmt.Sprintf("%s (%s)", d.name, d.milter) }
