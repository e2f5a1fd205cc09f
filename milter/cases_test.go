package milter

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/testcase"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

// casesDir finds the published acceptance cases: $DMARC_CASES_DIR, or
// shared/cases beside the repository (where CI puts it).
func casesDir(t *testing.T) string {
	if d := os.Getenv("DMARC_CASES_DIR"); d != "" {
		return d
	}
	d, _ := filepath.Abs(filepath.Join("..", "..", "shared", "cases"))
	if _, err := os.Stat(filepath.Join(d, "cases")); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("acceptance cases not found at %s (set DMARC_CASES_DIR)", d)
		}
		t.Skipf("acceptance cases not found at %s (set DMARC_CASES_DIR)", d)
	}
	return d
}

// wrongCases names published cases whose expectation we believe is wrong,
// with the reason per RFC 9989. Empty: every case must pass.
var wrongCases = map[string]string{}

// TestAcceptanceCases runs every published case through the milter, in
// both spec modes, over go-milter's client (the Postfix run is in
// deploy/e2e).
func TestAcceptanceCases(t *testing.T) {
	dir := casesDir(t)
	runCaseDir(t, dir, filepath.Join(dir, "keys"))
}

// TestOwnCases runs our own cases (testdata/cases, numbered from 500:
// hostile From fields, broken records, DNS faults) the same way. They
// carry no keys of their own: the test keys in testdata/keys are the
// published ones.
func TestOwnCases(t *testing.T) {
	runCaseDir(t, filepath.Join("..", "testdata", "cases"), filepath.Join("..", "testdata", "keys"))
}

// runCaseDir runs the cases of one directory in the shared cases layout
// (cases/, zone/base.json, psl/) against one milter per spec mode.
func runCaseDir(t *testing.T, dir, keys string) {
	cases, err := testcase.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	zone, err := testcase.BuildZone(filepath.Join(dir, "zone", "base.json"), keys, cases)
	if err != nil {
		t.Fatal(err)
	}
	psl, err := policy.LoadPSL(filepath.Join(dir, "psl", "public_suffix_list.dat"))
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []policy.Spec{policy.SpecRFC7489, policy.SpecRFC9989} {
		t.Run(string(mode), func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.AuthServID = "lab.test"
			cfg.Quarantine = "hold"
			cfg.MessageTimeout = 5 * time.Second
			tm := startMilter(t, cfg, zone, policy.Options{Spec: mode, PSL: psl})
			for _, c := range cases {
				t.Run(c.ID, func(t *testing.T) {
					t.Parallel()
					if why, ok := wrongCases[c.ID]; ok {
						t.Skip("expectation disputed: " + why)
					}
					msg, err := c.Build(keys, time.Now())
					if err != nil {
						t.Fatal(err)
					}
					fields, body, err := testcase.SplitMessage(msg)
					if err != nil {
						t.Fatal(err)
					}
					mc := dialMilter(t, tm.addr)
					env := c.Envelope
					act, err := mc.connect(env.ClientName, env.ClientIP, env.Helo)
					if err != nil {
						t.Fatal(err)
					}
					var o outcome
					if act.Code != 'c' {
						o = final(o, act)
					} else {
						o = mc.send(t, envelope{MailFrom: env.MailFrom, Rcpt: env.Rcpt}, fields, body)
					}
					cerr, adv := c.Check(string(mode), "lab.test", o)
					for _, a := range adv {
						t.Logf("advisory: %s", a)
					}
					if cerr != nil {
						t.Errorf("%s\n%v\nreply: %q\nA-R: %q", c.Title, cerr, o.Reply, arValues(o.Header))
					} else {
						t.Logf("%s %s %q A-R: %q", o.SMTP, o.Queue, o.Reply, arValues(o.Header))
					}
				})
			}
		})
	}
}
