package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/testcase"
)

// requireMiltertest returns the path of OpenDKIM's miltertest, an MTA-side
// milter client written apart from go-milter, so the daemon's protocol
// handling is checked against a second implementation.
func requireMiltertest(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("miltertest")
	if err != nil {
		if e2eRequired() {
			t.Fatalf("DMARC_E2E_REQUIRED=1 but miltertest is not installed (apt-get install miltertest): %v", err)
		}
		t.Skipf("skipping: miltertest is not installed (apt-get install miltertest): %v", err)
	}
	return p
}

// mtMessage is one message the Lua scripts send, built here because the
// scripts cannot sign.
type mtMessage struct {
	headers [][2]string
	dkim    []testcase.Signing
}

// mtMessages are the messages of testdata/miltertest, by the key the
// scripts use in MSG. Domains and keys are those of testdata/e2e/zone.json.
var mtMessages = map[string]mtMessage{
	"aligned": {
		headers: [][2]string{{"From", "Alice <alice@e2e-reject.test>"}, {"To", "sink@lab.test"}, {"Subject", "aligned"}},
		dkim:    []testcase.Signing{{Domain: "e2e-reject.test", Selector: "sel", Key: "rsa2048"}},
	},
	"spoof_reject": {
		headers: [][2]string{{"From", "CEO <ceo@e2e-reject.test>"}, {"To", "sink@lab.test"}, {"Subject", "wire money"}},
	},
	"spoof_quarantine": {
		headers: [][2]string{{"From", "q@e2e-quarantine.test"}, {"To", "sink@lab.test"}, {"Subject", "hold me"}},
	},
	"forged_ar": {
		headers: [][2]string{
			{"Authentication-Results", "lab.test; dmarc=pass header.from=e2e-none.test"},
			{"Authentication-Results", "other.example; dmarc=pass header.from=e2e-none.test"},
			{"From", "n@e2e-none.test"}, {"To", "sink@lab.test"}, {"Subject", "trust me"},
		},
	},
	"spf_aligned": {
		headers: [][2]string{{"From", "News <news@e2e-reject.test>"}, {"To", "sink@lab.test"}, {"Subject", "second"}},
	},
}

// writeMTMessages builds, signs (internal/testcase's RFC 6376 signer) and
// writes the messages as a Lua file defining MSG.
func writeMTMessages(t *testing.T, path string) {
	t.Helper()
	keyDir := filepath.Join(repoRoot, "testdata", "keys")
	names := make([]string, 0, len(mtMessages))
	for name := range mtMessages {
		names = append(names, name)
	}
	sort.Strings(names)
	var lua strings.Builder
	lua.WriteString("-- Written by miltertest_test.go for one run.\nMSG = {}\n")
	for _, name := range names {
		m := mtMessages[name]
		c := &testcase.Case{ID: "mt-" + name, Message: testcase.Message{Body: "Test message body.\n"}, DKIM: m.dkim}
		for _, h := range m.headers {
			c.Message.Headers = append(c.Message.Headers, testcase.HeaderPair{Name: h[0], Value: h[1]})
		}
		raw, err := c.Build(keyDir, time.Now())
		if err != nil {
			t.Fatalf("message %s: %v", name, err)
		}
		fields, body, err := testcase.SplitMessage(raw)
		if err != nil {
			t.Fatalf("message %s: %v", name, err)
		}
		fmt.Fprintf(&lua, "MSG[%s] = {headers = {\n", luaString(name))
		for _, f := range fields {
			// Postfix hands folded header lines to milters with LF only
			// (LIBRARIES.md); the daemon must cope with exactly that.
			v := strings.ReplaceAll(f.Value, "\r\n", "\n")
			fmt.Fprintf(&lua, "\t{%s, %s},\n", luaString(f.Name), luaString(v))
		}
		fmt.Fprintf(&lua, "}, body = %s}\n", luaString(string(body)))
	}
	if err := os.WriteFile(path, []byte(lua.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// luaString quotes s as a Lua string literal. Every byte outside
// printable ASCII becomes a three-digit decimal escape, so a digit that
// follows cannot extend it (Lua 5.3 manual §3.1).
func luaString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch < ' ' || ch > '~' || ch == '"' || ch == '\\' {
			fmt.Fprintf(&b, "\\%03d", ch)
			continue
		}
		b.WriteByte(ch)
	}
	b.WriteByte('"')
	return b.String()
}

// TestMiltertest runs the Lua scripts of testdata/miltertest with
// miltertest against the daemon (hold mode, authserv-id lab.test, no
// trusted networks), one miltertest process per script, after feeding it
// raw packet sequences that no milter client library would send.
func TestMiltertest(t *testing.T) {
	mtBin := requireMiltertest(t)
	bin := daemonBinary(t)
	dnsAddr := startDNS(t)
	d := startDaemon(t, bin, "miltertest", "-dns", dnsAddr, "-authserv-id", authservID,
		"-trusted-networks", "", "-mode", "enforce", "-quarantine", "hold", "-spec", "rfc9989")
	addr := strings.TrimPrefix(d.milter, "inet:")
	// miltertest wants the Sendmail spelling inet:PORT@HOST.
	host, port, ok := strings.Cut(addr, ":")
	if !ok {
		t.Fatalf("unexpected milter address %q", d.milter)
	}
	sock := "inet:" + port + "@" + host

	dir := t.TempDir()
	data := filepath.Join(dir, "messages.lua")
	writeMTMessages(t, data)
	scriptDir, err := filepath.Abs(filepath.Join("testdata", "miltertest"))
	if err != nil {
		t.Fatal(err)
	}
	scripts, err := filepath.Glob(filepath.Join(scriptDir, "*.lua"))
	if err != nil {
		t.Fatal(err)
	}
	run := func(t *testing.T, script string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, mtBin, "-D", "MILTER="+sock, "-D", "SCRIPT="+script,
			"-D", "LIB="+filepath.Join(scriptDir, "lib.lua"), "-D", "DATA="+data,
			"-s", filepath.Join(scriptDir, "run.lua"))
		var out bytes.Buffer
		cmd.Stdout = &out
		cmd.Stderr = &out
		if err := cmd.Run(); err != nil {
			t.Fatalf("miltertest -s %s: %v\n%s", filepath.Base(script), err, out.Bytes())
		}
		if s := strings.TrimSpace(out.String()); s != "" {
			t.Logf("miltertest output:\n%s", s)
		}
	}

	t.Run("raw", func(t *testing.T) { rawMilterAbuse(t, addr) })

	var n int
	t.Run("scripts", func(t *testing.T) {
		for _, script := range scripts {
			name := strings.TrimSuffix(filepath.Base(script), ".lua")
			if name == "lib" || name == "run" {
				continue
			}
			n++
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				run(t, script)
			})
		}
	})
	if n < 7 {
		t.Fatalf("found %d scripts in %s, want at least 7", n, scriptDir)
	}
	// After all of it the daemon must still judge a message correctly.
	t.Run("still-serving", func(t *testing.T) { run(t, filepath.Join(scriptDir, "aligned.lua")) })
}

// Milter commands and options of the raw sequences (Sendmail's
// libmilter/mfdef.h, the protocol go-milter implements).
const (
	smfiVersion = 6
	smfifAll    = 0x1ff // every modification action
)

// milterPacket frames one command: a 4-byte big-endian length of command
// and data, the command byte, the data.
func milterPacket(cmd byte, data []byte) []byte {
	p := make([]byte, 5, 5+len(data))
	binary.BigEndian.PutUint32(p, uint32(1+len(data)))
	p[4] = cmd
	return append(p, data...)
}

func optneg() []byte {
	d := make([]byte, 12)
	binary.BigEndian.PutUint32(d[0:], smfiVersion)
	binary.BigEndian.PutUint32(d[4:], smfifAll)
	binary.BigEndian.PutUint32(d[8:], 0)
	return milterPacket('O', d)
}

// connectInfo is SMFIC_CONNECT: host NUL, family '4', port, address NUL.
func connectInfo(host, ip string) []byte {
	d := append([]byte(host), 0, '4', 0x30, 0x39)
	d = append(d, ip...)
	return milterPacket('C', append(d, 0))
}

// rawMilterAbuse sends, each on its own connection, command sequences that
// break the protocol, reads whatever comes back until the daemon closes
// the connection or goes quiet, and then checks that the daemon still
// negotiates. A crash, a hang that blocks new sessions, or a packet-sized
// allocation all show up here or in the scripts that run afterwards.
func rawMilterAbuse(t *testing.T, addr string) {
	huge := make([]byte, 5)
	binary.BigEndian.PutUint32(huge, 1<<31) // far above the 1 MiB packet limit
	huge[4] = 'B'
	truncated := milterPacket('B', bytes.Repeat([]byte("x"), 100))[:40]
	sequences := []struct {
		name string
		pkts [][]byte
	}{
		{"body before mail", [][]byte{optneg(), connectInfo("mx.attacker.example.org", "192.0.2.211"),
			milterPacket('B', []byte("body before MAIL\r\n")), milterPacket('E', nil)}},
		{"end of message first", [][]byte{milterPacket('E', nil)}},
		{"header before negotiation", [][]byte{milterPacket('L', []byte("From\x00 ceo@e2e-reject.test\x00"))}},
		{"header without NUL", [][]byte{optneg(), connectInfo("h", "192.0.2.211"),
			milterPacket('M', []byte("<a@attacker.example.org>\x00")), milterPacket('L', []byte("From: no terminators"))}},
		{"truncated packet", [][]byte{optneg(), truncated}},
		{"zero length", [][]byte{optneg(), {0, 0, 0, 0}}},
		{"2 GiB length", [][]byte{optneg(), huge}},
		{"unknown command", [][]byte{optneg(), milterPacket('Z', []byte("zzz"))}},
		{"connect without data", [][]byte{optneg(), milterPacket('C', nil), milterPacket('M', nil)}},
	}
	for _, sq := range sequences {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("%s: dial: %v", sq.name, err)
		}
		for _, p := range sq.pkts {
			if _, err := c.Write(p); err != nil {
				break // the daemon may hang up early; that is an answer
			}
		}
		_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		got, _ := io.ReadAll(c) // until close, or the deadline: either is fine
		c.Close()
		t.Logf("%s: daemon answered %d bytes", sq.name, len(got))
	}

	// A clean negotiation still works, and gets an SMFIC_OPTNEG answer.
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("daemon gone after the raw sequences: %v", err)
	}
	defer c.Close()
	if _, err := c.Write(optneg()); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(c, hdr); err != nil {
		t.Fatalf("no answer to option negotiation after the raw sequences: %v", err)
	}
	if hdr[4] != 'O' {
		t.Fatalf("answer to option negotiation is command %q, want 'O'", hdr[4])
	}
}
