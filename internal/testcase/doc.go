// Package testcase reads the acceptance cases of /work/shared/cases (the
// published sample of the acceptance suite) and does everything a driver
// needs except talking to the milter: it loads and validates the JSON
// strictly, builds the one DNS zone a run serves, builds and DKIM-signs each
// message with its own RFC 6376 signer, splits a built message into the
// header fields and body a milter client feeds, and judges what the driver
// observed against the case's expectations in either spec mode.
//
// The signer is test code, but a real one: it is checked against
// go-msgauth's verifier for every algorithm and canonicalization and
// against the RFC 8463 Appendix A example.
package testcase
