-- An aligned, DKIM-signed message from a domain with p=reject passes
-- (RFC 9989 §4.4: DMARC passes on one aligned pass) and is delivered
-- with our Authentication-Results (RFC 8601) on top.
dofile(LIB)
local conn = open()
client(conn, "mail.esp.example.net", "192.0.2.202", "mail.esp.example.net")
message(conn, "bounce@e2e-reject.test", MSG.aligned)
local r = mt.getreply(conn)
check(r == SMFIR_CONTINUE or r == SMFIR_ACCEPT, "aligned message: " .. replyname(r))
check(not mt.eom_check(conn, MT_QUARANTINE), "aligned message quarantined")
local ar = our_ar(conn)
has(ar, "dmarc=pass")
has(ar, "header.from=e2e-reject.test")
has(ar, "dkim=pass")
mt.disconnect(conn)
