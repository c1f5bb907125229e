#!/usr/bin/python3
"""Raw milter-protocol client for what miltertest cannot do (Python standard library only).

Proves, against a running mxsentry (inet or unix socket):
  * the exact SMTP reply text of every access-file / regex verdict at RCPT (miltertest only keeps a
    REPLYCODE's text at EOM);
  * no-reply semantics: CONNECT, HELO and MAIL written in ONE burst (as Postfix pipelines them once
    SMFIP_NR_* is negotiated) get no answer, only the RCPT does, and nothing else is sent;
  * a packet that arrives in pieces (split TCP segments) is reassembled;
  * SMFIC_QUIT_NC connection reuse: a new SMTP session on the same milter connection starts clean
    (trust, sender and client from the previous session do not leak into the next one);
  * SMFIC_QUIT makes the daemon close the connection.

Usage: milter_raw.py --sock inet:PORT@HOST | unix:/path [--tag TAG]
Prints "ok   - ..." / "FAIL - ..." lines and "N passed, M failed"; exit 1 on any failure.
"""
import argparse
import socket
import struct
import sys
import time

# protocol constants (libmilter/mfdef.h)
SMFIP_NR_CONN, SMFIP_NR_HELO, SMFIP_NR_MAIL = 0x1000, 0x2000, 0x4000
SMFI_CURR_ACTS, SMFI_CURR_PROT = 0x1FF, 0x1FFFFF
FINAL = b"acdrty"          # accept continue discard reject tempfail replycode
TIMEOUT = 20.0             # seconds per reply (slow CI machines)

PASSED = FAILED = 0


def ok(what):
    global PASSED
    PASSED += 1
    print("ok   - " + what, flush=True)


def fail(what):
    global FAILED
    FAILED += 1
    print("FAIL - " + what, flush=True)


def pkt(cmd, data=b""):
    return struct.pack("!I", len(data) + 1) + cmd + data


def z(*parts):
    return b"".join(p.encode() + b"\0" for p in parts)


class Milter:
    def __init__(self, spec):
        if spec.startswith("unix:") or spec.startswith("local:"):
            self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            addr = spec.split(":", 1)[1]
        elif spec.startswith("inet:"):
            port, host = spec[5:].split("@", 1)
            self.s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            addr = (host, int(port))
        else:
            raise ValueError("bad --sock " + spec)
        self.s.settimeout(TIMEOUT)
        self.s.connect(addr)
        self.buf = b""
        self.prot = 0          # the negotiated protocol flags
        self.owed = 0          # CONTINUE replies owed to answered CONNECT/HELO/MAIL already sent

    def send(self, data):
        self.s.sendall(data)

    def _fill(self, n, timeout):
        self.s.settimeout(timeout)
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("connection closed by the milter")
            self.buf += chunk

    def read(self, timeout=TIMEOUT):
        """one reply packet -> (cmd byte, data)"""
        self._fill(4, timeout)
        n = struct.unpack("!I", self.buf[:4])[0]
        if n < 1 or n > 1 << 20:
            raise ValueError("bad packet length %d" % n)
        self._fill(4 + n, timeout)
        body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
        return body[:1], body[1:]

    def drain_owed(self):
        """read the CONTINUE replies of answered CONNECT/HELO/MAIL stages sent so far"""
        while self.owed:
            self.owed -= 1
            cmd, data = self.read()
            if cmd != b"c":
                raise ValueError("reply to CONNECT/HELO/MAIL: %s, want CONTINUE" % text_of(cmd, data))

    def final(self):
        """read until a final reply; header adds etc. before it are collected"""
        self.drain_owed()
        extra = []
        while True:
            cmd, data = self.read()
            if cmd in [bytes([c]) for c in FINAL]:
                return cmd, data, extra
            extra.append((cmd, data))

    def quiet(self, wait=0.7):
        """True if the milter sends nothing more within `wait` seconds"""
        if self.buf:
            return False
        self.s.settimeout(wait)
        try:
            data = self.s.recv(65536)
        except socket.timeout:
            return True
        self.buf += data
        return False

    def negotiate(self):
        self.send(pkt(b"O", struct.pack("!III", 6, SMFI_CURR_ACTS, SMFI_CURR_PROT)))
        cmd, data = self.read()
        if cmd != b"O" or len(data) < 12:
            raise ValueError("OPTNEG reply %r %r" % (cmd, data[:12]))
        ver, acts, prot = struct.unpack("!III", data[:12])
        self.prot = prot
        return ver, acts, prot

    def _owe(self, nr_flag):
        if self.prot & nr_flag == 0:
            self.owed += 1

    def connect_pkts(self, host, ip, helo="helo.good.test"):
        fam = b"6" if ":" in ip else b"4"
        self._owe(SMFIP_NR_CONN)
        self._owe(SMFIP_NR_HELO)
        return (pkt(b"D", b"C" + z("j", "mta.testbed.test", "_", "%s [%s]" % (host, ip),
                                   "{client_addr}", ip, "{client_name}", host))
                + pkt(b"C", host.encode() + b"\0" + fam + struct.pack("!H", 25025) + ip.encode() + b"\0")
                + pkt(b"D", b"H" + z("{tls_version}", "")) + pkt(b"H", z(helo)))

    def mail_pkts(self, sender, qid="RAW1"):
        self._owe(SMFIP_NR_MAIL)
        return (pkt(b"D", b"M" + z("i", qid, "{mail_addr}", sender))
                + pkt(b"M", z("<%s>" % sender)))

    def rcpt_pkts(self, rcpt):
        return pkt(b"D", b"R" + z("{rcpt_addr}", rcpt)) + pkt(b"R", z("<%s>" % rcpt))

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def text_of(cmd, data):
    if cmd == b"y":
        return "REPLYCODE " + data.rstrip(b"\0").decode("utf-8", "replace")
    return {b"c": "CONTINUE", b"a": "ACCEPT", b"d": "DISCARD", b"r": "REJECT",
            b"t": "TEMPFAIL"}.get(cmd, repr(cmd))


def expect(m, what, want):
    """want: one reply text, or a tuple of acceptable ones"""
    cmd, data, _ = m.final()
    got = text_of(cmd, data)
    wants = want if isinstance(want, tuple) else (want,)
    if got in wants:
        ok("%s -> %s" % (what, got))
    else:
        fail("%s: got %s, want %s" % (what, got, " or ".join(wants)))
    return got


def step(name, fn, *args):
    try:
        fn(*args)
    except Exception as e:  # one broken step must not hide the others
        fail("%s: %s: %s" % (name, type(e).__name__, e))


def t_pipelined_and_texts(spec, tag):
    m = Milter(spec)
    try:
        ver, acts, prot = m.negotiate()
        if prot & SMFIP_NR_HELO:
            ok("negotiation asks for SMFIP_NR_HELO (0x%x)" % prot)
        else:
            fail("negotiation: protocol 0x%x lacks NR_HELO" % prot)
            return
        # DNS checks are on in this config: CONNECT is answered so the lookups start at once
        # (Postfix holds unanswered commands back until the next answered one)
        if prot & SMFIP_NR_CONN == 0:
            ok("negotiation: CONNECT answered with DNS checks on (0x%x)" % prot)
        else:
            fail("negotiation: protocol 0x%x asks for no CONNECT reply with DNS checks on" % prot)
        # an RHSBL is configured: MAIL is answered (its lookup starts there)
        if prot & SMFIP_NR_MAIL == 0:
            ok("negotiation: MAIL answered with an RHSBL configured (0x%x)" % prot)
        else:
            fail("negotiation: protocol 0x%x asks for no MAIL reply with an RHSBL configured" % prot)
        # CONNECT, HELO, MAIL, RCPT in one write: exactly one reply per answered stage
        sender = "%s-reject@reject.example" % tag
        m.send(m.connect_pkts("good.fcrdns.test", "192.0.2.10")
               + m.mail_pkts(sender) + m.rcpt_pkts("rcpt@example.org"))
        replies = []
        for _ in range(m.owed + 1):
            cmd, data = m.read()
            replies.append(text_of(cmd, data))
        m.owed = 0
        want = ["CONTINUE"] * (len(replies) - 1) + ["REPLYCODE 550 5.7.1 Access denied"]
        if replies == want:
            ok("pipelined CONNECT+HELO+MAIL+RCPT: one reply per answered stage: " + ", ".join(replies))
        else:
            fail("pipelined CONNECT+HELO+MAIL+RCPT: replies %s, want %s" % (replies, want))
        if m.quiet():
            ok("no further packet after the RCPT reply")
        else:
            fail("unexpected extra packet after the RCPT reply: %r" % m.buf[:40])
        # the reply texts, one transaction each on the same connection (ABORT between them)
        cases = [
            ("banned", "banned.example", "REPLYCODE 550 Sender banned. Please use legitimate domain"),
            ("dsn", "dsn.example", "REPLYCODE 550 5.7.1 Go away"),
            ("tempfail", "tempfail.example", "REPLYCODE 451 4.7.1 Try again later"),
            ("bounce", "emalsrv.example.com", "REPLYCODE 550 5.7.1 Sender banned"),
            ("reject2", "reject.example", "REPLYCODE 550 5.7.1 Access denied"),
            ("discard", "discard.example", "DISCARD"),
            ("news", "news.linkedin.com", "DISCARD"),
            ("pal", "friend.example", ("CONTINUE", "ACCEPT")),   # From: OK, whole message accepted
        ]
        for i, (lp, dom, want) in enumerate(cases):
            m.send(pkt(b"A") + m.mail_pkts("%s-%s@%s" % (tag, lp, dom), "RAW%d" % (i + 2))
                   + m.rcpt_pkts("rcpt@example.org"))
            expect(m, "reply text for %s@%s" % (lp, dom), want)
        m.send(pkt(b"Q"))
    finally:
        m.close()


def t_split_packet(spec, tag):
    m = Milter(spec)
    try:
        m.negotiate()
        m.send(m.connect_pkts("good.fcrdns.test", "192.0.2.10") + m.mail_pkts("%s-split@reject.example" % tag))
        data = m.rcpt_pkts("rcpt@example.org")
        for i in range(0, len(data), 3):     # 3-byte pieces, each its own segment
            m.send(data[i:i + 3])
            time.sleep(0.02)
        expect(m, "RCPT sent in 3-byte pieces", "REPLYCODE 550 5.7.1 Access denied")
        m.send(pkt(b"Q"))
    finally:
        m.close()


def t_quit_nc(spec, tag):
    m = Milter(spec)
    try:
        m.negotiate()
        # session 1: trusted client, REJECT sender -> accepted
        m.send(m.connect_pkts("[192.0.2.200]", "192.0.2.200") + m.mail_pkts("%s-nc1@reject.example" % tag)
               + m.rcpt_pkts("rcpt@example.org"))
        # CONTINUE (then EOM -> ACCEPT) or ACCEPT for the whole message (then no EOM, as MTAs do)
        got = expect(m, "QUIT_NC session 1 (trusted 192.0.2.200, REJECT sender) RCPT", ("CONTINUE", "ACCEPT"))
        if got == "CONTINUE":
            m.send(pkt(b"E"))
            expect(m, "QUIT_NC session 1 EOM", "ACCEPT")
        # session 2 on the same connection: an untrusted client must not inherit the trust
        m.send(pkt(b"K") + m.connect_pkts("good.fcrdns.test", "192.0.2.10")
               + m.mail_pkts("%s-nc2@reject.example" % tag) + m.rcpt_pkts("rcpt@example.org"))
        expect(m, "QUIT_NC session 2 (192.0.2.10, REJECT sender) RCPT", "REPLYCODE 550 5.7.1 Access denied")
        m.send(pkt(b"A") + m.mail_pkts("%s-nc3@sender.good.test" % tag) + m.rcpt_pkts("rcpt@example.org"))
        expect(m, "QUIT_NC session 2, next message (good sender) RCPT", "CONTINUE")
        m.send(pkt(b"E"))
        expect(m, "QUIT_NC session 2 EOM", "ACCEPT")
        # session 3: Connect: rule client after a clean session
        m.send(pkt(b"K") + m.connect_pkts("[192.0.2.66]", "192.0.2.66")
               + m.mail_pkts("%s-nc4@sender.good.test" % tag) + m.rcpt_pkts("rcpt@example.org"))
        expect(m, "QUIT_NC session 3 (Connect:192.0.2.66) RCPT", "REPLYCODE 550 5.7.1 Access denied")
        # QUIT: the daemon closes its side
        m.send(pkt(b"A") + pkt(b"Q"))
        try:
            m.s.settimeout(TIMEOUT)
            rest = m.s.recv(100)
            if rest == b"":
                ok("SMFIC_QUIT: daemon closed the connection")
            else:
                fail("SMFIC_QUIT: daemon sent %r instead of closing" % rest[:40])
        except socket.timeout:
            fail("SMFIC_QUIT: connection still open after %ss" % TIMEOUT)
    finally:
        m.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sock", required=True)
    ap.add_argument("--tag", default="raw")
    a = ap.parse_args()
    step("pipelined + reply texts", t_pipelined_and_texts, a.sock, a.tag)
    step("split packet", t_split_packet, a.sock, a.tag)
    step("QUIT_NC reuse", t_quit_nc, a.sock, a.tag)
    print("%d passed, %d failed" % (PASSED, FAILED))
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
