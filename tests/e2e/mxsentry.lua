-- miltertest script: drives a running mxsentry directly over the milter protocol (as an MTA would)
-- and checks its replies at every stage. Proves: option negotiation (no-reply flags for CONNECT,
-- HELO and MAIL, skipped DATA/headers/EOH/body), the verdict of every access-file rule at RCPT
-- (REPLYCODE / DISCARD / CONTINUE), ACCEPT at EOM, the trusted-network, authenticated, From: OK
-- and postmaster/abuse exemptions (whole-message accepts may come as ACCEPT at RCPT, see
-- expect_accepted), an MTA that offers no protocol options (every stage answered), IPv6 client
-- info, several messages on one connection (after EOM, after ABORT, after an ACCEPT at RCPT), and
-- ABORT mid-message keeping the client.
--
-- Run (tests/e2e/miltertest.sh does, once per socket type):
--   miltertest -D sock=inet:8891@127.0.0.1 -D tag=inet -s tests/e2e/mxsentry.lua
--   miltertest -D sock=unix:/path/mxsentry.sock -D tag=unix -s tests/e2e/mxsentry.lua
-- `tag` goes into every sender's local part (e.g. inet-reject@reject.example) so the shell wrapper
-- can find each case's decision line in the daemon log (reply texts are checked there and by
-- milter_raw.py: miltertest keeps a REPLYCODE's text only at EOM, and mxsentry decides at RCPT).
-- Prints "ok   - ..." / "FAIL - ..." per check and "N passed, M failed"; exit status 1 on failure.
--
-- GOTCHAS (miltertest 1.6 / Debian 2.11.0~beta2):
--  * a Lua error() inside miltertest is not printed: every case runs in pcall and prints its error;
--  * mt.data/header/eoh/bodystring raise an error when the filter negotiated that step away: guard
--    them with mt.test_option;
--  * with SMFIP_NR_* negotiated, mt.getreply() after that step just returns SMFIR_CONTINUE (nothing
--    was read), so those steps are only checked in the "no options offered" case;
--  * mt.connect's retry count/interval are scaled by $MILTERTEST_RETRY_SPEED_FACTOR.

if sock == nil then sock = "inet:8891@127.0.0.1" end
if tag == nil then tag = "mt" end
mt.set_timeout(20)   -- seconds per reply; generous for slow CI machines

local passed, failed = 0, 0
local RNAME = {}
for _, n in ipairs({"CONTINUE", "ACCEPT", "REJECT", "TEMPFAIL", "DISCARD", "REPLYCODE"}) do
  RNAME[_G["SMFIR_" .. n]] = n
end
local function rname(r)
  if r == nil then return "nil" end
  if RNAME[r] then return RNAME[r] end
  local n = math.floor(r)
  if n > 31 and n < 127 then return string.format("'%s'", string.char(n)) end
  return tostring(r)
end

local function ok(what) passed = passed + 1; print("ok   - " .. what) end
local function fail(what) failed = failed + 1; print("FAIL - " .. what) end
local function try(res, what)   -- mt.* return nil on success, an error string on failure
  if res ~= nil then error(what .. ": " .. tostring(res), 0) end
end
local function expect(conn, what, want)
  local got = mt.getreply(conn)
  if got ~= want then
    error(string.format("%s: got %s, want %s", what, rname(got), rname(want)), 0)
  end
  ok(what)
end
local function expect_opt(conn, what, opt, want)
  if mt.test_option(conn, opt) ~= want then
    error(string.format("%s: option %s, want %s", what, tostring(not want), tostring(want)), 0)
  end
  ok(what)
end

-- open: connect, negotiate (protocol options offered: nil = miltertest's default = everything),
-- send CONNECT macros like Postfix/sendmail do, then the connection info.
local function open(host, ip, offer)
  local conn = mt.connect(sock, 40, 0.5)
  if conn == nil then error("cannot connect to " .. sock, 0) end
  local p = offer
  -- NB: miltertest takes (conn, version, protocol options, actions) -- not the order its man page says
  try(mt.negotiate(conn, nil, p, nil), "negotiate")
  try(mt.macro(conn, SMFIC_CONNECT, "j", "mta.testbed.test", "_", host .. " [" .. ip .. "]",
               "{daemon_name}", "miltertest", "{daemon_addr}", "127.0.0.1", "v", "miltertest",
               "{client_addr}", ip, "{client_name}", host, "{client_ptr}", host,
               "{client_resolve}", "OK"), "macro connect")
  try(mt.conninfo(conn, host, ip), "conninfo " .. ip)
  return conn
end
local qid = 0
local function mail(conn, from, ...)
  qid = qid + 1
  try(mt.macro(conn, SMFIC_MAIL, "i", string.format("MT%s%04d", tag, qid), "{mail_addr}", from, ...),
      "macro mail")
  try(mt.mailfrom(conn, "<" .. from .. ">"), "mailfrom " .. from)
end
local function rcpt(conn, to)
  try(mt.macro(conn, SMFIC_RCPT, "{rcpt_addr}", to), "macro rcpt")
  try(mt.rcptto(conn, "<" .. to .. ">"), "rcptto " .. to)
end
-- the message content, sending only the steps the filter did not negotiate away
local function content(conn)
  if not mt.test_option(conn, SMFIP_NODATA) then try(mt.data(conn), "data") end
  if not mt.test_option(conn, SMFIP_NOHDRS) then
    try(mt.header(conn, "From", "<sender@example.net>"), "header From")
    try(mt.header(conn, "Subject", "miltertest " .. tag), "header Subject")
  end
  if not mt.test_option(conn, SMFIP_NOEOH) then try(mt.eoh(conn), "eoh") end
  if not mt.test_option(conn, SMFIP_NOBODY) then try(mt.bodystring(conn, "hello\r\n"), "body") end
end
local function eom(conn, what, want)
  content(conn)
  try(mt.eom(conn), "eom")
  expect(conn, what, want or SMFIR_ACCEPT)
end

-- A message accepted as a whole at RCPT (trusted client, authenticated sender, From:... OK) may be
-- answered either way, both are correct milter semantics: SMFIR_CONTINUE (then ACCEPT at EOM), or
-- SMFIR_ACCEPT = "accept this message, no further callbacks for it" -- after which Postfix and
-- sendmail send neither the rest of the message nor EOM nor ABORT: the next thing is a new MAIL.
-- Returns "ACCEPT" or "CONTINUE" (after checking EOM -> ACCEPT).
local ACCEPTED = "accepted"
local function expect_accepted(conn, what)
  local got = mt.getreply(conn)
  if got == SMFIR_ACCEPT then
    ok(what .. " -> ACCEPT (whole message)")
    return "ACCEPT"
  elseif got == SMFIR_CONTINUE then
    ok(what .. " -> CONTINUE")
    eom(conn, what .. ": EOM -> ACCEPT")
    return "CONTINUE"
  end
  error(string.format("%s: got %s, want ACCEPT or CONTINUE", what, rname(got)), 0)
end

local GOOD_HOST, GOOD_IP = "good.fcrdns.test", "192.0.2.10"
local function who(local_part, domain) return tag .. "-" .. local_part .. "@" .. domain end

-- case NAME FN : run FN in pcall with its own connection handling; a failure ends only that case
local function case(name, fn)
  print("# case: " .. name)
  local conn
  local function opener(...) conn = open(...); return conn end
  local fine, err = pcall(fn, opener)
  if not fine then fail(name .. ": " .. tostring(err)) end
  if conn ~= nil then pcall(mt.disconnect, conn) end
end

-- simple one-recipient verdict at RCPT, on a fresh connection from a good client
local function verdict_case(name, from, to, want, host, ip)
  case(name, function(open_)
    local c = open_(host or GOOD_HOST, ip or GOOD_IP)
    try(mt.helo(c, "helo.good.test"), "helo")
    mail(c, from)
    rcpt(c, to)
    if want == ACCEPTED then
      expect_accepted(c, name .. ": RCPT")
    else
      expect(c, name .. ": RCPT -> " .. rname(want), want)
      if want == SMFIR_CONTINUE then eom(c, name .. ": EOM -> ACCEPT") end
    end
  end)
end

-------------------------------------------------------------------------------------------------
case("negotiation (MTA offers everything)", function(open_)
  local c = open_(GOOD_HOST, GOOD_IP)
  ok("negotiate: OPTNEG answered")
  -- DNS checks are on: CONNECT is answered so that an MTA that holds back unanswered commands
  -- (Postfix) sends it at once and the lookups overlap HELO and MAIL
  expect_opt(c, "negotiate: CONNECT answered with DNS checks on (no SMFIP_NR_CONN)", SMFIP_NR_CONN, false)
  expect_opt(c, "negotiate: SMFIP_NR_HELO (no reply to HELO)", SMFIP_NR_HELO, true)
  -- an RHSBL (dbl.test) is configured: MAIL is answered so that its lookup starts at MAIL
  expect_opt(c, "negotiate: MAIL answered with an RHSBL configured (no SMFIP_NR_MAIL)", SMFIP_NR_MAIL, false)
  expect_opt(c, "negotiate: RCPT is answered (no SMFIP_NR_RCPT)", SMFIP_NR_RCPT, false)
  expect_opt(c, "negotiate: RCPT is sent (no SMFIP_NORCPT)", SMFIP_NORCPT, false)
  expect_opt(c, "negotiate: MAIL is sent (no SMFIP_NOMAIL)", SMFIP_NOMAIL, false)
  expect_opt(c, "negotiate: CONNECT is sent (no SMFIP_NOCONNECT)", SMFIP_NOCONNECT, false)
  -- DATA is read and answered: the reply keeps Postfix's end of message clear of a
  -- Nagle/delayed-ACK stall
  expect_opt(c, "negotiate: DATA is sent (no SMFIP_NODATA)", SMFIP_NODATA, false)
  expect_opt(c, "negotiate: DATA is answered (no SMFIP_NR_DATA)", SMFIP_NR_DATA, false)
  expect_opt(c, "negotiate: SMFIP_NOHDRS", SMFIP_NOHDRS, true)
  expect_opt(c, "negotiate: SMFIP_NOEOH", SMFIP_NOEOH, true)
  expect_opt(c, "negotiate: SMFIP_NOBODY", SMFIP_NOBODY, true)
  expect_opt(c, "negotiate: SMFIP_NOUNKNOWN", SMFIP_NOUNKNOWN, true)
end)

case("accept: good client, every stage up to EOM", function(open_)
  local c = open_(GOOD_HOST, GOOD_IP)
  try(mt.helo(c, "helo.good.test"), "helo")
  mail(c, who("user", "sender.good.test"))
  rcpt(c, "rcpt@example.org")
  expect(c, "accept: RCPT -> CONTINUE", SMFIR_CONTINUE)
  rcpt(c, "second@example.org")
  expect(c, "accept: second RCPT -> CONTINUE", SMFIR_CONTINUE)
  eom(c, "accept: EOM -> ACCEPT")
end)

verdict_case("From:reject.example REJECT", who("reject", "reject.example"), "rcpt@example.org", SMFIR_REPLYCODE)
verdict_case("From:discard.example DISCARD", who("discard", "discard.example"), "rcpt@example.org", SMFIR_DISCARD)
verdict_case("From:banned.example ERROR:\"550 ...\"", who("banned", "banned.example"), "rcpt@example.org", SMFIR_REPLYCODE)
verdict_case("From:dsn.example ERROR:5.7.1:\"550 ...\"", who("dsn", "dsn.example"), "rcpt@example.org", SMFIR_REPLYCODE)
verdict_case("From:tempfail.example TEMPFAIL", who("tempfail", "tempfail.example"), "rcpt@example.org", SMFIR_REPLYCODE)
verdict_case("regex rule (emalsrv)", who("bounce", "emalsrv.example.com"), "rcpt@example.org", SMFIR_REPLYCODE)
verdict_case("parent domain linkedin.com DISCARD", who("news", "news.linkedin.com"), "rcpt@example.org", SMFIR_DISCARD)
verdict_case("From:friend.example OK", who("pal", "friend.example"), "rcpt@example.org", ACCEPTED)
verdict_case("Connect:192.0.2.66 REJECT (at RCPT)", who("user", "sender.good.test"), "rcpt@example.org",
             SMFIR_REPLYCODE, "[192.0.2.66]", "192.0.2.66")
verdict_case("trusted client 192.0.2.200, REJECT sender", who("trusted", "reject.example"), "rcpt@example.org",
             ACCEPTED, "[192.0.2.200]", "192.0.2.200")
verdict_case("IPv6 client 2001:db8::10", who("v6", "sender.good.test"), "rcpt@example.org",
             SMFIR_CONTINUE, GOOD_HOST, "2001:db8::10")

case("To:blocked@example.org REJECT, other recipient fine", function(open_)
  local c = open_(GOOD_HOST, GOOD_IP)
  try(mt.helo(c, "helo.good.test"), "helo")
  mail(c, who("tocheck", "sender.good.test"))
  rcpt(c, "blocked@example.org")
  expect(c, "To: rule: RCPT blocked@example.org -> REPLYCODE", SMFIR_REPLYCODE)
  rcpt(c, "rcpt@example.org")
  expect(c, "To: rule: RCPT rcpt@example.org -> CONTINUE", SMFIR_CONTINUE)
  eom(c, "To: rule: EOM -> ACCEPT")
end)

case("postmaster@/abuse@ never rejected", function(open_)
  local c = open_(GOOD_HOST, GOOD_IP)
  try(mt.helo(c, "helo.good.test"), "helo")
  mail(c, who("pm", "reject.example"))
  rcpt(c, "postmaster@example.org")
  expect(c, "exemption: REJECT sender -> postmaster@ CONTINUE", SMFIR_CONTINUE)
  rcpt(c, "abuse@example.org")
  expect(c, "exemption: REJECT sender -> abuse@ CONTINUE", SMFIR_CONTINUE)
  eom(c, "exemption: EOM -> ACCEPT")
end)

case("authenticated sender ({auth_authen}) bypasses rules", function(open_)
  local c = open_(GOOD_HOST, GOOD_IP)
  try(mt.helo(c, "helo.good.test"), "helo")
  mail(c, who("auth", "reject.example"), "{auth_type}", "PLAIN", "{auth_authen}", "alice")
  rcpt(c, "rcpt@example.org")
  expect_accepted(c, "auth: REJECT sender with {auth_authen}: RCPT")
end)

case("next MAIL right after a message accepted at RCPT starts clean", function(open_)
  local c = open_(GOOD_HOST, GOOD_IP)
  try(mt.helo(c, "helo.good.test"), "helo")
  mail(c, who("pal2", "friend.example")); rcpt(c, "rcpt@example.org")
  local how = expect_accepted(c, "after-accept: msg 1 (From: OK) RCPT")
  -- no EOM / ABORT when it was ACCEPT, exactly like an MTA
  mail(c, who("after-ok", "reject.example")); rcpt(c, "rcpt@example.org")
  expect(c, "after-accept (" .. how .. "): msg 2 (REJECT sender) RCPT -> REPLYCODE (OK did not stick)",
         SMFIR_REPLYCODE)
end)

case("several messages on one connection", function(open_)
  local c = open_(GOOD_HOST, GOOD_IP)
  try(mt.helo(c, "helo.good.test"), "helo")
  mail(c, who("reuse1", "sender.good.test")); rcpt(c, "rcpt@example.org")
  expect(c, "reuse: msg 1 RCPT -> CONTINUE", SMFIR_CONTINUE)
  eom(c, "reuse: msg 1 EOM -> ACCEPT")
  mail(c, who("reuse2", "reject.example")); rcpt(c, "rcpt@example.org")   -- MAIL right after EOM
  expect(c, "reuse: msg 2 (REJECT sender) RCPT -> REPLYCODE", SMFIR_REPLYCODE)
  try(mt.abort(c), "abort")
  mail(c, who("reuse3", "sender.good.test")); rcpt(c, "rcpt@example.org")
  expect(c, "reuse: msg 3 after ABORT RCPT -> CONTINUE (no verdict left over)", SMFIR_CONTINUE)
  eom(c, "reuse: msg 3 EOM -> ACCEPT")
  mail(c, who("reuse4", "discard.example")); rcpt(c, "rcpt@example.org")
  expect(c, "reuse: msg 4 (DISCARD sender) RCPT -> DISCARD", SMFIR_DISCARD)
  try(mt.abort(c), "abort")
  mail(c, who("reuse5", "sender.good.test")); rcpt(c, "rcpt@example.org")
  expect(c, "reuse: msg 5 after DISCARD RCPT -> CONTINUE", SMFIR_CONTINUE)
  eom(c, "reuse: msg 5 EOM -> ACCEPT")
end)

case("ABORT mid-message keeps the client (Connect: rule still applies)", function(open_)
  local c = open_("[192.0.2.66]", "192.0.2.66")
  try(mt.helo(c, "helo.good.test"), "helo")
  mail(c, who("abort1", "sender.good.test")); rcpt(c, "rcpt@example.org")
  expect(c, "abort: 192.0.2.66 msg 1 RCPT -> REPLYCODE", SMFIR_REPLYCODE)
  try(mt.abort(c), "abort")
  mail(c, who("abort2", "sender.good.test")); rcpt(c, "rcpt@example.org")
  expect(c, "abort: 192.0.2.66 msg 2 after ABORT RCPT -> REPLYCODE", SMFIR_REPLYCODE)
end)

case("ABORT mid-message keeps the client (trust still applies)", function(open_)
  local c = open_("[192.0.2.200]", "192.0.2.200")
  try(mt.helo(c, "helo.good.test"), "helo")
  mail(c, who("abort3", "sender.good.test")); rcpt(c, "rcpt@example.org")
  local got = mt.getreply(c)
  if got ~= SMFIR_CONTINUE and got ~= SMFIR_ACCEPT then
    error("abort: trusted msg 1 RCPT: got " .. rname(got) .. ", want CONTINUE or ACCEPT", 0)
  end
  ok("abort: trusted msg 1 RCPT -> " .. rname(got))
  try(mt.abort(c), "abort")     -- after RCPT, before the message content
  mail(c, who("abort4", "reject.example")); rcpt(c, "rcpt@example.org")
  expect_accepted(c, "abort: trusted msg 2 (REJECT sender) after ABORT: RCPT")
end)

case("MTA offers no protocol options: every stage answered", function(open_)
  local c = open_(GOOD_HOST, GOOD_IP, 0)
  expect_opt(c, "no-opts: filter did not ask for SMFIP_NR_CONN (not offered)", SMFIP_NR_CONN, false)
  expect_opt(c, "no-opts: filter did not ask for SMFIP_NODATA (not offered)", SMFIP_NODATA, false)
  expect(c, "no-opts: CONNECT -> CONTINUE", SMFIR_CONTINUE)
  try(mt.helo(c, "helo.good.test"), "helo")
  expect(c, "no-opts: HELO -> CONTINUE", SMFIR_CONTINUE)
  mail(c, who("noopts", "sender.good.test"))
  expect(c, "no-opts: MAIL -> CONTINUE", SMFIR_CONTINUE)
  rcpt(c, "rcpt@example.org")
  expect(c, "no-opts: RCPT -> CONTINUE", SMFIR_CONTINUE)
  try(mt.data(c), "data"); expect(c, "no-opts: DATA -> CONTINUE", SMFIR_CONTINUE)
  try(mt.header(c, "From", "<sender@example.net>"), "header")
  expect(c, "no-opts: header -> CONTINUE", SMFIR_CONTINUE)
  try(mt.header(c, "Subject", "no options"), "header")
  expect(c, "no-opts: header 2 -> CONTINUE", SMFIR_CONTINUE)
  try(mt.eoh(c), "eoh"); expect(c, "no-opts: EOH -> CONTINUE", SMFIR_CONTINUE)
  try(mt.bodystring(c, "hello\r\n"), "body"); expect(c, "no-opts: body -> CONTINUE", SMFIR_CONTINUE)
  try(mt.eom(c), "eom"); expect(c, "no-opts: EOM -> ACCEPT", SMFIR_ACCEPT)
  mail(c, who("noopts-reject", "reject.example"))
  expect(c, "no-opts: msg 2 MAIL (REJECT sender) -> CONTINUE (verdicts are given at RCPT)", SMFIR_CONTINUE)
  rcpt(c, "rcpt@example.org")
  expect(c, "no-opts: msg 2 RCPT -> REPLYCODE", SMFIR_REPLYCODE)
end)

print(string.format("%d passed, %d failed", passed, failed))
os.exit(failed == 0 and 0 or 1)
