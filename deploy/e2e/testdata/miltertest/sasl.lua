-- A SASL-authenticated client ({auth_authen} with MAIL) is our own user
-- submitting mail: it is not evaluated, so even a From of a p=reject
-- domain it cannot authenticate is passed through untouched.
dofile(LIB)
local conn = open()
client(conn, "laptop.example.net", "198.51.100.9", "laptop")
message(conn, "ceo@e2e-reject.test", MSG.spoof_reject, {["{auth_authen}"] = "ceo"})
local r = mt.getreply(conn)
check(r == SMFIR_CONTINUE or r == SMFIR_ACCEPT, "authenticated client: " .. replyname(r))
check(not mt.eom_check(conn, MT_HDRINSERT), "authenticated client's message got an A-R field")
check(not mt.eom_check(conn, MT_QUARANTINE), "authenticated client's message quarantined")
mt.disconnect(conn)
