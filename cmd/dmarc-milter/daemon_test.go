package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	gomilter "github.com/emersion/go-milter"
)

// The daemon as a process: reload and stop under load. These run the real
// binary, built once per test run.

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func daemonBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the daemon")
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "dmarc-milter-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "dmarc-milter")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

type daemon struct {
	cmd    *exec.Cmd
	addr   string
	stderr *syncBuffer
	done   chan error
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func startDaemon(t *testing.T, config string) *daemon {
	t.Helper()
	addr := freePort(t)
	host, port, _ := net.SplitHostPort(addr)
	d := &daemon{addr: addr, stderr: &syncBuffer{}, done: make(chan error, 1)}
	d.cmd = exec.Command(daemonBinary(t), "serve", "-config", config, "-listen", "inet:"+port+"@"+host)
	d.cmd.Stderr = d.stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		<-d.done
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.stderr.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return d
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("daemon did not listen on %s:\n%s", addr, d.stderr.String())
	return nil
}

// spoofMessage is From a p=reject domain, unauthenticated: enforce mode
// rejects it, monitor mode accepts it with the header.
func sendSpoof(addr string, bodyDelay time.Duration) (*gomilter.Action, error) {
	c := gomilter.NewClientWithOptions("tcp", addr, gomilter.ClientOptions{
		ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second,
		ActionMask: gomilter.OptAddHeader | gomilter.OptChangeHeader | gomilter.OptQuarantine,
	})
	s, err := c.Session()
	if err != nil {
		return nil, err
	}
	defer s.Close()
	if _, err := s.Conn("client.example", gomilter.FamilyInet, 25, "198.51.100.7"); err != nil {
		return nil, err
	}
	if _, err := s.Helo("mx.attacker.example.org"); err != nil {
		return nil, err
	}
	if _, err := s.Mail("x@attacker.example.org", nil); err != nil {
		return nil, err
	}
	if _, err := s.Rcpt("bob@lab.test", nil); err != nil {
		return nil, err
	}
	for _, h := range [][2]string{{"From", " CEO <ceo@aligned.example>"}, {"To", " bob@lab.test"}, {"Subject", " pay"}} {
		if _, err := s.HeaderField(h[0], h[1]); err != nil {
			return nil, err
		}
	}
	if _, err := s.HeaderEnd(); err != nil {
		return nil, err
	}
	if _, err := s.BodyChunk([]byte("first part\r\n")); err != nil {
		return nil, err
	}
	time.Sleep(bodyDelay)
	if _, err := s.BodyChunk([]byte("second part\r\n")); err != nil {
		return nil, err
	}
	_, act, err := s.End()
	return act, err
}

func writeConfig(t *testing.T, path, dns, mode string) {
	t.Helper()
	cfg := fmt.Sprintf("dns = [%q]\nauthserv_id = \"lab.test\"\nmode = %q\ndns_timeout = \"500ms\"\n", dns, mode)
	if err := os.WriteFile(path+".tmp", []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// Atomic replace, as configuration management does.
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// TestReloadUnderLoad sends messages continuously while the configuration
// flips between enforce and monitor with SIGHUP, plus one broken file:
// every message gets a well-formed answer of one of the two modes, none is
// lost, and the broken file keeps the running configuration.
func TestReloadUnderLoad(t *testing.T) {
	dns := startDNS(t)
	cfgPath := filepath.Join(t.TempDir(), "dmarc-milter.toml")
	writeConfig(t, cfgPath, dns, "enforce")
	d := startDaemon(t, cfgPath)

	var sent, rejected, accepted atomic.Int64
	stop := make(chan struct{})
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				act, err := sendSpoof(d.addr, 0)
				if err != nil {
					errs <- err
					return
				}
				sent.Add(1)
				switch {
				case act.Code == gomilter.ActReplyCode && act.SMTPCode == 550:
					rejected.Add(1)
				case act.Code == gomilter.ActContinue || act.Code == gomilter.ActAccept:
					accepted.Add(1)
				default:
					errs <- fmt.Errorf("unexpected answer %+v", act)
					return
				}
			}
		}()
	}
	for i, mode := range []string{"monitor", "enforce", "broken", "monitor"} {
		time.Sleep(300 * time.Millisecond)
		if mode == "broken" {
			if err := os.WriteFile(cfgPath, []byte("mode = \"sometimes\"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		} else {
			writeConfig(t, cfgPath, dns, mode)
		}
		if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if sent.Load() < 20 || rejected.Load() == 0 || accepted.Load() == 0 {
		t.Errorf("sent %d, rejected %d, accepted %d: want both modes seen", sent.Load(), rejected.Load(), accepted.Load())
	}
	log := d.stderr.String()
	if !strings.Contains(log, "reload failed; keeping the running configuration") || strings.Count(log, "configuration reloaded") != 3 {
		t.Errorf("reload log:\n%s", log)
	}
	// Still serving, in the last mode (monitor): accepted.
	act, err := sendSpoof(d.addr, 0)
	if err != nil || act.Code != gomilter.ActContinue {
		t.Errorf("after reloads: %+v %v", act, err)
	}
	t.Logf("sent %d messages: %d rejected, %d accepted", sent.Load(), rejected.Load(), accepted.Load())
}

// TestStopDuringMessage sends SIGTERM while a message is half-way: the
// daemon stops accepting connections, still answers that message, then
// exits 0.
func TestStopDuringMessage(t *testing.T) {
	dns := startDNS(t)
	cfgPath := filepath.Join(t.TempDir(), "dmarc-milter.toml")
	writeConfig(t, cfgPath, dns, "enforce")
	d := startDaemon(t, cfgPath)

	type result struct {
		act *gomilter.Action
		err error
	}
	res := make(chan result, 1)
	go func() {
		act, err := sendSpoof(d.addr, time.Second)
		res <- result{act, err}
	}()
	time.Sleep(400 * time.Millisecond)
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if c, err := net.DialTimeout("tcp", d.addr, time.Second); err == nil {
		// The listener is closed; a connect may still land in the
		// kernel backlog only if it was not.
		c.SetReadDeadline(time.Now().Add(time.Second))
		_, rerr := bufio.NewReader(c).ReadByte()
		c.Close()
		if rerr == nil {
			t.Error("new connection accepted after SIGTERM")
		}
	}
	r := <-res
	if r.err != nil || r.act.Code != gomilter.ActReplyCode || r.act.SMTPCode != 550 {
		t.Fatalf("message in flight: %+v %v", r.act, r.err)
	}
	select {
	case err := <-d.done:
		d.done <- err
		if err != nil {
			t.Errorf("exit: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("daemon did not exit after SIGTERM")
	}
	if !strings.Contains(d.stderr.String(), "stopped") {
		t.Errorf("log:\n%s", d.stderr.String())
	}
}
