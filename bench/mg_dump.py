#!/usr/bin/env python3
"""Writes a milter-greylist 4.6 dump of N tuples (80% greylisted, 20% AUTO, none expired) to PATH.

Usage: bench/mg_dump.py N PATH. Used by bench/milter-greylist-import.sh (import time) and
bench/daemon-rss.sh (the daemon's memory on a store of N entries).
"""
import sys
import time

n, path = int(sys.argv[1]), sys.argv[2]
now = int(time.time())
with open(path, "w") as f:
    f.write("#\n# milter-greylist databases, dumped by milter-greylist-4.6.2 on 2026-12-05 00:00:00.\n"
            "# DO NOT EDIT while milter-greylist is running, changes will be overwritten.\n#\n\n\n"
            "#\n# stored tuples\n#\n"
            "# Sender IP\tSender e-mail\tRecipient e-mail\tTime accepted\tUnsuccessful shortest tarpit\n")
    for i in range(n):
        ip = "10.%d.%d.%d" % ((i >> 16) & 255, (i >> 8) & 255, i & 255)
        if i % 5 == 0:
            f.write("%s\t<sender%d@example.com>\t<rcpt%d@example.org>\t%d AUTO\n" % (ip, i, i % 1000, now + 86400 - i % 3600))
        else:
            f.write("%s\t<sender%d@example.com>\t<rcpt%d@example.org>\t%d\n" % (ip, i, i % 1000, now + 600 - i % 1800))
