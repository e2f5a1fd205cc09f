package dnstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Server serves a Zone over UDP and TCP on one 127.0.0.1 port.
type Server struct {
	zone atomic.Pointer[Zone]
	addr string

	udp, tcp *dns.Server
	wg       sync.WaitGroup
	once     sync.Once
	closeErr error

	queries atomic.Int64
	mu      sync.Mutex
	perName map[qkey]int64
}

type qkey struct {
	name  string
	qtype uint16
}

// ourUDPSize is the buffer size the server advertises in its OPT record
// (RFC 6891 §6.2.5); the value suggested by DNS Flag Day 2020.
const ourUDPSize = 1232

// bindAttempts bounds the search for a port free for both UDP and TCP.
const bindAttempts = 50

// Start serves z on a free 127.0.0.1 port, UDP and TCP.
func Start(z *Zone) (*Server, error) {
	return Listen(z, "127.0.0.1:0")
}

// Listen serves z on addr, UDP and TCP on the same port. Port 0 picks a
// port free for both.
func Listen(z *Zone, addr string) (*Server, error) {
	if z == nil {
		return nil, errors.New("dnstest: nil zone")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dnstest: %w", err)
	}
	var (
		pc net.PacketConn
		l  net.Listener
	)
	attempts := 1
	if port == "0" {
		attempts = bindAttempts
	}
	for i := 0; i < attempts; i++ {
		pc, err = net.ListenPacket("udp", addr)
		if err != nil {
			return nil, fmt.Errorf("dnstest: %w", err)
		}
		p := strconv.Itoa(pc.LocalAddr().(*net.UDPAddr).Port)
		l, err = net.Listen("tcp", net.JoinHostPort(host, p))
		if err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil {
		return nil, fmt.Errorf("dnstest: no port free for UDP and TCP: %w", err)
	}

	s := &Server{addr: pc.LocalAddr().String(), perName: map[qkey]int64{}}
	s.zone.Store(z)
	s.udp = &dns.Server{PacketConn: pc, Handler: s}
	s.tcp = &dns.Server{Listener: l, Handler: s, ReadTimeout: 5 * time.Second}
	started := make(chan error, 2)
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		srv.NotifyStartedFunc = func() { started <- nil }
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := srv.ActivateAndServe(); err != nil {
				select {
				case started <- err:
				default:
				}
			}
		}()
	}
	for i := 0; i < 2; i++ {
		if err := <-started; err != nil {
			s.Close()
			return nil, fmt.Errorf("dnstest: %w", err)
		}
	}
	return s, nil
}

// Addr is "127.0.0.1:PORT", for UDP and TCP alike.
func (s *Server) Addr() string { return s.addr }

// Close stops both listeners and waits for their goroutines.
func (s *Server) Close() error {
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err1 := s.udp.ShutdownContext(ctx)
		err2 := s.tcp.ShutdownContext(ctx)
		s.wg.Wait()
		s.closeErr = errors.Join(ignoreNotStarted(err1), ignoreNotStarted(err2))
	})
	return s.closeErr
}

func ignoreNotStarted(err error) error {
	if err != nil && strings.Contains(err.Error(), "server not started") {
		return nil
	}
	return err
}

// Queries is the number of queries received, answered or dropped.
func (s *Server) Queries() int64 { return s.queries.Load() }

// QueriesFor is the number of queries received for name (any case, with or
// without trailing dot, literal bytes as in Record.Name) and qtype.
func (s *Server) QueriesFor(name string, qtype uint16) int64 {
	key, err := ownerName(name)
	if err != nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.perName[qkey{key, qtype}]
}

// SetZone replaces the data served, atomically for later queries.
func (s *Server) SetZone(z *Zone) {
	if z != nil {
		s.zone.Store(z)
	}
}

// ServeDNS implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	s.queries.Add(1)
	resp := new(dns.Msg)
	if req.Opcode != dns.OpcodeQuery {
		resp.SetRcode(req, dns.RcodeNotImplemented)
		w.WriteMsg(resp)
		return
	}
	if len(req.Question) != 1 {
		resp.SetRcode(req, dns.RcodeFormatError)
		w.WriteMsg(resp)
		return
	}
	q := req.Question[0]
	s.mu.Lock()
	s.perName[qkey{canonical(q.Name), q.Qtype}]++
	s.mu.Unlock()

	r := s.zone.Load().lookup(q.Name, q.Qtype)
	if r.drop {
		return
	}
	resp.SetRcode(req, r.rcode)
	resp.Authoritative = true
	resp.RecursionAvailable = true
	resp.Answer = r.answer
	resp.Ns = r.ns

	size := dns.MinMsgSize // RFC 1035 §4.2.1 without EDNS0
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(ourUDPSize, false)
		if int(opt.UDPSize()) > size {
			size = int(opt.UDPSize())
		}
	}
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		// RFC 6891 §7: the client's buffer bounds the UDP reply; the rest
		// is left for TCP, signalled by TC.
		resp.Truncate(size)
	}
	w.WriteMsg(resp)
}
