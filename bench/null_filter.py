#!/usr/bin/python3
"""null_filter.py: a do-nothing milter on Debian's python3-milter (pymilter, on libmilter).

Every callback is overridden and returns CONTINUE, so pymilter negotiates away no stage and no
reply: the MTA sends every command and waits for every reply, like bench/null_filter.c but with
the Python interpreter in the loop. No actions (flags 0).

    /usr/bin/python3 bench/null_filter.py inet:18893@127.0.0.1

(Debian's /usr/bin/python3: a pyenv python3 earlier on PATH lacks the Debian modules. The file
must not be named milter.py: that would shadow pymilter's C module.)
"""
import sys

import Milter


class NullMilter(Milter.Base):
    def connect(self, hostname, family, hostaddr):
        return Milter.CONTINUE

    def hello(self, hostname):
        return Milter.CONTINUE

    def envfrom(self, mailfrom, *params):
        return Milter.CONTINUE

    def envrcpt(self, to, *params):
        return Milter.CONTINUE

    def data(self):
        return Milter.CONTINUE

    def header(self, name, value):
        return Milter.CONTINUE

    def eoh(self):
        return Milter.CONTINUE

    def body(self, chunk):
        return Milter.CONTINUE

    def unknown(self, cmd):
        return Milter.CONTINUE

    def eom(self):
        return Milter.CONTINUE

    def abort(self):
        return Milter.CONTINUE

    def close(self):
        return Milter.CONTINUE


def main():
    if len(sys.argv) < 2:
        sys.stderr.write("usage: null_filter.py SOCKET   e.g. inet:18893@127.0.0.1\n")
        return 2
    Milter.factory = NullMilter
    Milter.set_flags(0)
    Milter.runmilter("null_filter_py", sys.argv[1], timeout=600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
