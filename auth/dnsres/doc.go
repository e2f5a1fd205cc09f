// Package dnsres is the DNS stub resolver every check uses (SPF, DKIM,
// DMARC discovery). It talks to the configured recursive resolvers with
// miekg/dns, caches answers for all sessions, and collapses concurrent
// identical queries.
//
// Why not net.Resolver: it cannot tell NXDOMAIN from NODATA, which RFC 9989
// np needs (RFC 9989 §4.10), and it exposes no TTLs to cache by.
//
// Errors are shaped for the libraries that consume them (LIBRARIES.md, "DNS
// errors"): blitiri.com.ar/go/spf and go-msgauth classify by a type
// assertion on *net.DNSError, so errors are never wrapped:
//
//   - NXDOMAIN: &net.DNSError{IsNotFound: true, Err: "no such host"}
//   - NODATA: an empty answer and a nil error
//   - SERVFAIL, REFUSED, other rcodes, network errors, timeouts and the
//     caller's deadline: &net.DNSError{IsTemporary: true, IsTimeout: ...}
//   - a name that cannot be queried (empty label, over 253 bytes): treated
//     as not found, IsNotFound with Err "invalid domain name".
//
// Transport: UDP with EDNS0 and a 1232-byte buffer (RFC 6891), RD set; a
// truncated reply is repeated over TCP (RFC 7766 §5). Each server is tried
// in turn, Attempts rounds at most, each exchange bounded by Timeout.
//
// Cache: keyed by lower-case name and type; positive entries live for the
// smallest TTL of the records used (capped by MaxTTL, at least one second),
// negative ones (NXDOMAIN, NODATA) for min(SOA TTL, SOA MINIMUM) (RFC 2308
// §5) and are not cached without an SOA; temporary failures live for
// ServfailTTL (RFC 2308 §7.1, RFC 9520 §3.2). When full, the oldest entry is
// evicted. A caller whose context ends stops waiting, but the shared query
// goes on for the others and fills the cache.
//
// Names are raw bytes, as net.Resolver takes them: no IDNA conversion
// (callers normalise with internal/domain) and every byte except the dot is
// a label byte.
package dnsres
