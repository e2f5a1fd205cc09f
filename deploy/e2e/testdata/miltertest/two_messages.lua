-- Two messages on one connection: the first is rejected, the second must
-- still be evaluated with the client address and HELO of the connection
-- (SPF needs both, RFC 7208 §4.1), so its SPF pass aligns.
dofile(LIB)
local conn = open()
client(conn, "mx.e2e-reject.test", "192.0.2.201", "mx.e2e-reject.test")
message(conn, "bounce@attacker.example.org", MSG.spoof_reject)
expect_reply(conn, SMFIR_REPLYCODE, "first message, spoofed")
check(mt.eom_check(conn, MT_SMTPREPLY, "550", "5.7.1", "Email rejected per DMARC policy for e2e-reject.test"),
	"first message: not 550 5.7.1")

message(conn, "news@e2e-reject.test", MSG.spf_aligned)
local r = mt.getreply(conn)
check(r == SMFIR_CONTINUE or r == SMFIR_ACCEPT, "second message: " .. replyname(r))
local ar = our_ar(conn)
has(ar, "dmarc=pass")
has(ar, "spf=pass")
has(ar, "header.from=e2e-reject.test")
mt.disconnect(conn)
