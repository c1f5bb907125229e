#!/usr/bin/env python3
"""Writes a JSON decision log for `mxsentry replay` benchmarks: LINES lines shaped like the
daemon's (src/decision_log.rs `json_body`, `[log] format = "json"`), with varied clients,
senders and recipients and the evidence a replay needs (rDNS answers, the bl.test zone's
answer, the HELO resolution, greylist steps). About 5% are other log events.
  python3 bench/replay-log.py LINES > big.log
Deterministic (seeded): the same LINES gives the same file."""
import json
import random
import sys

lines = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
rng = random.Random(42)
# Public-looking addresses: no 10/8 or 127/8 (trusted networks by default).
FIRST_OCTETS = [a for a in range(1, 224) if a not in (10, 127)]
out = sys.stdout
write = out.write
for n in range(lines):
    ts = "2026-12-05T04:%02d:%02d.%06dZ" % (n // 60_000 % 60, n // 1000 % 60, n % 1_000_000)
    if rng.random() < 0.05:
        write('{"timestamp":"%s","level":"INFO","message":"connection closed","peer":"127.0.0.1:40000",'
              '"target":"mxsentry::server"}\n' % ts)
        continue
    a, b, c = rng.choice(FIRST_OCTETS), rng.randrange(256), rng.randrange(256)
    ip = "%d.%d.%d.%d" % (a, b, c, rng.randrange(1, 255))
    host = "mail%d.example%d.net" % (rng.randrange(100), rng.randrange(5000))
    sender = "user%d@sender%d.example" % (rng.randrange(10_000), rng.randrange(20_000))
    rcpts = ["rcpt%d@example.org" % rng.randrange(500) for _ in range(1 + (rng.random() < 0.2))]
    kind = rng.random()
    evidence = [{"code": "rdns.ok", "forward": [{"addrs": [ip], "name": host}], "ptr": [host]},
                {"code": "helo.ok"}]
    if kind < 0.25:
        verdict, reason, reply = "reject", "dnsbl.listed", "550 5.7.1 Mail from %s refused, listed in bl.test" % ip
        evidence.append({"code": "dnsbl.listed", "zone": "bl.test", "answers": ["127.0.0.2"],
                         "txt": "Listed: see https://bl.test/q?%s" % ip})
        rcpts = rcpts[:1]
    elif kind < 0.35:
        verdict, reason, reply = "greylist", "greylist.new", "450 4.7.1 Greylisted, try again in 300 seconds"
        evidence.append({"code": "dnsbl.not_listed", "zone": "bl.test"})
        rcpts = rcpts[:1]
        evidence.append({"code": "greylist.new", "rcpt": rcpts[0], "seconds": 300})
    else:
        verdict, reason, reply = "accept", "greylist.passed", ""
        evidence.append({"code": "dnsbl.not_listed", "zone": "bl.test"})
        for r in rcpts:
            evidence.append({"code": "greylist.passed", "rcpt": r, "seconds": 600})
    line = {
        "timestamp": ts, "level": "INFO", "message": "decision",
        "queue_id": "%010X" % n, "client_ip": ip, "client_name": host, "client_verified": True,
        "helo": host, "from": "<%s>" % sender, "rcpt": "<%s>" % ",".join(rcpts),
        "authenticated": False, "verdict": verdict, "reason": reason, "reply": reply,
        "findings": "", "evidence": evidence, "delay_ms": rng.randrange(5),
        "target": "mxsentry::decision",
    }
    write(json.dumps(line, separators=(",", ":")) + "\n")
