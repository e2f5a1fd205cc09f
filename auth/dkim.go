package auth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/dmarc-milter/dmarc-milter/internal/domain"
)

// DKIM results, spelled as in RFC 8601 §2.7.1.
const (
	DKIMPass      = "pass"      // the signature verified
	DKIMFail      = "fail"      // it did not verify (body or header hash)
	DKIMNeutral   = "neutral"   // it could not be processed
	DKIMPolicy    = "policy"    // it verified or might have, but local policy refuses it
	DKIMTempError = "temperror" // the key could not be fetched for now
	DKIMPermError = "permerror" // the signature or key is unusable (RFC 6376 §6.1.2, RFC 8301)
)

// Bounds on what one message may make the verifier do.
const (
	// DefaultMaxDKIMSignatures is how many signatures are verified when
	// NewDKIMVerifier gets maxSigs <= 0 (RFC 6376 §6.1 lets verifiers
	// limit the number of signatures they verify).
	DefaultMaxDKIMSignatures = 5
	// MaxDKIMHeaderBytes bounds the header block fed to the verifier. The
	// library reads header lines without any limit of its own.
	MaxDKIMHeaderBytes = 1 << 20
	// maxSignatureBytes bounds one DKIM-Signature field.
	maxSignatureBytes = 64 << 10
	// maxSignedFields bounds the names in h=. Real signers list a few
	// dozen, over-signing included; go-msgauth looks each name up by
	// scanning the whole header, so thousands of names over thousands of
	// fields would cost seconds of CPU for one signature.
	maxSignedFields = 200
)

// skippedSigName replaces "DKIM-Signature" (as long) in the library's copy
// of the header for signatures past the bound.
const skippedSigName = "X-DKIM-Skipped"

// ErrDKIMLimit explains the "policy" result of a signature that was not
// verified because of one of the bounds above.
var ErrDKIMLimit = errors.New("auth: DKIM verification limit reached")

// DKIMResult is the outcome for one DKIM-Signature field.
type DKIMResult struct {
	Result    string // pass fail neutral policy temperror permerror
	Domain    string // d= (normalised); "" if unusable
	Selector  string // s=
	Algorithm string // a=
	Identity  string // i=
	BPrefix   string // enough of b= to tell the signatures apart, 8 characters at least (RFC 6008 header.b)
	Reason    string // short, for the A-R reason and the log
	Err       error
}

// LookupTXTFunc returns the TXT records at name, one string per record
// with its character-strings joined. Errors follow LIBRARIES.md: NXDOMAIN
// as *net.DNSError{IsNotFound: true}, temporary failures as
// *net.DNSError{IsTemporary: true}. It must return once ctx is done.
type LookupTXTFunc func(ctx context.Context, name string) ([]string, error)

// DKIMVerifier verifies the DKIM signatures of one message while its body
// streams in, through an io.Pipe into go-msgauth's verifier, and, for
// signatures with l= (which go-msgauth refuses), through our own streamed
// canonicalization (dkim_length.go); the body is never held in memory.
// The same pass validates the ARC chain (arc.go, see ARC), which is DKIM's
// machinery over other fields. Key lookups start at EndHeaders. Call
// AddHeader for each field in order, PreferDomains, EndHeaders, Write for
// each body chunk, then Finish; Abort releases
// everything at any point. Abort may be called from another goroutine;
// the other methods are for the one goroutine that feeds the message.
type DKIMVerifier struct {
	ctx     context.Context
	cancel  context.CancelFunc
	lookup  LookupTXTFunc
	maxSigs int

	header    bytes.Buffer
	fields    []headerField // every field, top to bottom, in header
	tooLarge  bool
	sigs      []sigTags
	own       []*lengthSig // the signatures with l= we verify ourselves
	headersOK bool         // EndHeaders ran

	prefer []string // Author Domains, whose signatures are verified first

	arcFields []arcField // ARC fields, top to bottom (arc.go)
	arcKinds  []byte
	arc       *arcCheck
	arcRes    *ARCResult

	mu       sync.Mutex
	pw       *io.PipeWriter
	closed   bool          // Finish or Abort ran
	verified chan struct{} // closed when the library has returned
	done     chan struct{} // closed when the goroutine has ended
	verifs   []*dkim.Verification
	verr     error
	results  []DKIMResult
}

// sigTags is our own reading of one DKIM-Signature field (RFC 6376 §3.5):
// the library's Verification lacks s=, a= and b=.
type sigTags struct {
	res     DKIMResult
	field   int    // index into DKIMVerifier.fields
	lib     int    // index among the signatures the library sees; -1: not verified
	b       string // b= without FWS, bounded
	hasL    bool
	neuter  bool // too costly to hand to the library as it is
	invalid error
	own     *lengthSig // verified by our code (l=), not by the library
	ownErr  *sigError  // why the l= signature cannot be verified at all
}

// NewDKIMVerifier returns a verifier for one message. ctx bounds key
// lookups and Finish; maxSigs <= 0 means DefaultMaxDKIMSignatures.
func NewDKIMVerifier(ctx context.Context, lookup LookupTXTFunc, maxSigs int) *DKIMVerifier {
	if maxSigs <= 0 {
		maxSigs = DefaultMaxDKIMSignatures
	}
	c, cancel := context.WithCancel(ctx)
	return &DKIMVerifier{ctx: c, cancel: cancel, lookup: lookup, maxSigs: maxSigs}
}

// Signatures returns the number of DKIM-Signature fields seen so far.
func (v *DKIMVerifier) Signatures() int { return len(v.sigs) }

// AddHeader records one header field, in message order, as go-milter
// delivers it with OptHeaderLeadingSpace: the value keeps the space after
// the colon and folded lines end in LF only. The verifier gets
// "name:value" with CRLF line ends, which simple canonicalisation needs
// byte for byte (RFC 6376 §3.4.1).
func (v *DKIMVerifier) AddHeader(name, value string) {
	if v.headersOK || v.tooLarge {
		return
	}
	if !validFieldName(name) {
		// Not a field RFC 5322 §3.6.8 allows; it could otherwise shift the
		// library's own count of DKIM-Signature fields against ours.
		return
	}
	field := name + ":" + crlfValue(value) + "\r\n"
	if v.header.Len()+len(field) > MaxDKIMHeaderBytes {
		v.tooLarge = true
		return
	}
	var st sigTags
	isSig := strings.EqualFold(name, "DKIM-Signature")
	if isSig {
		st = parseSigTags(value)
		if st.neuter {
			// The library verifies every signature up to the bound, whatever
			// we think of it. This one is already a permerror for us; a
			// v= it rejects before any lookup or hashing keeps it cheap and
			// keeps the library's count of signatures equal to ours. A
			// signature whose h= covers this field sees it changed, and
			// fails: it signed a hostile field.
			field = name + ": v=0\r\n"
		}
	}
	start := v.header.Len()
	v.header.WriteString(field)
	v.fields = append(v.fields, headerField{name: name, start: start, end: v.header.Len() - 2})
	if isSig {
		st.field = len(v.fields) - 1
		v.sigs = append(v.sigs, st)
	}
	// One more than a valid chain can have is enough to fail it.
	if k := arcKind(name); k != 0 && len(v.arcFields) <= 3*MaxARCSets {
		f := v.fields[len(v.fields)-1]
		v.arcFields = append(v.arcFields, arcField{field: len(v.fields) - 1, name: name, value: string(v.header.Bytes()[f.start+len(name)+1 : f.end])})
		v.arcKinds = append(v.arcKinds, k)
	}
}

// validFieldName reports RFC 5322 §3.6.8 field-name: printable ASCII
// except ":".
func validFieldName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f || s[i] == ':' {
			return false
		}
	}
	return true
}

// crlfValue turns LF line ends into CRLF. A line break not followed by
// WSP would start a new field (or, empty, end the header) inside the
// verifier's stream, so one space is inserted: such a value is malformed
// anyway and can only fail to verify.
func crlfValue(s string) string {
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	s = strings.ReplaceAll(s, "\r\n", "\n")
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\n' {
			b.WriteByte(s[i])
			continue
		}
		b.WriteString("\r\n")
		if i+1 >= len(s) || (s[i+1] != ' ' && s[i+1] != '\t') {
			b.WriteByte(' ')
		}
	}
	return b.String()
}

// parseSigTags reads the tag-list of a DKIM-Signature (RFC 6376 §3.2)
// for the fields of its result and the checks every signature needs.
func parseSigTags(value string) sigTags {
	st := sigTags{lib: -1} // choose numbers the verified ones
	if len(value) > maxSignatureBytes {
		st.invalid, st.neuter = errors.New("signature field too large"), true
		return st
	}
	list, err := parseTagList(value)
	if err != nil {
		st.invalid = fmt.Errorf("malformed tag-list: %w", err)
	}
	tags := tagMap(list)
	st.res.Selector = stripFWS(tags["s"])
	st.res.Algorithm = stripFWS(tags["a"])
	st.res.Identity = stripFWS(tags["i"])
	st.b = truncate(stripFWS(tags["b"]), 1024)
	if d, err := domain.Normalize(stripFWS(tags["d"])); err == nil {
		st.res.Domain = d
	}
	_, st.hasL = tags["l"]
	if n := len(colonList(tags["h"])); n > maxSignedFields {
		st.neuter = true // even when malformed for us: the library is laxer
		if st.invalid == nil {
			st.invalid = fmt.Errorf("h= names %d fields, more than %d", n, maxSignedFields)
		}
	}
	if st.invalid == nil {
		for _, req := range []string{"v", "a", "b", "bh", "d", "h", "s"} {
			if _, ok := tags[req]; !ok {
				st.invalid = fmt.Errorf("missing required tag %s=", req) // RFC 6376 §3.5
				break
			}
		}
	}
	if st.invalid == nil && st.res.Domain == "" {
		st.invalid = errors.New("unusable d= domain")
	}
	return st
}

func stripFWS(s string) string {
	return strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, s)
}

// PreferDomains names the Author Domains before EndHeaders. When a
// message has more signatures than the bound, the ones that can align for
// DMARC are verified first: d= equal to an Author Domain, then a parent or
// subdomain of one; then the others. Within each rank the bottom-most go
// first: forwarders and lists add their signatures on top, and a bound by
// position from the top would leave the author's own signature unverified
// and the message failing DMARC.
func (v *DKIMVerifier) PreferDomains(doms []string) { v.prefer = doms }

// rank orders a signature for choose: 0 d= is an Author Domain, 1 d= is a
// parent (not a TLD) or subdomain of one, 2 any other usable signature,
// 3 an unusable one.
func (v *DKIMVerifier) rank(st *sigTags) int {
	if st.invalid != nil {
		return 3
	}
	d := st.res.Domain
	best := 2
	for _, a := range v.prefer {
		switch {
		case d == a:
			return 0
		case strings.Contains(d, ".") && (strings.HasSuffix(a, "."+d) || strings.HasSuffix(d, "."+a)):
			best = 1
		}
	}
	return best
}

// choose picks the signatures to verify within the bound (RFC 6376 §6.1
// lets a verifier limit them) and numbers them as the library will see
// them, in header order; it returns whether any was left out.
func (v *DKIMVerifier) choose() bool {
	n := len(v.sigs)
	chosen := make([]bool, n)
	ranks := make([]int, n)
	for i := range v.sigs {
		ranks[i] = v.rank(&v.sigs[i])
	}
	k := 0
	for r := 0; r < 4 && k < v.maxSigs; r++ {
		for i := n - 1; i >= 0 && k < v.maxSigs; i-- {
			if !chosen[i] && ranks[i] == r {
				chosen[i] = true
				k++
			}
		}
	}
	lib := 0
	for i := range v.sigs {
		v.sigs[i].lib = -1
		if chosen[i] {
			v.sigs[i].lib = lib
			lib++
		}
	}
	return lib < n
}

// EndHeaders marks the end of the header. Only when a DKIM-Signature was
// seen does it start the verifier goroutine; the header block goes to it
// without passing through the pipe, so EndHeaders never blocks.
func (v *DKIMVerifier) EndHeaders() {
	if v.headersOK {
		return
	}
	v.headersOK = true
	switch {
	case v.tooLarge && len(v.arcFields) > 0:
		v.arcRes = &ARCResult{Result: ARCFail, Reason: "header too large to verify"}
	case len(v.arcFields) > 0:
		v.arc = newARCCheck(v.ctx, v.arcFields, v.arcKinds, v.lookupTXT)
	}
	if len(v.sigs) == 0 || v.tooLarge {
		return
	}
	skipped := v.choose()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return
	}
	pr, pw := io.Pipe()
	v.pw = pw
	v.verified = make(chan struct{})
	v.done = make(chan struct{})
	v.header.WriteString("\r\n")
	hdr := v.header.Bytes()
	if skipped {
		// The library verifies the first signatures it finds: it must
		// see only the chosen ones. The others are renamed in its copy of
		// the header, name for name of the same length, so every offset
		// stays; a chosen signature whose h= covered one of them fails.
		hdr = bytes.Clone(hdr)
		for _, st := range v.sigs {
			if f := v.fields[st.field]; st.lib < 0 && len(f.name) == len(skippedSigName) {
				copy(hdr[f.start:], skippedSigName)
			}
		}
	}
	in := io.MultiReader(bytes.NewReader(hdr), pr)
	opts := &dkim.VerifyOptions{LookupTXT: v.lookupTXT, MaxVerifications: v.maxSigs}
	go v.run(in, pr, opts)
	v.startOwn()
}

// startOwn prepares our own verification of the signatures with l= within
// the bound, and starts their key lookups now, so that DNS overlaps with
// the body. go-msgauth still sees them (its result is ignored): dropping
// their fields from its stream would break any signature over them.
func (v *DKIMVerifier) startOwn() {
	buf := v.header.Bytes()
	for i := range v.sigs {
		st := &v.sigs[i]
		if !st.hasL || st.invalid != nil || st.lib < 0 {
			continue
		}
		f := v.fields[st.field]
		// The field name as sent: simple canonicalization hashes it as is.
		ls, err := parseSignature(st.field, f.name, string(buf[f.start+len(f.name)+1:f.end]), false)
		if err != nil {
			st.ownErr = err.(*sigError)
			continue
		}
		ls.keyDone = make(chan struct{})
		st.own = ls
		v.own = append(v.own, ls)
		go ls.fetchKey(v.ctx, v.lookupTXT)
	}
}

func (v *DKIMVerifier) run(in io.Reader, pr *io.PipeReader, opts *dkim.VerifyOptions) {
	defer close(v.done)
	verifs, err := dkim.VerifyWithOptions(in, opts)
	v.verifs, v.verr = verifs, err
	close(v.verified)
	// The library may stop reading early (no key, DNS error); drain so
	// that the writer never blocks (LIBRARIES.md, go-msgauth dkim).
	_, _ = io.Copy(io.Discard, pr)
}

// lookupTXT binds the message context into the library's context-free
// lookup and gives it errors it can classify (*net.DNSError, unwrapped).
func (v *DKIMVerifier) lookupTXT(name string) ([]string, error) {
	if err := v.ctx.Err(); err != nil {
		return nil, &net.DNSError{Err: err.Error(), Name: name, IsTimeout: true, IsTemporary: true}
	}
	txt, err := v.lookup(v.ctx, name)
	return txt, dnsError(v.ctx, name, err)
}

// Write feeds one body chunk (CRLF line ends, as the MTA sends them). It
// blocks at most while the verifier waits for a key, which ctx bounds;
// once the verifier is done, or without signatures, it discards.
func (v *DKIMVerifier) Write(chunk []byte) (int, error) {
	if !v.headersOK {
		v.EndHeaders()
	}
	if v.arc != nil && v.arc.ams != nil {
		_, _ = v.arc.ams.body.Write(chunk)
	}
	v.mu.Lock()
	pw, closed, verified := v.pw, v.closed, v.verified
	v.mu.Unlock()
	if pw == nil || closed {
		return len(chunk), nil
	}
	for _, ls := range v.own {
		_, _ = ls.body.Write(chunk)
	}
	select {
	case <-verified:
		return len(chunk), nil
	default:
	}
	// An error means Abort closed the pipe meanwhile: nothing to feed.
	_, _ = pw.Write(chunk)
	return len(chunk), nil
}

// Finish ends the body, waits for the verifier (bounded by ctx) and
// returns one result per DKIM-Signature field in header order, top to
// bottom. Further calls return the same results.
func (v *DKIMVerifier) Finish() []DKIMResult {
	if !v.headersOK {
		v.EndHeaders()
	}
	if v.arc != nil && v.arcRes == nil {
		r := v.arc.finish(v.ctx, v.header.Bytes(), v.fields)
		v.arcRes = &r
	}
	v.mu.Lock()
	if v.results != nil || (len(v.sigs) == 0 && !v.tooLarge) {
		res := append([]DKIMResult(nil), v.results...)
		v.mu.Unlock()
		return res
	}
	aborted := v.closed
	v.closed = true
	pw := v.pw
	v.mu.Unlock()

	var waitErr error
	switch {
	case v.tooLarge:
		waitErr = fmt.Errorf("%w: header larger than %d bytes", ErrDKIMLimit, MaxDKIMHeaderBytes)
	case pw == nil || aborted:
		waitErr = errors.New("verification aborted")
	default:
		_ = pw.Close()
		// A verification already done wins over a deadline passed
		// meanwhile: select picks at random among ready cases.
		select {
		case <-v.done:
		default:
			select {
			case <-v.done:
			case <-v.ctx.Done():
				// The pipe is already closed; cancelling the context (below)
				// releases a key lookup still in flight.
				waitErr = fmt.Errorf("verification unfinished: %w", v.ctx.Err())
			}
		}
	}
	results := v.mapResults(waitErr)
	v.cancel()
	v.mu.Lock()
	v.results = results
	v.mu.Unlock()
	return append([]DKIMResult(nil), results...)
}

// mapResults turns the library's verifications into our results, matched
// by index (the library reports signatures top to bottom).
func (v *DKIMVerifier) mapResults(waitErr error) []DKIMResult {
	out := make([]DKIMResult, len(v.sigs))
	var verifs []*dkim.Verification
	verr := waitErr
	if waitErr == nil {
		verifs = v.verifs
		if v.verr != nil && !errors.Is(v.verr, dkim.ErrTooManySignatures) {
			// Any other error is not about a signature: the stream broke.
			// The library also clears that verification's Err, which would
			// otherwise read as a pass.
			verr, verifs = v.verr, nil
		}
	}
	for i, st := range v.sigs {
		r := st.res
		switch {
		case st.invalid != nil:
			r.Result, r.Err = DKIMPermError, st.invalid // RFC 6376 §6.1.1
		case v.tooLarge:
			r.Result, r.Err = DKIMPolicy, verr
		case st.lib < 0:
			// RFC 8601 §2.7.1 "policy": signed, but local policy (our bound
			// on work per message, RFC 6376 §6.1) declined to verify it.
			r.Result, r.Err = DKIMPolicy, fmt.Errorf("%w: more than %d signatures", ErrDKIMLimit, v.maxSigs)
		case st.ownErr != nil:
			r.Result, r.Err = st.ownErr.result, st.ownErr.err
		case st.own != nil:
			r.Result, r.Err = v.finishOwn(st.own, waitErr)
		case verifs == nil || st.lib >= len(verifs) || verifs[st.lib] == nil:
			if verr == nil {
				verr = errors.New("no verification result")
			}
			r.Result, r.Err = DKIMTempError, verr
		default:
			r.Err = verifs[st.lib].Err
			switch e := verifs[st.lib].Err; {
			case e == nil:
				r.Result = DKIMPass
			case dkim.IsPermFail(e):
				r.Result = DKIMPermError // includes rsa-sha1 and short keys (RFC 8301 §3.1, §3.2)
			case dkim.IsTempFail(e):
				r.Result = DKIMTempError
			default:
				r.Result = DKIMFail
			}
		}
		if r.Err != nil {
			r.Reason = strings.TrimPrefix(r.Err.Error(), "dkim: ")
			if len(r.Reason) > 120 {
				r.Reason = r.Reason[:120]
			}
		}
		out[i] = r
	}
	setBPrefixes(out, v.sigs)
	return out
}

// setBPrefixes gives each result the shortest prefix of its b=, at least
// 8 characters, that tells the message's signatures apart (RFC 6008 §4:
// header.b carries enough of b= for that; two signatures may well share
// their first characters).
func setBPrefixes(out []DKIMResult, sigs []sigTags) {
	n := 8
	// Past a few dozen signatures (a hostile header) the search for a
	// longer prefix would cost a map per step; 8 characters it is.
	for n < 1024 && len(sigs) <= 64 {
		seen := make(map[string]string, len(sigs))
		clash := false
		for _, st := range sigs {
			p := st.b[:min(n, len(st.b))]
			if other, ok := seen[p]; ok && other != st.b {
				clash = true
				break
			}
			seen[p] = st.b
		}
		if !clash {
			break
		}
		n += 4
	}
	for i, st := range sigs {
		out[i].BPrefix = st.b[:min(n, len(st.b))]
	}
}

// finishOwn ends the body of a signature with l= and verifies it, once
// its key is in; the wait is bounded by ctx.
func (v *DKIMVerifier) finishOwn(ls *lengthSig, waitErr error) (string, error) {
	if waitErr != nil {
		return DKIMTempError, waitErr
	}
	select {
	case <-ls.keyDone:
	default:
		select {
		case <-ls.keyDone:
		case <-v.ctx.Done():
			return DKIMTempError, fmt.Errorf("key lookup unfinished: %w", v.ctx.Err())
		}
	}
	return ls.verify(v.header.Bytes(), v.fields)
}

// ARC returns the validation of the message's ARC chain (RFC 8617 §5.2),
// decided by Finish: ARCNone without ARC fields.
func (v *DKIMVerifier) ARC() ARCResult {
	if v.arcRes == nil {
		return ARCResult{Result: ARCNone}
	}
	return *v.arcRes
}

// Abort releases the verifier goroutine and its pipe. It is safe at any
// time, more than once, and after Finish.
func (v *DKIMVerifier) Abort() {
	v.cancel()
	v.mu.Lock()
	v.closed = true
	pw := v.pw
	v.mu.Unlock()
	if pw != nil {
		// A plain EOF, never CloseWithError: on a read error the library's
		// parallelVerify returns without closing its per-signature pipes,
		// leaking one goroutine per signature. A truncated body only makes
		// the verifications fail, and Finish ignores them after Abort.
		_ = pw.Close()
	}
}
