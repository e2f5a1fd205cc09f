package milter

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/dmarc-milter/dmarc-milter/auth/dnsres"
	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/internal/testcase"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

// pipeListener hands out in-memory connections (net.Pipe, which has
// deadlines): thousands of fuzz sessions without a port each.
type pipeListener struct {
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{ch: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error   { l.once.Do(func() { close(l.closed) }); return nil }
func (l *pipeListener) Addr() net.Addr { return dummyAddr{} }

func (l *pipeListener) dial() (net.Conn, error) {
	a, b := net.Pipe()
	select {
	case l.ch <- b:
		return a, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// panicSpotter watches go-milter's log (the global one) for the panics
// its session goroutine recovers by itself, which would otherwise pass
// unseen.
type panicSpotter struct {
	seen atomic.Int64
	out  io.Writer
}

func (p *panicSpotter) Write(b []byte) (int, error) {
	if bytes.Contains(b, []byte("panic")) {
		p.seen.Add(1)
		_, _ = p.out.Write(b)
	}
	return len(b), nil
}

// reframe turns fuzz data into well-framed packets: each is a command
// byte, a 2-byte length and that much payload (cut at the end of the
// data), so mutations inside a packet keep the framing valid and reach
// the callbacks instead of the length check.
func reframe(data []byte) []byte {
	var out []byte
	for len(data) > 0 {
		code := data[0]
		data = data[1:]
		n := 0
		if len(data) >= 2 {
			n = int(binary.BigEndian.Uint16(data))
			data = data[2:]
		}
		n = min(n, len(data))
		out = append(out, pkt(code, data[:n])...)
		data = data[n:]
	}
	return out
}

// unframe is reframe's inverse for well-formed packets, used to write
// the seed corpus.
func unframe(raw []byte) []byte {
	var out []byte
	for len(raw) >= 5 {
		n := int(binary.BigEndian.Uint32(raw))
		if n < 1 || 4+n > len(raw) || n-1 > 0xffff {
			break
		}
		out = append(out, raw[4])
		out = binary.BigEndian.AppendUint16(out, uint16(n-1))
		out = append(out, raw[5:4+n]...)
		raw = raw[4+n:]
	}
	return out
}

// FuzzMilterSession feeds one whole connection's worth of client bytes to
// a live server: raw, or reframed into valid packets. The session must end
// (every input is followed by QUIT, and the idle timeout covers the rest),
// no panic may happen anywhere, and no goroutine may stay behind.
func FuzzMilterSession(f *testing.F) {
	f.Add(append(append([]byte{}, optneg...), connectPkt("client.example", "192.0.2.99")...), false)
	f.Add(unframe(append(append([]byte{}, optneg...), pkt('M', cstr("<a@b.example>"))...)), true)

	spot := &panicSpotter{out: os.Stderr}
	prevOut, prevFlags := log.Writer(), log.Flags()
	log.SetOutput(spot)
	f.Cleanup(func() { log.SetOutput(prevOut); log.SetFlags(prevFlags) })

	dsrv, err := dnstest.Start(loadZone(f, "milter.json"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { dsrv.Close() })
	res, err := dnsres.New(dnsres.Config{Servers: []string{dsrv.Addr()}, Timeout: 200 * time.Millisecond, Attempts: 1})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { res.Close() })
	cfg := DefaultConfig()
	cfg.AuthServID = "lab.test"
	cfg.MessageTimeout = time.Second
	cfg.IdleTimeout = 200 * time.Millisecond
	srv, err := NewServer(cfg, Deps{Resolver: res, Evaluator: policy.NewEvaluator(res, policy.Options{}), Logger: testLogger(f)})
	if err != nil {
		f.Fatal(err)
	}
	ln := newPipeListener()
	go func() { _ = srv.Serve(ln) }()
	f.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	// Warm up once, so the resolver's and server's own goroutines are in
	// the baseline.
	if c, err := ln.dial(); err == nil {
		c.Close()
	}
	// The baseline is taken inside the first input's goroutine: each input
	// runs on a goroutine of its own, which the count must include.
	var baseOnce sync.Once
	var base int

	f.Fuzz(func(t *testing.T, data []byte, framed bool) {
		baseOnce.Do(func() { base = settledGoroutines(0) })
		in := data
		if framed {
			in = reframe(data)
		}
		in = append(in[:len(in):len(in)], pkt('Q')...)
		c, err := ln.dial()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go func() {
			_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			_, _ = c.Write(in)
		}()
		// Each packet read within the idle timeout, each message within
		// its DNS budget: 10s is far past any legitimate end.
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.Copy(io.Discard, c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("session did not end")
		}
		c.Close()
		deadline := time.Now().Add(5 * time.Second)
		for srv.ActiveSessions() != 0 {
			if time.Now().After(deadline) {
				t.Fatal("session still open after the peer left")
			}
			time.Sleep(time.Millisecond)
		}
		if n := srv.Metrics().Panics.Load(); n != 0 {
			t.Fatalf("%d panics in callbacks", n)
		}
		if n := spot.seen.Load(); n != 0 {
			t.Fatalf("go-milter recovered %d panics", n)
		}
		if n := settledGoroutines(base); n > base {
			var b strings.Builder
			_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
			t.Fatalf("%d goroutines, %d before:\n%s", n, base, b.String())
		}
	})
}

// TestWriteFuzzSeeds records real go-milter client conversations into
// testdata/fuzz/FuzzMilterSession (go test -run WriteFuzzSeeds -update).
func TestWriteFuzzSeeds(t *testing.T) {
	if !*update {
		t.Skip("run with -update to rewrite the seed corpus")
	}
	tm := startHostile(t, hostileConfig(), nil)
	rec := &recordingDialer{}
	dial := func() *mtaConn {
		c := gomilter.NewClientWithOptions("tcp", tm.addr, gomilter.ClientOptions{
			Dialer: rec, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second,
			ActionMask: gomilter.OptAddHeader | gomilter.OptChangeHeader | gomilter.OptQuarantine,
		})
		s, err := c.Session()
		if err != nil {
			t.Fatal(err)
		}
		return &mtaConn{s: s}
	}
	signed, sbody := signedAligned(t)
	spoof, pbody, err := testcase.SplitMessage(readMessage(t, "spoof"))
	if err != nil {
		t.Fatal(err)
	}
	convs := []struct {
		name string
		run  func(m *mtaConn)
	}{
		{"dkim-pass", func(m *mtaConn) {
			_, _ = m.connect("client.example", "192.0.2.99", "mx.elsewhere.example")
			m.send(t, envelope{MailFrom: "bounce@elsewhere.example"}, signed, sbody)
		}},
		{"spoof-reject-then-pass", func(m *mtaConn) {
			_, _ = m.connect("mx.aligned.example", "192.0.2.10", "mx.aligned.example")
			m.send(t, envelope{MailFrom: "x@attacker.example.org"}, spoof, pbody)
			_, _ = m.s.Mail("bounce@aligned.example", nil)
			_ = m.s.Abort()
			m.send(t, envelope{MailFrom: "bounce@aligned.example"}, signed, sbody)
		}},
		{"authenticated", func(m *mtaConn) {
			_, _ = m.connect("laptop.example", "198.51.100.13", "laptop")
			m.send(t, envelope{MailFrom: "ceo@aligned.example", Macros: []string{"{auth_authen}", "ceo", "i", "4ABC123"}}, spoof, pbody)
		}},
		{"trusted", func(m *mtaConn) {
			_, _ = m.connect("localhost", "127.0.0.1", "localhost")
		}},
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzMilterSession")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, cv := range convs {
		m := dial()
		cv.run(m)
		_ = m.s.Close()
		raw := rec.take()
		for _, v := range []struct {
			suffix string
			data   []byte
			framed bool
		}{{"raw", raw, false}, {"framed", unframe(raw), true}} {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\nbool(%t)\n", strconv.Quote(string(v.data)), v.framed)
			if err := os.WriteFile(filepath.Join(dir, "conv-"+cv.name+"-"+v.suffix), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// recordingDialer keeps what the client sends on its last connection.
type recordingDialer struct {
	mu  sync.Mutex
	buf *bytes.Buffer
}

func (d *recordingDialer) Dial(network, addr string) (net.Conn, error) {
	c, err := net.Dial(network, addr)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.buf = &bytes.Buffer{}
	buf := d.buf
	d.mu.Unlock()
	return &recordingConn{Conn: c, mu: &d.mu, buf: buf}, nil
}

func (d *recordingDialer) take() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return bytes.Clone(d.buf.Bytes())
}

type recordingConn struct {
	net.Conn
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.buf.Write(p)
	c.mu.Unlock()
	return c.Conn.Write(p)
}
