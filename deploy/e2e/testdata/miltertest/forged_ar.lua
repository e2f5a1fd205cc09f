-- An Authentication-Results field that arrives with our authserv-id is a
-- forgery and is deleted (RFC 8601 §5); one of another authserv-id stays.
-- go-milter deletes with SMFIR_CHGHEADER and an empty value, which
-- miltertest files as a header change.
dofile(LIB)
local conn = open()
client(conn, "mx.attacker.example.org", "192.0.2.207", "mx.attacker.example.org")
message(conn, "bounce@attacker.example.org", MSG.forged_ar)
expect_reply(conn, SMFIR_CONTINUE, "forged A-R, p=none")
check(mt.eom_check(conn, MT_HDRCHANGE, "Authentication-Results") or mt.eom_check(conn, MT_HDRDELETE, "Authentication-Results"),
	"forged Authentication-Results not removed")
local ar = our_ar(conn)
has(ar, "dmarc=fail")
has(ar, "header.from=e2e-none.test")
mt.disconnect(conn)
