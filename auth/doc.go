// Package auth implements the message authentication methods the milter
// runs itself, independent of DMARC policy and of the milter protocol:
//
//   - From field parsing (RFC 5322 §3.4, §3.6.2; RFC 6854; RFC 6532) to find
//     the Author Domains (RFC 9989 §3.2.x, RFC 7489 §6.6.1): ParseAddressList,
//     AuthorDomains.
//   - SPF (RFC 7208) through blitiri.com.ar/go/spf: CheckSPF.
//   - DKIM (RFC 6376, RFC 8301, RFC 8463) through go-msgauth, streamed while
//     the body arrives: DKIMVerifier. Signatures with l= are verified by our
//     own code, since go-msgauth refuses them all.
//   - Authentication-Results (RFC 8601): AuthServID to recognise incoming
//     fields that claim our authserv-id, FormatAR to write ours.
//
// Every function takes hostile input: sizes, nesting and counts are
// bounded, and malformed input yields a result and an error, never a panic.
//
// Divergences and library gaps (see /work/shared/LIBRARIES.md):
//
//   - The From parser returns a mailbox only once the delimiter after it
//     has been seen, refuses obs-domain names with comments between labels,
//     accepts one trailing dot on a domain as the absolute form of the name,
//     and never takes an address out of a display name or encoded word.
//   - go-msgauth's authres parser breaks on comments containing ";" and on
//     fields without authserv-id, and its formatter never folds, so both
//     directions are our own code.
//   - blitiri's SPF library splits the sender at the first "@" and
//     classifies DNS errors by concrete type; CheckSPF passes it a sender
//     whose domain is unambiguous and a resolver adapter that unwraps errors.
//   - go-msgauth's DKIM verifier does not consume its reader after an early
//     return, reports neither selector nor algorithm, and has no context; the
//     DKIMVerifier drains the pipe, parses the tags itself and binds the
//     message context into the key lookup.
//   - go-msgauth fails every DKIM signature with l=. We verify those
//     ourselves (RFC 6376 §3.5, §8.2): l= equal to the canonicalized body is
//     a pass, content after the l= length is "policy" (never a pass), a
//     body shorter than l= is a fail. A bare LF in the body is a line end
//     on both paths, as go-msgauth has it.
//   - go-msgauth selects signed header fields by rescanning the header for
//     each h= name; signatures naming more than 200 fields, or over 64 KB,
//     are permerror and hidden from it (their value replaced by "v=0").
package auth
