"""End-to-end tests: the commands a user types, against the sandbox (moto server + sshd).
They assert what the user would check: the bucket, the instances, the files fetched."""
import calendar
import json
import os
import subprocess
import time


import launch
from conftest import ROOT, write


def create_dispatch(box, job, jobs, *extra, env=None):
    return box.run("dispatcher.py", "auto", job, jobs, "-c", "-d", *extra, env=env)


def wait_finished(box, job, timeout=60):
    done = box.run("cloud_setup.py", "wait", job, "--timeout", str(timeout))
    assert done.returncode == 0, done.stderr
    return done


def test_demo_flow_end_to_end(box, tmp_path):
    job = "e2e-demo"
    jobs = os.path.join(ROOT, "awsjobs", "demo.csv")
    run = create_dispatch(box, job, jobs, "--code", os.path.join(ROOT, "awsjobs", "demo"))
    assert run.returncode == 0, run.stderr
    assert "Installation complete on 3 / 3 boxes" in run.stderr
    assert [line.split("\t")[0] for line in run.stdout.splitlines()] == \
        ["e2e-demo0", "e2e-demo1", "e2e-demo2"] * 2
    wait_finished(box, job)
    assert box.states(job) == ["terminated"] * 3

    keys = set(box.objects(job))
    for tag in ("e2e-demo0", "e2e-demo1", "e2e-demo2"):
        assert {tag + "/manifest.json", tag + "/screen_output.txt", tag + "/output/summary.txt"} <= keys
    assert "e2e-demo2/output/plots/walk.csv" in keys
    assert box.read(job, "e2e-demo1/output/summary.txt").startswith("tag=e2e-demo1 seed=2 ")
    assert box.read(job, "e2e-demo0/screen_output.txt").startswith("node e2e-demo0: seed 1,")
    m = box.manifest(job, "e2e-demo2")
    assert (m["job"], m["tag"], m["instance_type"], m["exit_code"]) == (job, "e2e-demo2", "t3.small", 0)
    assert m["command"] == "python3 experiment.py --seed 3 --plots"
    assert m["instance_id"] in [i["InstanceId"] for i in box.instances(job)]
    assert m["started"] <= m["ended"] <= m["uploaded"]
    assert sorted(f["path"] for f in m["files"]) == \
        ["logs/install.1.log", "output/plots/walk.csv", "output/result.csv", "output/summary.txt",
         "screen_output.txt"]

    status = box.run("cloud_setup.py", "status", job)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].split() == ["TAG", "INSTANCE", "TYPE", "STATE", "ELAPSED", "STOPS", "AT", "PROGRESS"]
    assert [line.split()[0:4:2] + line.split()[3:4] for line in lines[1:4]] == [
        ["e2e-demo0", "t3.micro", "succeeded"], ["e2e-demo1", "t3.micro", "succeeded"],
        ["e2e-demo2", "t3.small", "succeeded"]]
    assert lines[4] == "3 jobs: 3 succeeded"

    out = tmp_path / "results"
    fetch = box.run("get_s3_files.py", job, str(out))
    assert fetch.returncode == 0, fetch.stderr
    fetched = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != ".awsrun-fetch.json")
    assert fetched == sorted(k for k in keys if not k.startswith("_awsrun/"))
    assert len(fetched) == 16
    walk = (out / "e2e-demo2/output/plots/walk.csv").read_text()
    assert walk == box.read(job, "e2e-demo2/output/plots/walk.csv")
    assert "fetched 16 files" in fetch.stderr

    table = box.run("collect.py", job, "--from", str(out), "--out", str(tmp_path / "table.csv"))
    assert table.returncode == 0, table.stderr
    lines = (tmp_path / "table.csv").read_text().splitlines()
    assert lines[0] == "tag,command,exit_code,file,seed,final,max,min"  # not plots/walk.csv: * stays in output/
    assert [line.split(",")[:5] for line in lines[1:]] == [
        ["e2e-demo%d" % i, "python3 experiment.py --seed %d%s" % (i + 1, " --plots" if i == 2 else ""), "0",
         "output/result.csv", str(i + 1)] for i in range(3)]

    again = box.run("get_s3_files.py", job, str(out))
    assert again.returncode == 0 and "fetched 0 files" in again.stderr and "(16 already there)" in again.stderr
    (out / "e2e-demo0/output/summary.txt").write_text("changed locally")
    third = box.run("get_s3_files.py", job, str(out))
    assert "fetched 1 files" in third.stderr
    assert (out / "e2e-demo0/output/summary.txt").read_text().startswith("tag=e2e-demo0 ")

    flat = box.run("get_s3_files.py", job, str(tmp_path / "flat"), "--flat")
    assert flat.returncode == 1
    assert flat.stderr == ("error: --flat: e2e-demo0/output/result.csv and e2e-demo1/output/result.csv "
                           "would both be saved as result.csv: fetch without --flat\n")
    assert not (tmp_path / "flat").exists() or not any((tmp_path / "flat").iterdir())

    with open(os.path.join(box.env["AWSRUN_SANDBOX"], "standins.log")) as f:  # only the cost guard's
        assert {line.split()[0] for line in f} == {"shutdown", "cloud-init"}    # stand-ins ran: no apt-get

    rerun = box.run("dispatcher.py", "auto", job, jobs, "-c", "--code", os.path.join(ROOT, "awsjobs", "demo"))
    assert "launched" in rerun.stderr  # the finished nodes terminated, so create launches them again
    down = [i["InstanceId"] for i in box.instances(job) if i["State"]["Name"] == "running"]
    box.ec2.terminate_instances(InstanceIds=down)


def test_failed_command_still_uploads_log_and_manifest_and_terminates(box, tmp_path):
    job = "e2e-exit3"
    jobs = write(tmp_path / "jobs.csv", 'instance_type,command\n'
                 't3.micro,"echo partial > output/part.txt; echo about to fail; exit 3"\n')
    run = create_dispatch(box, job, jobs)
    assert run.returncode == 0, run.stderr
    wait_finished(box, job)
    assert box.states(job) == ["terminated"]
    assert box.manifest(job, "e2e-exit30")["exit_code"] == 3
    assert box.read(job, "e2e-exit30/screen_output.txt") == "about to fail\n"
    assert box.read(job, "e2e-exit30/output/part.txt") == "partial\n"
    status = json.loads(box.run("cloud_setup.py", "status", job, "--json").stdout)
    assert [(r["tag"], r["state"], r["exit"]) for r in status] == [("e2e-exit30", "failed (exit 3)", 3)]
    flat = box.run("get_s3_files.py", job, str(tmp_path / "flat"), "--flat")
    assert flat.returncode == 0, flat.stderr
    assert sorted(os.listdir(tmp_path / "flat")) == \
        [".awsrun-fetch.json", "e2e-exit30_install.1.log", "e2e-exit30_manifest.json", "e2e-exit30_screen_output.txt",
         "part.txt"]


def test_install_that_always_fails_is_reported_with_its_log_within_its_deadline(box, tmp_path):
    job = "e2e-badinstall"
    jobs = write(tmp_path / "jobs.csv", "instance_type,command\nt3.micro,echo never\nt3.micro,echo never\n")
    install = write(tmp_path / "broken.sh", 'echo "step 1 ok"\necho "pip: no matching distribution" >&2\nexit 7\n')
    started = time.monotonic()
    run = box.run("dispatcher.py", "auto", job, jobs, "-c", "-d", "--install", install,
                  "--install-tries", "2", "--install-timeout", "20")
    assert time.monotonic() - started < 60
    assert run.returncode == 1
    assert "try 1: INSTALL.sh exited 7 without creating READY" in run.stderr
    assert "try 2: INSTALL.sh exited 7 without creating READY" in run.stderr
    assert "pip: no matching distribution" in run.stderr
    assert run.stderr.strip().endswith("error: 2 of 2 machines failed: e2e-badinstall0 e2e-badinstall1")
    assert "Installation complete" not in run.stderr
    assert box.states(job) == ["terminated", "terminated"]  # no failed machine is left billing
    kept = os.path.join(box.env["AWSRUN_STATE_DIR"], job, "e2e-badinstall0.install.log")
    assert "pip: no matching distribution" in open(kept).read()


def test_install_that_hangs_is_stopped_at_its_time_limit(box, tmp_path):
    job = "e2e-hang"
    jobs = write(tmp_path / "jobs.csv", "instance_type,command\nt3.micro,echo never\n")
    install = write(tmp_path / "hang.sh", "echo waiting for a mirror\nsleep 600\n")
    started = time.monotonic()
    run = box.run("dispatcher.py", "auto", job, jobs, "-c", "--install", install,
                  "--install-tries", "1", "--install-timeout", "2")
    assert time.monotonic() - started < 40
    assert run.returncode == 1
    assert "try 1: INSTALL.sh exited 124 without creating READY" in run.stderr
    assert "waiting for a mirror" in run.stderr


def test_command_with_quotes_variables_pipes_and_unicode_runs_as_written(box, tmp_path):
    job = "e2e-quoting"
    command = ("""echo "it's \\"$TAG\\" & 'single' $((6*7)) naïve ✓ 日本" | tr a-z A-Z | tee output/out.txt; """
               """echo `echo back` > output/tick.txt""")
    with open(tmp_path / "jobs.csv", "w", encoding="utf-8", newline="") as f:
        f.write('instance_type,command\nt3.micro,"%s"\n' % command.replace('"', '""'))
    run = create_dispatch(box, job, str(tmp_path / "jobs.csv"))
    assert run.returncode == 0, run.stderr
    wait_finished(box, job)
    expected = subprocess.run(["bash", "-c", command.replace("output/", str(tmp_path) + "/")],
                              env={"TAG": "e2e-quoting0", "PATH": os.environ["PATH"]},
                              capture_output=True, text=True).stdout
    assert expected == "IT'S \"E2E-QUOTING0\" & 'SINGLE' 42 NAïVE ✓ 日本\n"
    assert box.read(job, "e2e-quoting0/output/out.txt") == expected
    assert box.read(job, "e2e-quoting0/output/tick.txt") == "back\n"
    assert box.manifest(job, "e2e-quoting0")["command"] == command


def test_no_file_sent_to_a_node_holds_the_callers_secret(box, tmp_path):
    job = "e2e-secret"
    secret = "AWSRUN-CANARY-7f3a9c-NEVER-SEND-ME"
    code = tmp_path / "code"
    write(code / "job.sh", "env > output/env.txt\n")
    jobs = write(tmp_path / "jobs.csv", "instance_type,command\nt3.micro,bash job.sh\n")
    run = create_dispatch(box, job, jobs, "--code", str(code), "-i", "%s=extra/jobs.csv" % jobs,
                          env={"AWS_SECRET_ACCESS_KEY": secret, "AWS_SESSION_TOKEN": secret + "-token"})
    assert run.returncode == 0, run.stderr
    wait_finished(box, job)
    node_dir = os.path.join(box.nodes_dir, job + "0")
    sent = [os.path.join(d, f) for d, _, files in os.walk(node_dir) for f in files]
    assert os.path.join(node_dir, "extra", "jobs.csv") in sent
    assert os.path.join(node_dir, ".awsrun", "node.json") in sent
    for path in sent:
        with open(path, "rb") as f:
            assert secret.encode() not in f.read(), path
    env_seen = box.read(job, job + "0/output/env.txt")
    assert "TAG=%s0" % job in env_seen and secret not in env_seen
    # the sandbox's stand-ins for shutdown, apt-get and sudo come first on the node's PATH
    assert "PATH=%s/bin:" % box.env["AWSRUN_SANDBOX"] in env_seen
    assert all(secret not in box.read(job, key) for key in box.objects(job))


def test_upload_failure_keeps_the_node_up_and_tagged_until_its_hold_ends(box, tmp_path):
    job = "e2e-upfail"
    box.faults([{"action": "s3:PutObject", "resource": "arn:aws:s3:::%s/*" % job, "principal": "node*",
                 "code": "AccessDenied", "status": 403, "message": "sandbox: the bucket refuses writes"}])
    jobs = write(tmp_path / "jobs.csv", "instance_type,command\nt3.micro,echo result\n")
    started = time.time()
    run = create_dispatch(box, job, jobs, "--upload-hold", "2h")
    assert run.returncode == 0, run.stderr
    done = box.run("cloud_setup.py", "wait", job, "--timeout", "60")
    assert done.returncode == 1
    status = json.loads(box.run("cloud_setup.py", "status", job, "--json").stdout)
    assert [r["state"] for r in status] == ["upload-failed"]
    until = status[0]["held_until"]
    assert done.stderr == ("error: upload failed on e2e-upfail0: those nodes are kept up until %s; "
                           "see `make status JOB=e2e-upfail`\n" % until)
    assert started + 7200 - 60 <= calendar.timegm(time.strptime(until, "%Y-%m-%dT%H:%M:%SZ")) <= time.time() + 7200
    assert box.states(job) == ["running"]
    tags = {t["Key"]: t["Value"] for t in box.instances(job)[0]["Tags"]}
    assert tags["awsrun:status"] == "upload-failed" and tags["awsrun:until"] == until
    assert "the bucket refuses writes" in tags["awsrun:error"]
    table = box.run("cloud_setup.py", "status", job).stdout.splitlines()
    assert table[1].split()[3:] == ["upload-failed", table[1].split()[4], "-", "kept", "up", "until", until]
    with open(os.path.join(box.nodes_dir, job + "0", ".awsrun", "guard.log")) as f:
        assert "guard hold 7200" in f.read()  # run.sh scheduled the OS shutdown for the hold's end
    assert os.path.exists(os.path.join(box.nodes_dir, job + "0", "screen_output.txt"))  # kept on the node
    box.ec2.terminate_instances(InstanceIds=[box.instances(job)[0]["InstanceId"]])


def test_auto_ami_gives_each_type_the_image_of_its_architecture(box, tmp_path):
    """AMI=auto: a t3 (amd64) and a t4g (arm64) row run in one job, each on Ubuntu 24.04 of its
    own architecture; an explicit AMI still refuses a type that cannot run it, before launching."""
    job = "e2e-arch"
    jobs = write(tmp_path / "jobs.csv", "instance_type,command\nt3.micro,uname -s > output/os.txt\n"
                                        "t4g.micro,uname -s > output/os.txt\n")
    run = create_dispatch(box, job, jobs)
    assert run.returncode == 0, run.stderr
    wait_finished(box, job)
    ssm = box.client("ssm")
    image = {arch: ssm.get_parameter(Name=launch.ubuntu_parameter(arch))["Parameter"]["Value"]
             for arch in ("amd64", "arm64")}
    assert image["amd64"] != image["arm64"]
    assert {i["InstanceType"]: i["ImageId"] for i in box.instances(job)} == {
        "t3.micro": image["amd64"], "t4g.micro": image["arm64"]}
    assert {a["ImageId"]: a["Architecture"] for a in box.ec2.describe_images(ImageIds=list(image.values()))[
        "Images"]} == {image["amd64"]: "x86_64", image["arm64"]: "arm64"}
    refused = box.run("dispatcher.py", image["amd64"], "e2e-arch2", jobs, "-c", "-d")
    assert (refused.returncode, refused.stderr) == (2, "error: instance type t4g.micro runs arm64, but AMI %s "
                                                       "is x86_64: pick a matching AMI or type, or AMI=auto\n"
                                                       % image["amd64"])
    assert box.instances("e2e-arch2") == []
