-- A spoofed From of a p=reject domain from a client that neither SPF nor
-- DKIM authorizes is refused at end of message with a custom 550 reply
-- (RFC 9989 §5.3.6), sent as SMFIR_REPLYCODE.
dofile(LIB)
local conn = open()
client(conn, "mx.attacker.example.org", "192.0.2.203", "mx.attacker.example.org")
message(conn, "bounce@attacker.example.org", MSG.spoof_reject)
expect_reply(conn, SMFIR_REPLYCODE, "spoofed p=reject")
-- miltertest compares the whole reply text.
check(mt.eom_check(conn, MT_SMTPREPLY, "550", "5.7.1", "Email rejected per DMARC policy for e2e-reject.test"),
	"reply is not 550 5.7.1 Email rejected per DMARC policy for e2e-reject.test")
check(not mt.eom_check(conn, MT_HDRINSERT), "a rejected message got header changes")
mt.disconnect(conn)
