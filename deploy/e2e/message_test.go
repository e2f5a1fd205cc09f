package e2e

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/mail"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
)

// repoRoot is the module root as seen from this package's directory, where
// `go test` runs.
const repoRoot = "../.."

// header is one header field in order; duplicates are allowed.
type header struct{ Name, Value string }

// buildMessage writes headers and body with CRLF line ends, adding Date and
// a Message-ID that carries marker so the delivered copy can be found.
func buildMessage(marker string, headers []header, body string) []byte {
	var b bytes.Buffer
	for _, h := range headers {
		fmt.Fprintf(&b, "%s: %s\r\n", h.Name, strings.ReplaceAll(h.Value, "\n", "\r\n"))
	}
	fmt.Fprintf(&b, "Date: %s\r\n", time.Now().Format(time.RFC1123Z))
	fmt.Fprintf(&b, "Message-ID: <%s@e2e.lab.test>\r\n", marker)
	b.WriteString("\r\n")
	b.WriteString(strings.ReplaceAll(body, "\n", "\r\n"))
	return b.Bytes()
}

// loadKey reads a PKCS #8 test key from testdata/keys.
func loadKey(t *testing.T, name string) crypto.Signer {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "testdata", "keys", name+".pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s.pem: no PEM block", name)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatalf("%s.pem: %v", name, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		t.Fatalf("%s.pem: %T is not a crypto.Signer", name, k)
	}
	return s
}

// sign puts a DKIM-Signature (RFC 6376 §5) for domain/selector on top.
func sign(t *testing.T, msg []byte, domain, selector string, key crypto.Signer) []byte {
	t.Helper()
	var out bytes.Buffer
	err := dkim.Sign(&out, bytes.NewReader(msg), &dkim.SignOptions{
		Domain:                 domain,
		Selector:               selector,
		Signer:                 key,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed,
		BodyCanonicalization:   dkim.CanonicalizationRelaxed,
		HeaderKeys:             []string{"From", "To", "Subject", "Date", "Message-ID"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// arResult is what the test reads back from one Authentication-Results
// field of the delivered copy.
type arResult struct {
	AuthservID string
	Raw        string
	Methods    map[string]string // method -> result, e.g. "dmarc" -> "pass"
	HeaderFrom string
}

var (
	arMethodRe = regexp.MustCompile(`(?i)(?:^|[;\s])(spf|dkim|dmarc|arc)\s*=\s*([a-z]+)`)
	arFromRe   = regexp.MustCompile(`(?i)header\.from\s*=\s*([^\s;()]+)`)
)

// parseDelivered splits a delivered message and reads its A-R fields
// (RFC 8601 §2.2: the authserv-id is the first token of the value).
func parseDelivered(t *testing.T, raw []byte) (*mail.Message, []arResult) {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("delivered message does not parse: %v\n%s", err, raw)
	}
	var ars []arResult
	for _, v := range m.Header["Authentication-Results"] {
		id, _, _ := strings.Cut(v, ";")
		fields := strings.Fields(id)
		r := arResult{Raw: v, Methods: map[string]string{}}
		if len(fields) > 0 {
			r.AuthservID = strings.ToLower(fields[0])
		}
		for _, mm := range arMethodRe.FindAllStringSubmatch(v, -1) {
			if _, dup := r.Methods[strings.ToLower(mm[1])]; !dup {
				r.Methods[strings.ToLower(mm[1])] = strings.ToLower(mm[2])
			}
		}
		if fm := arFromRe.FindStringSubmatch(v); fm != nil {
			r.HeaderFrom = strings.ToLower(fm[1])
		}
		ars = append(ars, r)
	}
	return m, ars
}

// ours returns the A-R fields that carry our authserv-id.
func ours(ars []arResult, authservID string) []arResult {
	var out []arResult
	for _, r := range ars {
		if r.AuthservID == authservID {
			out = append(out, r)
		}
	}
	return out
}
