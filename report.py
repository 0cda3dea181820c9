"""A picture of a job's run: one self-contained HTML file, and a short summary on stdout.
Runs on the user's machine.

    python report.py JOBNAME                        # results/JOB/report.html
    python report.py JOBNAME --out run.html --prices prices.csv

The report has four parts:
- Timeline: one lane per machine; each row's phases (waiting for launch, install, run,
  upload) are bars on one time axis, coloured by the row's outcome (succeeded, failed,
  timed out, lost); hovering a bar shows its tag, command, exit code and times.
- Run times: their distribution; rows that ran over 3x the median are named.
- Failures: each failed or timed-out row with the last lines of its log.
- Cost: instance-seconds per instance type, split into running a row and idle (launching,
  installing, waiting, uploading), and dollars: from --prices (a CSV of instance_type,
  price_per_hour) if given; else on-demand prices from the AWS Price List API and, for spot
  machines, the spot prices of the run's hours (DescribeSpotPriceHistory); else hours only.
  The report says which source it used.

Everything comes from the bucket, so a report can be made long after the machines are gone:
one listing of _awsrun/ (outcome, start and queued markers, and the dispatch records), one
GET per manifest (in parallel) and one for the budget record, and the last 4 KB of each failed
row's log. One
DescribeInstances says which rows are still running; without it, a row with no result is lost.
"""
from __future__ import annotations

import argparse
import html
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor


import cloud_setup as cs
import cost
import get_s3_files
import job_state
from cloud_setup import UserError, log

PHASES = [("launch", "waiting for launch"), ("install", "install"), ("run", "run"), ("upload", "upload")]
OUTCOMES = ["succeeded", "failed", "timed-out", "stopped-by-budget", "lost", "running", "queued"]
STRAGGLER = 3.0    # a row that ran this many times the median run time is named
LOG_BYTES = 4096   # the end of a failed row's log that the report shows
LOG_LINES = 12
MAX_LOGS = 100     # failed rows whose logs are read; the others are named only


# ---------------------------------------------------------------------------- the data

def load(job):
    """Everything the report needs from the bucket: (markers, dispatch records, manifests)."""
    s3, bucket = cs.client("s3"), job_state.job_bucket(job)
    objects = job_state.list_markers(bucket)
    if not objects:
        get_s3_files.list_objects(s3, bucket)  # one clear line if the bucket does not exist
        raise UserError("job %s has no results in s3://%s yet: see `make status JOB=%s`" % (job, bucket, job))
    finished = job_state.outcomes(objects)
    records = [o["Key"] for o in objects if o["Key"].startswith(job_state.DISPATCHED)]
    with ThreadPoolExecutor(32) as pool:
        dispatches = [r for r in pool.map(lambda k: job_state.read_json(s3, bucket, k), records) if r]
    manifests = job_state.read_manifests(s3, bucket, sorted(finished))
    for tag in sorted(finished):
        if tag not in manifests:
            log("%s: its outcome marker is in the bucket but not its manifest (its upload did not finish): "
                "shown without its times" % tag)
    return s3, bucket, objects, dispatches, manifests


def seconds(text):
    return cs.parse_time(text) if text else None


def build(job, objects, dispatches, manifests, live, now):
    """(rows, machines) of the run. A row: tag, command, type, machine, outcome, exit code,
    attempt and its phases [(phase, start, end)]; a machine: its lane, type, spot, launch
    and install times, its rows and its end."""
    finished, started, queued = job_state.outcomes(objects), job_state.starts(objects), job_state.queued(objects, job)
    machines, planned = {}, {}
    for record in sorted(dispatches, key=lambda r: r.get("dispatched", "")):
        for instance, m in record.get("machines", {}).items():
            machines[instance] = dict(m, id=instance, idle=record.get("idle"), pool=record.get("pool"))
        for tag, r in record.get("rows", {}).items():
            planned[tag] = dict(r, dispatched=record.get("dispatched"))
    for tag, m in manifests.items():  # the manifest knows its machine too (a dispatch record may be missing)
        machine = machines.setdefault(m["instance_id"], {"id": m["instance_id"], "tag": m.get("machine") or tag,
                                                         "type": m.get("instance_type"), "pool": bool(m.get("machine")),
                                                         "idle": m.get("idle")})
        for key in ("launched", "install_started", "install_ended", "spot", "slots"):
            if machine.get(key) is None and m.get(key) is not None:
                machine[key] = m[key]
    rows = []
    for tag in sorted(set(planned) | set(finished) | set(queued), key=cs.tag_order):
        m, plan = manifests.get(tag), planned.get(tag, {})
        row = {"tag": tag, "command": (m or plan).get("command") or "", "exit": None, "attempt": 1, "phases": [],
               "type": (m or {}).get("instance_type") or plan.get("instance_type") or queued.get(tag, {}).get("type")}
        instance = (m or {}).get("instance_id") or (started.get(tag) or {}).get("instance") or plan.get("instance_id")
        row["machine"] = machines.get(instance, {"id": instance, "tag": instance}) if instance else None
        if tag in finished:
            row["exit"] = finished[tag]["exit"]
            row["outcome"] = ("stopped-by-budget" if finished[tag].get("stopped") == "budget" else
                              "timed-out" if m and m.get("timed_out") else
                              "succeeded" if row["exit"] == 0 else "failed")
        elif instance in live:
            row["outcome"] = "running"
        elif tag in queued and tag not in started and live:
            row["outcome"] = "queued"
        else:
            row["outcome"] = "lost"
        row["host"] = (m or {}).get("host")
        if m:
            row["attempt"] = m.get("attempt") or 1
            row["times"] = [seconds(m.get(k)) for k in ("started", "ended", "uploaded")]
        elif tag in started:
            row["attempt"] = started[tag]["attempt"]
            row["times"] = [started[tag]["when"].timestamp(), None, None]
        elif plan.get("instance_id"):  # one machine per row: its run began when dispatch started it
            row["times"] = [seconds(plan.get("dispatched")), None, None]
        else:
            row["times"] = [None, None, None]
        rows.append(row)
    for machine in machines.values():
        for key in ("launched", "install_started", "install_ended"):
            machine[key] = seconds(machine.get(key))
    end = max([now if r["outcome"] == "running" else t for r in rows for t in r["times"] if t] + [
        m[k] for m in machines.values() for k in ("launched", "install_ended") if m.get(k)] + [0]) or now
    for row in rows:
        row["phases"] = phases(row, end, now)
        if row["machine"]:
            machines.get(row["machine"]["id"], {}).setdefault("rows", []).append(row)
    for machine in machines.values():
        mine = machine.setdefault("rows", [])
        ends = [t for r in mine for _, _, t in r["phases"]]
        machine["end"] = max(ends + [machine.get("install_ended") or 0]) or end
        if machine.get("pool") and machine.get("idle") and not any(r["outcome"] == "running" for r in mine):
            machine["end"] = min(max(end, now), machine["end"] + machine["idle"])  # it waits, then ends itself
    return rows, machines


def phases(row, end, now):
    """A row's bars [(phase, start, end)]: its machine's launch and install (in
    one-machine-per-row mode; a pool machine's are drawn once, on its lane), its run and its
    upload. A lost row's run is drawn to the last moment the run is known; a running one's to now."""
    bars, machine = [], row["machine"] or {}
    started, ended, uploaded = row["times"]
    if not machine.get("pool"):
        launched, i0, i1 = machine.get("launched"), machine.get("install_started"), machine.get("install_ended")
        if launched and (i0 or started):
            bars.append(("launch", launched, i0 or started))
        if i0 and i1:
            bars.append(("install", i0, i1))
    if started:
        stop = ended or (now if row["outcome"] == "running" else end)
        bars.append(("run", started, max(started, stop)))
    if ended and uploaded:
        bars.append(("upload", ended, max(ended, uploaded)))
    return bars


def run_time(row):
    started, ended, _ = row["times"]
    return ended - started if started and ended else None


# ---------------------------------------------------------------------------- cost

def union(intervals):
    total, last = 0.0, None
    for a, b in sorted(intervals):
        if last is None or a > last:
            total += b - a
            last = b
        elif b > last:
            total += b - last
            last = b
    return total


def usage(machines):
    """{(type, spot): {machines, running, idle, billed, start, end}}: instance-seconds per
    instance type, running a row (a pool machine's rows that overlap count once) and not; and
    as EC2 bills Linux machines: by the second, at least 60 s each."""
    found = {}
    for machine in machines.values():
        if not machine.get("launched"):
            continue
        life = max(0.0, machine["end"] - machine["launched"])
        busy = min(life, union([(a, b) for r in machine["rows"] for p, a, b in r["phases"] if p == "run"]))
        u = found.setdefault((machine["type"], bool(machine.get("spot"))), {
            "machines": 0, "running": 0.0, "idle": 0.0, "billed": 0.0, "start": machine["launched"],
            "end": machine["end"]})
        u["machines"] += 1
        u["running"] += busy
        u["idle"] += life - busy
        u["billed"] += max(60.0, life)
        u["start"], u["end"] = min(u["start"], machine["launched"]), max(u["end"], machine["end"])
    return found


# ---------------------------------------------------------------------------- the page

def clock(t):
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "?"


def axis_step(span):
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400):
        if span / step <= 10:
            return step
    return 86400 * max(1, int(span / 86400 / 10) + 1)


def tick_label(s):
    s = int(s)
    return "%d:%02d:%02d" % (s // 3600, s % 3600 // 60, s % 60) if s >= 3600 else "%d:%02d" % (s // 60, s % 60)


def lanes(rows, machines):
    """[(label, machine or None, [[row, ...] per sub-lane])]: one lane per machine, a pool
    machine's rows packed into as few sub-lanes as never overlap; rows with no machine last."""
    by_machine, alone = {}, []
    for r in rows:
        (by_machine.setdefault(r["machine"]["id"], []) if r["machine"] else alone).append(r)
    found = []
    for instance, mine in by_machine.items():
        machine = machines.get(instance, mine[0]["machine"])
        subs = []
        for r in sorted(mine, key=lambda r: r["phases"][0][1] if r["phases"] else 0):
            first = r["phases"][0][1] if r["phases"] else 0
            for sub in subs:
                if not sub[-1]["phases"] or sub[-1]["phases"][-1][2] <= first:
                    sub.append(r)
                    break
            else:
                subs.append([r])
        found.append((machine.get("tag") or instance, machine, subs))
    found.sort(key=lambda lane: min((r["phases"][0][1] for sub in lane[2] for r in sub if r["phases"]),
                                    default=float("inf")))
    return found + [(r["tag"], None, [[r]]) for r in alone]


def bar_title(row, phase, start, end):
    code = "" if row["exit"] is None else ", exit %s" % row["exit"]
    attempt = ", attempt %d" % row["attempt"] if row["attempt"] > 1 else ""
    return "%s: %s (%s%s%s)\n%s\n%s to %s (%s)%s" % (
        row["tag"], dict(PHASES)[phase], row["outcome"].replace("-", " "), code, attempt, row["command"],
        clock(start), clock(end)[11:], job_state.elapsed(end - start), host_lines(row.get("host")))


def host_lines(host):
    """Where a row ran, from its manifest's host: machine, CPU, system."""
    if not host:
        return ""
    return "\n%s (%s) in %s, %s\n%s, %s vCPUs, %.1f GiB\nkernel %s, %s, awsrun %s" % (
        host.get("instance_type"), host.get("instance_id"), host.get("zone"), host.get("lifecycle"),
        host.get("cpu_model") or "CPU unknown", host.get("cpus"), (host.get("memory_mb") or 0) / 1024,
        host.get("kernel"), host.get("ami"), host.get("awsrun"))


def timeline(rows, machines, now, deadline=None):
    """The SVG timeline; with a budget, its earliest deadline as a dashed line."""
    events = [t for r in rows for _, a, b in r["phases"] for t in (a, b)]
    events += [m[k] for m in machines.values() for k in ("launched", "end") if m.get(k)]
    if not events:
        return "<p>No row has started yet.</p>"
    t0, t1 = min(events), max(events)
    if deadline and t0 <= deadline <= t1 + 2 * max(1.0, t1 - t0):  # drawn unless it squeezes the run to a third
        t1 = max(t1, deadline)
    span = max(1.0, t1 - t0)
    left, width, bar, gap = 190, 900, 12, 8
    x = lambda t: left + (t - t0) / span * width  # noqa: E731
    parts, y = [], 24
    for label, machine, subs in lanes(rows, machines):
        height = len(subs) * (bar + 2) + gap
        parts.append('<text class="lane" x="%d" y="%d">%s</text>' % (left - 8, y + bar - 2, html.escape(label)))
        parts.append('<line class="lane" x1="%d" x2="%d" y1="%.1f" y2="%.1f"/>' % (
            left, left + width, y + height - gap / 2, y + height - gap / 2))
        if machine and machine.get("launched") and machine.get("end"):  # its whole life, behind its rows
            a, b = machine["launched"], machine["end"]
            parts.append('<rect class="life" x="%.1f" y="%d" width="%.1f" height="%d"><title>%s: up from %s to %s '
                         '(%s, as counted in the cost)</title></rect>' % (
                             x(a), y - 1, max(1.0, x(b) - x(a)), len(subs) * (bar + 2), html.escape(label),
                             clock(a), clock(b)[11:], job_state.elapsed(b - a)))
        if machine and machine.get("pool") and machine.get("launched"):
            for phase, a, b in (("launch", machine["launched"], machine.get("install_started")),
                                ("install", machine.get("install_started"), machine.get("install_ended"))):
                if a and b:
                    parts.append('<rect class="bar %s machine" x="%.1f" y="%d" width="%.1f" height="%d">'
                                 '<title>%s: %s\n%s to %s (%s)</title></rect>' % (
                                     phase, x(a), y, max(1.0, x(b) - x(a)), len(subs) * (bar + 2) - 2,
                                     html.escape(label), dict(PHASES)[phase], clock(a), clock(b)[11:],
                                     job_state.elapsed(b - a)))
        for i, sub in enumerate(subs):
            for row in sub:
                for phase, a, b in row["phases"]:
                    parts.append('<rect class="bar %s %s" data-tag="%s" data-phase="%s" x="%.1f" y="%d" '
                                 'width="%.1f" height="%d"><title>%s</title></rect>' % (
                                     phase, row["outcome"], html.escape(row["tag"]), phase, x(a), y + i * (bar + 2),
                                     max(1.0, x(b) - x(a)), bar, html.escape(bar_title(row, phase, a, b))))
        y += height
    if deadline and deadline <= t1:
        parts.append('<line class="budget" x1="%.1f" x2="%.1f" y1="16" y2="%d"><title>the budget\'s end: %s</title>'
                     '</line>' % (x(deadline), x(deadline), y, clock(deadline)))
    step = axis_step(span)
    ticks = "".join('<line class="tick" x1="%.1f" x2="%.1f" y1="16" y2="%d"/><text class="tick" x="%.1f" y="12">%s'
                    '</text>' % (x(t0 + s), x(t0 + s), y, x(t0 + s), tick_label(s))
                    for s in range(0, int(span) + 1, step))
    return ('<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
            'viewBox="0 0 %d %d">%s%s</svg>' % (left + width + 20, y + 4, left + width + 20, y + 4, ticks,
                                                 "".join(parts)))


def histogram(times):
    """A small SVG bar chart of the run times."""
    if not times:
        return ""
    low, high = min(times), max(times)
    count = max(1, min(20, round(len(times) ** 0.5)))
    size = max(1.0, (high - low) / count) if high > low else 1.0
    bins = [0] * count
    for t in times:
        bins[min(count - 1, int((t - low) / size))] += 1
    width, height = 600, 120
    w = width / count
    bars = "".join('<rect class="hist" x="%.1f" y="%.1f" width="%.1f" height="%.1f"><title>%s to %s: %d rows</title>'
                   '</rect>' % (i * w + 1, height - n / max(bins) * (height - 10), w - 2, n / max(bins) * (height - 10),
                                job_state.elapsed(low + i * size), job_state.elapsed(low + (i + 1) * size), n)
                   for i, n in enumerate(bins))
    return ('<svg class="histogram" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d">%s'
            '<text class="start" x="0" y="%d">%s</text><text class="end" x="%d" y="%d">%s</text></svg>' % (
                width, height + 16, bars, height + 14, job_state.elapsed(low), width, height + 14,
                job_state.elapsed(high)))


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1160px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left;border-bottom:1px solid #eee}
td.n{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px}
.bar.succeeded,.key.succeeded{fill:#2e7d32;background:#2e7d32}
.bar.failed,.key.failed{fill:#c62828;background:#c62828}
.bar.timed-out,.key.timed-out{fill:#ef6c00;background:#ef6c00}
.bar.stopped-by-budget,.key.stopped-by-budget{fill:#f9a825;background:#f9a825}
line.budget{stroke:#f9a825;stroke-width:2;stroke-dasharray:5 3}
.bar.lost,.key.lost{fill:#6a1b9a;background:#6a1b9a}
.bar.running,.key.running{fill:#1565c0;background:#1565c0}
.bar.queued,.key.queued{fill:#90a4ae;background:#90a4ae}
.bar.machine{fill:#607d8b}.key.phase{background:#37474f}
.launch{opacity:.25}.install{opacity:.5}.upload{opacity:.7}
.bar{stroke:#fff;stroke-width:1}.bar:hover{stroke:#000}rect.life{fill:#f1f3f4}
.key{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:-1px}
text{font-size:11px;fill:#444}text.lane{text-anchor:end}text.tick{text-anchor:middle}text.end{text-anchor:end}text.start{text-anchor:start}
line.tick{stroke:#eee}line.lane{stroke:#f3f3f3}rect.hist{fill:#5c6bc0}
"""


def summary(rows):
    """What both the page and stdout say of the rows: counts by outcome, [(run time, row)],
    the median run time and the stragglers, slowest first."""
    counts = {o: sum(r["outcome"] == o for r in rows) for o in OUTCOMES}
    times = [(run_time(r), r) for r in rows if run_time(r) is not None]
    median = statistics.median([t for t, _ in times]) if times else 0
    slow = sorted(((t, r) for t, r in times if median and t > STRAGGLER * median), key=lambda p: -p[0])
    return counts, times, median, slow


def makespan(rows, machines):
    """A pool's (makespan, its lower bound, the longest row, total row time, slots): from the
    first row's start to the last one's end, against the best any order could do, the longest
    row or the total row time over every machine's slots; None if no pool row has ended."""
    ran = [r["times"][:2] for r in rows if r["machine"] and r["machine"].get("pool") and None not in r["times"][:2]]
    slots = sum(m.get("slots") or 0 for m in machines.values() if m.get("pool"))
    if not ran or not slots:
        return None
    longest, total = max(b - a for a, b in ran), sum(b - a for a, b in ran)
    return max(b for _, b in ran) - min(a for a, _ in ran), max(longest, total / slots), longest, total, slots


def makespan_words(found):
    span, bound, longest, total, slots = found
    return "makespan %s, %.2fx its lower bound %s (the longest row %s; total row time %s over %s)" % (
        job_state.elapsed(span), span / max(bound, 1e-9), job_state.elapsed(bound), job_state.elapsed(longest),
        job_state.elapsed(total), cost.plural(slots, "slot"))


def counted(counts):
    return ", ".join("%d %s" % (n, o.replace("-", " ")) for o, n in counts.items() if n)


def plan_and_bill(planned, used, prices, machines):
    """[(what, USD, machine-hours, makespan)] of the plan (its median case) and of the bill."""
    total = planned["total"]
    billed = sum(u["billed"] for u in used.values())
    usd = [cost.dollars(u, prices.get(k)) for k, u in used.items()]
    starts = [m["launched"] for m in machines.values() if m.get("launched")]
    span = max([m["end"] for m in machines.values() if m.get("end")] or [0]) - min(starts or [0])
    return [("planned", total["usd"].get("p50"), total["hours"].get("p50", 0), total["makespan"].get("p50", 0)),
            ("billed", None if None in usd else sum(usd), billed / 3600, span)]


def budget_words(budget):
    """The job's budget in one line: its dollars, and the most its machines could bill by their deadlines."""
    most = cost.Budget(None, None, budget).committed({})  # every machine to its deadline
    ends = [m["deadline"] for m in budget["machines"].values()]
    return "budget: %s; its %s could bill at most %s, at the prices it counted, ending by %s" % (
        cost.money(budget["usd"]), cost.plural(len(ends), "machine"), cost.money(most),
        clock(max(ends)) if ends else "-")


def page(job, bucket, rows, told, machines, used, prices, source, logs, now, budget=None):
    """The HTML page; `told` is summary(rows)."""
    counts, times, median, slow = told
    out = ["<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>awsrun report: %s</title><style>%s"
           "</style></head><body>" % (html.escape(job), CSS)]
    out.append("<h1>awsrun report: job %s</h1><p>%d rows: %s. Bucket s3://%s. Made %s.</p>" % (
        html.escape(job), len(rows), counted(counts), html.escape(bucket), clock(now)))
    out.append("<h2>Timeline</h2><p>One lane per machine (its light band: from its launch to its end), on one "
               "time axis from the first launch. Phases:%s. "
               "Colour: the row's outcome:%s. Hover a bar for its tag, command, exit code and times.</p>" % (
                   "".join('<span class="key phase %s"></span>%s' % (p, words) for p, words in PHASES),
                   "".join('<span class="key %s"></span>%s' % (o, o.replace("-", " ")) for o in OUTCOMES if counts[o])))
    ends = [m["deadline"] for m in (budget or {}).get("machines", {}).values()]
    out.append(timeline(rows, machines, now, min(ends) if ends else None))
    out.append("<h2>Run times</h2>")
    if times:
        out.append("<p>%d rows ran; median %s, longest %s.</p>%s" % (
            len(times), job_state.elapsed(median), job_state.elapsed(max(t for t, _ in times)),
            histogram([t for t, _ in times])))
        out.append("<p>Stragglers (over %g&times; the median): %s</p>" % (STRAGGLER, ", ".join(
            "%s (%s)" % (html.escape(r["tag"]), job_state.elapsed(t)) for t, r in slow) or "none"))
        if makespan(rows, machines):
            out.append("<p>The pool: %s.</p>" % makespan_words(makespan(rows, machines)))
    else:
        out.append("<p>No row has finished yet.</p>")
    failed = [r for r in rows if r["outcome"] in ("failed", "timed-out", "stopped-by-budget", "lost")]
    out.append("<h2>Failures</h2>" + ("" if failed else "<p>None.</p>"))
    for r in failed:
        why = {"failed": "exit %s" % r["exit"], "timed-out": "stopped at its time limit (exit %s)" % r["exit"],
               "stopped-by-budget": "stopped by the budget, before its machine had to end (exit %s)" % r["exit"],
               "lost": "lost: its machine ended before it uploaded a result"}[r["outcome"]]
        out.append("<h3>%s: %s</h3><p><code>%s</code></p>" % (html.escape(r["tag"]), why, html.escape(r["command"])))
        if r["tag"] in logs:
            out.append("<pre>%s</pre>" % html.escape(logs[r["tag"]]))
    out.append("<h2>Cost</h2><table><tr><th>instance type</th><th>machines</th><th>running a row</th><th>idle</th>"
               "<th>billed hours</th><th>USD per hour</th><th>USD</th></tr>")
    total = 0.0
    for (itype, spot), u in sorted(used.items()):
        price = prices.get((itype, spot))
        total += cost.dollars(u, price) or 0
        out.append("<tr><td>%s%s</td><td class=n>%d</td><td class=n>%s</td><td class=n>%s</td><td class=n>%.3f</td>"
                   "<td class=n>%s</td><td class=n>%s</td></tr>" % (
                       itype, " (spot)" if spot else "", u["machines"], job_state.elapsed(u["running"]),
                       job_state.elapsed(u["idle"]), u["billed"] / 3600, "-" if price is None else "%.4f" % price,
                       "-" if price is None else cost.money(cost.dollars(u, price))))
    out.append("</table><p>Prices: %s. Machines are counted from launch to their last upload (a pool machine: "
               "plus the idle wait after which it ends itself), and billed as EC2 bills Linux: by the second, at "
               "least 60 s per machine.%s</p>" % (html.escape(source),
                                                  " Estimated total: %s." % cost.money(total) if prices else ""))
    if budget:
        out.append("<p>%s</p>" % html.escape(budget_words(budget)))
    if budget and budget.get("plan"):
        out.append("<h2>Plan and bill</h2><table><tr><th></th><th>USD</th><th>machine-hours</th><th>done after</th>"
                   "</tr>%s</table><p>The plan is what create expected at the median row time (%s); the bill, "
                   "the cost above.</p>" % ("".join(
                       "<tr><td>%s</td><td class=n>%s</td><td class=n>%.2f</td><td class=n>%s</td></tr>" % (
                           what, "-" if usd is None else cost.money(usd), hours, job_state.elapsed(span))
                       for what, usd, hours, span in plan_and_bill(budget["plan"], used, prices, machines)),
                       html.escape(budget["plan"]["times"])))
    out.append("</body></html>\n")
    return "".join(out)


def log_tails(s3, bucket, rows, manifests):
    """{tag: the last lines of its screen_output.txt} for failed and timed-out rows."""
    def tail(tag):
        sizes = {f["path"]: f["size"] for f in manifests[tag].get("files", [])}
        if not sizes.get("screen_output.txt"):
            return tag, "(its log is empty)"
        data = s3.get_object(Bucket=bucket, Key=tag + "/screen_output.txt",
                             Range="bytes=-%d" % LOG_BYTES)["Body"].read().decode("utf-8", "replace")
        return tag, "\n".join(data.splitlines()[-LOG_LINES:])
    wanted = [r["tag"] for r in rows if r["outcome"] in ("failed", "timed-out", "stopped-by-budget")
              and r["tag"] in manifests]
    with ThreadPoolExecutor(16) as pool:
        return dict(pool.map(tail, wanted[:MAX_LOGS]))


def report(job, out, prices_file=None):
    now = time.time()
    if prices_file:
        cost.prices_from_file(prices_file)  # a mistake in it is said before anything is read
    s3, bucket, objects, dispatches, manifests = load(job)
    live = {n["id"] for n in job_state.find_nodes(job) if n["state"] in job_state.LIVE}
    rows, machines = build(job, objects, dispatches, manifests, live, now)
    used = usage(machines)
    prices, source = cost.price_list(used, prices_file) if used else ({}, "no machine times are known")
    told = summary(rows)
    budget = job_state.read_json(s3, bucket, job_state.BUDGET)
    text = page(job, bucket, rows, told, machines, used, prices, source, log_tails(s3, bucket, rows, manifests), now,
                budget)
    counts, _, median, slow = told
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".part", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(out + ".part", out)
    print("job %s: %s: %s; %s" % (job, cost.plural(len(rows), "row"), counted(counts),
                                  cost.plural(len(machines), "machine")))
    if median:
        print("run times: median %s; %s" % (job_state.elapsed(median), "stragglers (over %gx the median): %s" % (
            STRAGGLER, " ".join(r["tag"] for _, r in slow)) if slow else "no stragglers"))
    if makespan(rows, machines):
        print("pool: " + makespan_words(makespan(rows, machines)))
    for (itype, spot), u in sorted(used.items()):
        price = prices.get((itype, spot))
        print("cost: %s%s: %s, %.3f h running a row, %.3f h idle%s" % (
            itype, " (spot)" if spot else "", cost.plural(u["machines"], "machine"), u["running"] / 3600,
            u["idle"] / 3600, "" if price is None else ", %s" % cost.money(cost.dollars(u, price))))
    print("prices: %s" % source)
    if budget:
        print(budget_words(budget))
    if budget and budget.get("plan"):
        print("plan and bill: " + "; ".join("%s %s, %.2f machine-hours, done after %s" % (
            what, "no price" if usd is None else cost.money(usd), hours, job_state.elapsed(span))
            for what, usd, hours, span in plan_and_bill(budget["plan"], used, prices, machines)))
    print("report: %s" % out)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job")
    p.add_argument("--out", help="the HTML file to write (default results/JOB/report.html)")
    p.add_argument("--prices", metavar="CSV", help="USD per hour per instance type: columns "
                   "instance_type,price_per_hour (used instead of the AWS Price List API)")
    args = p.parse_args(argv)

    def run():
        cs.check_job_name(args.job)
        return report(args.job, args.out or os.path.join("results", args.job, "report.html"), args.prices)
    return cs.run_cli(run)


if __name__ == "__main__":
    cs.leave(main())
