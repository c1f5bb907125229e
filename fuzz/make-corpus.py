#!/usr/bin/env python3
"""Writes the seed corpus fuzz/corpus/<target>/ from the repository's own files and a few
hand-written inputs. Run from anywhere: python3 fuzz/make-corpus.py. Idempotent: seeds are
named seed-*, so files added by hand or by a fuzz run (hash names) are left alone.

Seeds are small and real-looking: libFuzzer mutates from them, so a seed that already holds
an ERROR reply, a CIDR key or a TXT text with a URL gets the fuzzer to those paths at once.
"""
import pathlib
import re
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / f"seed-{name}").write_bytes(data)


def heredoc(path, marker_line):
    """The body of the first heredoc that starts after a line containing marker_line."""
    text = (ROOT / path).read_text()
    start = text.index(marker_line)
    body_start = text.index("\n", start) + 1
    m = re.search(r"<<'?(\w+)'?", text[start:body_start])
    end = text.index("\n" + m.group(1) + "\n", body_start)
    return text[body_start:end] + "\n"


# --- access: the shipped file, the files the tests use, and one line of every key kind ---
write("access", "packaging", (ROOT / "packaging/access").read_text())
write("access", "e2e", heredoc("tests/e2e/lib.sh", 'cat > "$S/access"'))
write("access", "import-report",
      "# converted from sendmail\nFrom:example.com DISCARD\n\nFrom:bad.example REJCT\n"
      "Connect:192.0.2 RELAY\nTo:abuse@ OK\nspam.example ERROR:5.7.1:550 Go away\n"
      "Spam:abuse@ FRIEND\n")
write("access", "canonical",
      "from:A.example relay\nCONNECT:IPv6:2001:DB8 skip\n<> ERROR:\"550 5.7.1 x y\"\n")
write("access", "keys",
      "user@example.com REJECT\nuser+tag@example.com OK\nuser+*@example.com DISCARD\n"
      "postmaster@ OK\n.sub.example.org SKIP\nexample.org TEMPFAIL\n<> REJECT\n"
      "From:<> OK\n10 REJECT\n192.0.2.1 REJECT\n[198.51.100.7] OK\n[1.2.4] OK\n"
      "192.0.2.128/25 TEMPFAIL\n2001:db8::/32 REJECT\nIPv6:2001:db8:1 SKIP\n"
      "IPv6:2001:0db8:0:0:0:0:0:1 OK\n[IPv6:2001:db8::2] REJECT\n::ffff:192.0.2.9 REJECT\n"
      "x@[192.0.2.5] REJECT\n")
write("access", "actions",
      "a.example ERROR:\"550 Sender banned\"\nb.example ERROR:550 unquoted text\n"
      "c.example ERROR:5.7.1:\"550 go away\"\nd.example ERROR:\"550 5.7.1 go away\"\n"
      "e.example ERROR:4.2.2:450 mailbox full\nf.example \"550 deprecated form\"\n"
      "g.example 550 5.7.1 bare reply\nh.example ERROR:\"550 100% spam\"\n"
      "i.example QUARANTINE:why\nj.example ERROR 550 x\nk.example REJECT # trailing\n")
write("access", "bad-lines",
      "\ufeffFrom:bom.example REJECT\r\nFrom:crlf.example OK\r\n"
      "From:a.example REJECT\nFrom:A.EXAMPLE OK\n*.wild.example REJECT\n@example.com OK\n"
      "Connect:192.0.300 OK\nConnect: spaced.example OK\nTo:<> OK\n192.0.2.1/24 REJECT\n"
      "user@ SKIP\nlonely.example\n")

# --- config: every shipped file and the test configurations ---
write("config", "milter.toml", (ROOT / "milter.toml").read_text())
uncommented = "\n".join(
    l[1:] if l.startswith("#") and len(l) > 1 and not l[1:].startswith(" ") else l
    for l in (ROOT / "milter.toml").read_text().splitlines())
write("config", "milter.toml-uncommented", uncommented + "\n")
write("config", "packaging", (ROOT / "packaging/milter.toml").read_text())
for example in sorted((ROOT / "examples").glob("*.toml")):
    write("config", "example-" + example.stem, example.read_text())
e2e = heredoc("tests/e2e/lib.sh", 'cat > "$S/mxsentry.toml"')
e2e = (e2e.replace("$MILTER_PORT", "8890").replace("$MILTER_ADDR", "127.0.0.1")
       .replace("$S", "/tmp/mx").replace("$DNS_ADDR", "127.0.0.1").replace("$DNS_PORT", "5353")
       .replace("$METRICS_PORT", "9890"))
write("config", "e2e", e2e)
tests_rs = (ROOT / "src/config/tests.rs").read_text()
write("config", "contract-example", tests_rs.split('const EXAMPLE: &str = r#"', 1)[1].split('"#;', 1)[0])
write("config", "typo", "[milter]\nhostname = \"mx.example.org\"\nlisen = \"inet:1@127.0.0.1\"\n")
write("config", "replies",
      "[helo]\nreply = \"550 5.7.1 bogus HELO {helo}\"\n[rdns]\n"
      "forged_reply = \"450 4.7.25 {client_name} is not {client_ip}\"\n"
      "[dns]\ntempfail_reply = \"451 4.4.3 later\"\n[greylist]\nreply = \"451 4.7.1 wait {remaining}s\"\n"
      "[[dnsbl.zones]]\nzone = \"bl.example\"\nmessage = \"550 5.7.1 {txt} {zone} {sender_domain}\"\n"
      "timeout = \"2s\"\nreturncodes = [\"127.0.0.2\", \"127.0.0.4-127.0.0.7\"]\n")
write("config", "bad-values",
      "[greeting]\ndelay = \"30s\"\n[greylist]\ndelay = \"3d\"\nretry_window = \"2d\"\n"
      "[[sender_rules.regex]]\npattern = '(unclosed'\naction = 'REJECT'\n")

# --- dns_reply: header of choices, then HELO, sender, TXT, PTR names separated by 0xFF ---
def dns_input(setup, ip, helo, sender, txt, ptrs, rdns=2, listed=3, weight=1, helo_resolve=2,
              waited=300, now=1767225600):
    v6 = ":" in ip
    if v6:
        import ipaddress
        addr = ipaddress.IPv6Address(ip).packed
    else:
        addr = bytes(int(o) for o in ip.split(".")) + bytes(12)
    head = (bytes([setup, int(v6)]) + addr + bytes([rdns, listed, weight & 0xFF, helo_resolve])
            + struct.pack("<QQ", waited, now))
    fields = [helo, sender, txt] + ptrs
    return head + b"\xff".join(f.encode() if isinstance(f, str) else f for f in fields)


SEEDS = [
    ("spamhaus", 0, "192.0.2.60", "mail.example.com", "user@example.com",
     "Listed by ZEN, see https://check.example/query/ip/192.0.2.60", ["mail.example.com"], 0, 1),
    ("dynamic", 1, "73.12.45.6", "localhost", "x@spam.example",
     "Blocked - see https://bl.example/bl.shtml?73.12.45.6", ["c-73-12-45-6.hsd1.ca.isp.example"], 0, 3),
    ("forged", 2, "192.0.2.99", "[192.0.2.99]", "<a@b.example>", "",
     ["mx.forged.example", "static-192-0-2-99.isp.example"], 2, 0),
    ("no-ptr", 3, "2001:db8::25", "EHLO", "", "", [], 1, 2),
    ("percent", 1, "198.51.100.7", "100%.example", "%s@%n.example",
     "100% spam %s %n %% see http://bl.example/?ip=198.51.100.7&x=%41", ["%d.%s.example"], 2, 3),
    ("crlf", 0, "203.0.113.5", "helo\r\n250 fake", "u@x.example\r\nRCPT TO:<v@y>",
     "line one\r\n550 fake\tok\x00 end", ["evil\r\n250 ok.example", "tab\there.example"], 2, 3),
    ("long-txt", 2, "192.0.2.1", "h" * 300, "s@" + "d" * 250 + ".example",
     "T" * 600, ["p" * 63 + "." + "q" * 63 + "." + "r" * 63 + ".example"], 2, 3),
    ("unicode", 0, "192.0.2.2", "bücher.example", "ü@bücher.example",
     "gelistet: \u2028 \u0085 \u00a0 \u200b ok", ["xn--bcher-kva.example", "bücher.example"], 2, 3),
    ("escaped-ptr", 1, "192.0.2.3", "a.example", "b@c.example", "x",
     ["\\013\\010evil.example", "a\\.b.example", "\\000.example"], 2, 1),
    ("ipv6-dynamic", 3, "2001:db8:0:1::5", "mta.example", "u@v.example", "listed",
     ["2001-db8-0-1.dyn.isp.example"], 0, 3),
]
for name, setup, ip, helo, sender, txt, ptrs, rdns, listed in SEEDS:
    write("dns_reply", name, dns_input(setup, ip, helo, sender, txt, ptrs, rdns, listed))
write("dns_reply", "clock-max", dns_input(0, "192.0.2.7", "a.example", "b@c.example", "",
                                          [], 0, 0, waited=2**64 - 1, now=2**64 - 1))

# --- decode: milter frames as Postfix and sendmail send them ---
def frame(cmd, payload=b""):
    return struct.pack(">I", len(payload) + 1) + cmd + payload


optneg = frame(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF))
connect = frame(b"C", b"mail.example.com\x004" + struct.pack(">H", 25) + b"192.0.2.60\x00")
macros = frame(b"D", b"C" + b"j\x00mx.example.org\x00{daemon_name}\x00smtpd\x00v\x00Postfix 3.7.11\x00")
helo = frame(b"H", b"mail.example.com\x00")
mail = frame(b"M", b"<user@example.com>\x00SIZE=1000\x00")
rcpt = frame(b"R", b"<rcpt@example.org>\x00")
header = frame(b"L", b"Subject\x00hello\x00")
write("decode", "optneg", optneg)
write("decode", "session", optneg + macros + connect + helo + mail + rcpt + frame(b"T")
      + header + frame(b"N") + frame(b"B", b"body\r\n") + frame(b"E") + frame(b"Q"))
write("decode", "connect-ipv6", frame(b"C", b"[2001:db8::1]\x006" + struct.pack(">H", 25) + b"2001:db8::1\x00"))
write("decode", "connect-unix", frame(b"C", b"localhost\x00L\x00\x00/var/run/x\x00"))
write("decode", "abort-quitnc", frame(b"A") + frame(b"K") + frame(b"U", b"VRFY x\x00"))
write("decode", "reply-code", frame(b"y", b"550 5.7.1 Access denied\x00"))
write("decode", "reply-optneg", frame(b"O", struct.pack(">IIII", 6, 1, 0, 0) + b"{client_addr} j\x00"))
write("decode", "add-header", frame(b"h", b"X-Greylist\x00delayed 300 seconds\x00")
      + frame(b"i", struct.pack(">I", 0) + b"X-A\x00v\x00"))
write("decode", "too-large", struct.pack(">I", 0x7FFFFFFF) + b"C")
