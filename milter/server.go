package milter

import (
	"context"
	"errors"
	"log/slog"
	"net"
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

	tl := &trackingListener{Listener: ln, srv: s}
	gs := &gomilter.Server{
		NewMilter: func() gomilter.Milter { return s.newSession(tl.take()) },
		// Recommended negotiation (LIBRARIES.md): header changes, insert
		// and quarantine; leading space kept for DKIM simple
		// canonicalisation; no reply per header.
		Actions:  gomilter.OptAddHeader | gomilter.OptChangeHeader | gomilter.OptQuarantine,
		Protocol: gomilter.OptHeaderLeadingSpace | gomilter.OptNoHeaderReply,
	}
	err := gs.Serve(tl)
	s.mu.Lock()
	closing := s.closing
	s.mu.Unlock()
	if closing {
		return nil
	}
	return err
}

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
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Conn.Close()
	}
	s.mu.Unlock()
	<-done
	return ctx.Err()
}

// ActiveSessions is the number of MTA connections open now.
func (s *Server) ActiveSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// trackingListener hands each accepted connection to the session that
// go-milter creates for it. go-milter calls NewMilter right after Accept in
// the same goroutine, so a one-slot handoff links them; the only other
// NewMilter calls follow a final response at connect, after which the MTA
// sends nothing that needs the link (a stolen slot costs only the early
// cleanup below, the message deadline still bounds everything).
type trackingListener struct {
	net.Listener
	srv *Server

	mu      sync.Mutex
	pending *trackedConn
}

func (l *trackingListener) take() *trackedConn {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.pending
	l.pending = nil
	return c
}

func (l *trackingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// EMFILE and friends: back off instead of dying,
				// go-milter returns on any Accept error.
				time.Sleep(50 * time.Millisecond)
				continue
			}
			return nil, err
		}
		tc := &trackedConn{Conn: c, srv: l.srv, idle: l.srv.currentConfig().IdleTimeout}
		l.srv.mu.Lock()
		if l.srv.closing {
			l.srv.mu.Unlock()
			c.Close()
			return nil, net.ErrClosed
		}
		l.srv.conns[tc] = struct{}{}
		l.srv.sessions.Add(1)
		l.srv.mu.Unlock()
		l.srv.metrics.sessionOpened()
		l.mu.Lock()
		l.pending = tc
		l.mu.Unlock()
		return tc, nil
	}
}

// trackedConn gives every read and write a deadline, which go-milter does
// not (LIBRARIES.md): an MTA that goes silent cannot hold a goroutine.
type trackedConn struct {
	net.Conn
	srv    *Server
	idle   time.Duration
	closed sync.Once

	mu      sync.Mutex
	onClose func()
}

// setOnClose registers the session's cleanup: an MTA that disconnects
// mid-message must not leave DKIM or DNS work running.
func (c *trackedConn) setOnClose(f func()) {
	c.mu.Lock()
	c.onClose = f
	c.mu.Unlock()
}

func (c *trackedConn) Read(p []byte) (int, error) {
	_ = c.Conn.SetReadDeadline(time.Now().Add(c.idle))
	return c.Conn.Read(p)
}

func (c *trackedConn) Write(p []byte) (int, error) {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(c.idle))
	return c.Conn.Write(p)
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
