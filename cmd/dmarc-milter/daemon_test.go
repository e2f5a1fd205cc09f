package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
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
	// A milter server never speaks first, so only a request shows that a
	// connection is served: before SIGTERM, option negotiation is answered.
	if err := negotiate(d.addr); err != nil {
		t.Fatalf("before SIGTERM: %v", err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if err := negotiate(d.addr); err == nil {
		t.Error("new connection served after SIGTERM")
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

// negotiate connects to a milter and sends SMFIC_OPTNEG (milter protocol
// version 6, every action, no protocol steps skipped); nil if the milter
// answers with its own SMFIC_OPTNEG within a second.
func negotiate(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	pkt := binary.BigEndian.AppendUint32(nil, 13)
	pkt = append(pkt, 'O')
	pkt = binary.BigEndian.AppendUint32(pkt, 6)
	pkt = binary.BigEndian.AppendUint32(pkt, 0x1ff)
	pkt = binary.BigEndian.AppendUint32(pkt, 0)
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write(pkt); err != nil {
		return err
	}
	var hdr [5]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return err
	}
	if hdr[4] != 'O' {
		return fmt.Errorf("answer %q to SMFIC_OPTNEG", hdr[4])
	}
	return nil
}

// TestReloadRestartSettings changes every setting a reload cannot apply:
// each gets one warning naming it, while the decision settings apply
// (mode); the same file again repeats no warning; a further change to one
// setting warns for that one only; and going back to the running
// configuration warns for none.
func TestReloadRestartSettings(t *testing.T) {
	dns := startDNS(t)
	cfgPath := filepath.Join(t.TempDir(), "dmarc-milter.toml")
	base := fmt.Sprintf("dns = [%q]\nauthserv_id = \"lab.test\"\nmode = \"enforce\"\ndns_timeout = \"500ms\"\n", dns)
	// changed differs from base in mode (applied) and in every restart
	// setting but listen, which the daemon's -listen flag pins.
	changed := func(dnsTimeout string) string {
		return `dns = ["127.0.0.1:1"]
authserv_id = "lab.test"
mode = "monitor"
dns_timeout = "` + dnsTimeout + `"
socket_mode = "0600"
socket_group = "nogroup"
spec = "rfc7489"
psl = "../../policy/testdata/psl.dat"
log_format = "json"
log_level = "debug"
log_output = "syslog"
metrics_listen = "127.0.0.1:1"
`
	}
	write := func(cfg string) {
		t.Helper()
		if err := os.WriteFile(cfgPath+".tmp", []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(cfgPath+".tmp", cfgPath); err != nil {
			t.Fatal(err)
		}
	}
	write(base)
	d := startDaemon(t, cfgPath)

	reloads := 0
	hup := func() string {
		t.Helper()
		reloads++
		if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if log := d.stderr.String(); strings.Count(log, `msg="configuration reloaded"`) == reloads {
				return log
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("reload %d not logged:\n%s", reloads, d.stderr.String())
		return ""
	}
	warnings := func(log, setting string) int {
		return strings.Count(log, `msg="reload: setting not applied; it needs a restart" setting=`+setting+" ")
	}
	restart := []string{"socket_mode", "socket_group", "dns", "dns_timeout", "spec", "psl", "log_format", "log_level", "log_output", "metrics_listen"}
	write(changed("1s"))
	log := hup()
	for _, s := range restart {
		if n := warnings(log, s); n != 1 {
			t.Errorf("first reload: %d warnings for %s, want 1", n, s)
		}
	}
	if !strings.Contains(log, "setting=dns_timeout running=500ms configured=1s") || !strings.Contains(log, "restart_pending=socket_mode,socket_group,dns,dns_timeout,spec,psl,log_format,log_level,log_output,metrics_listen") {
		t.Errorf("first reload:\n%s", log)
	}
	// Not applied: still text on stderr, still no debug lines.
	if strings.Contains(log, `{"`) || strings.Contains(log, "level=DEBUG") {
		t.Errorf("log settings applied by a reload:\n%s", log)
	}
	// Applied: monitor mode accepts the spoof.
	if act, err := sendSpoof(d.addr, 0); err != nil || act.Code != gomilter.ActContinue {
		t.Errorf("after reload to monitor: %+v %v", act, err)
	}

	log = hup()
	for _, s := range restart {
		if n := warnings(log, s); n != 1 {
			t.Errorf("same file again: %d warnings for %s, want still 1", n, s)
		}
	}

	write(changed("2s"))
	log = hup()
	for _, s := range restart {
		want := 1
		if s == "dns_timeout" {
			want = 2
		}
		if n := warnings(log, s); n != want {
			t.Errorf("dns_timeout changed again: %d warnings for %s, want %d", n, s, want)
		}
	}
	if !strings.Contains(log, "setting=dns_timeout running=500ms configured=2s") {
		t.Errorf("second change of dns_timeout:\n%s", log)
	}

	write(base)
	log = hup()
	for _, s := range restart {
		want := 1
		if s == "dns_timeout" {
			want = 2
		}
		if n := warnings(log, s); n != want {
			t.Errorf("back to the running file: %d warnings for %s, want %d", n, s, want)
		}
	}
	last := log[strings.LastIndex(log, `msg="configuration reloaded"`):]
	if strings.Contains(last, "restart_pending") {
		t.Errorf("back to the running file, still pending: %s", last)
	}
	if act, err := sendSpoof(d.addr, 0); err != nil || act.Code != gomilter.ActReplyCode || act.SMTPCode != 550 {
		t.Errorf("after reload to enforce: %+v %v", act, err)
	}
}

// TestRestartSettingsComplete: every field of Settings outside Milter is
// one a reload cannot apply, so each must be compared by reload; a field
// added without an entry in restartSettings would change silently.
func TestRestartSettingsComplete(t *testing.T) {
	typ := reflect.TypeOf(Settings{})
	for i := range typ.NumField() {
		f := typ.Field(i)
		if f.Name == "Milter" {
			continue
		}
		a, b := defaultSettings(), defaultSettings()
		v := reflect.ValueOf(&b).Elem().Field(i)
		switch v.Kind() {
		case reflect.String:
			v.SetString(v.String() + "x")
		case reflect.Int64, reflect.Int:
			v.SetInt(v.Int() + 1)
		case reflect.Uint32:
			v.SetUint(v.Uint() + 1)
		case reflect.Slice:
			v.Set(reflect.Append(v, reflect.ValueOf("x")))
		default:
			t.Fatalf("Settings.%s: kind %s not handled by this test", f.Name, v.Kind())
		}
		var names []string
		for _, rs := range restartSettings {
			if rs.get(&a) != rs.get(&b) {
				names = append(names, rs.name)
			}
		}
		if len(names) != 1 {
			t.Errorf("Settings.%s changed: reload compares %v, want exactly one setting", f.Name, names)
		}
	}
}

// TestStartWarnsShortAuthservID: an authserv-id without a dot (a short
// host name, the default on many machines) is logged as a warning at start.
func TestStartWarnsShortAuthservID(t *testing.T) {
	cfgPath := filepath.Join(t.TempDir(), "dmarc-milter.toml")
	for _, tt := range []struct {
		id   string
		warn bool
	}{{"vm", true}, {"mx.example.com", false}} {
		if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf("dns = [\"127.0.0.1:1\"]\nauthserv_id = %q\n", tt.id)), 0o600); err != nil {
			t.Fatal(err)
		}
		d := startDaemon(t, cfgPath)
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(d.stderr.String(), "dmarc-milter started") && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		log := d.stderr.String()
		if got := strings.Contains(log, `level=WARN msg="authserv_id has no dot: set it to this MX's fully qualified name`) && strings.Contains(log, "authserv_id="+tt.id+"\n"); got != tt.warn {
			t.Errorf("authserv_id %q: warned %v, want %v:\n%s", tt.id, got, tt.warn, log)
		}
	}
}
