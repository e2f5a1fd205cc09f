package milter

import (
	"encoding/binary"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/dmarc-milter/dmarc-milter/internal/testcase"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

// benchMsg is one message of the benchmarks, split as the MTA sends it.
type benchMsg struct {
	name     string
	conn     ConnInfo
	mailFrom string
	fields   []testcase.Field
	body     []byte
	want     Action
}

func benchMessages(b *testing.B) []benchMsg {
	split := func(raw []byte) ([]testcase.Field, []byte) {
		f, body, err := testcase.SplitMessage(raw)
		if err != nil {
			b.Fatal(err)
		}
		// Signed test messages may have LF line ends; the wire has CRLF.
		body = []byte(strings.ReplaceAll(strings.ReplaceAll(string(body), "\r\n", "\n"), "\n", "\r\n"))
		return f, body
	}
	af, ab := split(readMessage(b, "aligned", signSpec{"aligned.example", "sel", "rsa2048"}))
	ef, eb := split(readMessage(b, "aligned", signSpec{"aligned.example", "ed", "ed25519"}))
	sf, sb := split(readMessage(b, "spoof"))
	return []benchMsg{
		{"dkim-rsa2048+spf-pass", ConnInfo{Host: "mx.aligned.example", IP: net.ParseIP("192.0.2.10"), Helo: "mx.aligned.example"}, "alice@aligned.example", af, ab, ActionAccept},
		{"dkim-ed25519+spf-pass", ConnInfo{Host: "mx.aligned.example", IP: net.ParseIP("192.0.2.10"), Helo: "mx.aligned.example"}, "alice@aligned.example", ef, eb, ActionAccept},
		{"spoof-reject", ConnInfo{Host: "unknown", IP: net.ParseIP("198.51.100.7"), Helo: "spoof.invalid"}, "ceo@aligned.example", sf, sb, ActionReject},
	}
}

// runTx is what the session does for one message, without the protocol.
func runTx(s *Server, cfg *Config, m *benchMsg) *Decision {
	tx := s.Begin(cfg, m.conn, m.mailFrom, "")
	tx.AddRcpt("bob@lab.test")
	for _, f := range m.fields {
		tx.AddHeader(f.Name, strings.ReplaceAll(f.Value, "\r\n", "\n"))
	}
	tx.EndHeaders()
	tx.WriteBody(m.body)
	return tx.Finish()
}

// BenchmarkTransaction is the CPU and allocation cost of one message
// (header, body, end of message) with the DNS cache warm: SPF, DKIM
// verification, DMARC discovery and the decision, without the milter
// protocol.
func BenchmarkTransaction(b *testing.B) {
	tm := startMilter(b, DefaultConfig(), loadZone(b, "milter.json"), policy.Options{})
	cfg := tm.srv.currentConfig()
	for _, m := range benchMessages(b) {
		b.Run(m.name, func(b *testing.B) {
			// Warm the cache, and check the message is judged right:
			// a benchmark of a wrong answer measures nothing.
			if d := runTx(tm.srv, cfg, &m); d == nil || d.Action != m.want {
				b.Fatalf("decision %+v, want %s", d, m.want)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if d := runTx(tm.srv, cfg, &m); d.Action != m.want {
					b.Fatalf("decision %s, want %s", d.Action, m.want)
				}
			}
		})
	}
}

// BenchmarkTransactionParallel is the same on all cores: contention in the
// resolver cache or the metrics shows here.
func BenchmarkTransactionParallel(b *testing.B) {
	tm := startMilter(b, DefaultConfig(), loadZone(b, "milter.json"), policy.Options{})
	cfg := tm.srv.currentConfig()
	m := benchMessages(b)[0]
	if d := runTx(tm.srv, cfg, &m); d == nil || d.Action != m.want {
		b.Fatalf("decision %+v, want %s", d, m.want)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if d := runTx(tm.srv, cfg, &m); d.Action != m.want {
				b.Errorf("decision %s, want %s", d.Action, m.want)
				return
			}
		}
	})
}

// packetConn counts the milter packets in each direction on the client
// side: go-milter's client writes each packet with one Write; replies are
// found by following the 4-byte length prefixes.
type packetConn struct {
	net.Conn
	out, in *atomic.Int64
	hdr     [4]byte
	nhdr    int
	left    uint32
}

func (c *packetConn) Write(p []byte) (int, error) {
	c.out.Add(1)
	return c.Conn.Write(p)
}

func (c *packetConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	for q := p[:n]; len(q) > 0; {
		if c.left == 0 {
			k := copy(c.hdr[c.nhdr:], q)
			c.nhdr += k
			q = q[k:]
			if c.nhdr == 4 {
				c.nhdr = 0
				c.left = binary.BigEndian.Uint32(c.hdr[:])
			}
			continue
		}
		k := min(uint32(len(q)), c.left)
		c.left -= k
		q = q[k:]
		if c.left == 0 {
			c.in.Add(1)
		}
	}
	return n, err
}

type packetDialer struct{ out, in atomic.Int64 }

func (d *packetDialer) Dial(network, addr string) (net.Conn, error) {
	c, err := net.Dial(network, addr)
	if err != nil {
		return nil, err
	}
	return &packetConn{Conn: c, out: &d.out, in: &d.in}, nil
}

// BenchmarkSessionRoundTrip is one message over a go-milter session on
// loopback, on a connection kept open across messages as Postfix does;
// it reports the packets exchanged per message.
func BenchmarkSessionRoundTrip(b *testing.B) {
	tm := startMilter(b, DefaultConfig(), loadZone(b, "milter.json"), policy.Options{})
	for _, m := range benchMessages(b)[:1] {
		b.Run(m.name, func(b *testing.B) {
			d := &packetDialer{}
			c := gomilter.NewClientWithOptions("tcp", tm.addr, gomilter.ClientOptions{
				Dialer: d, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second,
				ActionMask: gomilter.OptAddHeader | gomilter.OptChangeHeader | gomilter.OptQuarantine,
			})
			s, err := c.Session()
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			mc := &mtaConn{s: s}
			if act, err := mc.connect(m.conn.Host, m.conn.IP.String(), m.conn.Helo); err != nil || act.Code != gomilter.ActContinue {
				b.Fatalf("connect: %v %v", act, err)
			}
			env := envelope{MailFrom: m.mailFrom, Rcpt: []string{"bob@lab.test"}}
			if o := mc.send(b, env, m.fields, m.body); o.SMTP != "accept" {
				b.Fatalf("warm-up message: %+v", o)
			}
			out0, in0 := d.out.Load(), d.in.Load()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				o, err := mc.trySend(env, m.fields, m.body)
				if err != nil {
					b.Fatal(err)
				}
				if o.SMTP != "accept" || len(arValues(o.Header)) == 0 {
					b.Fatalf("outcome %+v", o)
				}
				// Postfix ends every milter transaction with ABORT.
				if err := s.Abort(); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(d.out.Load()-out0)/float64(b.N), "pkts-out/msg")
			b.ReportMetric(float64(d.in.Load()-in0)/float64(b.N), "pkts-in/msg")
		})
	}
}
