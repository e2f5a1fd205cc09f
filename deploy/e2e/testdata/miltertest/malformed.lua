-- Broken and unusual command sequences, as a crashing or confused MTA or
-- client may produce them. The daemon must answer each without dropping
-- the connection, and judge the next complete message on its own.
-- (Sequences miltertest cannot produce, such as a truncated packet or a
-- header before negotiation, are sent raw by miltertest_test.go.)
dofile(LIB)

-- The connection drops in the middle of the header.
local c1 = open()
client(c1, "mx.attacker.example.org", "192.0.2.210", "mx.attacker.example.org")
ok(mt.mailfrom(c1, "<bounce@attacker.example.org>"), "mailfrom")
ok(mt.rcptto(c1, "<sink@lab.test>"), "rcptto")
ok(mt.header(c1, "From", " ceo@e2e-reject.test"), "header")
ok(mt.disconnect(c1, false), "abrupt disconnect")

-- SMFIC_UNKNOWN belongs to milter protocol version 3; go-milter
-- negotiates version 2, so Postfix never sends it (postfix_unknown_test.go)
-- and go-milter v0.5.0 closes the session when miltertest does. Whatever
-- the answer, the daemon must stay up for the connections below.
local c2 = open()
client(c2, "mx.attacker.example.org", "192.0.2.210", "mx.attacker.example.org")
local _ = mt.unknown(c2, "XYZZY frobnicate")
mt.disconnect(c2, false)

local conn = open()
client(conn, "mx.e2e-reject.test", "192.0.2.201", "mx.e2e-reject.test")

-- The MTA aborts in the middle of the body; nothing of it may leak into
-- the next message (its spoofed From would make that one fail).
ok(mt.mailfrom(conn, "<bounce@attacker.example.org>"), "mailfrom")
ok(mt.rcptto(conn, "<sink@lab.test>"), "rcptto")
ok(mt.header(conn, "From", " ceo@e2e-reject.test"), "header")
ok(mt.eoh(conn), "eoh")
ok(mt.bodystring(conn, "half a bo"), "body")
ok(mt.abort(conn), "abort")
message(conn, "news@e2e-reject.test", MSG.spf_aligned)
expect_reply(conn, SMFIR_CONTINUE, "message after abort")
local ar = our_ar(conn)
has(ar, "dmarc=pass")
has(ar, "spf=pass")

-- Body and end of message again after the message is done: miltertest
-- sends them without a new MAIL, so the daemon sees a body with no
-- transaction. It must answer without judging anything. (miltertest
-- keeps the previous message's modifications until the next MAIL, so
-- only the reply can be checked here.)
ok(mt.bodystring(conn, "body without MAIL\r\n"), "body")
expect_reply(conn, SMFIR_CONTINUE, "body without MAIL")
ok(mt.eom(conn), "eom")
expect_reply(conn, SMFIR_CONTINUE, "end of message without MAIL")

-- The connection is still good for a real message.
message(conn, "news@e2e-reject.test", MSG.spf_aligned)
expect_reply(conn, SMFIR_CONTINUE, "last message")
ar = our_ar(conn)
has(ar, "dmarc=pass")
mt.disconnect(conn)
