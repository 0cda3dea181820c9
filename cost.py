"""What a job costs: the prices (the user's file, the AWS Price List API, the spot price history),
and the plan before a run (--plan: machines, machine-hours and dollars, from --hours or from an
earlier job's manifests, with --like). report.py prices the bill with it. Runs on the user's
machine.

    python dispatcher.py AMI JOBNAME JOBFILE --plan [create's options] [--hours H | --like OLDJOB]
                         [--prices FILE] [--json]                           # make plan

Machine time counts as EC2 bills a Linux machine: by the second, at least 60 s each.
"""
from __future__ import annotations

import csv
import functools
import heapq
import json
import statistics
import time

from botocore.exceptions import BotoCoreError, ClientError

import cloud_setup as cs
import job_state
import launch
from cloud_setup import UserError, log

PRICE_REGION = "us-east-1"  # the Price List API answers in us-east-1 (and ap-south-1, eu-central-1)


# ---------------------------------------------------------------------------- prices

def prices_from_file(path):
    """{type: USD per hour} from a CSV with columns instance_type and price_per_hour."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return {r["instance_type"].strip(): float(r["price_per_hour"]) for r in csv.DictReader(f)}
    except OSError as e:
        raise UserError("--prices %s cannot be read: %s" % (path, e.strerror), code=2) from None
    except (KeyError, ValueError, TypeError, AttributeError):
        raise UserError("--prices %s must be a CSV with the columns instance_type,price_per_hour "
                        "(US dollars per hour)" % path, code=2) from None


def on_demand_price(pricing, instance_type, region):
    """USD per hour of a Linux, shared-tenancy instance type in a region, from the Price List API."""
    terms = [("instanceType", instance_type), ("regionCode", region), ("operatingSystem", "Linux"),
             ("tenancy", "Shared"), ("preInstalledSw", "NA"), ("capacitystatus", "Used"),
             ("licenseModel", "No License required")]
    answer = pricing.get_products(ServiceCode="AmazonEC2", MaxResults=10,
                                  Filters=[{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in terms])
    for item in answer.get("PriceList", []):
        product = json.loads(item) if isinstance(item, str) else item
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term.get("priceDimensions", {}).values():
                usd = dimension.get("pricePerUnit", {}).get("USD")
                if usd is not None and dimension.get("unit", "Hrs") == "Hrs":
                    return float(usd)
    return None


def spot_price(ec2, instance_type, start, end):
    """The mean spot price (USD per hour) of a type over the run's hours, across the region's
    zones: EC2 returns the prices in effect in that window, back to 90 days."""
    pages = ec2.get_paginator("describe_spot_price_history").paginate(
        InstanceTypes=[instance_type], StartTime=start, EndTime=max(end, start + 1))
    found = [float(p["SpotPrice"]) for page in pages for p in page["SpotPriceHistory"]
             if p.get("ProductDescription", "").startswith("Linux/UNIX")]
    return statistics.mean(found) if found else None


def price_list(used, prices_file=None, pricing=None, ec2=None, spot_words="spot prices of the run's hours"):
    """({(type, spot): USD per hour}, the source in words): from the user's file if given,
    else from AWS: on-demand from the Price List API, spot as the mean of the prices in effect
    between each key's "start" and "end" (`spot_words` says which those are)."""
    if prices_file:
        table = prices_from_file(prices_file)
        return {k: table[k[0]] for k in used if k[0] in table}, "prices from %s" % prices_file
    found, sources, why = {}, [], []
    try:
        if any(not spot for _, spot in used):
            if pricing is None:
                with cs.SESSION_LOCK:
                    pricing = cs.session().client("pricing", region_name=PRICE_REGION, config=cs.retries(3))
            for itype, spot in used:
                if not spot:
                    found[(itype, spot)] = on_demand_price(pricing, itype, cs.region())
            sources.append("on-demand prices from the AWS Price List API (%s)" % cs.region())
    except (ClientError, BotoCoreError) as e:
        why.append("the AWS Price List API could not be read (%s)" % (cs.error_code(e) if isinstance(e, ClientError)
                                                                       else type(e).__name__))
    try:
        if any(spot for _, spot in used):
            ec2 = ec2 or cs.client("ec2")
            for (itype, spot), u in used.items():
                if spot:
                    found[(itype, spot)] = spot_price(ec2, itype, u["start"], u["end"])
            sources.append("%s from DescribeSpotPriceHistory" % spot_words)
    except (ClientError, BotoCoreError) as e:
        why.append("the spot price history could not be read (%s)" % (cs.error_code(e) if isinstance(e, ClientError)
                                                                       else type(e).__name__))
    found = {k: v for k, v in found.items() if v is not None}
    if not found:
        return {}, "no prices: %s; pass --prices FILE (instance_type,price_per_hour) for dollars" % (
            "; ".join(why) or "none found for these instance types")
    return found, "; ".join(sources + why)


def dollars(used, price):
    """The billed cost of one type's machines, or None without a price."""
    return None if price is None else used["billed"] / 3600 * price


def plural(n, word):
    return "%d %s%s" % (n, word, "" if n == 1 else "s")


def money(usd):
    return "$%.2f" % usd if usd >= 10 else "$%.4f" % usd if usd >= 0.01 else "$%.6f" % usd


# ---------------------------------------------------------------------------- the plan

SETUP_GUESS = 600  # seconds from launch to a prepared machine when no earlier job says (boot, copy, install)


def quantile(values, q):
    """The q-quantile of some numbers, linear between the nearest ranks (q=0.5: the median)."""
    ordered = sorted(values)
    at = q * (len(ordered) - 1)
    low = int(at)
    return ordered[low] + (ordered[min(low + 1, len(ordered) - 1)] - ordered[low]) * (at - low)


@functools.lru_cache(maxsize=None)
def succeeded_like(job):
    """[(manifest, its times)] of an earlier job's succeeded rows, by tag; read once a run."""
    s3, bucket = cs.client("s3"), job_state.job_bucket(job)
    finished = job_state.outcomes(job_state.list_markers(bucket))
    if not finished:
        raise UserError("--like %s: that job has no results in s3://%s to learn row times from" % (job, bucket), code=2)
    found = []
    for _, m in sorted(job_state.read_manifests(s3, bucket, sorted(finished)).items()):
        times = {k: cs.parse_time(m.get(k) or "") for k in ("launched", "install_ended", "started", "ended",
                                                             "uploaded")}
        if m.get("exit_code") == 0 and None not in (times["started"], times["ended"]):
            found.append((m, times))
    return found


def command_times(job):
    """{command: its median run time, s} over an earlier job's succeeded rows."""
    runs = {}
    for m, times in succeeded_like(job):
        runs.setdefault(m.get("command"), []).append(times["ended"] - times["started"])
    return {command: statistics.median(seconds) for command, seconds in runs.items()}


def times_like(job):
    """{type: {"run": [s], "setup": [s], "upload": [s]}} from an earlier job's manifests: each
    succeeded row's run (started to ended) and upload (ended to uploaded), and each machine's
    setup (launched to the end of its install)."""
    found, machines = {}, set()
    for m, times in succeeded_like(job):
        t = found.setdefault(m.get("instance_type"), {"run": [], "setup": [], "upload": []})
        t["run"].append(times["ended"] - times["started"])
        if times["uploaded"] is not None:
            t["upload"].append(times["uploaded"] - times["ended"])
        if m["instance_id"] not in machines and None not in (times["launched"], times["install_ended"]):
            machines.add(m["instance_id"])
            t["setup"].append(times["install_ended"] - times["launched"])
    return found


def row_estimates(types, hours=None, like=None):
    """{type: {"setup": s, "upload": s, "p50": s, "p90": s} or None (unknown)} and the words for
    where they came from."""
    if hours is not None:
        return ({t: {"setup": SETUP_GUESS, "upload": 0, "p50": hours * 3600, "p90": hours * 3600} for t in types},
                "--hours %g for every row; launch and install taken as %s a machine (--like OLDJOB measures them)"
                % (hours, job_state.elapsed(SETUP_GUESS)))
    if like is None:
        return {t: None for t in types}, "unknown: give --hours H or --like OLDJOB"
    measured, found = times_like(like), {}
    for t in types:
        m = measured.get(t)
        found[t] = m and {"setup": statistics.median(m["setup"]) if m["setup"] else SETUP_GUESS,
                          "upload": statistics.median(m["upload"]) if m["upload"] else 0,
                          "p50": quantile(m["run"], 0.5), "p90": quantile(m["run"], 0.9)}
    lacking = sorted(t for t in types if not found[t])
    return found, ("the succeeded rows of job %s: the median and 90th percentile of their run times per type, and "
                   "the median launch and install of its machines%s"
                   % (like, "; unknown for " + " ".join(lacking) if lacking else ""))


def place(rows, machines, slots, seconds):
    """Each machine's busy time when `rows` rows of `seconds` each are placed, longest first,
    on the first free of `slots` slots of `machines` machines."""
    free = [(0.0, k, j) for k in range(machines) for j in range(slots)]  # a heap: (free from, machine, slot)
    busy = [0.0] * machines
    for _ in range(rows):
        start, k, j = heapq.heappop(free)
        busy[k] = max(busy[k], start + seconds)
        heapq.heappush(free, (start + seconds, k, j))
    return busy


def estimate(rows, machines, slots, setup, row_seconds, idle):
    """(billed machine-seconds, makespan in seconds) of one type's rows: each machine set up,
    busy with its rows, then idle (a pool machine's wait on an empty queue) until it ends; at
    least 60 s each, as EC2 bills."""
    busy = place(rows, machines, slots, row_seconds)
    return sum(max(60.0, setup + b + idle) for b in busy), setup + max(busy)


def plan(args, placement, wanted):
    """What the run would cost: {"types": [one dict per instance type], "total": {...}, and the
    sources of its times and prices}. Reads AWS (instance types, quotas, prices, an earlier job's
    manifests) and makes nothing. A row's type list (a|b) is planned as its first type."""
    wanted = {tag: (line, cs.alternatives(itype)[0], command) for tag, (line, itype, command) in wanted.items()}
    rows = {}
    for _line, itype, _command in wanted.values():
        rows[itype] = rows.get(itype, 0) + 1
    spot = bool(getattr(args, "spot", False))
    vcpus = {t: d["VCpuInfo"]["DefaultVCpus"] for t, d in launch.instance_types(set(rows)).items()}
    machines = {}
    for _line, itype, _command in placement.machines(wanted, vcpus, spot).values():
        machines[itype] = machines.get(itype, 0) + 1
    estimates, times_source = row_estimates(rows, args.hours, args.like)
    now = time.time()
    keys = {(t, False): {"start": now, "end": now} for t in rows}
    keys.update({(t, True): {"start": now, "end": now} for t in rows if spot})
    prices, price_source = price_list(keys, args.prices, spot_words="the current spot prices")
    limit, idle = args.max_runtime or None, placement.idle
    types, total = [], {"rows": 0, "machines": 0, "hours": {}, "usd": {}, "usd_at_cap": {}, "makespan": {}}
    for t in sorted(rows):
        family = launch.quota_family(t)
        e = estimates[t] or {"setup": SETUP_GUESS, "upload": 0}
        slots = placement.slots(vcpus[t])
        cases = {k: e[k] for k in ("p50", "p90") if k in e}
        if limit:
            cases["worst"] = limit
        price, cap = prices.get((t, spot)), prices.get((t, False))
        one = {"type": t, "rows": rows[t], "machines": machines[t], "slots": slots, "vcpus": machines[t] * vcpus[t],
               "quota": launch.vcpu_quota(family, spot) if family else None, "spot": spot, "price": price,
               "cap": cap if spot else None, "setup": e["setup"], "run": {k: e.get(k) for k in ("p50", "p90")},
               "hours": {}, "usd": {}, "usd_at_cap": {}, "makespan": {}}
        for case, run in cases.items():
            billed, span = estimate(rows[t], machines[t], slots, e["setup"], run + e["upload"], idle)
            one["hours"][case], one["makespan"][case] = billed / 3600, span
            one["usd"][case] = None if price is None else billed / 3600 * price
            one["usd_at_cap"][case] = None if not spot or cap is None else billed / 3600 * cap
        types.append(one)
        total["rows"] += rows[t]
        total["machines"] += machines[t]
    for case in ("p50", "p90", "worst"):
        if all(case in one["hours"] for one in types):
            total["hours"][case] = sum(one["hours"][case] for one in types)
            total["makespan"][case] = max(one["makespan"][case] for one in types)
            for key in ("usd", "usd_at_cap"):
                values = [one[key][case] for one in types]
                total[key][case] = None if None in values else sum(values)
    return {"job": args.job, "placement": "pool" if placement.pooled else "one machine per row",
            "max_runtime": limit, "times": times_source, "prices": price_source, "types": types, "total": total}


CASES = (("p50", "median"), ("p90", "90th percentile"), ("worst", "worst case"))


def plan_lines(planned):
    """The plan as the lines `--plan` prints: one line per instance type and case, and the total."""
    def dollars_of(one, case):
        usd, cap = one["usd"].get(case), one["usd_at_cap"].get(case)
        if usd is None:
            return "no price"
        return money(usd) + (" (%s at the spot cap)" % money(cap) if cap is not None else "")

    out = ["plan for job %s: %s on %s (%s); nothing was made" % (
        planned["job"], plural(planned["total"]["rows"], "row"), plural(planned["total"]["machines"], "machine"),
        planned["placement"]),
        "row times: %s" % planned["times"], "prices: %s" % planned["prices"]]
    for one in planned["types"]:
        price = "no price" if one["price"] is None else "%s/h%s" % (
            money(one["price"]), " spot now, cap %s/h" % money(one["cap"]) if one["spot"] and one["cap"] else "")
        quota = "of a quota of %d" % one["quota"] if one["quota"] is not None else "(quota unknown)"
        out.append("%s: %s, %s%s, %d vCPUs %s; %s" % (
            one["type"], plural(one["rows"], "row"), plural(one["machines"], "machine"),
            " x %d slots" % one["slots"] if one["slots"] > 1 else "", one["vcpus"], quota, price))
        if one["quota"] is not None and one["vcpus"] > one["quota"]:
            out.append("  over the vCPU quota: create would refuse (docs/troubleshooting.md says how to raise it)")
        for case, words in CASES:
            if case in one["hours"]:
                run = one["run"].get(case) if case != "worst" else planned["max_runtime"]
                out.append("  %s: rows of %s: %.2f machine-hours, %s, done after %s" % (
                    words, job_state.elapsed(run), one["hours"][case], dollars_of(one, case),
                    job_state.elapsed(one["makespan"][case])))
        if "worst" not in one["hours"]:
            out.append("  worst case: no limit (--max-runtime 0): a row that hangs bills until you end it")
    total = planned["total"]
    for case, words in CASES:
        if case in total["hours"]:
            out.append("total, %s: %.2f machine-hours, %s, done after %s" % (
                words, total["hours"][case], "no price" if total["usd"][case] is None else money(total["usd"][case]) + (
                    " (%s at the spot cap)" % money(total["usd_at_cap"][case])
                    if total["usd_at_cap"].get(case) is not None else ""), job_state.elapsed(total["makespan"][case])))
    if not any(one["price"] is not None for one in planned["types"]):
        out.append("no dollars without prices: pass --prices FILE (instance_type,price_per_hour), or allow "
                   "pricing:GetProducts")
    return out


def plan_command(args, placement, wanted):
    """--plan: print what the run would cost (as JSON with --json); make nothing."""
    if args.prices:
        prices_from_file(args.prices)  # a mistake in it is said before AWS is asked
    planned = plan(args, placement, wanted)
    if args.json:
        print(json.dumps(planned, indent=1))
        log("plan: nothing was made")
    else:
        print("\n".join(plan_lines(planned)))
    return 0


# ---------------------------------------------------------------------------- the budget

UPLOAD_MARGIN = 300  # seconds before a budget's end that a row is stopped at the latest, for its upload


def upload_margin():
    return int(cs.awsrun_env("UPLOAD_MARGIN", UPLOAD_MARGIN))


class Budget:
    """A job's budget (--budget USD): the most its instances may bill, at the prices it counts
    (the on-demand price, which is also a spot machine's cap and MaxPrice; or --prices). Every
    machine launched under it gets a deadline, by which its OS shutdown is armed from its boot
    on; the deadline of machines launched together is the time at which, with what the job's
    other machines ran or are armed to run, the budget is spent. Its record is in the bucket."""

    def __init__(self, job, bucket, record):
        self.job, self.bucket, self.record = job, bucket, record

    @classmethod
    def of(cls, args, bucket):
        """The job's budget: --budget, or the one recorded by an earlier command; None if neither."""
        try:
            record = job_state.read_json(cs.client("s3"), bucket, job_state.BUDGET)
        except ClientError as e:  # a bucket that is not made yet has no budget
            if cs.error_code(e) != "NoSuchBucket":
                raise
            record = None
        if not getattr(args, "budget", None) and not record:
            return None
        if args.prices:
            prices_from_file(args.prices)
        record = dict(record or {"machines": {}, "prices": {}}, usd=args.budget or record["usd"])
        return cls(args.job, bucket, record)

    def prices_for(self, types, prices_file=None):
        """{type: USD per hour} the budget counts, those recorded first; UserError if one has none.
        A type list (a|b) counts as its dearest type: the budget holds whichever one launches."""
        wanted = sorted({a for t in types for a in cs.alternatives(t)} - set(self.record["prices"]))
        if wanted:
            now = time.time()
            found, source = price_list({(t, False): {"start": now, "end": now} for t in wanted}, prices_file)
            lacking = [t for t in wanted if (t, False) not in found]
            if lacking:
                raise UserError("--budget: no price for %s (%s): pass --prices FILE (instance_type,price_per_hour)"
                                % (" ".join(lacking), source), code=2)
            self.record["prices"].update({t: found[(t, False)] for t in wanted})
        return {t: max(self.record["prices"][a] for a in cs.alternatives(t)) for t in types}

    def committed(self, ended, leave_out=()):
        """USD the job's recorded machines ran, or are armed to run: from launch to their end
        if they have ended (`ended`: {id: when}), else to their deadline; 60 s at least."""
        return sum(m["price"] * max(60.0, min(ended.get(i) or m["deadline"], m["deadline"]) - m["launched"]) / 3600
                   for i, m in self.record["machines"].items() if i not in leave_out)

    def deadline(self, machines, launched, ended, setup, prices_file=None):
        """The deadline of machines to be launched (machines: [type], launched: [when, or None
        for now]) such that the job's instances bill at most the budget; UserError, before
        anything is made, if that does not pay for launching and preparing them (`setup` s)."""
        prices = self.prices_for(set(machines), prices_file)
        now = time.time()
        rate = sum(prices[t] for t in machines)
        left = self.record["usd"] - self.committed(ended)
        start = sum(prices[t] * (when or now) for t, when in zip(machines, launched)) / rate
        deadline = start + left / rate * 3600
        need = rate * max(60.0, setup) / 3600
        if deadline < max(now, start) + max(60.0, setup):
            spent = self.record["usd"] - left
            raise UserError("--budget %s does not pay for launching and preparing %s (about %s at %s/h, %s):%s "
                            "give at least --budget %.2f" % (
                                money(self.record["usd"]), plural(len(machines), "machine"), money(need), money(rate),
                                job_state.elapsed(max(60.0, setup)),
                                " %s of it is spent or armed already;" % money(spent) if spent > 0 else "",
                                spent + need + 0.005), code=2)
        return int(deadline)

    def add(self, nodes, deadline):
        """Record machines launched under the budget, and write the record to the bucket."""
        for n in nodes:
            self.record["machines"][n["id"]] = {"type": n["type"], "price": self.record["prices"][n["type"]],
                                                "launched": n["launched"].timestamp(), "deadline": deadline}
        cs.client("s3").put_object(Bucket=self.bucket, Key=job_state.BUDGET, ContentType="application/json",
                                   Body=json.dumps(self.record, indent=1).encode())


def ended_times(job):
    """{instance id: when it was told to end} of the job's instances that have ended."""
    return {n["id"]: n["ended"] for n in job_state.find_nodes(job) if n.get("ended")}


def launch_budget(args, placement, wanted, bucket, by_type):
    """Under a budget, before anything is made: (the Budget, the deadline of the machines about
    to be launched, {type: USD per hour}); UserError if it cannot pay for launching and preparing
    them. Without one: (None, None, None). With row times (--hours, --like), the first such
    command records its plan with the budget, for the report to hold the bill against."""
    budget = Budget.of(args, bucket)
    if budget is None or not by_type:
        return budget, None, None
    if args.estimates and "plan" not in budget.record:
        planned = plan(args, placement, wanted)
        budget.record["plan"] = {k: planned[k] for k in ("times", "prices", "total")}
    machines = [t for t, numbers in sorted(by_type.items()) for _ in numbers]
    setup = max([e["setup"] for e in args.estimates.values() if e] or [SETUP_GUESS])
    deadline = budget.deadline(machines, [None] * len(machines), ended_times(args.job), setup, args.prices)
    log("budget %s: these %s end by %s at the latest" % (money(budget.record["usd"]), plural(len(machines), "machine"),
                                                       time.strftime(cs.TIME_FORMAT, time.gmtime(deadline))))
    return budget, deadline, budget.prices_for({a for t in machines for a in cs.alternatives(t)})


def cover(budget, nodes, prices_file=None):
    """Give the machines about to start that have no deadline yet (launched without a budget) the
    one the budget leaves them, from their launch times: tagged on them and recorded."""
    bare = [n for n in nodes if not n.get("budget_end")]
    if budget is None or not bare:
        return
    deadline = budget.deadline([n["type"] for n in bare], [n["launched"].timestamp() for n in bare],
                               ended_times(bare[0]["job"]), 0, prices_file)
    cs.client("ec2").create_tags(Resources=[n["id"] for n in bare], Tags=[
        {"Key": cs.BUDGET_TAG, "Value": time.strftime(cs.TIME_FORMAT, time.gmtime(deadline))}])
    budget.add(bare, deadline)
    for n in bare:
        n["budget_end"] = deadline
    log("budget %s: %s end by %s at the latest" % (money(budget.record["usd"]), plural(len(bare), "machine"),
                                                   time.strftime(cs.TIME_FORMAT, time.gmtime(deadline))))
