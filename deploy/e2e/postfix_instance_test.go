package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// waitLimit is how long the harness waits for Postfix to start or stop,
// for a delivery, or for a milter to listen. Every wait is bounded by it.
const waitLimit = 20 * time.Second

// e2eRequired reports whether a missing prerequisite must fail the test
// instead of skipping it (CI sets DMARC_E2E_REQUIRED=1).
func e2eRequired() bool { return os.Getenv("DMARC_E2E_REQUIRED") == "1" }

// requirePostfix skips (or fails, when required) unless a Postfix we can
// start as root is installed.
func requirePostfix(t *testing.T) {
	t.Helper()
	missing := func(why string) {
		t.Helper()
		if e2eRequired() {
			t.Fatalf("DMARC_E2E_REQUIRED=1 but %s", why)
		}
		t.Skipf("skipping the Postfix end-to-end test: %s", why)
	}
	if testing.Short() && !e2eRequired() {
		t.Skip("skipping the Postfix end-to-end test in -short mode")
	}
	if os.Geteuid() != 0 {
		missing("not running as root (Postfix must start its master as root)")
	}
	for _, cmd := range []string{"postfix", "postqueue", "postconf"} {
		if _, err := lookPath(cmd); err != nil {
			missing(fmt.Sprintf("%s not found (apt-get install postfix)", cmd))
		}
	}
	if _, err := user.Lookup("postfix"); err != nil {
		missing("no postfix user: " + err.Error())
	}
}

// lookPath finds Postfix commands also when /usr/sbin is not in PATH, as
// with a plain `go test` run by a non-login root shell.
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not in PATH, /usr/sbin or /usr/local/sbin", name)
}

// smtpdService is one smtpd listener of the private instance and the
// milter it talks to ("inet:127.0.0.1:PORT").
type smtpdService struct {
	Name   string
	Milter string
}

// postfixInstance is a running throwaway Postfix.
type postfixInstance struct {
	root    string
	confDir string
	maildir string // Maildir of every recipient in lab.test
	maillog string
	addrs   map[string]string // service name -> 127.0.0.1:port
}

// startPostfix writes a private configuration, starts it and registers
// its shutdown and the removal of its files with t.Cleanup.
func startPostfix(t *testing.T, services []smtpdService) *postfixInstance {
	t.Helper()
	pfUser, err := user.Lookup("postfix")
	if err != nil {
		t.Fatal(err)
	}
	root, err := os.MkdirTemp("", "dmarc-e2e-postfix-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	// Postfix daemons run as the postfix user and must traverse the tree.
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	p := &postfixInstance{
		root:    root,
		confDir: filepath.Join(root, "etc"),
		maildir: filepath.Join(root, "mail", "sink") + "/",
		maillog: filepath.Join(root, "maillog"),
		addrs:   map[string]string{},
	}
	uid, _ := strconv.Atoi(pfUser.Uid)
	gid, _ := strconv.Atoi(pfUser.Gid)
	for _, d := range []struct {
		path  string
		owned bool
	}{
		{p.confDir, false},
		{filepath.Join(root, "queue"), false}, // postfix-script fixes ownership inside
		{filepath.Join(root, "data"), true},   // master.lock is created as postfix
		{filepath.Join(root, "mail"), true},   // virtual(8) delivers as postfix
	} {
		if err := os.MkdirAll(d.path, 0o755); err != nil {
			t.Fatal(err)
		}
		if d.owned {
			if err := os.Chown(d.path, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
	}

	var master strings.Builder
	for _, s := range services {
		addr := freeLoopbackAddr(t)
		p.addrs[s.Name] = addr
		// One listener per milter variant; -o overrides main.cf per service.
		fmt.Fprintf(&master, "%s inet n - n - - smtpd\n  -o syslog_name=postfix/%s\n  -o smtpd_milters=%s\n", addr, s.Name, s.Milter)
	}
	master.WriteString(masterCfBase)
	mainCf := fmt.Sprintf(mainCfTemplate, root, root, root, p.maillog, root, uid, gid)
	if err := os.WriteFile(filepath.Join(p.confDir, "main.cf"), []byte(mainCf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.confDir, "master.cf"), []byte(master.String()), 0o644); err != nil {
		t.Fatal(err)
	}

	if out, err := p.postfix("start"); err != nil {
		t.Fatalf("postfix -c %s start: %v\n%s\nmaillog:\n%s", p.confDir, err, out, p.log())
	}
	t.Cleanup(func() { p.stop(t) })
	for name, addr := range p.addrs {
		if err := waitListening(addr, nil); err != nil {
			t.Fatalf("smtpd %s on %s: %v\nmaillog:\n%s", name, addr, err, p.log())
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("Postfix maillog (%s):\n%s", p.maillog, p.log())
		}
	})
	return p
}

// mainCfTemplate is the private instance's main.cf. Arguments: root (queue),
// root (data), root (mail base), maillog, root (log prefix), uid, gid.
const mainCfTemplate = `# Throwaway instance written by deploy/e2e; removed after the test.
compatibility_level = 3.6
queue_directory = %s/queue
data_directory = %s/data
myhostname = mx.lab.test
mydomain = lab.test
myorigin = lab.test
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_authorized_xclient_hosts = 127.0.0.0/8
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
biff = no
alias_maps =
alias_database =
local_recipient_maps =
virtual_mailbox_domains = lab.test optout.lab.test
virtual_mailbox_base = %s/mail
virtual_mailbox_maps = static:sink/
maillog_file = %s
maillog_file_prefixes = %s
virtual_uid_maps = static:%d
virtual_gid_maps = static:%d
milter_protocol = 6
milter_default_action = accept
milter_connect_timeout = 10s
milter_command_timeout = 30s
milter_content_timeout = 60s
`

// masterCfBase lists the services a loopback-only receiving instance needs;
// nothing runs chrooted, so the Debian chroot setup is not involved.
const masterCfBase = `cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
proxymap  unix  -       -       n       -       -       proxymap
postlog   unix-dgram n  -       n       -       1       postlogd
`

// postfix runs `postfix -c CONFDIR args...` with a bounded run time.
func (p *postfixInstance) postfix(args ...string) ([]byte, error) {
	return p.command("postfix", args...)
}

func (p *postfixInstance) command(name string, args ...string) ([]byte, error) {
	path, err := lookPath(name)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, append([]string{"-c", p.confDir}, args...)...)
	return cmd.CombinedOutput()
}

// stop shuts the instance down and waits for its master to exit, so the
// queue can be removed and no process outlives the test.
func (p *postfixInstance) stop(t *testing.T) {
	pid := p.masterPID()
	if out, err := p.postfix("stop"); err != nil {
		t.Logf("postfix -c %s stop: %v\n%s", p.confDir, err, out)
	}
	if pid <= 0 {
		return
	}
	deadline := time.Now().Add(waitLimit)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			t.Logf("Postfix master %d still running after stop; killing it", pid)
			if proc, err := os.FindProcess(pid); err == nil {
				_ = proc.Kill()
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *postfixInstance) masterPID() int {
	b, err := os.ReadFile(filepath.Join(p.root, "queue", "pid", "master.pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	return pid
}

func processAlive(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

// log returns the instance's maillog, for failure messages.
func (p *postfixInstance) log() string {
	b, err := os.ReadFile(p.maillog)
	if err != nil {
		return "(no maillog: " + err.Error() + ")"
	}
	return string(b)
}

// queueEntry is one message of `postqueue -j` (Postfix 3.1+).
type queueEntry struct {
	QueueName string `json:"queue_name"`
	QueueID   string `json:"queue_id"`
	Sender    string `json:"sender"`
}

// queue lists the messages still in the instance's queues.
func (p *postfixInstance) queue(t *testing.T) []queueEntry {
	t.Helper()
	out, err := p.command("postqueue", "-j")
	if err != nil {
		t.Fatalf("postqueue -j: %v\n%s", err, out)
	}
	var entries []queueEntry
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var e queueEntry
		if err := dec.Decode(&e); err != nil {
			t.Fatalf("postqueue -j: %v\n%s", err, out)
		}
		entries = append(entries, e)
	}
	return entries
}

// queueName returns the queue (hold, deferred, active, incoming) holding
// the message with queue ID id, or "" if it has left the queue.
func (p *postfixInstance) queueName(t *testing.T, id string) string {
	t.Helper()
	for _, e := range p.queue(t) {
		if e.QueueID == id {
			return e.QueueName
		}
	}
	return ""
}

// delivered waits until a message whose header contains marker is in the
// Maildir, and returns it.
func (p *postfixInstance) delivered(t *testing.T, marker string) []byte {
	t.Helper()
	msg, err := p.waitMaildir(marker, waitLimit)
	if err != nil {
		t.Fatalf("message %q: %v", marker, err)
	}
	return msg
}

// notDelivered checks that no message containing marker reached the
// Maildir within a short grace period.
func (p *postfixInstance) notDelivered(t *testing.T, marker string) {
	t.Helper()
	if msg, err := p.waitMaildir(marker, 2*time.Second); err == nil {
		t.Errorf("message %q was delivered, want not:\n%s", marker, msg)
	}
}

var errNotDelivered = errors.New("not delivered")

func (p *postfixInstance) waitMaildir(marker string, limit time.Duration) ([]byte, error) {
	deadline := time.Now().Add(limit)
	for {
		for _, sub := range []string{"new", "cur"} {
			files, _ := os.ReadDir(filepath.Join(p.maildir, sub))
			for _, f := range files {
				b, err := os.ReadFile(filepath.Join(p.maildir, sub, f.Name()))
				if err != nil {
					continue
				}
				if bytes.Contains(b, []byte(marker)) {
					return b, nil
				}
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w within %v", errNotDelivered, limit)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// freeLoopbackAddr returns a 127.0.0.1 address whose port was free a
// moment ago.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// waitListening waits until addr accepts TCP connections; exited, when not
// nil, reports early that the process meant to listen is gone.
func waitListening(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(waitLimit)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("process exited before listening on %s", addr)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listening on %s after %v: %w", addr, waitLimit, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
