#!/usr/bin/python3
"""Turns bench/run.sh's JSONL (one line per measurement) into the markdown results table:
medians over the runs, ratios against the null C libmilter filter, the issue's targets.

usage: report.py [--max-load L] results.jsonl [more.jsonl ...] > latest.md

Several files are merged (their runs kept apart); --max-load drops every measurement taken
with a 1-minute load average above L (ratios are then formed only from pairs that remain).
"""
import json
import statistics
import sys


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=0):
    if x is None:
        return "–"
    return f"{x:,.{nd}f}"


def summed_replies(runs):
    """The generator's replies by kind, added up over the runs."""
    replies = {}
    for x in runs:
        for k, v in x["ml"]["replies"].items():
            replies[k] = replies.get(k, 0) + v
    return replies


def stage(ml, name, key):
    s = ml.get("stages", {}).get(name)
    return s.get(key) if s else None


def main():
    args = sys.argv[1:]
    max_load = None
    if len(args) >= 2 and args[0] == "--max-load":
        max_load = float(args[1])
        args = args[2:]
    rows = []
    for i, path in enumerate(args):
        for line in open(path):
            if not line.strip():
                continue
            r = json.loads(line)
            if "run" in r and len(args) > 1:
                r["run"] = f"{i}:{r['run']}"
            if max_load is not None and isinstance(r.get("load"), (int, float)) \
                    and r["load"] > max_load:
                continue
            rows.append(r)
    meta = next((r for r in rows if r["scenario"] == "meta"), {})
    out = []
    p = out.append
    p("# mxsentry benchmark results")
    p("")
    if max_load is not None or len(args) > 1:
        p(f"Merged from {len(args)} result file(s)"
          + (f"; only measurements taken at a load average ≤ {max_load}" if max_load else "")
          + ". Medians are over the runs that remain (the `load` column lists them).")
        p("")
    if meta:
        p(f"{meta.get('date', '')}, commit {meta.get('commit', '?')}: {meta.get('nproc')} cores "
          f"({meta.get('cpu')}), kernel {meta.get('kernel')}. Median of {meta.get('runs')} runs "
          f"({meta.get('duration')} s each for throughput). Load average at the end "
          f"{meta.get('load_end')}; per-run load in the `load` column. Whole run "
          f"{meta.get('total_s')} s (build {meta.get('build_s')} s).")
        p("")

    # --- protocol and all checks -------------------------------------------------------------
    names = {"protocol": "protocol", "checks": "all checks, warm DNS",
             "protocol-sendmail": "protocol, sendmail-style writes",
             "protocol-connreply": "protocol, CONNECT answered",
             "protocol-quiet": "protocol, no decision log lines",
             "protocol-nagle": "protocol, Postfix's TCP (Nagle on)"}
    tp = [r for r in rows if r["scenario"] in names]
    targets = []
    if tp:
        p("## Throughput: protocol (sender rules) and all checks (warm DNS)")
        p("")
        p("Sessions/s through one filter (median of the runs); `× C` = median over the runs of "
          "the ratio to the null C libmilter filter measured in the same run at the same "
          "concurrency; `× mxsentry protocol` = the same against mxsentry's protocol row (for "
          "the variants, run right after it; for the Nagle rows: the same filter without "
          "Nagle). `null-c-mxflags`: the null C filter negotiating exactly mxsentry's flags "
          "(0x7370, before mxsentry answered DATA); `-data`: the same, answering DATA (0x7170, "
          "what mxsentry negotiates now with DNS checks off). CPU columns: CPU time per session of "
          "the load generator (milterload, 1 thread) and of the filter process (all threads; "
          "the share spent in the kernel in brackets). Message: 1 recipient, 10 header fields, "
          "4 KiB body; Postfix-style writes unless said; a new MTA connection per session. "
          "`× C same stages`: against `null-c-mxflags-data` in the same run (issue 15); "
          "`socket`: BENCH_SOCKET.")
        p("")
        p("| scenario | filter | conc. | sessions/s | × C | × C same stages | × mxsentry protocol | "
          "session p50 / p99 ms | awaited replies / session | generator CPU µs/session | "
          "filter CPU µs/session | errors | load |")
        p("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        groups = {}
        for r in tp:
            groups.setdefault((r["scenario"], r["filter"], r["c"]), []).append(r)

        def rate(key):
            g = groups.get(key)
            return med([x["ml"]["sessions_per_sec"] for x in g]) if g else None

        def paired(key, ref):
            """Median over runs of (this run's rate / the reference's rate in the same run)."""
            refs = {x["run"]: x["ml"]["sessions_per_sec"] for x in groups.get(ref, [])}
            return med([x["ml"]["sessions_per_sec"] / refs[x["run"]]
                        for x in groups.get(key, []) if refs.get(x["run"])])

        order = {k: i for i, k in enumerate(names)}
        forder = {"mxsentry": 0, "null-c": 1, "null-py": 2, "null-c-mxflags": 3,
                  "null-c-mxflags-data": 4}
        for key in sorted(groups, key=lambda k: (order[k[0]], k[2], forder.get(k[1], 9))):
            scen, filt, c = key
            g = groups[key]
            r = rate(key)
            cref = (scen, "null-c", c) if (scen, "null-c", c) in groups else ("protocol", "null-c", c)
            ratio = paired(key, cref)
            same = (scen, "null-c-mxflags-data", c)
            vs_same = paired(key, same) if scen == "protocol" and same in groups else None
            vs_base = (paired(key, ("protocol", filt, c))
                       if scen != "protocol" and ("protocol", filt, c) in groups
                       else paired(key, ("protocol", "mxsentry", c)) if scen == "checks" else None)
            sess = [x["ml"]["sessions"] for x in g]
            gen = med([x["ml"]["loadgen_cpu_s"] * 1e6 / max(1, x["ml"]["sessions"]) for x in g])
            fcpu = med([x["filter_cpu_s"] * 1e6 / max(1, x["ml"]["sessions"]) for x in g])
            fsys = med([100 * x.get("filter_sys_s", 0) / x["filter_cpu_s"] for x in g
                        if x["filter_cpu_s"] > 0])
            p50 = med([x["ml"]["p50_us"] / 1000 for x in g])
            p99 = med([x["ml"]["p99_us"] / 1000 for x in g])
            rt = med([x["ml"]["round_trips_per_session"] for x in g])
            errs = sum(x["ml"]["errors"] for x in g)
            load = "/".join(f"{x['load']:.1f}" for x in g)
            name = names[scen]
            if g[0].get("socket"):
                name += f" ({g[0]['socket']})"
            p(f"| {name} | {filt} | {c} | {fmt(r)} | {fmt(ratio, 2) if key != cref else '1'} | "
              f"{fmt(vs_same, 2)} | {fmt(vs_base, 2)} | "
              f"{fmt(p50, 2)} / {fmt(p99, 2)} | {fmt(rt, 1)} | {fmt(gen)} | {fmt(fcpu)} ({fmt(fsys)} % sys) | "
              f"{errs} | {load} |")
            if filt == "mxsentry" and scen in ("protocol", "checks"):
                targets.append((scen, c, ratio))
        p("")
        q = next((r for r in rows if r["scenario"] == "dns_warm_queries"), None)
        if q:
            p(f"DNS queries reaching the loopback DNS server during the measured all-checks runs "
              f"(after the warm-up): {q['queries']}.")
            p("")
        rs = [r for r in rows if r["scenario"] in ("rss_after_start", "rss_after_load")]
        if rs:
            p("Filter memory: " + "; ".join(
                f"{r['filter']} {r['scenario'].replace('_', ' ')}: RSS {r['rss_kb'] / 1024:.1f} MB"
                + (f" (peak {r['hwm_kb'] / 1024:.1f} MB)" if 'hwm_kb' in r else "")
                for r in rs) + ".")
            p("")

    # --- latency -----------------------------------------------------------------------------
    lt = [r for r in rows if r["scenario"] == "latency"]
    lat_added = {}
    if lt:
        p("## DNS latency hiding (every DNS answer 100 ms late, 20 ms MTA gaps)")
        p("")
        p("A new client per session (PTR + forward, 3 DNSBL, RHSBL, HELO lookup, nothing cached); "
          "gaps of 20 ms before HELO and before MAIL (MAIL and RCPT pipelined). `added` = "
          "CONNECT→RCPT reply minus the time spent in the gaps. `MTA writes`: `sendmail` writes "
          "every command at once; `postfix` keeps commands whose reply is not awaited in its "
          "buffer until the next awaited one (Postfix's VSTREAM flushes only before a read). "
          "`mxsentry` takes the client name the MTA verified (`[rdns] trust_mta`, the default; "
          "the generator sends Postfix's `{client_name}`); `mxsentry-own-lookups` looks it up "
          "itself (`trust_mta = false`): PTR then A/AAAA on the path.")
        p("")
        p("| filter | MTA writes | added p50 ms | added p99 ms | CONNECT→RCPT p50 ms | "
          "sessions | errors | replies |")
        p("|---|---|--:|--:|--:|--:|--:|---|")
        groups = {}
        for r in lt:
            groups.setdefault((r["filter"], r["mode"]), []).append(r)
        for key in sorted(groups, key=lambda k: (k[0] != "null-c", k[0], k[1] != "sendmail")):
            g = groups[key]
            a50 = med([stage(x["ml"], "added", "p50_us") for x in g])
            a99 = med([stage(x["ml"], "added", "p99_us") for x in g])
            c50 = med([stage(x["ml"], "connect_to_rcpt", "p50_us") for x in g])
            n = sum(x["ml"]["sessions"] for x in g)
            errs = sum(x["ml"]["errors"] for x in g)
            replies = summed_replies(g)
            p(f"| {key[0]} | {key[1]} | {fmt(a50 / 1000 if a50 else a50, 1)} | "
              f"{fmt(a99 / 1000 if a99 else a99, 1)} | {fmt(c50 / 1000 if c50 else c50, 1)} | {n} | "
              f"{errs} | {', '.join(f'{k} {v}' for k, v in sorted(replies.items()))} |")
            lat_added[key] = a50
        p("")

    # --- connections -------------------------------------------------------------------------
    cn = [r for r in rows if r["scenario"] == "connections"]
    conn = {}
    if cn:
        p("## Connections (idle MTA connections after OPTNEG, CONNECT, HELO)")
        p("")
        p("| filter | RSS idle MB | connections held | RSS held MB | per connection KB | errors |")
        p("|---|--:|--:|--:|--:|--:|")
        for r in cn:
            per = (r["rss_held_kb"] - r["rss_idle_kb"]) / r["held"] if r["held"] else None
            conn[r["filter"]] = (r["rss_idle_kb"], per, r["held"])
            p(f"| {r['filter']} | {r['rss_idle_kb'] / 1024:.1f} | {r['held']:,} | "
              f"{r['rss_held_kb'] / 1024:.1f} | {fmt(per, 1)} | {r['errors']} |")
        p("")

    # --- e2e ---------------------------------------------------------------------------------
    e2 = [r for r in rows if r["scenario"] == "e2e"]
    e2e_ratio = None
    e2e_serial = {}
    if e2:
        p("## End to end: smtp-source → Postfix → smtp-sink")
        p("")
        p("`smtp-source -s N -m M -l 1024` against a throwaway Postfix 3.7 on loopback (one "
          "message per SMTP session), without milter, with mxsentry (sender rules, nothing "
          "trusted: every session is checked) and with the null C filter; then one message at a "
          "time (`-s 1`) for the latency each message pays. Medians; `× none` = median of the "
          "per-run ratios to Postfix without milter (the setups rotate within a run).")
        p("")
        p("| setup | messages/s | × none | ms per message, one at a time | smtp-source CPU s | "
          "delivered | mxsentry decisions | load |")
        p("|---|--:|--:|--:|--:|--:|--:|--:|")
        base = {r["run"]: r["msgs"] / r["seconds"] for r in e2 if r["setup"] == "none"}
        labels = {"none": "Postfix without milter", "mxsentry": "Postfix + mxsentry",
                  "milter": "Postfix + mxsentry", "null-c": "Postfix + null C filter"}
        for setup in ("none", "mxsentry", "milter", "null-c"):
            g = [r for r in e2 if r["setup"] == setup]
            if not g:
                continue
            rate = med([r["msgs"] / r["seconds"] for r in g])
            pairs = [r["msgs"] / r["seconds"] / base[r["run"]] for r in g if base.get(r["run"])]
            ratio = med(pairs)
            serial = med([1000 * r["serial_seconds"] / r["serial_msgs"] for r in g
                          if r.get("serial_msgs")])
            e2e_serial[setup] = serial
            if setup in ("mxsentry", "milter"):
                e2e_ratio = ratio
            p(f"| {labels[setup]} | {fmt(rate)} | {fmt(ratio, 2)} | {fmt(serial, 1)} | "
              f"{fmt(med([r['src_cpu_s'] for r in g]), 2)} | "
              f"{'/'.join(str(r['delivered']) for r in g)} | {'/'.join(str(r['decisions']) for r in g)} | "
              f"{'/'.join(format(r['load'], '.1f') for r in g)} |")
        p("")

    # --- greylisting -------------------------------------------------------------------------
    gu = [r for r in rows if r["scenario"] == "greylist-unique"]
    gd = [r for r in rows if r["scenario"] == "greylist_daemon"]
    gs = [r for r in rows if r["scenario"] == "greylist_store"]
    gl_ratio = {}
    if gu:
        p("## Greylisting through the milter: a new triplet every session")
        p("")
        p("`milterload --unique-from`: every session has a sender never seen before, so every "
          "RCPT creates a triplet (mxsentry answers 450 greylisted; the null C filter, which "
          "stores nothing, goes on to EOM). mxsentry: sender rules (100,000 lines) + "
          "greylisting, embedded store with group commit every 1 s (design.md's durability), or "
          "Redis with AOF fsync every second. `× C` = median of the per-run ratios to the null C "
          "filter at the same concurrency.")
        p("")
        p("| filter | conc. | sessions/s | × C | session p50 / p99 ms | filter CPU µs/session | "
          "errors | replies | load |")
        p("|---|--:|--:|--:|--:|--:|--:|---|--:|")
        groups = {}
        for r in gu:
            groups.setdefault((r["filter"], r["c"]), []).append(r)
        forder = {"mxsentry-embedded": 0, "mxsentry-redis": 1, "null-c": 2}
        for key in sorted(groups, key=lambda k: (k[1], forder.get(k[0], 9))):
            filt, c = key
            g = groups[key]
            refs = {x["run"]: x["ml"]["sessions_per_sec"] for x in groups.get(("null-c", c), [])}
            ratio = med([x["ml"]["sessions_per_sec"] / refs[x["run"]] for x in g
                         if refs.get(x["run"])])
            if filt != "null-c":
                gl_ratio[(filt, c)] = ratio
            replies = summed_replies(g)
            p(f"| {filt} | {c} | {fmt(med([x['ml']['sessions_per_sec'] for x in g]))} | "
              f"{fmt(ratio, 2) if filt != 'null-c' else '1'} | "
              f"{fmt(med([x['ml']['p50_us'] / 1000 for x in g]), 2)} / "
              f"{fmt(med([x['ml']['p99_us'] / 1000 for x in g]), 2)} | "
              f"{fmt(med([x['filter_cpu_s'] * 1e6 / max(1, x['ml']['sessions']) for x in g]))} | "
              f"{sum(x['ml']['errors'] for x in g)} | "
              f"{', '.join(f'{k} {v}' for k, v in sorted(replies.items()))} | "
              f"{'/'.join(format(x['load'], '.1f') for x in g)} |")
        p("")
        for r in gd:
            if r["filter"] == "mxsentry-embedded":
                p(f"After the runs: mxsentry (embedded) RSS {r['rss_kb'] / 1024:.1f} MB, "
                  f"{r['triplets']:,} triplets, store file {r['store_bytes'] / 1e6:.1f} MB.")
            else:
                p(f"mxsentry (Redis) RSS {r['rss_kb'] / 1024:.1f} MB, redis-server RSS "
                  f"{r['redis_rss_kb'] / 1024:.1f} MB.")
        if gd:
            p("")
    if gs:
        p("## Greylist store at 1,000,000 triplets (`cargo bench --bench greylist`)")
        p("")
        p("`Greylister::check` from 64 tasks, half on stored triplets and half on new ones: "
          "5 s at full speed, then 5 s paced at 20,000 decisions/s. RSS: the bench process "
          "(the store in-process, as in the daemon) and, for Redis, redis-server.")
        p("")
        p("| backend | stored | preload s | decisions/s | p50 ms | p99 ms | p99 at 20k/s ms | "
          "store MB | RSS MB (bench / redis-server) |")
        p("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
        for r in gs:
            p(f"| {r['backend']} | {r['stored']:,} | {r['preload_s']:.1f} | {fmt(r['per_sec'])} | "
              f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['paced_p99_ms']:.3f} "
              f"(achieved {fmt(r['paced_per_sec'])}/s) | {r['store_mb']:.1f} | "
              f"{r['rss_bench_mb']:.0f} / {r['rss_redis_mb'] if r['rss_redis_mb'] is not None else '–'} |")
        p("")

    # --- targets -----------------------------------------------------------------------------
    p("## Targets (issue 7)")
    p("")
    p("| target | measured | met |")
    p("|---|---|---|")
    for scen in ("protocol", "checks"):
        ts = [(c, r) for s, c, r in targets if s == scen]
        if ts:
            ok = all(r is not None and r >= 1.0 for _, r in ts)
            name = "protocol" if scen == "protocol" else "all checks, warm DNS"
            p(f"| {name}: sessions/s ≥ null C at every concurrency (aim 1.5×) | "
              + ", ".join(f"c={c}: {r:.2f}×" for c, r in ts) + f" | {'yes' if ok else 'NO'} |")
    if lat_added:
        for key in (("mxsentry", "sendmail"), ("mxsentry", "postfix"),
                    ("mxsentry-own-lookups", "sendmail"), ("mxsentry-own-lookups", "postfix")):
            a = lat_added.get(key)
            if a is not None:
                p(f"| DNS latency hiding: added ≤ 10 ms ({key[0]}, {key[1]} writes) | "
                  f"{a / 1000:.1f} ms (p50) | {'yes' if a <= 10000 else 'NO, by ' + format((a - 10000) / 1000, '.0f') + ' ms'} |")
    if "mxsentry" in conn:
        idle, per, held = conn["mxsentry"]
        p(f"| RSS idle ≤ 20 MB (100,000 access rules loaded) | {idle / 1024:.1f} MB | "
          f"{'yes' if idle <= 20480 else 'NO, by ' + format((idle - 20480) / 1024, '.1f') + ' MB'} |")
        if per is not None:
            p(f"| ≤ 64 KB per open MTA connection | {per:.1f} KB ({held:,} held) | "
              f"{'yes' if per <= 64 else 'NO'} |")
    if e2e_ratio is not None:
        extra = ""
        if e2e_serial.get("mxsentry") and e2e_serial.get("none"):
            extra = (f"; one message at a time {e2e_serial['mxsentry']:.1f} ms vs "
                     f"{e2e_serial['none']:.1f} ms per message")
        p(f"| Postfix e2e with mxsentry ≥ 80% of without | {e2e_ratio:.0%}{extra} | "
          f"{'yes' if e2e_ratio >= 0.8 else 'NO, by ' + format((0.8 - e2e_ratio) * 100, '.0f') + ' points'} |")
    for r in gs:
        if r["backend"] == "embedded":
            ok = r["per_sec"] >= 20000 and r["paced_p99_ms"] <= 1.0 and r["rss_bench_mb"] <= 150
            p(f"| greylist, embedded, 1M triplets: ≥ 20,000 decisions/s, p99 ≤ 1 ms, RSS ≤ 150 MB | "
              f"{r['per_sec']:,.0f}/s (p99 {r['p99_ms']:.2f} ms at full speed, "
              f"{r['paced_p99_ms']:.2f} ms at 20,000/s), RSS {r['rss_bench_mb']:.0f} MB | "
              f"{'yes' if ok else 'NO' + (', p99 by ' + format(r['paced_p99_ms'] - 1, '.2f') + ' ms' if r['paced_p99_ms'] > 1 else '')} |")
    if gl_ratio:
        emb = [(c, v) for (f, c), v in sorted(gl_ratio.items(), key=lambda kv: kv[0][1])
               if f == "mxsentry-embedded"]
        red = [(c, v) for (f, c), v in sorted(gl_ratio.items(), key=lambda kv: kv[0][1])
               if f == "mxsentry-redis"]
        ok = all(v is not None and v >= 0.8 for _, v in emb)
        p("| greylist: unique-sender sessions ≥ 0.8× null C (embedded, durable) | "
          + ", ".join(f"c={c}: {fmt(v, 2)}×" for c, v in emb)
          + (" (Redis: " + ", ".join(f"c={c}: {fmt(v, 2)}×" for c, v in red) + ")" if red else "")
          + f" | {'yes' if ok else 'NO'} |")
    p("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
