// Package policy is DMARC without the mail: record parsing, policy
// discovery, Organizational Domains, Identifier Alignment, the decision
// and the t/pct sampling. It knows nothing of milters or SMTP; the caller
// supplies the Author Domain and the SPF and DKIM results, and a Resolver.
//
// It follows RFC 9989 (DMARC, May 2026) by default and RFC 7489 when
// Options.Spec is SpecRFC7489:
//
//   - ParseRecord reads a DMARC Policy Record (RFC 9989 §4.7, §4.8):
//     "v=DMARC1" first with a case-sensitive value, tag names in any case,
//     unknown tags ignored, bad optional values replaced by defaults and
//     listed in Record.Warnings, a missing p read as none, an invalid p
//     (or sp, np) read as p=none only when rua holds a valid URI.
//   - Evaluator.Discover finds the record for an Author Domain: the DNS
//     Tree Walk of RFC 9989 §4.10 (at most 8 queries, psd honoured, the
//     record with the fewest labels otherwise) or, for RFC 7489, the
//     Author Domain and then its Organizational Domain from a public
//     suffix list (RFC 7489 §6.6.3). It is separate from the decision so
//     that the milter can start it when the From field arrives.
//   - Evaluator.Evaluate decides: strict alignment compares names, relaxed
//     alignment compares Organizational Domains (more tree walks, cached by
//     the Resolver); p applies to the Author Domain, sp to its existing
//     subdomains, np to non-existent ones (RFC 9989 §4.10.1); t=y and pct
//     then select the disposition.
//
// Every outcome is an Evaluation with a result spelled as in
// Authentication-Results and a trace of reasons; errors wrap the sentinels
// ErrNotDMARC, ErrSyntax, ErrMultipleRecords, ErrDNS and ErrNoAuthorDomain.
// A DNS failure yields temperror and never a policy to apply.
//
// # Divergences
//
// Where the RFCs leave room or this package chooses differently:
//
//   - pct (RFC 7489 §6.3) is honoured in both modes although RFC 9989
//     removed it: many published records still carry it. t=y overrides it.
//     A message not selected gets the next weaker policy, with an Override
//     of type sampled_out; t=y is reported as policy_test_mode (RFC 9990).
//   - RFC 7489 wants p right after v; a p elsewhere is accepted in both
//     modes, as RFC 9989 allows.
//   - Leading white space before "v=DMARC1" is tolerated.
//   - A duplicated tag keeps its first value (RFC 6376 §3.2 would discard
//     the record).
//   - A temporary DNS failure anywhere in a tree walk that decides the
//     policy makes the result temperror, even where a later answer might
//     have made it irrelevant; so does one that blocks a relaxed alignment
//     check or the existence check that chooses between sp and np, when
//     the result depends on it. An aligned SPF or DKIM temperror without
//     any aligned pass is temperror too (RFC 9989 §5.3.6).
//   - A syntactically unusable record at the Author Domain gives
//     permerror; one met higher up in the tree walk counts as no record.
//     Several records at the Author Domain end discovery in RFC 7489 mode
//     (result none) and are skipped by the walk in RFC 9989 mode.
//   - rua and ruf keep at most 64 URIs each; warnings and traces are
//     capped too. Records longer than 64 KiB are unusable (ErrSyntax).
package policy
