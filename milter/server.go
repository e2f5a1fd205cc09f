package milter

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"blitiri.com.ar/go/spf"
	gomilter "github.com/emersion/go-milter"

	"github.com/dmarc-milter/dmarc-milter/policy"
)

// Resolver is the DNS the milter hands to SPF (blitiri.com.ar/go/spf's
// DNSResolver) and to DKIM key lookups; auth/dnsres implements it.
type Resolver interface {
	spf.DNSResolver
}

// Deps are the shared, long-lived parts every session uses.
type Deps struct {
	Resolver  Resolver
	Evaluator *policy.Evaluator
	Logger    *slog.Logger
}

// Server runs go-milter's server with what it lacks (LIBRARIES.md):
// read/write deadlines, session tracking for a graceful stop, and a
// Close that does not race Serve.
type Server struct {
	deps    Deps
	log     *slog.Logger
	cfg     atomic.Pointer[Config]
	metrics *Metrics

	mu       sync.Mutex
	lns      []net.Listener
	conns    map[*trackedConn]struct{}
	closing  bool
	sessions sync.WaitGroup

	// testHook, when set before Serve, runs at the start of every session
	// callback with the stage name and the session: tests inject panics
	// through it.
	testHook func(stage string, s *session)
}

// NewServer checks cfg and returns a server ready to Serve.
func NewServer(cfg Config, deps Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Resolver == nil || deps.Evaluator == nil {
		return nil, errors.New("milter: Resolver and Evaluator are required")
	}
	if deps.Logger == nil {
		deps.Logger = slog.Default()
	}
	s := &Server{deps: deps, log: deps.Logger, metrics: NewMetrics(), conns: map[*trackedConn]struct{}{}}
	s.cfg.Store(&cfg)
	return s, nil
}

// SetConfig swaps the configuration atomically: sessions already connected
// finish with the one they started with.
func (s *Server) SetConfig(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	s.cfg.Store(&cfg)
	return nil
}

func (s *Server) currentConfig() *Config { return s.cfg.Load() }

// Metrics returns the server's counters.
func (s *Server) Metrics() *Metrics { return s.metrics }

// Serve accepts milter connections on ln until Shutdown. It returns nil
// after a Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.lns = append(s.lns, ln)
	s.mu.Unlock()
	defer ln.Close()

	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// EMFILE and friends: back off instead of dying.
				time.Sleep(50 * time.Millisecond)
				continue
			}
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return nil
			}
			return err
		}
		tc := s.track(c)
		if tc == nil {
			return nil
		}
		s.serveConn(tc)
	}
}

// serveConn hands one connection to its own go-milter server, whose
// NewMilter knows the connection. go-milter calls NewMilter again from the
// session goroutine after any final response, including the tempfail it
// sends itself for a malformed connect packet, which any peer can provoke;
// with one shared server those calls could not tell which connection they
// belong to, and a session bound to the wrong one misses its cleanup when
// its MTA disconnects. The per-connection server costs nothing extra:
// its Serve returns at once, leaving only go-milter's session goroutine.
func (s *Server) serveConn(tc *trackedConn) {
	gs := &gomilter.Server{
		NewMilter: func() gomilter.Milter { return s.newSession(tc) },
		// Recommended negotiation (LIBRARIES.md): header changes, insert
		// and quarantine; leading space kept for DKIM simple
		// canonicalisation; no reply per header.
		Actions:  gomilter.OptAddHeader | gomilter.OptChangeHeader | gomilter.OptQuarantine,
		Protocol: gomilter.OptHeaderLeadingSpace | gomilter.OptNoHeaderReply,
	}
	_ = gs.Serve(&oneConnListener{conn: tc})
}

// oneConnListener yields one connection, then reports itself closed so
// that go-milter's Serve returns after starting the session goroutine.
type oneConnListener struct {
	conn net.Conn
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if c := l.conn; c != nil {
		l.conn = nil
		return c, nil
	}
	return nil, net.ErrClosed
}

// Close is called by go-milter's Serve on return; the connection belongs
// to the session goroutine by then.
func (l *oneConnListener) Close() error   { return nil }
func (l *oneConnListener) Addr() net.Addr { return dummyAddr{} }

type dummyAddr struct{}

func (dummyAddr) Network() string { return "milter" }
func (dummyAddr) String() string  { return "milter" }

// Shutdown stops accepting connections, lets sessions in flight finish
// until ctx ends, then closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for _, ln := range s.lns {
		ln.Close()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() { s.sessions.Wait(); close(done) }()
	// Only messages in flight are waited for. Postfix keeps a milter
	// connection per SMTP session, idle between messages for as long as
	// smtpd_timeout; waiting for those would hold the restart for minutes
	// while, the listener being closed, new mail gets
	// milter_default_action. So an idle connection is closed at once,
	// and a busy one as soon as its message has been answered.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for wait := true; wait; {
		s.closeIdle()
		select {
		case <-done:
			return nil
		case <-ctx.Done():
			wait = false
		case <-tick.C:
		}
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Conn.Close()
	}
	s.mu.Unlock()
	<-done
	return ctx.Err()
}

// closeIdle closes the connections with no message in flight.
func (s *Server) closeIdle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if !c.busy.Load() {
			c.Conn.Close()
		}
	}
}

// ActiveSessions is the number of MTA connections open now.
func (s *Server) ActiveSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// track registers an accepted connection for Shutdown and the metrics;
// it returns nil, closing c, once Shutdown has begun.
func (s *Server) track(c net.Conn) *trackedConn {
	tc := &trackedConn{Conn: c, srv: s, idle: s.currentConfig().IdleTimeout}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		c.Close()
		return nil
	}
	s.conns[tc] = struct{}{}
	s.sessions.Add(1)
	s.mu.Unlock()
	s.metrics.sessionOpened()
	return tc
}

// trackedConn gives every packet and write a deadline, which go-milter
// does not (LIBRARIES.md): an MTA that goes silent cannot hold a goroutine.
// It also frames the packets itself, because go-milter allocates the
// length a packet announces (up to 1 MiB) before reading it: a peer could
// make each connection pin 1 MiB for the idle timeout by sending four
// bytes. Here a packet is buffered as it arrives, so memory follows what
// the peer really sent, and go-milter sees only complete packets.
type trackedConn struct {
	net.Conn
	srv    *Server
	idle   time.Duration
	closed sync.Once

	// pending is the unread rest of the current packet. Only the session
	// goroutine reads, so it needs no lock.
	pending []byte

	mu      sync.Mutex
	onClose func()

	// busy is set from MAIL FROM until the end-of-message reply has been
	// written (or the message aborted), for Shutdown to tell messages in
	// flight from idle connections. answered marks the reply as next.
	busy, answered atomic.Bool
}

// beginMessage and endMessage bracket one message; endMessage with
// answered=true leaves the connection busy until the next write, the
// end-of-message reply, has gone out.
func (c *trackedConn) beginMessage() {
	if c != nil {
		c.answered.Store(false)
		c.busy.Store(true)
	}
}

func (c *trackedConn) endMessage(answered bool) {
	if c == nil {
		return
	}
	if answered {
		c.answered.Store(true)
		return
	}
	c.busy.Store(false)
}

// maxPacket is go-milter's own limit (maxPacketSize): larger packets
// end the session there anyway, so they are refused before buffering.
const maxPacket = 1 << 20

// setOnClose registers the session's cleanup: an MTA that disconnects
// mid-message must not leave DKIM or DNS work running. A session that
// go-milter replaced (after a final response) is cleaned up now.
func (c *trackedConn) setOnClose(f func()) {
	c.mu.Lock()
	prev := c.onClose
	c.onClose = f
	c.mu.Unlock()
	if prev != nil {
		prev()
	}
}

func (c *trackedConn) Read(p []byte) (int, error) {
	if len(c.pending) == 0 {
		c.pending = nil // the last packet's buffer goes with it
		pkt, err := c.readPacket()
		if err != nil {
			return 0, err
		}
		c.pending = pkt
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// readPacket reads one whole milter packet (4-byte big-endian length,
// then that many bytes: command and data), length prefix included. The
// idle timeout bounds the whole packet, not each read, so a peer dripping
// a byte at a time cannot hold the session either.
func (c *trackedConn) readPacket() ([]byte, error) {
	_ = c.Conn.SetReadDeadline(time.Now().Add(c.idle))
	var hdr [4]byte
	if _, err := io.ReadFull(c.Conn, hdr[:]); err != nil {
		return nil, err // io.EOF between packets is a clean close
	}
	n := int(binary.BigEndian.Uint32(hdr[:]))
	if n == 0 || n > maxPacket {
		return nil, fmt.Errorf("milter: packet length %d not in 1..%d", n, maxPacket)
	}
	const step = 64 << 10 // a body chunk (MaxBodyChunk) fits the first read
	buf := make([]byte, 4, 4+min(n, step))
	copy(buf, hdr[:])
	for len(buf) < 4+n {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, min(len(buf), 4+n-len(buf)))
		}
		m, err := c.Conn.Read(buf[len(buf):min(cap(buf), 4+n)])
		buf = buf[:len(buf)+m]
		if err != nil && len(buf) < 4+n {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	if buf[4] == 'M' {
		// MAIL starts a message: busy from the moment it is read, so
		// that Shutdown cannot close the connection between this read
		// and the MailFrom callback.
		c.busy.Store(true)
	}
	return buf, nil
}

func (c *trackedConn) Write(p []byte) (int, error) {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(c.idle))
	n, err := c.Conn.Write(p)
	if c.answered.Load() {
		// go-milter writes the end-of-message reply after our callback:
		// only now may Shutdown close the connection.
		c.answered.Store(false)
		c.busy.Store(false)
	}
	return n, err
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.closed.Do(func() {
		c.mu.Lock()
		f := c.onClose
		c.mu.Unlock()
		if f != nil {
			f()
		}
		c.srv.mu.Lock()
		delete(c.srv.conns, c)
		c.srv.mu.Unlock()
		c.srv.metrics.sessionClosed()
		c.srv.sessions.Done()
	})
	return err
}
