package milter

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/dmarc-milter/dmarc-milter/auth/dnsres"
	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/internal/testcase"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

// The tests here speak the raw milter wire protocol (go-milter v0.5.0 is
// the server): a 4-byte big-endian length, a command byte, the data.

// hostileMilter can be stopped before the test ends, to count what is
// left after Shutdown.
type hostileMilter struct {
	*testMilter
	stop func()
}

// startHostile is startMilter with a test hook installed before Serve (the
// hook is read by session goroutines, so it cannot be set afterwards).
func startHostile(t testing.TB, cfg Config, hook func(string, *session)) *hostileMilter {
	t.Helper()
	dsrv, err := dnstest.Start(loadZone(t, "milter.json"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := dnsres.New(dnsres.Config{Servers: []string{dsrv.Addr()}, Timeout: 500 * time.Millisecond, Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(cfg, Deps{Resolver: res, Evaluator: policy.NewEvaluator(res, policy.Options{}), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	srv.testHook = hook
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := srv.Shutdown(ctx); err != nil {
				t.Errorf("shutdown: %v", err)
			}
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
			res.Close()
			dsrv.Close()
		})
	}
	t.Cleanup(stop)
	return &hostileMilter{testMilter: &testMilter{addr: ln.Addr().String(), srv: srv, dns: dsrv, res: res}, stop: stop}
}

func hostileConfig() Config {
	cfg := DefaultConfig()
	cfg.AuthServID = "lab.test"
	cfg.MessageTimeout = 5 * time.Second
	cfg.IdleTimeout = 400 * time.Millisecond
	return cfg
}

// pkt frames one milter packet.
func pkt(code byte, data ...[]byte) []byte {
	n := 1
	for _, d := range data {
		n += len(d)
	}
	b := binary.BigEndian.AppendUint32(make([]byte, 0, 4+n), uint32(n))
	b = append(b, code)
	for _, d := range data {
		b = append(b, d...)
	}
	return b
}

func cstr(ss ...string) []byte {
	var b []byte
	for _, s := range ss {
		b = append(append(b, s...), 0)
	}
	return b
}

func u32s(vs ...uint32) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	return b
}

// optneg is what Postfix sends: protocol 6, every action, no protocol
// flags.
var optneg = pkt('O', u32s(6, 0x1ff, 0))

func connectPkt(host, ip string) []byte {
	return pkt('C', cstr(host), []byte{'4'}, binary.BigEndian.AppendUint16(nil, 25), cstr(ip))
}

func headerPkts(fields []testcase.Field) []byte {
	var b []byte
	for _, f := range fields {
		// Postfix sends folded lines with LF only (LIBRARIES.md).
		b = append(b, pkt('L', cstr(f.Name, strings.ReplaceAll(f.Value, "\r\n", "\n")))...)
	}
	return b
}

type rawPeer struct {
	t testing.TB
	c net.Conn
}

func dialRaw(t testing.TB, addr string) *rawPeer {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawPeer{t: t, c: c}
}

// write sends bytes; an error is expected once the server has closed.
func (p *rawPeer) write(b ...[]byte) error {
	_ = p.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	for _, x := range b {
		if _, err := p.c.Write(x); err != nil {
			return err
		}
	}
	return nil
}

func (p *rawPeer) mustWrite(b ...[]byte) {
	p.t.Helper()
	if err := p.write(b...); err != nil {
		p.t.Fatalf("write: %v", err)
	}
}

func (p *rawPeer) read() (byte, []byte, error) {
	_ = p.c.SetReadDeadline(time.Now().Add(15 * time.Second))
	var hdr [4]byte
	if _, err := io.ReadFull(p.c, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || n > maxPacket {
		return 0, nil, fmt.Errorf("server sent packet length %d", n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(p.c, b); err != nil {
		return 0, nil, err
	}
	return b[0], b[1:], nil
}

// expect reads one packet and fails unless its command is code.
func (p *rawPeer) expect(code byte) []byte {
	p.t.Helper()
	c, data, err := p.read()
	if err != nil {
		p.t.Fatalf("waiting for %q: %v", code, err)
	}
	if c != code {
		p.t.Fatalf("got %q (%q), want %q", c, data, code)
	}
	return data
}

// closedWithin fails unless the server closes the connection in time.
func (p *rawPeer) closedWithin(d time.Duration) {
	p.t.Helper()
	_ = p.c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, p.c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		p.t.Fatalf("server kept the connection open for %s", d)
	}
}

// handshake negotiates and connects from an address that is evaluated.
func (p *rawPeer) handshake() {
	p.t.Helper()
	p.mustWrite(optneg)
	p.expect('O')
	p.mustWrite(connectPkt("client.example", "192.0.2.99"))
	p.expect('c')
	p.mustWrite(pkt('H', cstr("mx.elsewhere.example")))
	p.expect('c')
}

// startMessage sends MAIL, RCPT, the header and half the body.
func (p *rawPeer) startMessage(mailFrom string, fields []testcase.Field, body []byte) {
	p.t.Helper()
	p.mustWrite(pkt('M', cstr("<"+mailFrom+">")))
	p.expect('c')
	p.mustWrite(pkt('R', cstr("<sink@lab.test>")))
	p.expect('c')
	p.mustWrite(headerPkts(fields), pkt('N'))
	p.expect('c')
	p.mustWrite(pkt('B', body[:len(body)/2]))
	p.expect('c')
}

// message sends one whole transaction and returns the modifications and
// the final reply.
func (p *rawPeer) message(mailFrom string, fields []testcase.Field, body []byte) (mods []string, code byte) {
	p.t.Helper()
	p.mustWrite(pkt('M', cstr("<"+mailFrom+">")))
	p.expect('c')
	p.mustWrite(pkt('R', cstr("<sink@lab.test>")))
	p.expect('c')
	p.mustWrite(headerPkts(fields), pkt('N'))
	p.expect('c')
	for len(body) > 0 {
		n := min(len(body), gomilter.MaxBodyChunk)
		p.mustWrite(pkt('B', body[:n]))
		p.expect('c')
		body = body[n:]
	}
	p.mustWrite(pkt('E'))
	for {
		c, d, err := p.read()
		if err != nil {
			p.t.Fatalf("end of message: %v", err)
		}
		switch c {
		case 'h', 'i', 'm', 'q':
			mods = append(mods, string(c)+":"+string(d))
			continue
		}
		return mods, c
	}
}

// wantPass fails unless a message got continue and our one A-R with
// dmarc=pass.
func wantPass(t testing.TB, what string, mods []string, code byte) {
	t.Helper()
	if code != 'c' || len(mods) != 1 || !strings.Contains(mods[0], "dmarc=pass") {
		t.Errorf("%s: got %q with %q, want continue and dmarc=pass", what, code, mods)
	}
}

// signedAligned is aligned.eml signed by aligned.example: it passes DMARC
// through DKIM alone, from any client.
func signedAligned(t testing.TB) ([]testcase.Field, []byte) {
	t.Helper()
	fields, body, err := testcase.SplitMessage(readMessage(t, "aligned", signSpec{"aligned.example", "sel", "rsa2048"}))
	if err != nil {
		t.Fatal(err)
	}
	return fields, body
}

// checkServing runs one normal go-milter client session and wants the
// right answer: the daemon still serves everyone else.
func checkServing(addr string, fields []testcase.Field, body []byte) error {
	c := gomilter.NewClientWithOptions("tcp", addr, gomilter.ClientOptions{
		ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second,
		ActionMask: gomilter.OptAddHeader | gomilter.OptChangeHeader | gomilter.OptQuarantine,
	})
	s, err := c.Session()
	if err != nil {
		return err
	}
	defer s.Close()
	m := &mtaConn{s: s}
	if act, err := m.connect("client.example", "192.0.2.99", "mx.elsewhere.example"); err != nil || act.Code != gomilter.ActContinue {
		return fmt.Errorf("connect: %v %v", act, err)
	}
	o, err := m.trySend(envelope{MailFrom: "bounce@elsewhere.example"}, fields, body)
	if err != nil {
		return err
	}
	ar := arValues(o.Header)
	if o.SMTP != "accept" || len(ar) != 1 || !strings.Contains(ar[0], "dkim=pass") || !strings.Contains(ar[0], "dmarc=pass") {
		return fmt.Errorf("normal message: %s %s, A-R %q", o.SMTP, o.Reply, ar)
	}
	return nil
}

type hostileCase struct {
	name string
	run  func(t *testing.T, p *rawPeer)
}

// hostileCases are the bad peers. Each gets sane answers or is
// disconnected, a silent one within the idle timeout (400ms here).
func hostileCases(fields []testcase.Field, body []byte) []hostileCase {
	const closeBound = 5 * time.Second
	return []hostileCase{
		{"truncated-then-close", func(t *testing.T, p *rawPeer) {
			p.mustWrite(u32s(100), []byte("0123456789"))
		}},
		{"truncated-then-silence", func(t *testing.T, p *rawPeer) {
			p.mustWrite(u32s(100), []byte("0123456789"))
			p.closedWithin(closeBound)
		}},
		{"truncated-length-prefix", func(t *testing.T, p *rawPeer) {
			p.mustWrite([]byte{0, 0})
			p.closedWithin(closeBound)
		}},
		{"zero-length", func(t *testing.T, p *rawPeer) {
			p.mustWrite(u32s(0), []byte("O"))
			p.closedWithin(closeBound)
		}},
		{"length-ffffffff", func(t *testing.T, p *rawPeer) {
			p.mustWrite(u32s(0xFFFFFFFF), []byte("Oxxxxxxxx"))
			p.closedWithin(closeBound)
		}},
		{"length-over-max", func(t *testing.T, p *rawPeer) {
			_ = p.write(u32s(maxPacket+1), bytes.Repeat([]byte("B"), 4096))
			p.closedWithin(closeBound)
		}},
		{"unknown-command", func(t *testing.T, p *rawPeer) {
			p.mustWrite(optneg)
			p.expect('O')
			p.mustWrite(pkt('Z', []byte("what")))
			p.closedWithin(closeBound)
		}},
		{"garbage", func(t *testing.T, p *rawPeer) {
			r := rand.New(rand.NewPCG(1, 2))
			junk := make([]byte, 64<<10)
			for i := range junk {
				junk[i] = byte(r.Uint32())
			}
			_ = p.write(junk)
			p.closedWithin(closeBound)
		}},
		{"smtp-after-handshake", func(t *testing.T, p *rawPeer) {
			p.handshake()
			_ = p.write([]byte("EHLO example.com\r\nMAIL FROM:<a@b>\r\n"))
			p.closedWithin(closeBound)
		}},
		{"eom-before-connect", func(t *testing.T, p *rawPeer) {
			p.mustWrite(optneg)
			p.expect('O')
			p.mustWrite(pkt('E'))
			p.expect('c')
			p.mustWrite(pkt('N'))
			p.expect('c')
			p.mustWrite(pkt('B', []byte("body\r\n")))
			p.expect('c')
			p.mustWrite(pkt('E'))
			p.expect('c')
			// MAIL without connect or HELO: evaluated with what is known
			// (DKIM passes), no fault of ours.
			mods, code := p.message("bounce@elsewhere.example", fields, body)
			wantPass(t, "message without connect", mods, code)
		}},
		{"out-of-order-then-normal", func(t *testing.T, p *rawPeer) {
			p.handshake()
			p.mustWrite(pkt('B', []byte("body before MAIL\r\n")))
			p.expect('c')
			p.mustWrite(pkt('R', cstr("<early@lab.test>")))
			p.expect('c')
			p.mustWrite(pkt('L', cstr("From", " <x@aligned.example>")), pkt('N'))
			p.expect('c')
			p.mustWrite(pkt('E'))
			p.expect('c')
			p.mustWrite(pkt('T'), pkt('T'))
			p.expect('c')
			p.expect('c')
			p.mustWrite(pkt('A'), pkt('A'))
			// MAIL twice without ABORT, then a whole message.
			p.mustWrite(pkt('M', cstr("<first@attacker.example.org>")))
			p.expect('c')
			mods, code := p.message("bounce@elsewhere.example", fields, body)
			wantPass(t, "message after out-of-order commands", mods, code)
			// Same again without ABORT in between.
			mods, code = p.message("bounce@elsewhere.example", fields, body)
			wantPass(t, "second message without ABORT", mods, code)
		}},
		{"absurd-negotiation", func(t *testing.T, p *rawPeer) {
			p.mustWrite(pkt('O', u32s(0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)))
			p.expect('O')
			p.mustWrite(pkt('O', []byte{1, 2}))
			p.expect('O')
			p.mustWrite(pkt('O'))
			p.expect('O')
			p.mustWrite(pkt('O', bytes.Repeat([]byte{0xff}, 100000)))
			p.expect('O')
			p.mustWrite(connectPkt("client.example", "192.0.2.99"), pkt('H', cstr("mx.elsewhere.example")))
			p.expect('c')
			p.expect('c')
			mods, code := p.message("bounce@elsewhere.example", fields, body)
			wantPass(t, "message after absurd negotiation", mods, code)
		}},
		{"odd-macros", func(t *testing.T, p *rawPeer) {
			p.mustWrite(optneg)
			p.expect('O')
			many := make([]string, 0, 20000)
			for i := range 10000 {
				many = append(many, fmt.Sprintf("{m%d}", i), "v")
			}
			p.mustWrite(
				pkt('D', []byte{'C'}, cstr("j", "mx.lab.test", "{daemon_name}")), // odd count
				pkt('D', []byte{'C'}, cstr("j", strings.Repeat("J", 900<<10))),
				pkt('D', []byte{'C'}, cstr(many...)),
				pkt('D', []byte{'C'}, []byte("no\x00terminator")),
				pkt('D', []byte{'C'}, []byte("\x00\x00\x00")),
				pkt('D', []byte{0xff}),
				connectPkt("client.example", "192.0.2.99"),
				pkt('H', cstr("mx.elsewhere.example")),
			)
			p.expect('c')
			p.expect('c')
			p.mustWrite(pkt('D', []byte{'M'}, cstr("{auth_authen}", "", "i", strings.Repeat("\xff", 100000))))
			mods, code := p.message("bounce@elsewhere.example", fields, body)
			wantPass(t, "message after odd macros", mods, code)
			// An empty macro packet is malformed: go-milter ends the
			// session.
			p.mustWrite(pkt('D'))
			p.closedWithin(closeBound)
		}},
		{"malformed-connect", func(t *testing.T, p *rawPeer) {
			p.mustWrite(optneg)
			p.expect('O')
			// Family 4 without a port: go-milter answers tempfail itself
			// and replaces the session; the connection goes on.
			p.mustWrite(pkt('C', cstr("client.example"), []byte{'4'}))
			p.expect('t')
			p.mustWrite(connectPkt("client.example", "192.0.2.99"), pkt('H', cstr("mx.elsewhere.example")))
			p.expect('c')
			p.expect('c')
			mods, code := p.message("bounce@elsewhere.example", fields, body)
			wantPass(t, "message after malformed connect", mods, code)
			// No NUL after the host name at all: the session ends.
			p.mustWrite(pkt('C', []byte("client.example")))
			p.closedWithin(closeBound)
		}},
		{"drop-mid-body-after-final-accept", func(t *testing.T, p *rawPeer) {
			// A trusted client is accepted at connect (a final answer, so
			// go-milter makes a new session); a peer that carries on
			// anyway and drops mid-body must leave nothing running.
			p.mustWrite(optneg)
			p.expect('O')
			p.mustWrite(connectPkt("localhost", "127.0.0.1"))
			p.expect('a')
			p.startMessage("a@aligned.example", fields, body)
		}},
		{"drop-mid-body", func(t *testing.T, p *rawPeer) {
			p.handshake()
			p.startMessage("bounce@elsewhere.example", fields, body)
		}},
		{"silent-mid-body", func(t *testing.T, p *rawPeer) {
			p.handshake()
			p.startMessage("bounce@elsewhere.example", fields, body)
			p.closedWithin(closeBound)
		}},
		{"slow-drip", func(t *testing.T, p *rawPeer) {
			// One byte per 50ms never trips a per-read deadline of
			// 400ms; the whole packet must still arrive within it.
			p.handshake()
			b := pkt('M', cstr("<"+strings.Repeat("d", 200)+"@elsewhere.example>"))
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				for _, c := range b {
					select {
					case <-stop:
						return
					case <-time.After(50 * time.Millisecond):
					}
					if p.write([]byte{c}) != nil {
						return
					}
				}
			}()
			p.closedWithin(closeBound)
			close(stop)
			<-done
		}},
	}
}

// TestHostilePeers runs every bad peer while a normal client keeps
// sending, and checks each normal message got its right answer.
func TestHostilePeers(t *testing.T) {
	tm := startHostile(t, hostileConfig(), nil)
	fields, body := signedAligned(t)
	if err := checkServing(tm.addr, fields, body); err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	var normal sync.WaitGroup
	var normalErr error
	var sent int
	normal.Add(1)
	go func() {
		defer normal.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := checkServing(tm.addr, fields, body); err != nil {
				normalErr = err
				return
			}
			sent++
		}
	}()
	for _, hc := range hostileCases(fields, body) {
		t.Run(hc.name, func(t *testing.T) {
			p := dialRaw(t, tm.addr)
			hc.run(t, p)
			p.c.Close()
			if err := checkServing(tm.addr, fields, body); err != nil {
				t.Fatalf("after %s: %v", hc.name, err)
			}
		})
	}
	close(stop)
	normal.Wait()
	if normalErr != nil {
		t.Fatalf("normal client during the hostile peers: %v", normalErr)
	}
	if sent == 0 {
		t.Fatal("no normal message went through during the hostile peers")
	}
	if n := tm.srv.Metrics().Panics.Load(); n != 0 {
		t.Errorf("%d panics", n)
	}
	waitIdle(t, tm.srv)
}

// waitIdle waits until the server has no session open: every hostile
// connection was closed on the server side too.
func waitIdle(t testing.TB, srv *Server) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for srv.ActiveSessions() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions still open", srv.ActiveSessions())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
