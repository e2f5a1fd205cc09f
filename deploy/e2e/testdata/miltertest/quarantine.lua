-- p=quarantine with the daemon in hold mode: the message is accepted and
-- put on hold with the milter quarantine action (RFC 9989 §5.3.6
-- "quarantine"; Postfix: the hold queue), and still gets our A-R field.
dofile(LIB)
local conn = open()
client(conn, "mx.attacker.example.org", "192.0.2.204", "mx.attacker.example.org")
message(conn, "bounce@attacker.example.org", MSG.spoof_quarantine)
expect_reply(conn, SMFIR_CONTINUE, "spoofed p=quarantine")
check(mt.eom_check(conn, MT_QUARANTINE), "message not quarantined")
local ar = our_ar(conn)
has(ar, "dmarc=fail")
has(ar, "header.from=e2e-quarantine.test")
mt.disconnect(conn)
