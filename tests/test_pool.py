"""End-to-end tests of pool mode in the strict sandbox, through the commands a user types: more
rows than machines, rows of uneven length, lost machines, dead-lettered rows, the quota, clean,
and what status costs."""
import csv
import io
import json
import os
import time

import pytest

import cloud_setup as cs
from conftest import write
from test_operate import release, states, status, until, vanish, waits_for
from test_report import Page

# The sandbox's rows come back to the queue 4 s after their machine is lost, and a machine
# ends after 8 s on an empty queue (the defaults are 120 s and 180 s).
FAST = {"AWSRUN_POOL_LEASE": "4", "AWSRUN_POOL_IDLE": "8"}


def jobs_file(box, job, commands, itype="t3.micro"):
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["instance_type", "command"])
    writer.writerows([itype, c] for c in commands)
    return write(box.folder(job) / "jobs.csv", text.getvalue())


def pool_run(box, job, commands, *extra, env=None, timeout=240):
    run = box.run("dispatcher.py", "auto", job, jobs_file(box, job, commands), "-c", "-d", *extra,
                  env=dict(FAST, **(env or {})), timeout=timeout)
    assert run.returncode == 0, run.stderr
    return run


def wait(box, job, timeout=180):
    run = box.run("cloud_setup.py", "wait", job, "--timeout", str(timeout), timeout=timeout + 30)
    assert run.returncode == 0, run.stderr
    return run


def rows_of(box, job):
    return {tag: r for tag, r in status(box, job).items() if r["kind"] == "row"}


@pytest.mark.slow
def test_a_small_pool_runs_rows_of_uneven_length_on_every_slot(box, tmp_path):
    job = "pool-uneven"
    seconds = [6, 6, 5, 4, 3, 3, 2, 2, 2, 1, 1, 1]
    commands = ['a=$(date +%%s.%%N); sleep %d; echo "$TAG $a $(date +%%s.%%N)" > output/times.txt' % s
                for s in seconds]
    pool_run(box, job, commands, "--pool", "2", "--slots", "2")
    wait(box, job)
    assert {t: r["state"] for t, r in rows_of(box, job).items()} == {"%s%d" % (job, i): "succeeded" for i in range(12)}
    machines = [r for r in status(box, job).values() if r["kind"] == "machine"]
    assert sorted(r["state"] for r in machines) == ["ended", "ended"]
    assert box.states(job) == ["terminated", "terminated"]
    objects = box.objects(job)
    times = []
    for i in range(12):
        tag = "%s%d" % (job, i)
        assert {tag + "/output/times.txt", tag + "/manifest.json", tag + "/screen_output.txt"} <= set(objects)
        line = box.read(job, tag + "/output/times.txt").split()
        assert line[0] == tag  # the row ran with its own TAG, in its own folder
        times.append((float(line[1]), float(line[2])))
        assert box.manifest(job, tag)["exit_code"] == 0
    # Placement, whatever the load: both machines took rows, and neither ran more at once than
    # its 2 slots (by the rows' own clocks). How close the makespan comes to the best possible
    # is a timing: make bench measures it (bench.py, pool).
    machine_of = {i: box.manifest(job, "%s%d" % (job, i))["machine"] for i in range(12)}
    assert len(set(machine_of.values())) == 2
    for m in set(machine_of.values()):
        spans = [times[i] for i in range(12) if machine_of[i] == m]
        assert max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans) <= 2, spans

    made = box.run("report.py", job, "--out", str(tmp_path / "report.html"))  # one lane per pool machine
    assert made.returncode == 0, made.stderr
    page = Page((tmp_path / "report.html").read_text(encoding="utf-8"))
    assert sorted(page.lanes) == sorted(r["tag"] for r in machines)
    assert {k: c for k, (c, _) in page.bars.items()} == {("%s%d" % (job, i), phase): {"bar", phase, "succeeded"}
                                                         for i in range(12) for phase in ("run", "upload")}
    assert sorted(sorted(c) for c in page.machine_bars) == [["bar", "install", "machine"]] * 2 + [
        ["bar", "launch", "machine"]] * 2
    assert made.stdout.splitlines()[0] == "job %s: 12 rows: 12 succeeded; 2 machines" % job


@pytest.mark.slow
def test_a_row_whose_machine_is_lost_runs_again_on_another_and_succeeds(box, tmp_path):
    job = "pool-lost"
    first = tmp_path / "first-try"
    victim = "if [ -e %s ]; then echo again > output/r.txt; else touch %s; sleep 600; fi" % (first, first)
    # The other machine, done with its rows, waits 60 s on the empty queue: however slowly the
    # test ends the victim's machine, the row comes back (4 s later) while a machine is there.
    pool_run(box, job, [victim, "echo 1", "echo 2", "echo 3"], "--pool", "2", env={"AWSRUN_POOL_IDLE": "60"})
    tag = job + "0"
    until(lambda: rows_of(box, job)[tag]["state"] == "running", what="the row to run")
    lost_on = rows_of(box, job)[tag]["instance"]
    vanish(box, job, tag)
    seen, deadline = [("running", lost_on)], time.monotonic() + 90
    while seen[-1][0] != "succeeded" and time.monotonic() < deadline:
        row = rows_of(box, job)[tag]
        if (row["state"], row["instance"]) != seen[-1]:
            seen.append((row["state"], row["instance"]))
    states_seen = [s for s, _ in seen]
    assert states_seen[-1] == "succeeded" and set(states_seen) <= {"running", "queued", "succeeded"}, seen
    # Polling may miss the short queued and running-elsewhere states on a loaded machine; the
    # manifest below proves the row came back and ran on another machine.
    assert states_seen[1] in ("queued", "succeeded") or (states_seen[1] == "running" and seen[1][1] != lost_on), seen
    manifest = box.manifest(job, tag)
    assert manifest["attempt"] == 2 and manifest["instance_id"] != lost_on
    assert box.read(job, tag + "/output/r.txt") == "again\n"
    until(lambda: {t: r["state"] for t, r in rows_of(box, job).items()} == {
        "%s%d" % (job, i): "succeeded" for i in range(4)}, what="every row")
    assert box.run("cloud_setup.py", "down", job).returncode == 0  # its idle end is the uneven test's


@pytest.mark.slow
def test_a_row_that_loses_its_machine_every_time_is_dead_lettered_and_retry_runs_it(box, tmp_path):
    job = "pool-dead"
    fixed = tmp_path / "fixed"
    killer = "if [ -e %s ]; then echo fixed > output/ok.txt; else sudo shutdown -h now; sleep 60; fi" % fixed
    pool_run(box, job, [killer] + ["echo %d" % i for i in range(1, 6)], "--pool", "4", "--max-attempts", "3",
             env={"AWSRUN_POOL_IDLE": "30"})
    wait(box, job)
    rows = rows_of(box, job)
    assert rows[job + "0"]["state"] == "failed (lost 3 times)"
    assert {t: r["state"] for t, r in rows.items() if t != job + "0"} == {
        "%s%d" % (job, i): "succeeded" for i in range(1, 6)}
    sqs = box.client("sqs")
    dead = sqs.get_queue_url(QueueName="awsrun-%s--t3-micro-dlq" % job)["QueueUrl"]
    assert sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["ApproximateNumberOfMessages"])[
        "Attributes"]["ApproximateNumberOfMessages"] == "1"
    assert all(s == "terminated" for s in box.states(job))

    fixed.write_text("yes")  # the row works now: retry puts it back and launches a pool for it
    retry = box.run("dispatcher.py", "auto", job, jobs_file(box, job, [killer] + ["echo %d" % i for i in range(1, 6)]),
                    "--retry", "--pool", "4", env=FAST)
    assert retry.returncode == 0, retry.stderr
    assert "retrying 1 rows: %s0" % job in retry.stderr
    wait(box, job)
    assert rows_of(box, job)[job + "0"]["state"] == "succeeded"
    assert box.read(job, job + "0/output/ok.txt") == "fixed\n"
    assert sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["ApproximateNumberOfMessages"])[
        "Attributes"]["ApproximateNumberOfMessages"] == "0"


@pytest.mark.slow
def test_a_job_over_the_quota_runs_in_pool_mode_and_clean_removes_its_queues(account):
    box = account(vcpu_quota=8, instance_quota=4)  # four t3.micro machines at most
    job = "pool-quota"
    commands = ["echo %d > output/n.txt" % i for i in range(40)]
    refused = box.run("dispatcher.py", "auto", job, jobs_file(box, job, commands), "-c", "-d", env=FAST)
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith("or run the rows on 4 machines, in pool mode: POOL=4 (--pool 4)")
    assert box.instances(job) == []
    pool_run(box, job, commands, "--pool", "auto")
    wait(box, job)
    assert len(box.instances(job)) == 4
    assert set(states(box, job).values()) == {"succeeded", "ended"}
    assert [box.read(job, "%s%d/output/n.txt" % (job, i)) for i in range(40)] == ["%d\n" % i for i in range(40)]
    sqs = box.client("sqs")
    assert len(sqs.list_queues(QueueNamePrefix="awsrun-%s--" % job)["QueueUrls"]) == 2
    clean = box.run("cloud_setup.py", "clean", job)
    assert clean.returncode == 0, clean.stderr
    assert "2 queues deleted" in clean.stderr
    assert sqs.list_queues(QueueNamePrefix="awsrun-%s--" % job).get("QueueUrls", []) == []


def status_calls(box, job):
    """The AWS actions one `status` makes, as the sandbox's IAM saw them."""
    before = len(box.decisions())
    assert box.run("cloud_setup.py", "status", job).returncode == 0
    return sorted(d["action"] for d in box.decisions()[before:] if d.get("principal") == "user")


@pytest.mark.slow
def test_status_costs_the_same_calls_for_5_rows_as_for_500_queued(box, tmp_path):
    calls = {}
    for job, count in (("pool-cost-few", 5), ("pool-cost-many", 500)):
        commands = [waits_for_ever(tmp_path)] * count  # one runs, the others wait in the queue
        pool_run(box, job, commands, "--pool", "1")
        until(lambda job=job: "running" in states(box, job).values(), what="the first row to start")
        counted = states(box, job)
        assert sum(s == "queued" for s in counted.values()) == count - 1
        calls[count] = status_calls(box, job)
        assert box.run("cloud_setup.py", "clean", job).returncode == 0
    assert calls[5] == calls[500] == ["ec2:DescribeInstances", "s3:ListBucket"]


def waits_for_ever(tmp_path):
    return "while [ ! -e %s ]; do sleep 0.2; done" % (tmp_path / "never")


@pytest.mark.slow
def test_pool_machines_are_never_taken_for_rows(box):
    job = "pool-tags"
    pool_run(box, job, ["echo a", "echo b"], "--pool", "1")
    wait(box, job)
    table = box.run("cloud_setup.py", "status", job).stdout
    assert "%s-pool-t3.micro-0" % job in table
    assert "2 jobs: 2 succeeded" in table and "1 pool machines: 1 ended" in table
    tags = {t["Key"]: t["Value"] for t in box.instances(job)[0]["Tags"]}
    assert tags["awsrun:pool"] == "t3.micro"
    logs = box.run("logs.py", job, job + "1")
    assert logs.returncode == 0 and logs.stdout == "b\n"
    rows = json.loads(box.run("cloud_setup.py", "status", job, "--json").stdout)
    assert [(r["tag"], r["kind"]) for r in rows] == [(job + "0", "row"), (job + "1", "row"),
                                                      ("%s-pool-t3.micro-0" % job, "machine")]


def test_logs_of_a_running_pool_row_come_from_its_machine(box, tmp_path):
    job = "pool-logs"
    pool_run(box, job, ["echo early; " + waits_for_ever(tmp_path)], "--pool", "1")
    tag = job + "0"
    until(lambda: rows_of(box, job)[tag]["state"] == "running", what="the row to run")
    logs = until(lambda: box.run("logs.py", job, tag).stdout, what="its log")
    assert logs == "early\n"
    forgot = box.run("dispatcher.py", "auto", job, box.folder(job) / "jobs.csv", "-d", env=FAST)
    assert (forgot.returncode, forgot.stderr) == (2, "error: job %s runs in pool mode: give POOL= (--pool) to "
                                                     "dispatch and retry too\n" % job)
    assert box.run("cloud_setup.py", "down", job).returncode == 0


@pytest.mark.slow
def test_a_spot_interruption_notice_hands_the_row_back_at_once(box, tmp_path):
    job = "pool-spot"
    go = tmp_path / "go"
    row = "while [ ! -e %s ]; do sleep 0.2; done; echo done > output/d.txt" % go
    # A lease of 90 s: the row can only come back in time if the notice handed it back.
    pool_run(box, job, [row, "echo 1", "echo 2"], "--pool", "2", "--spot",
             env={"AWSRUN_POOL_LEASE": "90", "AWSRUN_POOL_IDLE": "25"})
    tag = job + "0"
    until(lambda: rows_of(box, job)[tag]["state"] == "running", what="the row to run")
    doomed = rows_of(box, job)[tag]["instance"]
    noticed = time.monotonic()
    box.interrupt(doomed)
    until(lambda: rows_of(box, job)[tag]["instance"] not in ("", doomed), timeout=45, what="another machine")
    assert time.monotonic() - noticed < 45
    box.ec2.terminate_instances(InstanceIds=[doomed])  # as EC2 does after the notice
    go.write_text("go")
    wait(box, job)
    manifest = box.manifest(job, tag)
    assert manifest["attempt"] == 2 and manifest["instance_id"] != doomed
    assert sum(1 for k in box.objects(job) if k.startswith("_awsrun/%s/exit=" % tag)) == 1  # uploaded once


def next_row_beside_the_upload(box, job):
    """The rows, once row 1 runs while row 0 (done, its upload held up) does not yet show its result."""
    rows = rows_of(box, job)
    return rows[job + "1"]["state"] == "running" and rows[job + "0"]["state"] == "running" and rows


@pytest.mark.slow
def test_a_slot_takes_the_next_row_while_the_last_uploads_and_a_machine_lost_then_loses_no_row(box, tmp_path):
    job = "pool-inflight"
    # Row 0's manifest is answered 20 s late (and then with a 503): its upload is in flight.
    box.faults([{"action": "s3:PutObject", "resource": "arn:aws:s3:::%s/%s0/manifest.json" % (job, job),
                 "delay": 20, "code": "SlowDown", "status": 503, "times": 1}])
    commands = ["echo a > output/a.txt", waits_for(tmp_path, "go") + "; echo b > output/b.txt"]
    pool_run(box, job, commands, "--pool", "1", "--slots", "1", env={"AWSRUN_POOL_IDLE": "60"})
    first, second = job + "0", job + "1"

    rows = until(lambda: next_row_beside_the_upload(box, job), what="the one slot to take row 1 while row 0 uploads")
    lost_on = rows[first]["instance"]
    assert rows[second]["instance"] == lost_on
    assert not any(k.startswith("_awsrun/%s/exit=" % first) for k in box.objects(job))
    box.ec2.terminate_instances(InstanceIds=[lost_on])  # lost with an upload in flight and a row running
    until(lambda: {r["state"] for r in rows_of(box, job).values()} == {"queued"}, what="both rows back in the queue")
    release(tmp_path, "go")
    retry = box.run("dispatcher.py", "auto", job, jobs_file(box, job, commands), "--retry", "--pool", "1", env=FAST)
    assert retry.returncode == 0, retry.stderr
    wait(box, job)
    assert {t: r["state"] for t, r in rows_of(box, job).items()} == {first: "succeeded", second: "succeeded"}
    for tag, name, text in ((first, "a.txt", "a\n"), (second, "b.txt", "b\n")):
        manifest = box.manifest(job, tag)
        assert manifest["attempt"] == 2 and manifest["instance_id"] != lost_on
        assert box.read(job, "%s/output/%s" % (tag, name)) == text
        assert sum(1 for k in box.objects(job) if k.startswith("_awsrun/%s/exit=" % tag)) == 1


@pytest.mark.slow
def test_a_spot_notice_hands_back_the_running_row_and_lets_the_upload_in_flight_finish(box, tmp_path):
    job = "pool-spot-upload"
    box.faults([{"action": "s3:PutObject", "resource": "arn:aws:s3:::%s/%s0/manifest.json" % (job, job),
                 "delay": 15, "times": 1}])  # row 0's manifest is answered 15 s late: its upload is in flight
    commands = ["echo a > output/a.txt", waits_for(tmp_path, "go") + "; echo b > output/b.txt"]
    pool_run(box, job, commands, "--pool", "1", "--slots", "1", "--spot",
             env={"AWSRUN_POOL_LEASE": "90", "AWSRUN_POOL_IDLE": "25"})
    first, second = job + "0", job + "1"
    rows = until(lambda: next_row_beside_the_upload(box, job), what="the one slot to take row 1 while row 0 uploads")
    doomed = rows[first]["instance"]
    box.interrupt(doomed)
    # A lease of 90 s: row 1 is back this soon only because the notice handed it back; row 0's
    # upload was let finish on the doomed machine.
    sqs = box.client("sqs")
    queue = sqs.get_queue_url(QueueName="awsrun-%s--t3-micro" % job)["QueueUrl"]

    def uploaded_and_handed_back():
        waiting = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages"])
        return rows_of(box, job)[first]["state"] == "succeeded" and waiting["Attributes"][
            "ApproximateNumberOfMessages"] == "1"
    until(uploaded_and_handed_back, timeout=45, what="row 0 uploaded and row 1 back in the queue")
    assert box.manifest(job, first)["instance_id"] == doomed and box.read(job, first + "/output/a.txt") == "a\n"
    box.ec2.terminate_instances(InstanceIds=[doomed])  # as EC2 does after the notice
    release(tmp_path, "go")
    retry = box.run("dispatcher.py", "auto", job, jobs_file(box, job, commands), "--retry", "--pool", "1", "--spot",
                    env=FAST)
    assert retry.returncode == 0, retry.stderr
    wait(box, job)
    manifest = box.manifest(job, second)
    assert manifest["attempt"] == 2 and manifest["instance_id"] != doomed
    for tag in (first, second):
        assert sum(1 for k in box.objects(job) if k.startswith("_awsrun/%s/exit=" % tag)) == 1  # uploaded once


def test_each_row_of_a_slot_gets_a_fresh_copy_of_the_work_directory(box, tmp_path):
    job = "pool-copies"
    code = tmp_path / "code"
    code.mkdir()
    (code / "data.txt").write_text("the data\n")
    # Each row counts what it finds in output/ before writing there, and leaves a file in the
    # work directory's copy: the next row on the slot must find neither (its copy is made ahead).
    row = "ls -A output | wc -l > n; cat data.txt n > output/seen.txt; echo $TAG > left.txt; touch output/left"
    pool_run(box, job, [row] * 4, "--pool", "1", "--slots", "1", "--code", str(code))
    wait(box, job)
    for i in range(4):
        tag = "%s%d" % (job, i)
        assert box.read(job, tag + "/output/seen.txt") == "the data\n0\n"
    machine = "%s/%s-pool-t3.micro-0" % (box.nodes_dir, job)
    assert not os.path.exists(os.path.join(machine, "left.txt"))  # rows never write to the work directory itself
    assert os.listdir(os.path.join(machine, ".awsrun", "rows")) == []  # no spare copy is left behind


def test_a_pool_row_whose_upload_fails_is_handed_back_and_its_machine_kept_up(box):
    job = "pool-upfail"
    box.faults([{"action": "s3:PutObject", "resource": "arn:aws:s3:::%s/%s0/*" % (job, job), "code": "AccessDenied",
                 "status": 403}])
    pool_run(box, job, ["echo kept > output/k.txt", "echo b"], "--pool", "1", "--upload-hold", "1h")
    machine = "%s-pool-t3.micro-0" % job
    until(lambda: states(box, job).get(machine) == "upload-failed", what="the machine to be held")
    table = status(box, job)
    assert table[job + "0"]["state"] == "queued"  # handed back: another machine may run it
    assert table[machine]["held_until"]
    folder = box.nodes_dir + "/%s/.awsrun/rows/%s0/output/k.txt" % (machine, job)
    assert open(folder).read() == "kept\n"  # its results stay on the machine
    assert box.states(job) == ["running"]
    box.faults([])
    assert box.run("cloud_setup.py", "down", job).returncode == 0


def test_like_queues_a_pools_rows_longest_first_and_the_report_weighs_the_makespan(box):
    old, job = "pool-like-old", "pool-like"
    pool_run(box, old, ["true", "sleep 2", "sleep 4"], "--pool", "1", "--slots", "3")
    wait(box, old)
    commands = ["true", "sleep 2", "echo new", "sleep 4"]
    run = pool_run(box, job, commands, "--pool", "1", "--slots", "1", "--like", old)
    assert "queued longest first, by the times of 3 of their 4 commands in the earlier job" in run.stderr
    wait(box, job)
    took = {}  # what the earlier job's rows took, by their own clocks (to the second; under load, more)
    for i in range(3):
        m = box.manifest(old, "%s%d" % (old, i))
        took[m["command"]] = cs.parse_time(m["ended"]) - cs.parse_time(m["started"])
    started = sorted((box.manifest(job, "%s%d" % (job, i))["started"], commands[i]) for i in range(4))
    assert [c for _, c in started] == ["echo new"] + sorted(took, key=lambda c: -took[c])  # the unknown first
    report = box.run("report.py", job, "--out", str(box.folder(job) / "report.html"))
    assert report.returncode == 0, report.stderr
    line = next(line for line in report.stdout.splitlines() if line.startswith("pool: "))
    assert "its lower bound" in line and "over 1 slot)" in line, line
    without = box.run("dispatcher.py", "auto", job, jobs_file(box, job, commands), "-d", "--like", old)
    assert without.returncode == 2 and without.stderr.endswith(
        "error: --like goes with --plan, --budget or --pool (which queues the rows longest first by its times)\n")
