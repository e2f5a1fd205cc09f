package milter

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/testcase"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

// lockedBuffer collects log output written from the sessions' goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startLoggedMilter starts the milter on the shared test zone with the
// server's logger given.
func startLoggedMilter(t *testing.T, cfg Config, logger *slog.Logger) string {
	t.Helper()
	return startMilterLogged(t, cfg, loadZone(t, "milter.json"), policy.Options{}, logger).addr
}

// parseLogfmt reads one line of slog's text handler: key=value pairs,
// values quoted Go-style when they need it.
func parseLogfmt(line string) (map[string]string, error) {
	out := map[string]string{}
	for line = strings.TrimSpace(line); line != ""; line = strings.TrimLeft(line, " ") {
		k, rest, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("no '=' in %q", line)
		}
		var v string
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				return nil, fmt.Errorf("%s: %v", k, err)
			}
			v, _ = strconv.Unquote(q)
			rest = rest[len(q):]
		} else {
			v, rest, _ = strings.Cut(rest, " ")
		}
		out[k] = v
		line = rest
	}
	return out, nil
}

// TestDecisionLog captures the decision line, text and JSON, of a
// rejected spoof and of a failure let through by allow_from: the field
// names and values an operator's log pipeline reads.
func TestDecisionLog(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			var buf lockedBuffer
			h := slog.Handler(slog.NewTextHandler(&buf, nil))
			if format == "json" {
				h = slog.NewJSONHandler(&buf, nil)
			}
			cfg := DefaultConfig()
			cfg.AuthServID = "lab.test"
			allow, _ := policy.NewDomainSet([]string{"quar.example"})
			cfg.Local = policy.LocalPolicy{AllowFrom: allow}
			addr := startLoggedMilter(t, cfg, slog.New(h))

			// The spoof carries a valid but unaligned DKIM signature, so
			// that dkim= has something to show.
			spoof, sbody, _ := testcase.SplitMessage(readMessage(t, "spoof", signSpec{"esp.example", "sel", "rsa2048"}))
			quar, qbody, _ := testcase.SplitMessage(readMessage(t, "quarantine"))
			for _, m := range []struct {
				qid    string
				fields []testcase.Field
				body   []byte
				smtp   string
			}{{"4SPOOF1", spoof, sbody, "reject"}, {"4ALLOW1", quar, qbody, "accept"}} {
				c := dialMilter(t, addr)
				if _, err := c.connect("client.example", "198.51.100.1", "h.example"); err != nil {
					t.Fatal(err)
				}
				o := c.send(t, envelope{MailFrom: "x@attacker.example.org", Macros: []string{"i", m.qid}}, m.fields, m.body)
				if o.SMTP != m.smtp {
					t.Fatalf("%s: %s (%s), want %s", m.qid, o.SMTP, o.Reply, m.smtp)
				}
			}

			lines := map[string]map[string]string{} // queue_id -> fields
			for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
				var f map[string]string
				if format == "json" {
					var raw map[string]any
					if err := json.Unmarshal([]byte(l), &raw); err != nil {
						t.Fatalf("%v: %s", err, l)
					}
					f = map[string]string{}
					for k, v := range raw {
						s, ok := v.(string)
						if !ok {
							t.Errorf("%s is %T, want a string: %s", k, v, l)
						}
						f[k] = s
					}
				} else {
					var err error
					if f, err = parseLogfmt(l); err != nil {
						t.Fatalf("%v: %s", err, l)
					}
				}
				if f["msg"] == "dmarc decision" {
					lines[f["queue_id"]] = f
				}
			}
			want := map[string]map[string]string{
				"4SPOOF1": {
					"queue_id": "4SPOOF1", "client_ip": "198.51.100.1", "from_domains": "aligned.example",
					"spf": "none", "dkim": "esp.example:pass", "dmarc": "fail", "policy_domain": "aligned.example",
					"policy": "reject", "disposition": "reject", "action": "reject",
				},
				"4ALLOW1": {
					"queue_id": "4ALLOW1", "client_ip": "198.51.100.1", "from_domains": "quar.example",
					"spf": "none", "dkim": "", "dmarc": "fail", "policy_domain": "quar.example",
					"policy": "quarantine", "disposition": "none", "action": "accept",
					"overrides": "local_policy(allow_from quar.example)",
				},
			}
			for qid, w := range want {
				got, ok := lines[qid]
				if !ok {
					t.Errorf("%s: no decision line in:\n%s", qid, buf.String())
					continue
				}
				for k, v := range w {
					if gv, ok := got[k]; !ok || gv != v {
						t.Errorf("%s: %s = %q (present %v), want %q", qid, k, gv, ok, v)
					}
				}
				if _, ok := w["overrides"]; !ok {
					if v, ok := got["overrides"]; ok {
						t.Errorf("%s: overrides = %q on a message without one", qid, v)
					}
				}
				for _, k := range []string{"duration", "dns_spf", "dns_dmarc"} {
					if d, err := time.ParseDuration(got[k]); err != nil || d <= 0 {
						t.Errorf("%s: %s = %q", qid, k, got[k])
					}
				}
			}
		})
	}
}

// TestDecisionLogRecordWarnings: what the record parser dropped or
// defaulted reaches the log line, not only `dmarc-milter record`.
func TestDecisionLogRecordWarnings(t *testing.T) {
	var buf lockedBuffer
	cfg := DefaultConfig()
	cfg.AuthServID = "lab.test"
	addr := startLoggedMilter(t, cfg, slog.New(slog.NewTextHandler(&buf, nil)))
	c := dialMilter(t, addr)
	if _, err := c.connect("client.example", "198.51.100.1", "h.example"); err != nil {
		t.Fatal(err)
	}
	fields := []testcase.Field{{Name: "From", Value: " a@typo.example"}, {Name: "Subject", Value: " x"}}
	if o := c.send(t, envelope{MailFrom: "x@attacker.example.org"}, fields, []byte("hi\r\n")); o.SMTP != "reject" {
		t.Fatalf("%+v", o)
	}
	for _, l := range strings.Split(buf.String(), "\n") {
		f, err := parseLogfmt(l)
		if err != nil || f["msg"] != "dmarc decision" {
			continue
		}
		if !strings.Contains(f["dmarc_discarded"], "adkim") {
			t.Errorf("dmarc_discarded = %q, want the adkim=x warning", f["dmarc_discarded"])
		}
		return
	}
	t.Fatalf("no decision line:\n%s", buf.String())
}

// TestNotEvaluatedLog: a message that is not evaluated (SASL client)
// still gets one line with its queue id and the forged A-R removed.
func TestNotEvaluatedLog(t *testing.T) {
	var buf lockedBuffer
	cfg := DefaultConfig()
	cfg.AuthServID = "lab.test"
	addr := startLoggedMilter(t, cfg, slog.New(slog.NewTextHandler(&buf, nil)))
	c := dialMilter(t, addr)
	if _, err := c.connect("laptop.example", "198.51.100.13", "laptop"); err != nil {
		t.Fatal(err)
	}
	fields := []testcase.Field{{Name: "Authentication-Results", Value: " lab.test; dmarc=pass"}, {Name: "From", Value: " ceo@aligned.example"}}
	o := c.send(t, envelope{MailFrom: "ceo@aligned.example", Macros: []string{"{auth_authen}", "ceo", "i", "4AUTH1"}}, fields, []byte("hi\r\n"))
	if o.SMTP != "accept" {
		t.Fatalf("%+v", o)
	}
	for _, v := range arValues(o.Header) {
		if strings.Contains(v, "lab.test") {
			t.Errorf("forged A-R delivered for a SASL client: %q", v)
		}
	}
	for _, l := range strings.Split(buf.String(), "\n") {
		f, err := parseLogfmt(l)
		if err != nil || f["msg"] != "dmarc not evaluated" {
			continue
		}
		if f["queue_id"] != "4AUTH1" || f["why"] != "authenticated" || f["client_ip"] != "198.51.100.13" || f["forged_ar_removed"] != "1" {
			t.Errorf("line %q", l)
		}
		return
	}
	t.Fatalf("no line:\n%s", buf.String())
}
