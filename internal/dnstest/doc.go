// Package dnstest is an in-process authoritative DNS server for tests, built
// on miekg/dns. It serves the zone format of the acceptance cases
// (/work/shared/cases/README.md, "Building the zone"), so unit tests, the
// end-to-end milter test, the acceptance runner and the Postfix test (through
// cmd/dnstestd) all see one and the same DNS behaviour.
//
// What it does:
//
//   - Names are case-insensitive and every byte other than the dot is a
//     literal label byte, so names such as "a(b;c.test" work; miekg/dns
//     presents such bytes escaped ("a\(b\;c.test.") and the zone keys use
//     that same presentation.
//   - Records with one name and type form an RRset served in the order the
//     records were added. Each call to Zone.Add is one unit (one case): an
//     RRset that already exists may be declared again only with exactly the
//     same records, and data may not share a name with a behavior covering
//     its type.
//   - Answers are authoritative (AA and RA set). A name with no records of
//     the type asked, but with other records or anything below it, gets
//     NODATA; any other name gets NXDOMAIN; both carry an SOA in the
//     authority section (RFC 2308 §3) so negative caching can be tested. The
//     SOA is the closest enclosing SOA record of the zone, if any, otherwise
//     a synthetic one at the top-level label with TTL and MINIMUM 30.
//   - CNAMEs are followed inside the zone (RFC 1034 §4.3.2), at most 16 hops;
//     a loop or a longer chain is SERVFAIL.
//   - Behaviors: servfail and refused answer with that rcode, nxdomain
//     answers NXDOMAIN with an SOA, timeout never answers (UDP or TCP).
//   - EDNS0 (RFC 6891 §6.2.5): over UDP a reply larger than the client's
//     advertised buffer (512 bytes without EDNS0, RFC 1035 §4.2.1) is
//     truncated with TC set; TCP always gets the whole answer.
//
// It does not do DNSSEC, zone transfers, wildcards or delegations: the
// cases need none of them.
package dnstest
