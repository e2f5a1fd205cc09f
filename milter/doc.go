// Package milter is the milter side of dmarc-milter: one session per MTA
// connection, fed by github.com/emersion/go-milter, which gathers the SMTP
// envelope and the message, starts SPF at MAIL FROM and the DMARC record
// lookups as soon as the From field is parsed (so DNS overlaps with the
// transfer), streams the body into the DKIM verifier, and at end of message
// asks package policy for the decision and tells the MTA what to do.
//
// go-milter v0.5.0 has gaps this package works around (see
// shared/LIBRARIES.md): a final response discards the session, so nothing
// after connect answers with one (rejects are custom 5xx replies, which it
// counts as "continue"); macros are kept per packet only; connections have
// no deadlines; Close races Serve. Server wraps the listener to add
// deadlines, track sessions and stop gracefully.
//
// A panic or error in one session gives that message the configured
// fail-safe answer (accept by default, never a reject); the daemon keeps
// serving everyone else.
package milter
