-- Helpers shared by the miltertest scripts. miltertest_test.go runs each
-- script as `miltertest -D MILTER=inet:PORT@127.0.0.1 -D LIB=this file
-- -D DATA=messages.lua -s SCRIPT`; DATA defines MSG, the message pieces
-- the Go test built and DKIM-signed (header values exactly as Postfix
-- sends them: leading space kept, folded lines with LF only).
dofile(DATA)

-- Every reply within 30 s instead of miltertest's 10: a loaded CI machine
-- must not fail a script, while a daemon that never answers still does.
mt.set_timeout(30)

-- Every check raises a Lua error, which makes miltertest exit nonzero.
function check(cond, what)
	if not cond then
		error(what, 2)
	end
end

-- ok fails unless a miltertest call returned nil (its success value).
function ok(err, what)
	if err ~= nil then
		error(what .. ": " .. tostring(err), 2)
	end
end

function open()
	-- Retries cover the short moment between the daemon's listen and its
	-- first accept; the daemon is already up when the script starts.
	local conn = mt.connect(MILTER, 20, 0.1)
	check(conn ~= nil, "cannot connect to " .. MILTER)
	return conn
end

local names = {}
names[SMFIR_CONTINUE] = "continue"
names[SMFIR_ACCEPT] = "accept"
names[SMFIR_REJECT] = "reject"
names[SMFIR_TEMPFAIL] = "tempfail"
names[SMFIR_DISCARD] = "discard"
names[SMFIR_REPLYCODE] = "replycode"

function replyname(r)
	return names[r] or ("code " .. tostring(r))
end

function expect_reply(conn, want, what)
	local got = mt.getreply(conn)
	check(got == want, what .. ": milter replied " .. replyname(got) .. ", want " .. replyname(want))
end

-- client runs connect and HELO and checks that the daemon continues.
function client(conn, name, ip, helo)
	ok(mt.conninfo(conn, name, ip), "conninfo")
	expect_reply(conn, SMFIR_CONTINUE, "connect " .. ip)
	ok(mt.helo(conn, helo), "helo")
	expect_reply(conn, SMFIR_CONTINUE, "helo " .. helo)
end

-- message sends one transaction up to and including end of message.
-- macros, if given, go with MAIL (as Postfix sends {auth_authen}).
function message(conn, mailfrom, msg, macros)
	if macros ~= nil then
		for k, v in pairs(macros) do
			ok(mt.macro(conn, SMFIC_MAIL, k, v), "macro " .. k)
		end
	end
	ok(mt.mailfrom(conn, "<" .. mailfrom .. ">"), "mailfrom")
	expect_reply(conn, SMFIR_CONTINUE, "mail from " .. mailfrom)
	ok(mt.rcptto(conn, "<sink@lab.test>"), "rcptto")
	expect_reply(conn, SMFIR_CONTINUE, "rcpt")
	for _, h in ipairs(msg.headers) do
		ok(mt.header(conn, h[1], h[2]), "header " .. h[1])
	end
	ok(mt.eoh(conn), "eoh")
	expect_reply(conn, SMFIR_CONTINUE, "end of header")
	ok(mt.bodystring(conn, msg.body), "body")
	expect_reply(conn, SMFIR_CONTINUE, "body")
	ok(mt.eom(conn), "eom")
end

-- our_ar returns the Authentication-Results field the daemon inserted.
function our_ar(conn)
	check(mt.eom_check(conn, MT_HDRINSERT, "Authentication-Results"), "no Authentication-Results inserted")
	local ar = mt.getheader(conn, "Authentication-Results", 0)
	check(ar ~= nil, "inserted Authentication-Results not readable")
	check(string.find(ar, "^%s*lab%.test;") ~= nil, "A-R without authserv-id lab.test: " .. ar)
	return ar
end

-- has checks that the A-R field contains a literal piece of text.
function has(ar, text)
	check(string.find(ar, text, 1, true) ~= nil, "A-R lacks \"" .. text .. "\": " .. ar)
end
