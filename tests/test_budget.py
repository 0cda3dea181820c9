"""--budget (BUDGET= in Make) in the sandbox, through the commands a user types: the deadline
worked out from the prices and the machines' launch times, every OS shutdown armed by it from
the boot-time guard on and never moved past it (by the guard, a later dispatch, a retry, the
pool worker), a budget too small refused before anything is made, a pool row left in its queue
when it cannot end in time, spot machines launched with their MaxPrice, and a row stopped by
the budget: uploaded, and named so."""
import calendar
import json
import os
import subprocess
import time

import cloud_setup as cs
import job_state
from conftest import write
from test_dry_run import nothing_made
from test_operate import states, until


def prices(box, job, usd=1.0):
    return write(box.folder(job) / "prices.csv", "instance_type,price_per_hour\nt3.micro,%s\n" % usd)


def jobs_file(box, job, *commands):
    return write(box.folder(job) / "jobs.csv", "instance_type,command\n" + "".join(
        't3.micro,"%s"\n' % c for c in commands))


def record(box, job):
    return json.loads(box.read(job, "_awsrun/budget/budget.json"))


def shutdowns(box, instance):
    """When each OS shutdown the sandbox saw scheduled on an instance would end it."""
    return [e["at"] for e in box.decisions() if e.get("power") == instance]


def deadline_tag(box, instance):
    tags = {t["Key"]: t["Value"] for i in box.ec2.describe_instances(InstanceIds=[instance])["Reservations"][0][
        "Instances"] for t in i.get("Tags", [])}
    return calendar.timegm(time.strptime(tags[cs.BUDGET_TAG], cs.TIME_FORMAT))


def spent(book):
    """What the recorded machines may bill at most: each from its launch to its deadline."""
    return sum(m["price"] * max(60, m["deadline"] - m["launched"]) / 3600 for m in book["machines"].values())


def test_a_budget_arms_every_shutdown_by_its_deadline_and_nothing_moves_it_later(box):
    job = "budget-rows"
    jobs = jobs_file(box, job, "echo a > output/a.txt", "exit 3")
    before = time.time()
    run = box.run("dispatcher.py", "auto", job, jobs, "-c", "-d", "--budget", "0.5", "--prices", prices(box, job))
    after = time.time()
    assert run.returncode == 0, run.stderr
    # Two machines at $1/h: $0.50 lasts them 15 minutes from their launch.
    book = record(box, job)
    assert book["usd"] == 0.5 and book["prices"] == {"t3.micro": 1.0} and len(book["machines"]) == 2
    deadline = {m["deadline"] for m in book["machines"].values()}.pop()
    assert int(before) + 900 - 1 <= deadline <= after + 900
    assert spent(book) <= 0.5
    until(lambda: states(box, job) == {job + "0": "succeeded", job + "1": "failed (exit 3)"}, what="the rows")
    until(lambda: box.states(job) == ["terminated", "terminated"], what="the machines to end")
    for instance in book["machines"]:
        assert deadline_tag(box, instance) == deadline
        armed = shutdowns(box, instance)
        assert len(armed) >= 3  # the boot-time guard, the idle guard, the runtime guard (and the end)
        assert max(armed) <= deadline, armed
    assert "budget $0.5000: these 2 machines end by" in run.stderr

    # A retry spends what is left: the two machines billed from their launch to their end (a
    # minute at least), and the one launched now gets the rest, from its launch.
    ended = {i["InstanceId"]: job_state.ended_at(i) for i in box.instances(job)}
    ran = sum(m["price"] * max(60, ended[i] - m["launched"]) / 3600 for i, m in book["machines"].items())
    again = box.run("dispatcher.py", "auto", job, jobs, "--retry", "--prices", prices(box, job))
    assert again.returncode == 0, again.stderr
    book = record(box, job)
    assert len(book["machines"]) == 3
    latest = max(book["machines"].values(), key=lambda m: m["launched"])
    assert abs(latest["deadline"] - (latest["launched"] + (0.5 - ran) * 3600)) < 120
    assert ran + latest["price"] * (latest["deadline"] - latest["launched"]) / 3600 <= 0.5 + 1e-9
    until(lambda: states(box, job)[job + "1"] == "failed (exit 3)" and box.states(job).count("terminated") == 3,
          what="the retried row")
    retried = [i for i, m in book["machines"].items() if m is latest][0]
    assert max(shutdowns(box, retried)) <= latest["deadline"]


def test_a_shutdown_armed_as_a_second_turns_still_comes_by_the_deadline(box):
    # shutdown counts its minutes from its own reading of the clock, after the guard's: a deadline
    # two whole minutes from the guard's second was armed a fraction of a second past it.
    job = "budget-second"
    assert box.run("dispatcher.py", "auto", job, jobs_file(box, job, "echo a"), "-c", "--budget", "0.5",
                   "--prices", prices(box, job)).returncode == 0
    node = os.path.join(box.nodes_dir, job + "0")
    instance = box.instances(job)[0]["InstanceId"]
    env = dict(box.env, PATH=os.path.join(box.env["AWSRUN_SANDBOX"], "bin") + os.pathsep + os.environ["PATH"])
    time.sleep(1.02 - time.time() % 1)  # the start of a second
    deadline = int(time.time()) + 120
    with open(os.path.join(node, ".awsrun", "node.env"), "a") as f:
        f.write("BUDGET_END=%d\n" % deadline)
    before = len(box.decisions())
    subprocess.run(["bash", ".awsrun/guard.sh", "hold", "600"], cwd=node, env=env, check=True, timeout=60)
    armed = [e["at"] for e in box.decisions()[before:] if e.get("power") == instance]
    assert armed and deadline - 120 < max(armed) <= deadline, (armed, deadline)
    subprocess.run(["bash", ".awsrun/guard.sh", "end"], cwd=node, env=env, check=True, timeout=60)
    until(lambda: box.states(job) == ["terminated"], what="the machine to end")


def test_a_boot_time_guard_run_a_minute_after_the_launch_still_arms_its_shutdown_by_the_deadline(account):
    # cloud-init runs the user data at boot, a while after the launch (here 61 s): minutes counted
    # at the launch, from then, ended the machine past the deadline.
    box = account(user_data_after=61)
    job = "budget-boot"
    run = box.run("dispatcher.py", "auto", job, jobs_file(box, job, "echo a"), "-c", "--budget", "0.5",
                  "--prices", prices(box, job))
    assert run.returncode == 0, run.stderr
    instance = box.instances(job)[0]["InstanceId"]
    deadline = record(box, job)["machines"][instance]["deadline"]
    finished = os.path.getmtime(os.path.join(box.nodes_dir, ".boot-" + instance, "boot-finished"))
    armed = [e for e in box.decisions() if e.get("power") == instance]
    boot = [e["at"] for e in armed  # the one asked for as the user data ended
            if e["when"] != "now" and finished - 5 <= e["at"] - 60 * int(e["when"]) <= finished + 1]
    assert boot and max(boot) <= deadline, (armed, deadline, finished)
    assert box.run("operate.py", "down", job).returncode == 0


def test_a_budget_too_small_or_without_prices_is_refused_before_anything_is_made(box):
    job = "budget-small"
    jobs = jobs_file(box, job, "echo a", "echo b")
    small = box.run("dispatcher.py", "auto", job, jobs, "-c", "-d", "--budget", "0.05", "--prices", prices(box, job))
    assert (small.returncode, small.stderr.splitlines()[-1]) == (
        2, "error: --budget $0.0500 does not pay for launching and preparing 2 machines (about $0.3333 at $2.0000/h, "
           "10m00s): give at least --budget 0.34")
    nothing_made(box, job)
    odd = write(box.folder(job) / "odd.csv", "instance_type,command\nc5.large,echo a\n")
    unpriced = box.run("dispatcher.py", "auto", job, odd, "-c", "--budget", "5")
    assert (unpriced.returncode, unpriced.stderr.splitlines()[-1]) == (
        2, "error: --budget: no price for c5.large (no prices: none found for these instance types; pass --prices "
           "FILE (instance_type,price_per_hour) for dollars): pass --prices FILE (instance_type,price_per_hour)")
    nothing_made(box, job)


def test_a_pool_worker_takes_no_row_that_cannot_end_before_the_budget_does(box):
    job = "budget-pool"
    jobs = jobs_file(box, job, "echo a", "echo b")
    # One pool machine at $1/h with $0.50: 30 minutes. Each row is expected to take 30 minutes
    # (--hours 0.5), and its upload 5 more: no row fits, so none is started.
    run = box.run("dispatcher.py", "auto", job, jobs, "-c", "-d", "--pool", "1", "--budget", "0.5", "--hours", "0.5",
                  "--prices", prices(box, job), env={"AWSRUN_POOL_IDLE": "5"})
    assert run.returncode == 0, run.stderr
    until(lambda: box.states(job) == ["terminated"], what="the pool machine to end", timeout=90)
    instance = box.instances(job)[0]["InstanceId"]
    assert max(shutdowns(box, instance)) <= record(box, job)["machines"][instance]["deadline"]
    rows = states(box, job)
    assert (rows[job + "0"], rows[job + "1"]) == ("queued", "queued")
    assert not [k for k in box.objects(job) if "/start=" in k or "/exit=" in k]


def test_spot_machines_under_a_budget_are_launched_with_its_price_as_their_maximum(box):
    job = "budget-spot"
    jobs = jobs_file(box, job, "echo a")
    run = box.run("dispatcher.py", "auto", job, jobs, "-c", "--spot", "--budget", "0.5", "--prices",
                  prices(box, job, 0.25))
    assert run.returncode == 0, run.stderr
    assert [e for e in box.decisions() if "spot_max_price" in e] == [{"launch": "t3.micro",
                                                                       "spot_max_price": "0.250000"}]
    assert box.run("operate.py", "down", job).returncode == 0


def test_a_row_the_budget_stops_is_uploaded_and_named_so(box, tmp_path):
    job = "budget-cut"
    jobs = jobs_file(box, job, "echo a,b > output/part.csv; sleep 600")
    # Measured launch and install (from an earlier job) let a small budget pay for them; the
    # row must stop UPLOAD_MARGIN (here 5 s) and a minute before the deadline, its results uploaded.
    old = "budget-cut-old"
    assert box.run("dispatcher.py", "auto", old, jobs_file(box, old, "true"), "-c", "-d").returncode == 0
    until(lambda: states(box, old) == {old + "0": "succeeded"}, what="the earlier job")
    run = box.run("dispatcher.py", "auto", job, jobs, "-c", "-d", "--budget", "0.025", "--like", old,
                  "--prices", prices(box, job, 0.9), env={"AWSRUN_UPLOAD_MARGIN": "5"})
    assert run.returncode == 0, run.stderr
    deadline = list(record(box, job)["machines"].values())[0]["deadline"]  # 100 s from launch
    until(lambda: states(box, job) == {job + "0": "stopped by budget"}, what="the row to be stopped", timeout=120)
    manifest = box.manifest(job, job + "0")
    assert manifest["stopped_by"] == "budget" and manifest["exit_code"] == 124
    assert cs.parse_time(manifest["uploaded"]) <= deadline
    until(lambda: box.states(job) == ["terminated"], what="the machine to end")
    report = box.run("report.py", job, "--out", str(tmp_path / "r.html"))
    assert report.returncode == 0, report.stderr
    assert report.stdout.startswith("job budget-cut: 1 row: 1 stopped by budget; 1 machine\n")
    assert "budget: $0.0250; its 1 machine could bill at most $0.02" in report.stdout  # from its launch
    page = (tmp_path / "r.html").read_text()
    assert "stopped by the budget, before its machine had to end (exit 124)" in page
    assert '<line class="budget"' in page and "<h2>Plan and bill</h2>" in page
    assert "plan and bill: planned $" in report.stdout and "; billed $" in report.stdout
    collected = box.run("collect.py", job, "--out", str(tmp_path / "c.csv"))
    assert "stopped by the budget, left out: budget-cut0" in collected.stderr


def test_a_dispatch_under_a_budget_gives_machines_launched_without_one_their_deadline(box):
    job = "budget-late"
    jobs = jobs_file(box, job, "echo a")
    assert box.run("dispatcher.py", "auto", job, jobs, "-c").returncode == 0
    instance = box.instances(job)[0]["InstanceId"]
    launched = box.instances(job)[0]["LaunchTime"].timestamp()
    before = len(box.decisions())
    run = box.run("dispatcher.py", "auto", job, jobs, "-d", "--budget", "0.25", "--prices", prices(box, job))
    assert run.returncode == 0, run.stderr
    # $0.25 at $1/h: 15 minutes from the machine's launch, not from now.
    deadline = record(box, job)["machines"][instance]["deadline"]
    assert abs(deadline - (launched + 900)) <= 1 and deadline_tag(box, instance) == deadline
    until(lambda: box.states(job) == ["terminated"], what="the machine to end")
    since = [e["at"] for e in box.decisions()[before:] if e.get("power") == instance]  # the guards of create: later
    assert since and max(since) <= deadline
