package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
)

// smtpSink is a small SMTP server for the client side of SMTP mode: it
// insists on XCLIENT before MAIL, keeps what each transaction delivered,
// and answers DATA with 550 when the claimed client is 198.51.100.7 and
// 451 when it is 203.0.113.5, so the classification and the per-client
// claims are both visible in the report.
type smtpSink struct {
	ln net.Listener
	mu sync.Mutex
	// got maps "IP|MAIL FROM" to the message data received (unstuffed).
	got map[string][]byte
	bad []string
}

func startSink(t *testing.T) *smtpSink {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &smtpSink{ln: ln, got: map[string][]byte{}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(c)
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return s
}

func (s *smtpSink) fail(format string, args ...any) {
	s.mu.Lock()
	s.bad = append(s.bad, fmt.Sprintf(format, args...))
	s.mu.Unlock()
}

func (s *smtpSink) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	w := bufio.NewWriter(c)
	say := func(line string) { w.WriteString(line + "\r\n"); w.Flush() }
	say("220 sink ESMTP")
	var ip, from string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		verb := strings.ToUpper(strings.Fields(line + " x")[0])
		switch verb {
		case "EHLO":
			say("250-sink\r\n250 XCLIENT ADDR NAME HELO")
		case "XCLIENT":
			for _, kv := range strings.Fields(line)[1:] {
				if v, ok := strings.CutPrefix(kv, "ADDR="); ok {
					ip = v
				}
			}
			say("220 sink ESMTP")
		case "MAIL":
			if ip == "" {
				s.fail("MAIL before XCLIENT")
			}
			from = strings.TrimSuffix(strings.TrimPrefix(line, "MAIL FROM:<"), ">")
			say("250 ok")
		case "RCPT":
			say("250 ok")
		case "DATA":
			say("354 go on")
			var data bytes.Buffer
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
				if !strings.HasSuffix(l, "\r\n") {
					s.fail("bare LF line %q", l)
				}
				data.WriteString(strings.TrimPrefix(l, ".")) // RFC 5321 §4.5.2
			}
			s.mu.Lock()
			s.got[ip+"|"+from] = data.Bytes()
			s.mu.Unlock()
			switch ip {
			case "198.51.100.7":
				say("550 5.7.1 rejected")
			case "203.0.113.5":
				say("451 4.7.5 later")
			default:
				say("250 queued")
			}
		case "QUIT":
			say("221 bye")
			return
		default:
			s.fail("unexpected command %q", line)
			say("500 what")
		}
	}
}

func TestSMTPMode(t *testing.T) {
	sink := startSink(t)
	corp := corpus(t)
	// A line starting with a dot must survive dot-stuffing.
	corp[0].Msgs[0].Body = append([]byte(".leading dot\r\n"), corp[0].Msgs[0].Body...)
	rep, err := Run(context.Background(), Options{SMTP: sink.ln.Addr().String(), Conns: 4, PerConn: 3, Count: 48, Corpus: corp})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Errors != 0 || rep.Messages != 48 {
		t.Fatalf("messages %d, errors %q", rep.Messages, rep.ErrorLog)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if len(sink.bad) > 0 {
		t.Errorf("server saw: %q", sink.bad)
	}
	// The spoofer's messages are rejected, the forwarder's deferred,
	// everything else accepted, as the sink decides by client.
	if rep.Actions["reject"] == 0 || rep.Actions["tempfail"] == 0 || rep.Actions["accept"] == 0 {
		t.Errorf("actions %v", rep.Actions)
	}
	for k, n := range rep.Unexpected {
		if !strings.HasPrefix(k, "forwarded") {
			t.Errorf("unexpected %d × %s", n, k)
		}
	}
	for _, cl := range corp {
		for _, m := range cl.Msgs {
			got, ok := sink.got[cl.IP+"|"+m.MailFrom]
			if !ok {
				continue // not every message is sent in a short run
			}
			var want bytes.Buffer
			for _, f := range m.Fields {
				want.WriteString(f.Name + ":" + f.Value + "\r\n")
			}
			want.WriteString("\r\n")
			want.Write(m.Body)
			if !bytes.Equal(got, want.Bytes()) {
				t.Errorf("%s: server received a different message:\n%q\nwant\n%q", m.Name, got, want.Bytes())
			}
		}
	}
	if _, ok := sink.got[corp[0].IP+"|"+corp[0].Msgs[0].MailFrom]; !ok {
		t.Error("the message with the leading dot was not sent")
	}
}
