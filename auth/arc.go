package auth

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/domain"
)

// ARC (RFC 8617) is checked by our own code: go-msgauth has none
// (LIBRARIES.md). It reuses the machinery of the l= path: the tag-list
// parser, the streamed body canonicalization, key records and the header
// hash, since an ARC-Message-Signature is a DKIM signature under another
// name and an ARC-Seal a signature over the ARC fields alone.

// ARC results (RFC 8617 §4.4, the cv values; RFC 8601 method "arc").
const (
	ARCNone = "none" // no ARC sets in the message
	ARCPass = "pass" // every set present and every seal verified
	ARCFail = "fail" // the chain is broken, malformed or unverifiable
)

// MaxARCSets is the highest instance RFC 8617 §4.2.1 allows.
const MaxARCSets = 50

// ARCResult is the validation of a message's ARC chain (RFC 8617 §5.2).
// The fields after Reason describe the latest set (instance N), the one
// added by the hop that handed us the message; they are set only on a
// pass, when the chain vouches for them.
type ARCResult struct {
	Result     string    // ARCNone, ARCPass or ARCFail
	Reason     string    // why it failed, short
	Instance   int       // N, the highest instance
	SealDomain string    // d= of ARC-Seal i=N, normalised
	AuthServID string    // authserv-id of ARC-Authentication-Results i=N
	AAR        string    // that field's value after "i=N;": the results
	SealTime   time.Time // t= of ARC-Seal i=N; zero when absent
}

// arcField is one ARC header field: which set it belongs to and where it
// is in the verifier's header buffer.
type arcField struct {
	field    int    // index into DKIMVerifier.fields
	name     string // as sent: simple canonicalization hashes it as is
	instance int
	value    string // the value with CRLF folds
}

// arcSet holds the three fields of one instance.
type arcSet struct {
	aar, ams, seal *arcField
}

// arcCheck is the chain under validation; nil sets with a non-empty
// result means the structure already decided it.
type arcCheck struct {
	result ARCResult
	sets   []arcSet // index i-1 for instance i
	ams    *lengthSig
	seals  []*lengthSig // seal key holders, index i-1
	sealT  []time.Time  // t= of each seal, zero when absent
	lookup func(string) ([]string, error)
	done   bool
}

// maxARCPrefetch is how many distinct keys are looked up at the end of
// the header, before anything is verified: text that merely has the
// shape of a chain costs no more DNS than DKIM's bound. The keys of older
// seals are fetched once the later ones have verified, that is for
// chains a real sealer made.
const maxARCPrefetch = 4

// arcKind tells which ARC field a header name is, or 0.
func arcKind(name string) byte {
	switch {
	case strings.EqualFold(name, "ARC-Seal"):
		return 's'
	case strings.EqualFold(name, "ARC-Message-Signature"):
		return 'm'
	case strings.EqualFold(name, "ARC-Authentication-Results"):
		return 'a'
	}
	return 0
}

// parseInstance reads i= of an ARC field (RFC 8617 §4.2.1: 1 to 50).
func parseInstance(v string) (int, bool) {
	v = stripFWS(v)
	if v == "" || len(v) > 3 {
		return 0, false
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > MaxARCSets || v[0] == '+' {
		return 0, false
	}
	return n, true
}

// aarInstance splits an ARC-Authentication-Results value (RFC 8617
// §4.1.1: "i=" instance ";" then an Authentication-Results value) into
// its instance and the rest.
func aarInstance(value string) (int, string, bool) {
	head, rest, ok := strings.Cut(value, ";")
	if !ok {
		return 0, "", false
	}
	name, v, ok := strings.Cut(head, "=")
	if !ok || stripFWS(name) != "i" {
		return 0, "", false
	}
	n, ok := parseInstance(v)
	return n, rest, ok
}

func arcFail(reason string) ARCResult { return ARCResult{Result: ARCFail, Reason: reason} }

// newARCCheck reads the ARC fields collected from the header (in header
// order) and validates the chain's structure (RFC 8617 §5.2 steps 1-4).
// When the structure holds, it prepares the latest ARC-Message-Signature
// and every ARC-Seal for verification and starts their key lookups.
func newARCCheck(ctx context.Context, fields []arcField, kinds []byte, lookup func(string) ([]string, error)) *arcCheck {
	c := &arcCheck{lookup: lookup}
	if len(fields) > 3*MaxARCSets {
		c.result = arcFail("more ARC fields than 50 sets")
		return c
	}
	var sets [MaxARCSets]arcSet
	n := 0
	for i := range fields {
		f := &fields[i]
		var ok bool
		if kinds[i] == 'a' {
			f.instance, _, ok = aarInstance(f.value)
		} else {
			tags, _ := parseTagList(f.value)
			f.instance, ok = parseInstance(tagMap(tags)["i"])
		}
		if !ok {
			c.result = arcFail("ARC field with a malformed i=")
			return c
		}
		s := &sets[f.instance-1]
		slot := map[byte]**arcField{'a': &s.aar, 'm': &s.ams, 's': &s.seal}[kinds[i]]
		if *slot != nil {
			// §5.2 step 2: exactly one field of each kind per instance.
			c.result = arcFail("two ARC fields of one kind in set " + strconv.Itoa(f.instance))
			return c
		}
		*slot = f
		n = max(n, f.instance)
	}
	c.result.Instance = n
	for i := 0; i < n; i++ {
		if sets[i].aar == nil || sets[i].ams == nil || sets[i].seal == nil {
			c.result = arcFail("ARC set " + strconv.Itoa(i+1) + " incomplete")
			return c
		}
	}
	c.sets = sets[:n:n]
	c.seals = make([]*lengthSig, n)
	c.sealT = make([]time.Time, n)
	for i := n - 1; i >= 0; i-- {
		seal, signed, err := newSealSig(c.sets[i].seal, i+1, n)
		if err != nil {
			c.sets, c.result = nil, arcFail(err.Error())
			return c
		}
		c.seals[i], c.sealT[i] = seal, signed
	}
	// §5.2 step 5: the latest message signature, verified like DKIM.
	ams, err := parseSignature(c.sets[n-1].ams.field, c.sets[n-1].ams.name, c.sets[n-1].ams.value, true)
	if err != nil {
		c.sets, c.result = nil, arcFail("ARC-Message-Signature: "+err.Error())
		return c
	}
	c.ams = ams
	// The seals and the latest message signature often share one key:
	// look each distinct one up once.
	keyName := func(s *lengthSig) string { return s.selector + "._domainkey." + s.domain + "/" + s.keyType }
	c.ams.keyDone = make(chan struct{})
	byKey := map[string]*lengthSig{keyName(c.ams): c.ams}
	go c.ams.fetchKey(ctx, lookup)
	// From the latest seal down, the order finish verifies them in: a
	// seal sharing a key points at one verified before it.
	for i := n - 1; i >= 0; i-- {
		s := c.seals[i]
		k := keyName(s)
		if first, ok := byKey[k]; ok {
			s.keyOf = first
			continue
		}
		byKey[k] = s
		if len(byKey) <= maxARCPrefetch {
			s.keyDone = make(chan struct{})
			go s.fetchKey(ctx, lookup)
		}
	}
	return c
}

// newSealSig checks the tags of ARC-Seal i of n (RFC 8617 §4.1.3) and the
// chain validation status it records (§5.2 steps 3 and 4).
func newSealSig(f *arcField, i, n int) (*lengthSig, time.Time, error) {
	s, err := parseSeal(f, i, n)
	if err != nil {
		return nil, time.Time{}, err
	}
	tags, _ := parseTagList(f.value)
	var signed time.Time
	if v, ok := tagMap(tags)["t"]; ok {
		if signed, err = parseUnixTime(v); err != nil {
			return nil, time.Time{}, fmt.Errorf("ARC-Seal %d: malformed t=", i)
		}
	}
	return s, signed, nil
}

func parseSeal(f *arcField, i, n int) (*lengthSig, error) {
	tags, err := parseTagList(f.value)
	if err != nil {
		return nil, fmt.Errorf("ARC-Seal %d: malformed tag-list", i)
	}
	t := tagMap(tags)
	for _, req := range []string{"a", "b", "cv", "d", "i", "s"} {
		if _, ok := t[req]; !ok {
			return nil, fmt.Errorf("ARC-Seal %d: missing %s=", i, req)
		}
	}
	if _, ok := t["h"]; ok {
		return nil, fmt.Errorf("ARC-Seal %d: h= is not allowed", i) // §4.1.3
	}
	switch cv := strings.ToLower(stripFWS(t["cv"])); {
	case cv == "fail" && i == n:
		return nil, errors.New("the last sealer found the chain failed")
	case i == 1 && cv != "none", i > 1 && cv != "pass":
		return nil, fmt.Errorf("ARC-Seal %d: cv=%s", i, truncate(cv, 10))
	}
	s := &lengthSig{field: f.field, selector: stripFWS(t["s"])}
	switch stripFWS(t["a"]) {
	case "rsa-sha256":
		s.keyType = "rsa"
	case "ed25519-sha256":
		s.keyType = "ed25519" // RFC 8463 §3, as for DKIM
	default:
		return nil, fmt.Errorf("ARC-Seal %d: unsupported algorithm", i)
	}
	if s.domain, err = normalizeSigDomain(t["d"]); err != nil || !validSelector(s.selector) {
		return nil, fmt.Errorf("ARC-Seal %d: unusable d= or s=", i)
	}
	if s.b, err = decodeB64(t["b"]); err != nil || len(s.b) == 0 {
		return nil, fmt.Errorf("ARC-Seal %d: malformed b=", i)
	}
	for _, tg := range tags {
		if tg.name == "b" {
			a, b := bValueSpan(f.value, tg)
			s.sigField = "ARC-Seal:" + f.value[:a] + f.value[b:]
		}
	}
	return s, nil
}

// finish verifies the latest message signature and every seal, once the
// body has ended (RFC 8617 §5.2 steps 5-8). Key waits end with ctx.
func (c *arcCheck) finish(ctx context.Context, buf []byte, fields []headerField) ARCResult {
	if c.done || c.sets == nil {
		c.done = true
		return c.result
	}
	c.done = true
	n := len(c.sets)
	wait := func(s *lengthSig) bool {
		// A key already in wins over a deadline passed meanwhile (select
		// picks at random among ready cases).
		select {
		case <-s.keyDone:
			return true
		default:
		}
		select {
		case <-s.keyDone:
			return true
		case <-ctx.Done():
			return false
		}
	}
	if !wait(c.ams) {
		c.result = arcFail("key lookup unfinished")
		return c.result
	}
	if res, err := c.ams.verify(buf, fields); res != DKIMPass {
		c.result = arcFail(fmt.Sprintf("ARC-Message-Signature %d: %s", n, errText(err, res)))
		return c.result
	}
	digests := c.sealDigests(buf, fields)
	for i := n; i >= 1; i-- {
		s := c.seals[i-1]
		ks := s
		if s.keyOf != nil {
			ks = s.keyOf // verified before s, so its key is in or failed
		}
		if ks.keyDone == nil {
			// Not prefetched: every later seal has verified by now.
			ks.keyDone = make(chan struct{})
			ks.fetchKey(ctx, c.lookup)
		}
		if !wait(ks) {
			c.result = arcFail("key lookup unfinished")
			return c.result
		}
		if err := verifySeal(ks, s.b, digests[i-1]); err != nil {
			c.result = arcFail(fmt.Sprintf("ARC-Seal %d: %v", i, err))
			return c.result
		}
	}
	last := c.sets[n-1]
	c.result = ARCResult{Result: ARCPass, Instance: n, SealDomain: c.seals[n-1].domain, SealTime: c.sealT[n-1]}
	_, c.result.AAR, _ = aarInstance(last.aar.value)
	c.result.AuthServID, _ = AuthServID(c.result.AAR)
	return c.result
}

func errText(err error, res string) string {
	if err != nil {
		return err.Error()
	}
	return res
}

// sealDigests returns, for each seal i, the hash of what it signs: every
// ARC field of sets 1 to i, set by set in the order AAR, AMS, AS, with
// relaxed header canonicalization, the seal itself last with b= empty and
// no CRLF (RFC 8617 §5.1.1). One running hash, cloned at each seal,
// keeps the work linear in the chain's size.
func (c *arcCheck) sealDigests(buf []byte, fields []headerField) [][]byte {
	canon := func(f *arcField) []byte {
		hf := fields[f.field]
		return []byte(canonHeaderField(string(buf[hf.start:hf.end]), true))
	}
	running := sha256.New()
	out := make([][]byte, len(c.sets))
	for j, set := range c.sets {
		running.Write(canon(set.aar))
		running.Write(canon(set.ams))
		snap := cloneHash(running)
		snap.Write([]byte(strings.TrimSuffix(canonHeaderField(c.seals[j].sigField, true), "\r\n")))
		out[j] = snap.Sum(nil)
		running.Write(canon(set.seal))
	}
	return out
}

// cloneHash copies a SHA-256 state (the standard library's implements
// encoding.BinaryMarshaler for exactly this).
func cloneHash(h hash.Hash) hash.Hash {
	st, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		panic(err) // sha256 never fails to marshal
	}
	c := sha256.New()
	if err := c.(encoding.BinaryUnmarshaler).UnmarshalBinary(st); err != nil {
		panic(err)
	}
	return c
}

// verifySeal checks a seal's signature sig over digest with the key that
// ks fetched.
func verifySeal(ks *lengthSig, sig, digest []byte) error {
	if ks.keyRes != "" {
		return ks.keyErr
	}
	switch k := ks.key.(type) {
	case *rsa.PublicKey:
		if rsa.VerifyPKCS1v15(k, crypto.SHA256, digest, sig) != nil {
			return errors.New("signature did not verify")
		}
	case ed25519.PublicKey:
		if !ed25519.Verify(k, digest, sig) {
			return errors.New("signature did not verify")
		}
	default:
		return errors.New("no usable key")
	}
	return nil
}

// ReportsDMARCPass reports whether the latest set's
// ARC-Authentication-Results, which a passing chain vouches for, say
// dmarc=pass for the Author Domain dom (the header.from property; resinfo
// syntax of RFC 8601 §2.2). Only a clean pass counts: a dmarc result for
// dom that is not pass, one without header.from, or one we cannot read
// vetoes it. A sealer may copy Authentication-Results fields it found into
// its AAR, forged ones included, so one pass beside a fail proves nothing.
// Results about another domain are left aside.
func (r ARCResult) ReportsDMARCPass(dom string) bool {
	if r.Result != ARCPass || dom == "" {
		return false
	}
	pass := false
	for _, part := range splitResinfo(r.AAR)[1:] {
		toks := arTokens(part, 64)
		if len(toks) == 0 || !strings.EqualFold(toks[0], "dmarc") {
			continue
		}
		res, from, ok := dmarcResinfo(toks)
		switch {
		case !ok || from == "":
			return false
		case from != dom:
			continue
		case res != "pass":
			return false
		}
		pass = true
	}
	return pass
}

// dmarcResinfo reads toks of one resinfo strictly: method [ "/" version ]
// "=" result, then ptype.property "=" value triples (RFC 8601 §2.2); from
// is the normalised header.from.
func dmarcResinfo(toks []string) (result, from string, ok bool) {
	i := 1
	if i+1 < len(toks) && toks[i] == "/" {
		i += 2
	}
	if i+1 >= len(toks) || toks[i] != "=" || strings.HasPrefix(toks[i+1], `"`) {
		return "", "", false
	}
	result = strings.ToLower(toks[i+1])
	for i += 2; i < len(toks); i += 3 {
		if i+2 >= len(toks) || toks[i+1] != "=" || strings.HasPrefix(toks[i], `"`) || !strings.Contains(toks[i], ".") {
			return "", "", false
		}
		if strings.EqualFold(toks[i], "header.from") {
			d, err := domain.Normalize(strings.TrimPrefix(toks[i+2], `"`))
			if err != nil || from != "" {
				return "", "", false // unusable, or given twice
			}
			from = d
		}
	}
	return result, from, true
}
