"""--plan (make plan) in the sandbox, through the command a user types: what a run would cost,
its numbers held against a hand computation (with --prices and --hours, in pool mode, and with
--like on a job run before), and nothing made in AWS."""
import json
import statistics

from pytest import approx

import cloud_setup as cs
from conftest import write
from test_dry_run import nothing_made


def plan(box, job, jobs, *extra, env=None):
    return box.run("dispatcher.py", "auto", job, jobs, "--plan", *extra, env=env)


def prices(box, job):
    return write(box.folder(job) / "prices.csv", "instance_type,price_per_hour\nt3.micro,0.01\nt3.small,0.02\n")


def test_a_plan_with_hours_and_prices_matches_a_hand_computation_and_makes_nothing(box):
    job = "plan-hours"
    jobs = write(box.folder(job) / "jobs.csv",
                 "instance_type,command\nt3.micro,echo a\nt3.micro,echo b\nt3.small,echo c\n")
    table = prices(box, job)
    before = len(box.decisions())
    run = plan(box, job, jobs, "--hours", "1.5", "--prices", table)
    assert run.returncode == 0, run.stderr
    # Each machine: 10 min from launch to prepared, then its row of 1.5 h: 6000 s = 1.6667 h.
    # At worst each row runs to the 24 h limit: 600 + 86400 = 87000 s = 24.1667 h.
    assert run.stdout.splitlines() == [
        "plan for job plan-hours: 3 rows on 3 machines (one machine per row); nothing was made",
        "row times: --hours 1.5 for every row; launch and install taken as 10m00s a machine (--like OLDJOB "
        "measures them)",
        "prices: prices from %s" % table,
        "t3.micro: 2 rows, 2 machines, 4 vCPUs of a quota of 1152; $0.0100/h",
        "  median: rows of 1h30m: 3.33 machine-hours, $0.0333, done after 1h40m",
        "  90th percentile: rows of 1h30m: 3.33 machine-hours, $0.0333, done after 1h40m",
        "  worst case: rows of 24h00m: 48.33 machine-hours, $0.4833, done after 24h10m",
        "t3.small: 1 row, 1 machine, 2 vCPUs of a quota of 1152; $0.0200/h",
        "  median: rows of 1h30m: 1.67 machine-hours, $0.0333, done after 1h40m",
        "  90th percentile: rows of 1h30m: 1.67 machine-hours, $0.0333, done after 1h40m",
        "  worst case: rows of 24h00m: 24.17 machine-hours, $0.4833, done after 24h10m",
        "total, median: 5.00 machine-hours, $0.0667, done after 1h40m",
        "total, 90th percentile: 5.00 machine-hours, $0.0667, done after 1h40m",
        "total, worst case: 72.50 machine-hours, $0.9667, done after 24h10m"]
    asked = {(e["action"], e["decision"]) for e in box.decisions()[before:] if e.get("principal") == "user"}
    assert ("ec2:DescribeInstanceTypes", "allowed") in asked and ("servicequotas:GetServiceQuota", "allowed") in asked
    nothing_made(box, job)

    as_json = json.loads(plan(box, job, jobs, "--hours", "1.5", "--prices", table, "--json").stdout)
    micro = as_json["types"][0]
    assert (micro["type"], micro["rows"], micro["machines"], micro["vcpus"], micro["price"]) == \
        ("t3.micro", 2, 2, 4, 0.01)
    assert micro["hours"]["p50"] == approx(2 * 6000 / 3600) and micro["usd"]["p50"] == approx(2 * 6000 / 3600 * 0.01)
    assert as_json["total"]["usd"]["worst"] == approx((2 * 0.01 + 0.02) * 87000 / 3600)
    assert as_json["total"]["makespan"] == {"p50": 6000, "p90": 6000, "worst": 87000}
    nothing_made(box, job)


def test_a_pool_plan_places_the_rows_on_the_slots_and_counts_the_idle_end(box):
    job = "plan-pool"
    jobs = write(box.folder(job) / "jobs.csv", "instance_type,command\n" + "t3.micro,echo x\n" * 3)
    run = plan(box, job, jobs, "--hours", "1", "--prices", prices(box, job), "--pool", "1", "--slots", "2",
               env={"AWSRUN_POOL_IDLE": "180"})
    assert run.returncode == 0, run.stderr
    # One machine with 2 slots: two rows at once, then the third: busy 2 h. Its life: 10 min of
    # setup, 2 h of rows, 3 min waiting on the empty queue = 7980 s. At worst every row runs to the
    # pool's 11 h limit: 600 + 2 x 39600 + 180 = 79980 s.
    assert run.stdout.splitlines()[3:] == [
        "t3.micro: 3 rows, 1 machine x 2 slots, 2 vCPUs of a quota of 1152; $0.0100/h",
        "  median: rows of 1h00m: 2.22 machine-hours, $0.0222, done after 2h10m",
        "  90th percentile: rows of 1h00m: 2.22 machine-hours, $0.0222, done after 2h10m",
        "  worst case: rows of 11h00m: 22.22 machine-hours, $0.2222, done after 22h10m",
        "total, median: 2.22 machine-hours, $0.0222, done after 2h10m",
        "total, 90th percentile: 2.22 machine-hours, $0.0222, done after 2h10m",
        "total, worst case: 22.22 machine-hours, $0.2222, done after 22h10m"]
    assert run.stdout.splitlines()[0] == "plan for job plan-pool: 3 rows on 1 machine (pool); nothing was made"
    nothing_made(box, job)


def test_a_plan_like_an_earlier_job_uses_its_measured_times(box):
    old, job = "plan-old", "plan-like"
    earlier = write(box.folder(old) / "jobs.csv", "instance_type,command\nt3.micro,sleep 1\nt3.micro,sleep 3\n")
    made = box.run("dispatcher.py", "auto", old, earlier, "-c", "-d")
    assert made.returncode == 0, made.stderr
    assert box.run("operate.py", "wait", old, "--timeout", "120").returncode == 0
    manifests = [json.loads(box.s3.get_object(Bucket=old, Key="%s%d/manifest.json" % (old, i))["Body"].read())
                 for i in range(2)]
    t = [{k: cs.parse_time(m[k]) for k in ("launched", "install_ended", "started", "ended", "uploaded")}
         for m in manifests]
    runs = sorted(x["ended"] - x["started"] for x in t)
    setup = statistics.median(x["install_ended"] - x["launched"] for x in t)
    upload = statistics.median(x["uploaded"] - x["ended"] for x in t)
    p50, p90 = (runs[0] + runs[1]) / 2, runs[0] + (runs[1] - runs[0]) * 0.9

    jobs = write(box.folder(job) / "jobs.csv", "instance_type,command\n" + "t3.micro,sleep 2\n" * 3 +
                 "t3.small,sleep 2\n")
    run = plan(box, job, jobs, "--like", old, "--prices", prices(box, job), "--json")
    assert run.returncode == 0, run.stderr
    planned = json.loads(run.stdout)
    micro, small = planned["types"]
    assert (micro["setup"], micro["run"]) == (setup, {"p50": p50, "p90": p90})
    for case, row in (("p50", p50), ("p90", p90)):
        machine = max(60, setup + row + upload)  # EC2 bills at least 60 s a machine
        assert micro["hours"][case] == approx(3 * machine / 3600)
        assert micro["usd"][case] == approx(3 * machine / 3600 * 0.01)
        assert micro["makespan"][case] == approx(setup + row + upload)
    assert small["run"] == {"p50": None, "p90": None} and small["hours"] == {"worst": approx((600 + 86400) / 3600)}
    assert set(planned["total"]["hours"]) == {"worst"}  # a type whose times are unknown leaves only the worst case
    assert planned["times"] == ("the succeeded rows of job plan-old: the median and 90th percentile of their run "
                                "times per type, and the median launch and install of its machines; unknown for "
                                "t3.small")
    nothing_made(box, job)


def test_a_plan_without_prices_or_times_says_how_to_get_them(box):
    job = "plan-bare"
    jobs = write(box.folder(job) / "jobs.csv", "instance_type,command\nc5.large,echo a\n")
    run = plan(box, job, jobs)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[1:] == [
        "row times: unknown: give --hours H or --like OLDJOB",
        "prices: no prices: none found for these instance types; pass --prices FILE (instance_type,price_per_hour) "
        "for dollars",
        "c5.large: 1 row, 1 machine, 2 vCPUs of a quota of 1152; no price",
        "  worst case: rows of 24h00m: 24.17 machine-hours, no price, done after 24h10m",
        "total, worst case: 24.17 machine-hours, no price, done after 24h10m",
        "no dollars without prices: pass --prices FILE (instance_type,price_per_hour), or allow pricing:GetProducts"]
    nothing_made(box, job)


def test_a_plan_refuses_what_it_cannot_do_in_one_line(box):
    job = "plan-wrong"
    jobs = write(box.folder(job) / "jobs.csv", "instance_type,command\nt3.micro,echo a\n")
    both = plan(box, job, jobs, "--hours", "2", "--like", "other")
    assert both.returncode == 2
    assert both.stderr.splitlines()[-1].endswith("error: --hours and --like both say how long a row takes: give one")
    making = plan(box, job, jobs, "-c")
    assert making.returncode == 2
    assert making.stderr.splitlines()[-1].endswith("error: --plan makes nothing: give it without -c, -d and --retry")
    never = plan(box, job, jobs, "--like", "never-ran")
    assert (never.returncode, never.stderr) == (2, "error: --like never-ran: that job has no results in "
                                                   "s3://never-ran to learn row times from\n")
    nothing_made(box, job)
