"""End-to-end tests of operating a run in the sandbox: the status table and its states,
update_tags.py, logs, retry, down and clean, the cost guards, spot, and Ctrl-C during create."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import cloud_setup as cs
import job_state
import launch
from conftest import ROOT, write


def until(condition, timeout=60, what="condition"):
    """Wait for condition() to return something true, polling, with a deadline."""
    deadline, delay = time.monotonic() + timeout, 0.05
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail("timed out after %d s waiting for %s (last seen: %r)" % (timeout, what, value))
        time.sleep(delay)
        delay = min(0.5, delay * 2)


def status(box, job):
    run = box.run("cloud_setup.py", "status", job, "--json")
    assert run.returncode == 0, run.stderr
    return {r["tag"]: r for r in json.loads(run.stdout)}


def states(box, job):
    return {tag: r["state"] for tag, r in status(box, job).items()}


def release(tmp_path, name):
    (tmp_path / name).write_text("go")


def waits_for(tmp_path, name):
    """A shell line that waits until the test releases it (a file appears)."""
    return "while [ ! -e %s ]; do sleep 0.1; done" % (tmp_path / name)


def vanish(box, job, tag):
    """Terminate a node behind awsrun's back (the sandbox ends its processes too)."""
    ids = [i["InstanceId"] for i in box.instances(job) if i["State"]["Name"] == "running"
           and status(box, job)[tag]["instance"] == i["InstanceId"]]
    box.ec2.terminate_instances(InstanceIds=ids)


def test_every_state_in_the_table(box, tmp_path):
    job = "op-states"
    rows = ["echo fine",                                                     # 0 succeeded
            "echo broken; exit 4",                                           # 1 failed (exit 4)
            "python3 update_tags.py percent_complete 40; " + waits_for(tmp_path, "r2"),  # 2 running
            waits_for(tmp_path, "never"),                                    # 3 lost
            "echo its bucket refuses it"]                                    # 4 upload-failed
    box.faults([{"action": "s3:PutObject", "resource": "arn:aws:s3:::%s/%s4/*" % (job, job), "code": "AccessDenied",
                 "status": 403}])
    jobs = write(tmp_path / "jobs.csv", "instance_type,command\n" + "".join(
        't3.micro,"%s"\n' % r.replace('"', '""') for r in rows))
    install = write(tmp_path / "install.sh", waits_for(tmp_path, "installed") + "\ntouch READY\n")
    create = subprocess.Popen([sys.executable, "dispatcher.py", "auto", job, jobs, "-c", "--install", install],
                              cwd=ROOT, env=box.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    until(lambda: set(states(box, job).values()) == {"installing"}, what="installing")
    release(tmp_path, "installed")
    out, err = create.communicate(timeout=60)
    assert create.returncode == 0, err
    assert set(states(box, job).values()) == {"ready"}

    run = box.run("dispatcher.py", "auto", job, jobs, "-d")
    assert run.returncode == 0, run.stderr
    until(lambda: status(box, job)["op-states2"]["progress"] == "percent_complete=40", what="progress")
    until(lambda: states(box, job)["op-states3"] == "running", what="running")
    vanish(box, job, "op-states3")
    until(lambda: states(box, job)["op-states4"] == "upload-failed", what="upload-failed")
    table = until(lambda: (lambda s: s if s["op-states1"]["state"].startswith("failed") else None)(status(box, job)))
    assert {t: r["state"] for t, r in table.items()} == {
        "op-states0": "succeeded", "op-states1": "failed (exit 4)", "op-states2": "running",
        "op-states3": "lost", "op-states4": "upload-failed"}
    assert table["op-states1"]["exit"] == 4
    tags = {t["Key"]: t["Value"] for i in box.instances(job) if i["InstanceId"] == table["op-states2"]["instance"]
            for t in i["Tags"]}
    assert tags["percent_complete"] == "40"

    text = box.run("cloud_setup.py", "status", job).stdout.splitlines()
    assert text[0].split() == ["TAG", "INSTANCE", "TYPE", "STATE", "ELAPSED", "STOPS", "AT", "PROGRESS"]
    assert text[3].split()[3:4] + text[3].split()[-2:] == ["running", table["op-states2"]["deadline"],
                                                           "percent_complete=40"]
    assert text[-1] == "5 jobs: 1 failed, 1 lost, 1 running, 1 succeeded, 1 upload-failed"

    release(tmp_path, "r2")
    until(lambda: states(box, job)["op-states2"] == "succeeded", what="succeeded")
    box.ec2.terminate_instances(InstanceIds=[table["op-states4"]["instance"]])


def test_launching_uploading_and_install_failed_states(box, tmp_path, monkeypatch):
    job = "op-more"
    install = write(tmp_path / "broken.sh", "exit 1\n")
    jobs = write(tmp_path / "jobs.csv", "instance_type,command\nt3.micro,echo a\n")
    run = box.run("dispatcher.py", "auto", job, jobs, "-c", "--install", install, "--install-tries", "1")
    assert run.returncode == 1
    assert states(box, job) == {"op-more0": "install-failed"}
    # A machine launched by create but not yet prepared (create was stopped there):
    for name, value in box.env.items():
        monkeypatch.setenv(name, value)
    import cloud_setup as cs
    cs.client.cache_clear()
    cs.session.cache_clear()
    node = job_state.find_nodes(job)[0]
    launch.launch(job, node and box.ec2.describe_images(Owners=["self"])["Images"][0]["ImageId"], "t3.micro", [1],
              job, box.ec2.describe_security_groups(GroupNames=["awsrun-" + job])["SecurityGroups"][0]["GroupId"],
              "awsrun-%s-node" % job, job, launch.launch_subnets())
    assert states(box, job)["op-more1"] == "launching"
    # The node's own uploader marks the time between the command's end and its results' arrival:
    one = job_state.newest_per_tag(job_state.find_nodes(job, job_state.LIVE))["op-more1"]
    job_state.set_status([one["id"]], "uploading")
    assert states(box, job)["op-more1"] == "uploading"
    cs.client.cache_clear()
    cs.session.cache_clear()
    box.ec2.terminate_instances(InstanceIds=[one["id"]])


def test_ssh_runs_a_command_on_a_live_row_and_follow_prints_its_log_until_it_ends(box, tmp_path):
    job, tag = "op-ssh", "op-ssh0"
    jobs = write(tmp_path / "jobs.csv", 'instance_type,command\nt3.micro,"echo first; '
                 'until [ -e release ]; do sleep 0.1; done; echo x > output/x.txt; echo last"\n')
    assert box.run("dispatcher.py", "auto", job, jobs, "-c", "-d").returncode == 0
    instance = box.instances(job)[0]["InstanceId"]
    until(lambda: states(box, job)[tag] == "running", what="the row to run")
    there = box.run("logs.py", job, tag, "--ssh", "--", "cat", ".awsrun/instance")
    assert (there.returncode, there.stdout) == (0, instance + "\n"), there.stderr
    following = subprocess.Popen([sys.executable, "logs.py", job, tag, "--follow"], cwd=ROOT, env=box.env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    until(lambda: box.run("logs.py", job, tag).stdout == "first\n", what="the row's first line")
    assert following.poll() is None  # the row runs on: its log is followed
    assert box.run("logs.py", job, tag, "--ssh", "--", "touch release").returncode == 0
    out, err = following.communicate(timeout=60)
    assert (following.returncode, out) == (0, "first\nlast\n"), err
    until(lambda: box.states(job) == ["terminated"], what="the machine to end")
    gone = box.run("logs.py", job, tag, "--ssh")
    assert (gone.returncode, gone.stderr) == (1, "error: %s's machine %s is terminated: there is nothing to log in "
                                                 "to\n" % (tag, instance))
    assert box.run("logs.py", job, tag, "--follow").stdout == "first\nlast\n"  # ended: the whole log, from the bucket


def test_status_watch_stops_when_every_job_has_finished(box, tmp_path):
    job = "op-watch"
    jobs = write(tmp_path / "jobs.csv", "instance_type,command\nt3.micro,echo a\nt3.small,echo b\n")
    assert box.run("dispatcher.py", "auto", job, jobs, "-c", "-d").returncode == 0
    watch = box.run("cloud_setup.py", "status", job, "--watch", "--interval", "0.2", timeout=60)
    assert watch.returncode == 0, watch.stderr
    assert watch.stdout.splitlines()[-1] == "2 jobs: 2 succeeded"


def test_logs_while_running_and_after(box, tmp_path):
    job = "op-logs"
    jobs = write(tmp_path / "jobs.csv", 'instance_type,command\nt3.micro,"echo first line; %s; echo last line"\n'
                 % waits_for(tmp_path, "go"))
    assert box.run("dispatcher.py", "auto", job, jobs, "-c", "-d").returncode == 0
    live = until(lambda: (lambda r: r if r.returncode == 0 else None)(box.run("logs.py", job, "op-logs0")),
                 what="the live log")
    assert live.stdout == "first line\n"
    install = box.run("logs.py", job, "op-logs0", "--install")
    assert install.returncode == 0 and install.stdout.startswith("--- .awsrun/install.1.log\n")
    release(tmp_path, "go")
    until(lambda: states(box, job)["op-logs0"] == "succeeded", what="succeeded")
    after = box.run("logs.py", job, "op-logs0")
    assert after.returncode == 0 and after.stdout == "first line\nlast line\n"
    assert after.stdout == box.read(job, "op-logs0/screen_output.txt")
    from_bucket = box.run("logs.py", job, "op-logs0", "--install")
    assert from_bucket.stdout.startswith("--- install.1.log\n")
    missing = box.run("logs.py", job, "op-logs9")
    assert missing.returncode == 1
    assert missing.stderr == ("error: no machine and no results for op-logs9: check JOB= and TAG= "
                              "(`make status JOB=op-logs`)\n")


def test_retry_runs_only_failed_and_lost_rows_on_spot(box, tmp_path):
    job = "op-retry"
    flag = tmp_path / "second-time"
    rows = ["echo done",                                     # succeeds: never run twice
            "[ -e %s ] || exit 5; echo fixed" % flag,        # fails, then succeeds on retry
            "[ -e %s ] || { %s; }; echo back" % (flag, waits_for(tmp_path, "never"))]  # lost, then ok
    jobs = write(tmp_path / "jobs.csv", "instance_type,command\n" + "".join('t3.micro,"%s"\n' % r for r in rows))
    assert box.run("dispatcher.py", "auto", job, jobs, "-c", "-d", "--spot").returncode == 0
    assert {i.get("InstanceLifecycle") for i in box.instances(job)} == {"spot"}
    until(lambda: states(box, job)["op-retry2"] == "running", what="running")
    vanish(box, job, "op-retry2")  # a spot interruption
    until(lambda: states(box, job) == {"op-retry0": "succeeded", "op-retry1": "failed (exit 5)",
                                       "op-retry2": "lost"}, what="first outcome")
    flag.write_text("")
    retry = box.run("dispatcher.py", "auto", job, jobs, "--retry", "--spot")
    assert retry.returncode == 0, retry.stderr
    assert "retrying 2 rows: op-retry1 op-retry2" in retry.stderr
    assert "not run again: op-retry0 succeeded" in retry.stderr
    until(lambda: set(states(box, job).values()) == {"succeeded"}, what="all succeeded")
    counts = {}
    for i in box.instances(job):
        tags = {t["Key"]: t["Value"] for t in i["Tags"]}
        counts[tags["awsrun:rows"]] = counts.get(tags["awsrun:rows"], 0) + 1
    assert counts == {"0-2": 3, "1-2": 2}  # the first launch of 3, then one launch of rows 1 and 2
    assert box.read(job, "op-retry1/screen_output.txt") == "fixed\n"
    assert box.read(job, "op-retry2/screen_output.txt") == "back\n"
    again = box.run("dispatcher.py", "auto", job, jobs, "--retry")
    assert again.returncode == 0 and "nothing to retry" in again.stderr
    assert len(box.instances(job)) == 5
    report = box.run("report.py", job, "--out", str(tmp_path / "report.html"))  # spot prices, from EC2
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    assert lines[0] == "job op-retry: 3 rows: 3 succeeded; 5 machines"
    assert lines[-3].startswith("cost: t3.micro (spot): 5 machines, ")
    assert lines[-2] == "prices: spot prices of the run's hours from DescribeSpotPriceHistory"


def test_down_and_clean_leave_nothing_of_the_job(box, tmp_path):
    job = "op-clean"
    jobs = write(tmp_path / "jobs.csv", 'instance_type,command\nt3.micro,"%s"\nt3.small,echo quick\n'
                 % waits_for(tmp_path, "never"))
    assert box.run("dispatcher.py", "auto", job, jobs, "-c", "-d").returncode == 0
    until(lambda: states(box, job)["op-clean1"] == "succeeded", what="one job done")
    down = box.run("cloud_setup.py", "down", job)
    assert down.returncode == 0, down.stderr
    assert down.stdout.split("\t")[0] == "op-clean0" and down.stdout.strip().endswith("terminated")
    assert box.states(job) == ["terminated", "terminated"]
    assert states(box, job) == {"op-clean0": "lost", "op-clean1": "succeeded"}

    key = os.path.join(box.env["AWSRUN_KEY_DIR"], job + ".pem")
    assert os.path.exists(key)
    clean = box.run("cloud_setup.py", "clean", job)
    assert clean.returncode == 0, clean.stderr
    assert "bucket op-clean kept (DELETE_BUCKET=yes deletes it)" in clean.stderr
    assert not os.path.exists(key)
    assert box.ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["awsrun-" + job]}])[
        "SecurityGroups"] == []
    assert [k for k in box.ec2.describe_key_pairs()["KeyPairs"] if k["KeyName"] == job] == []
    iam = box.client("iam")
    assert [r for r in iam.list_roles()["Roles"] if job in r["RoleName"]] == []
    assert [p for p in iam.list_instance_profiles()["InstanceProfiles"] if job in p["InstanceProfileName"]] == []
    assert "op-clean1/manifest.json" in box.objects(job)

    gone = box.run("cloud_setup.py", "clean", job, "--delete-bucket")
    assert gone.returncode == 0, gone.stderr
    assert job not in [b["Name"] for b in box.s3.list_buckets()["Buckets"]]


def test_max_runtime_stops_the_command_and_still_uploads(box, tmp_path):
    job = "op-maxrun"
    jobs = write(tmp_path / "jobs.csv",
                 'instance_type,command\nt3.micro,"echo partial > output/p.txt; echo going; sleep 600"\n')
    run = box.run("dispatcher.py", "auto", job, jobs, "-c", "-d", "--max-runtime", "2s")
    assert run.returncode == 0, run.stderr
    until(lambda: states(box, job)["op-maxrun0"] != "running" and states(box, job), timeout=60, what="stop")
    assert states(box, job) == {"op-maxrun0": "failed (exit 124)"}
    m = box.manifest(job, "op-maxrun0")
    assert (m["exit_code"], m["timed_out"], m["max_runtime"]) == (124, True, 2)
    assert box.read(job, "op-maxrun0/output/p.txt") == "partial\n"
    assert box.read(job, "op-maxrun0/screen_output.txt") == "going\n"
    assert box.states(job) == ["terminated"]


def test_a_row_without_max_runtime_still_stops_within_24_hours(box, tmp_path):
    """A hung row must not bill forever: with no --max-runtime the row stops after 24 h, its OS
    shutdown is armed at 24 h plus the upload hour, dispatch says so, and status shows when."""
    job = "op-default-limit"
    jobs = write(tmp_path / "jobs.csv", "instance_type,command\nt3.micro,%s\n" % waits_for(tmp_path, "go"))
    before = time.time()
    run = box.run("dispatcher.py", "auto", job, jobs, "-c", "-d")
    assert run.returncode == 0, run.stderr
    assert "rows stop after 24h00m: --max-runtime (0: no limit)" in run.stderr
    [instance] = [i["InstanceId"] for i in box.instances(job)]
    armed = [e["when"] for e in box.decisions() if e.get("power") == instance]
    assert armed[-1] == "+%d" % ((24 * 3600 + 3600) // 60), armed  # the runtime guard: 24 h + 1 h, in minutes
    row = status(box, job)[job + "0"]
    assert row["state"] == "running"
    deadline = cs.parse_time(row["deadline"])
    assert before + 24 * 3600 - 5 <= deadline <= time.time() + 24 * 3600 + 5
    table = box.run("cloud_setup.py", "status", job).stdout.splitlines()
    assert table[1].split()[3] == "running" and table[1].split()[-1] == row["deadline"]
    release(tmp_path, "go")
    until(lambda: states(box, job) == {job + "0": "succeeded"}, what="the row")


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def guard_log(box, tag):
    with open(os.path.join(box.nodes_dir, tag, ".awsrun", "guard.log")) as f:
        return f.read()


def test_idle_node_terminates_itself_and_dispatch_cancels_the_timer(box, tmp_path):
    job = "op-idle"
    jobs = write(tmp_path / "jobs.csv", "instance_type,command\nt3.micro,echo late\nt3.micro,echo on time\n")
    # An idle limit longer than create to dispatch can take on a loaded machine: the test is that
    # dispatch ends the timer, not a race against it (the second job below sees the timer fire).
    create = box.run("dispatcher.py", "auto", job, jobs, "-c", "--idle-timeout", "60s")
    assert create.returncode == 0, create.stderr
    watchdog = int(open(os.path.join(box.nodes_dir, "op-idle1", ".awsrun", "watchdog.pid")).read())
    dispatch_one = box.run("dispatcher.py", "auto", job, jobs, "-d")  # both are dispatched here...
    assert dispatch_one.returncode == 0
    until(lambda: not alive(watchdog), timeout=10, what="the idle timer to end")  # ...and its timer ends
    until(lambda: set(states(box, job).values()) == {"succeeded"}, what="dispatched jobs finish")

    job = "op-idle2"
    jobs = write(tmp_path / "idle.csv", "instance_type,command\nt3.micro,echo never started\n")
    create = box.run("dispatcher.py", "auto", job, jobs, "-c", "--idle-timeout", "2s")
    assert create.returncode == 0, create.stderr
    until(lambda: box.states(job) == ["terminated"], timeout=30, what="idle termination")
    assert states(box, job) == {"op-idle20": "lost (idle)"}
    log = guard_log(box, "op-idle20")
    sandbox_shutdown = os.path.join(box.env["AWSRUN_SANDBOX"], "bin", "shutdown")
    assert "guard idle 2 (shutdown is %s)" % sandbox_shutdown in log  # never the machine's own
    with open(os.path.join(box.env["AWSRUN_SANDBOX"], "standins.log")) as f:
        calls = f.read().splitlines()
    assert "shutdown -h +6" in calls  # the OS backstop: 2 s + 5 min, in minutes, rounded up


def test_the_boot_time_guard_run_after_create_and_dispatch_does_not_replace_their_shutdown(account, tmp_path):
    # On EC2 cloud-init runs the user data, and so the boot-time guard, in its final stage, after
    # sshd has started: create and dispatch can reach the machine first. The boot-time guard's
    # shutdown, armed last, then replaced the row's (the row would end at its minutes).
    box = account(user_data_after=6)
    job = "op-boot"
    jobs = write(tmp_path / "jobs.csv", "instance_type,command\nt3.micro,sleep 12\n")
    run = box.run("dispatcher.py", "auto", job, jobs, "-c", "-d", "--max-runtime", "10m")
    assert run.returncode == 0, run.stderr
    instance = box.instances(job)[0]["InstanceId"]
    until(lambda: os.path.exists(os.path.join(box.nodes_dir, ".boot-" + instance, "boot-finished")),
          what="cloud-init to run the user data")
    armed = [e["when"] for e in box.decisions() if e.get("power") == instance]
    assert [w for w in armed if w != "now"][-1] == "+70", armed  # the row's: 10 min and an hour for its upload
    until(lambda: states(box, job) == {job + "0": "succeeded"}, what="the row")
    until(lambda: box.states(job) == ["terminated"], what="the machine to end")


def signal_masks(pid):
    """A process's signal masks (/proc/PID/status): {SigBlk, SigIgn, SigCgt: bit mask}."""
    with open("/proc/%d/status" % pid) as f:
        return {k: int(v, 16) for k, v in (line.split(":") for line in f) if k in ("SigBlk", "SigIgn", "SigCgt")}


def test_ctrl_c_during_create_leaves_tagged_machines_that_down_removes(box, tmp_path):
    job = "op-intr"
    jobs = write(tmp_path / "jobs.csv", "instance_type,command\nt3.micro,echo a\nt3.small,echo b\nt3.micro,echo c\n")
    install = write(tmp_path / "slow.sh", waits_for(tmp_path, "never") + "\n")
    # As a terminal's foreground job: SIGINT at its default. A run started in the background by a
    # non-interactive shell (`make test &`, nohup, some CI) ignores SIGINT, and a process inherits
    # that: Python then takes no Ctrl-C at all, rightly (it failed so in 4 fresh-clone runs).
    create = subprocess.Popen([sys.executable, "dispatcher.py", "auto", job, jobs, "-c", "--install", install],
                              cwd=ROOT, env=dict(box.env, PYTHONFAULTHANDLER="1"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    until(lambda: len(states(box, job)) == 3 and set(states(box, job).values()) == {"installing"},
          what="installing")
    masks = signal_masks(create.pid)
    assert masks["SigCgt"] & 1 << (signal.SIGINT - 1) and not (masks["SigBlk"] | masks["SigIgn"]) & 1 << (
        signal.SIGINT - 1), "create cannot take Ctrl-C: %r" % masks
    create.send_signal(signal.SIGINT)
    try:
        out, err = create.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # every thread's stack (faulthandler), to say why
        create.send_signal(signal.SIGABRT)
        pytest.fail("create did not end 30 s after Ctrl-C (signals %r):\n%s" % (masks, create.communicate()[1][-8000:]))
    assert create.returncode == 130
    assert err.strip().endswith("error: interrupted: every machine launched so far is tagged awsrun:job=op-intr; "
                                "`make status JOB=op-intr` shows them and `make down JOB=op-intr` removes them")
    assert sorted(states(box, job)) == ["op-intr0", "op-intr1", "op-intr2"]
    down = box.run("cloud_setup.py", "down", job)
    assert down.returncode == 0, down.stderr
    assert sorted(line.split("\t")[0] for line in down.stdout.splitlines()) == ["op-intr0", "op-intr1", "op-intr2"]
    assert box.states(job) == ["terminated"] * 3
