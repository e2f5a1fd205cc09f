package milter

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	gomilter "github.com/emersion/go-milter"
	"github.com/emersion/go-msgauth/dkim"

	"github.com/dmarc-milter/dmarc-milter/internal/testcase"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

func heapInuse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// peakHeap samples HeapInuse until the returned func is called, which
// returns the peak.
func peakHeap() func() uint64 {
	var peak uint64
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return func() uint64 { close(done); <-finished; return peak }
}

// TestAnnouncedLengthNotAllocated: a packet's announced length is not
// memory handed out before the bytes arrive. go-milter alone allocates up
// to 1 MiB per 4-byte length prefix.
func TestAnnouncedLengthNotAllocated(t *testing.T) {
	cfg := hostileConfig()
	cfg.IdleTimeout = time.Minute // the peers must stay connected while measured
	tm := startHostile(t, cfg, nil)
	fields, body := signedAligned(t)
	const peers = 64
	before := heapInuse()
	var ps []*rawPeer
	for range peers {
		p := dialRaw(t, tm.addr)
		p.mustWrite(u32s(maxPacket), []byte("B123456789"))
		ps = append(ps, p)
	}
	deadline := time.Now().Add(10 * time.Second)
	for tm.srv.ActiveSessions() < peers {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions, want %d", tm.srv.ActiveSessions(), peers)
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // let every session block in its read
	grown := int64(heapInuse()) - int64(before)
	t.Logf("%d peers announcing %d bytes each: heap in use grew %d KiB", peers, maxPacket, grown>>10)
	if grown > 16<<20 {
		t.Errorf("heap grew %d MiB for %d peers that sent 14 bytes each", grown>>20, peers)
	}

	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	for range peers {
		p := dialRaw(t, tm.addr)
		p.mustWrite(u32s(0xFFFFFFFF), []byte("B"))
		p.closedWithin(5 * time.Second)
	}
	runtime.ReadMemStats(&ms1)
	if d := ms1.TotalAlloc - ms0.TotalAlloc; d > 16<<20 {
		t.Errorf("%d peers announcing 4 GiB made the process allocate %d MiB", peers, d>>20)
	}
	for _, p := range ps {
		p.c.Close()
	}
	waitIdle(t, tm.srv)
	if err := checkServing(tm.addr, fields, body); err != nil {
		t.Fatal(err)
	}
}

// TestHugeHeaders: 10,000 fields, or one 1 MB field, get an answer (SPF
// aligns here, so DMARC passes whatever the header limits cut), the
// forged A-R after them still goes, and memory stays bounded.
func TestHugeHeaders(t *testing.T) {
	tm := startHostile(t, hostileConfig(), nil)
	fields, body := signedAligned(t)
	forged := testcase.Field{Name: "Authentication-Results", Value: " lab.test; dmarc=pass header.from=aligned.example"}
	many := append([]testcase.Field(nil), fields...)
	for i := range 10000 {
		many = append(many, testcase.Field{Name: fmt.Sprintf("X-Filler-%d", i), Value: " filler value to pad the header out"})
	}
	many = append(many, forged)
	big := append(append([]testcase.Field(nil), fields...),
		testcase.Field{Name: "X-Big", Value: " " + strings.Repeat("x", maxPacket-64)}, forged)

	for _, tc := range []struct {
		name   string
		fields []testcase.Field
	}{{"10000-fields", many}, {"1MB-field", big}} {
		t.Run(tc.name, func(t *testing.T) {
			before := heapInuse()
			stop := peakHeap()
			c := dialMilter(t, tm.addr)
			if _, err := c.connect("mx.aligned.example", "192.0.2.10", "mx.aligned.example"); err != nil {
				t.Fatal(err)
			}
			o := c.send(t, envelope{MailFrom: "bounce@aligned.example"}, tc.fields, body)
			peak := stop()
			ar := arValues(o.Header)
			if o.SMTP != "accept" || len(ar) != 1 || !strings.Contains(ar[0], "spf=pass") || !strings.Contains(ar[0], "dmarc=pass") || ar[0] == forged.Value {
				t.Fatalf("got %s %q, A-R %q", o.SMTP, o.Reply, ar)
			}
			grown := int64(peak) - int64(before)
			t.Logf("peak heap growth %d KiB", grown>>10)
			if grown > 48<<20 {
				t.Errorf("heap grew %d MiB", grown>>20)
			}
		})
	}
}

// TestHugeBody streams a 50 MB DKIM-signed body in 64 KB chunks. Only
// DKIM can pass here (SPF does not align), so dkim=pass shows the body was
// verified, and the heap shows it was never held.
func TestHugeBody(t *testing.T) {
	const size = 50 << 20
	tm := startHostile(t, hostileConfig(), nil)
	eml, err := os.ReadFile(filepath.Join(repoTestdata, "messages", "aligned.eml"))
	if err != nil {
		t.Fatal(err)
	}
	hdr, _, _ := bytes.Cut(bytes.ReplaceAll(eml, []byte("\r\n"), []byte("\n")), []byte("\n\n"))
	hdr = append(bytes.ReplaceAll(hdr, []byte("\n"), []byte("\r\n")), "\r\n\r\n"...)

	// The signer streams too: the test must not hold 50 MB either, or
	// the heap figure would mean nothing.
	signer, err := dkim.NewSigner(&dkim.SignOptions{
		Domain: "aligned.example", Selector: "sel", Signer: loadKey(t, "rsa2048"),
		HeaderKeys: []string{"From", "To", "Subject", "Date", "Message-ID"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(signer, io.MultiReader(bytes.NewReader(hdr), newBodyGen(size))); err != nil {
		t.Fatal(err)
	}
	if err := signer.Close(); err != nil {
		t.Fatal(err)
	}
	fields, _, err := testcase.SplitMessage(append([]byte(signer.Signature()), hdr...))
	if err != nil {
		t.Fatal(err)
	}

	before := heapInuse()
	stop := peakHeap()
	c := dialMilter(t, tm.addr)
	if _, err := c.connect("client.example", "192.0.2.99", "mx.elsewhere.example"); err != nil {
		t.Fatal(err)
	}
	s := c.s
	if _, err := s.Mail("bounce@elsewhere.example", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Rcpt("sink@lab.test", nil); err != nil {
		t.Fatal(err)
	}
	for _, f := range fields {
		if _, err := s.HeaderField(f.Name, strings.ReplaceAll(f.Value, "\r\n", "\n")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.HeaderEnd(); err != nil {
		t.Fatal(err)
	}
	gen := newBodyGen(size)
	chunk := make([]byte, 64<<10)
	for {
		n, err := io.ReadFull(gen, chunk[:gomilter.MaxBodyChunk])
		if n > 0 {
			act, werr := s.BodyChunk(chunk[:n])
			if werr != nil {
				t.Fatal(werr)
			}
			if act.Code != gomilter.ActContinue {
				t.Fatalf("body chunk answered %q", act.Code)
			}
		}
		if err != nil {
			break
		}
	}
	mods, act, err := s.End()
	peak := stop()
	if err != nil {
		t.Fatal(err)
	}
	if act.Code != gomilter.ActContinue || len(mods) != 1 || !strings.Contains(mods[0].HeaderValue, "dkim=pass") || !strings.Contains(mods[0].HeaderValue, "dmarc=pass") {
		t.Fatalf("50 MB message: %q %+v", act.Code, mods)
	}
	grown := int64(peak) - int64(before)
	t.Logf("50 MB body: peak heap growth %d KiB", grown>>10)
	if grown > 32<<20 {
		t.Errorf("heap grew %d MiB for a streamed body", grown>>20)
	}
}

// bodyGen yields a deterministic CRLF body of n bytes without holding it.
type bodyGen struct {
	left int
	line []byte
	pos  int
}

func newBodyGen(n int) *bodyGen {
	return &bodyGen{left: n, line: []byte("The quick brown fox jumps over the lazy dog, 0123456789 times over.\r\n")}
}

func (g *bodyGen) Read(p []byte) (int, error) {
	if g.left == 0 {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && g.left > 0 {
		c := copy(p[n:min(len(p), n+g.left)], g.line[g.pos:])
		g.pos = (g.pos + c) % len(g.line)
		n += c
		g.left -= c
	}
	return n, nil
}

// TestPanicContained injects a panic in one session at each stage: that
// message gets the fail-safe answer (accept without our header, or 451
// with on-error tempfail, never 5xx), Metrics.Panics counts it, and the
// sessions beside it get their normal answers.
func TestPanicContained(t *testing.T) {
	fields, body := signedAligned(t)
	for _, onError := range []string{"accept", "tempfail"} {
		cfg := hostileConfig()
		cfg.OnError = onError
		tm := startHostile(t, cfg, func(stage string, s *session) {
			if s.conn.Host == "boom-"+stage+".example" {
				panic("injected at " + stage)
			}
		})
		for _, stage := range []string{"connect", "helo", "mail", "rcpt", "header", "eoh", "body", "eom"} {
			t.Run(onError+"/"+stage, func(t *testing.T) {
				before := tm.srv.Metrics().Panics.Load()
				var wg sync.WaitGroup
				errs := make(chan error, 4)
				for range 4 {
					wg.Add(1)
					go func() { defer wg.Done(); errs <- checkServing(tm.addr, fields, body) }()
				}
				c := dialMilter(t, tm.addr)
				act, err := c.connect("boom-"+stage+".example", "192.0.2.99", "mx.elsewhere.example")
				if err != nil {
					t.Fatal(err)
				}
				o := final(outcome{}, act)
				if act.Code == gomilter.ActContinue {
					o = c.send(t, envelope{MailFrom: "bounce@elsewhere.example"}, fields, body)
				}
				switch {
				case onError == "accept" && (o.SMTP != "accept" || len(arValues(o.Header)) != 0):
					t.Errorf("got %s %q with A-R %q, want the fail-safe accept without our header", o.SMTP, o.Reply, arValues(o.Header))
				case onError == "tempfail" && (o.SMTP != "tempfail" || !strings.HasPrefix(o.Reply, "451 4.3.0")):
					t.Errorf("got %s %q, want 451 4.3.0", o.SMTP, o.Reply)
				}
				if d := tm.srv.Metrics().Panics.Load() - before; d != 1 {
					t.Errorf("Metrics.Panics grew by %d, want 1", d)
				}
				if stage == "connect" || stage == "helo" {
					// Every later message of that connection is fail-safe
					// too: its connection data may be incomplete.
					if act.Code == gomilter.ActContinue {
						o = c.send(t, envelope{MailFrom: "bounce@elsewhere.example"}, fields, body)
						if len(arValues(o.Header)) != 0 || o.SMTP == "reject" {
							t.Errorf("second message after a %s panic: %s %q %q", stage, o.SMTP, o.Reply, arValues(o.Header))
						}
					}
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					if err != nil {
						t.Errorf("session beside the panic: %v", err)
					}
				}
			})
		}
	}
}

// TestNoGoroutineLeak counts goroutines before and after a run of every
// hostile peer, a panic, normal sessions, sessions still open at Shutdown,
// and Shutdown itself.
func TestNoGoroutineLeak(t *testing.T) {
	base := settledGoroutines(0)
	fields, body := signedAligned(t)
	func() {
		tm := startHostile(t, hostileConfig(), func(stage string, s *session) {
			if stage == "body" && s.conn.Host == "boom.example" {
				panic("injected")
			}
		})
		for _, hc := range hostileCases(fields, body) {
			t.Run(hc.name, func(t *testing.T) {
				p := dialRaw(t, tm.addr)
				hc.run(t, p)
				p.c.Close()
			})
		}
		p := dialRaw(t, tm.addr)
		p.mustWrite(optneg)
		p.expect('O')
		p.mustWrite(connectPkt("boom.example", "192.0.2.99"))
		p.expect('c')
		if mods, code := p.message("bounce@elsewhere.example", fields, body); code != 'c' || len(mods) != 0 {
			t.Errorf("panicking message: %q %q", code, mods)
		}
		p.c.Close()
		for range 5 {
			if err := checkServing(tm.addr, fields, body); err != nil {
				t.Fatal(err)
			}
		}
		// Sessions still open at Shutdown: one idle, one mid-body.
		idle := dialRaw(t, tm.addr)
		idle.handshake()
		mid := dialRaw(t, tm.addr)
		mid.handshake()
		mid.startMessage("bounce@elsewhere.example", fields, body)
		tm.stop()
		idle.c.Close()
		mid.c.Close()
	}()
	if n := settledGoroutines(base); n > base {
		var b strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
		t.Fatalf("%d goroutines before, %d after:\n%s", base, n, b.String())
	}
}

// settledGoroutines waits up to 10s for the goroutine count to fall to
// want, or with want 0 to hold still for 200ms, and returns it.
func settledGoroutines(want int) int {
	n := runtime.NumGoroutine()
	stable := 0
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		m := runtime.NumGoroutine()
		if want > 0 && m <= want {
			return m
		}
		if m == n {
			stable++
			if want == 0 && stable >= 10 {
				return m
			}
		} else {
			stable = 0
		}
		n = m
	}
	return n
}

// TestManyForgedAR: every A-R field with our id goes, however many there
// are; a bound on the deletions would let the rest through.
func TestManyForgedAR(t *testing.T) {
	cfg := DefaultConfig()
	cfg.AuthServID = "lab.test"
	tm := startMilter(t, cfg, loadZone(t, "milter.json"), policy.Options{})
	fields, body := signedAligned(t)
	forged := testcase.Field{Name: "Authentication-Results", Value: " lab.test; dmarc=pass header.from=aligned.example"}
	many := make([]testcase.Field, 0, 1500+len(fields))
	for i := 0; i < 1500; i++ {
		many = append(many, forged)
	}
	many = append(many, fields...)
	c := dialMilter(t, tm.addr)
	if _, err := c.connect("mx.aligned.example", "192.0.2.10", "mx.aligned.example"); err != nil {
		t.Fatal(err)
	}
	o := c.send(t, envelope{MailFrom: "bounce@aligned.example"}, many, body)
	if o.SMTP != "accept" {
		t.Fatalf("%+v", o)
	}
	n := 0
	for _, v := range arValues(o.Header) {
		if v == forged.Value {
			n++
		}
	}
	if n != 0 {
		t.Fatalf("%d of 1500 forged A-R fields delivered", n)
	}
}

// TestManySignaturesBoundedAR: a message with 500 junk DKIM signatures
// above a good one gets an A-R of a few lines, the pass included.
func TestManySignaturesBoundedAR(t *testing.T) {
	cfg := DefaultConfig()
	cfg.AuthServID = "lab.test"
	tm := startMilter(t, cfg, loadZone(t, "milter.json"), policy.Options{})
	fields, body := signedAligned(t)
	var many []testcase.Field
	for i := 0; i < 500; i++ {
		many = append(many, testcase.Field{Name: "DKIM-Signature", Value: fmt.Sprintf(" v=1; a=rsa-sha256; d=junk%d.example; s=s; h=from; bh=AA==; b=AA%d==", i, i)})
	}
	many = append(many, fields...)
	c := dialMilter(t, tm.addr)
	if _, err := c.connect("mx.aligned.example", "192.0.2.10", "mx.aligned.example"); err != nil {
		t.Fatal(err)
	}
	o := c.send(t, envelope{MailFrom: "bounce@aligned.example"}, many, body)
	ar := ourARs(o.Header)
	if o.SMTP != "accept" || len(ar) != 1 {
		t.Fatalf("%+v", o)
	}
	if n := strings.Count(ar[0], "dkim="); n > maxARDKIM+2 || !strings.Contains(ar[0], "dkim=pass") ||
		!strings.Contains(ar[0], "more signatures not listed") || !strings.Contains(ar[0], "dmarc=pass") || len(ar[0]) > 8<<10 {
		t.Fatalf("%d dkim results, %d bytes:\n%s", n, len(ar[0]), ar[0])
	}
}
