"""End-to-end tests of a busy real account: throttling, capacity, quotas, eventual
consistency, no default VPC, subnets without public IPs, a laptop that moved, and a machine
that never gets prepared. Each through the commands a user types, in a sandbox whose AWS
answers as such an account does (testbed/sandbox_ec2.py, faults on demand)."""
import json
import os
import pathlib
import subprocess

import pytest

from conftest import ROOT, write
from test_operate import release, states, until, waits_for


def jobs_file(box, job, rows):
    return write(box.folder(job) / "jobs.csv", "instance_type,command\n" + "".join(
        '%s,"%s"\n' % (itype, command.replace('"', '""')) for itype, command in rows))


def create_dispatch(box, job, jobs, *extra, env=None):
    return box.run("dispatcher.py", "auto", job, jobs, "-c", "-d", *extra, env=env)


@pytest.mark.slow
def test_throttling_is_waited_out_and_nothing_is_lost(box):
    job = "busy-throttle"
    box.faults([{"action": "ec2:RunInstances", "principal": "user", "code": "RequestLimitExceeded",
                 "status": 503, "times": 9, "message": "Request limit exceeded."},  # past botocore's 8 tries
                {"action": "ec2:DescribeInstances", "principal": "user", "code": "RequestLimitExceeded",
                 "status": 503, "times": 3},
                {"action": "ec2:CreateTags", "principal": "*", "code": "RequestLimitExceeded", "status": 503,
                 "times": 3}])
    jobs = jobs_file(box, job, [("t3.micro", "echo one"), ("t3.micro", "echo two")])
    run = create_dispatch(box, job, jobs)
    assert run.returncode == 0, run.stderr
    until(lambda: set(states(box, job).values()) == {"succeeded"}, what="both rows", timeout=90)
    assert box.read(job, job + "1/screen_output.txt") == "two\n"
    assert (box.fault_hits("RequestLimitExceeded")) == 15


def test_a_zone_without_capacity_is_skipped_for_the_next(box):
    job = "busy-zone"
    box.faults([{"action": "ec2:RunInstances", "zone": "us-east-1a", "code": "InsufficientInstanceCapacity",
                 "status": 500, "message": "We currently do not have sufficient t3.micro capacity in the "
                 "Availability Zone you requested (us-east-1a)."}])
    run = create_dispatch(box, job, jobs_file(box, job, [("t3.micro", "echo a"), ("t3.micro", "echo b")]))
    assert run.returncode == 0, run.stderr
    assert "no t3.micro capacity in us-east-1a (InsufficientInstanceCapacity): trying the next zone" in run.stderr
    assert {i["Placement"]["AvailabilityZone"] for i in box.instances(job)} == {"us-east-1b"}
    until(lambda: set(states(box, job).values()) == {"succeeded"}, what="both rows")


def test_a_type_without_capacity_anywhere_leaves_the_rest_running_and_retry_finishes(box):
    job = "busy-type"
    box.faults([{"action": "ec2:RunInstances", "params": {"InstanceType": "t3.small"},
                 "code": "InsufficientInstanceCapacity", "status": 500, "message": "no capacity"}])
    jobs = jobs_file(box, job, [("t3.small", "echo big"), ("t3.micro", "echo small"), ("t3.small", "echo big2")])
    run = create_dispatch(box, job, jobs)
    assert run.returncode == 1
    assert "busy-type0 (line 2) was not launched: AWS has no t3.small capacity in any of the 6 zones tried" \
        in run.stderr
    assert run.stderr.strip().endswith("error: 2 rows could not be launched: busy-type0 busy-type2; "
                                       "`make retry` launches them later")
    assert [i["InstanceType"] for i in box.instances(job)] == ["t3.micro"]  # nothing else launched
    until(lambda: states(box, job) == {job + "1": "succeeded"}, what="the row that launched")
    box.faults([])
    retry = box.run("dispatcher.py", "auto", job, jobs, "--retry")
    assert retry.returncode == 0, retry.stderr
    until(lambda: set(states(box, job).values()) == {"succeeded"} and len(states(box, job)) == 3, what="retry")


def test_a_job_over_the_vcpu_quota_is_refused_before_anything_is_made(account):
    box = account(vcpu_quota=4)
    job = "busy-quota"
    run = create_dispatch(box, job, jobs_file(box, job, [("t3.small", "echo x")] * 3))
    assert run.returncode == 1
    assert run.stderr == (
        "error: the job needs 6 vCPUs of on-demand Standard (A, C, D, H, I, M, R, T, Z) instances (3 x t3.small), "
        "but the account's quota in us-east-1 allows 4: ask for more (`aws service-quotas "
        "request-service-quota-increase --service-code ec2 --quota-code L-1216C47A --desired-value 6`), or run "
        "the rows on 2 machines, in pool mode: POOL=2 (--pool 2)\n")
    assert box.instances(job) == [] and job not in [b["Name"] for b in box.s3.list_buckets()["Buckets"]]


def test_an_instance_quota_met_while_launching_names_the_rows_and_prepares_the_rest(account):
    box = account(instance_quota=2)
    job = "busy-count"
    run = create_dispatch(box, job, jobs_file(box, job, [("t3.micro", "echo %d" % i) for i in range(3)]))
    assert run.returncode == 1
    assert ("busy-count2 (line 4) was not launched: launching t3.micro failed: an instance quota is reached: "
            "ask AWS for more, or run fewer rows (InstanceLimitExceeded)") in run.stderr
    until(lambda: states(box, job) == {job + "0": "succeeded", job + "1": "succeeded"}, what="two rows")


def test_new_objects_that_are_not_visible_yet_are_waited_for(box):
    job = "busy-eventual"
    box.faults([{"action": "ec2:AuthorizeSecurityGroupIngress", "code": "InvalidGroup.NotFound", "status": 400,
                 "times": 2, "message": "The security group does not exist"},
                {"action": "iam:GetInstanceProfile", "code": "NoSuchEntity", "status": 404, "times": 1,
                 "message": "Instance Profile awsrun-busy-eventual-node cannot be found."},
                {"action": "ec2:RunInstances", "code": "InvalidParameterValue", "status": 400, "times": 2,
                 "message": "Value (awsrun-busy-eventual-node) for parameter iamInstanceProfile.name is invalid. "
                 "Invalid IAM Instance Profile name"}])
    run = create_dispatch(box, job, jobs_file(box, job, [("t3.micro", "echo seen")]))
    assert run.returncode == 0, run.stderr
    until(lambda: states(box, job) == {job + "0": "succeeded"}, what="the row")
    assert box.fault_hits("InvalidGroup.NotFound") == 2 and box.fault_hits("InvalidParameterValue") == 2
    assert box.fault_hits("NoSuchEntity") == 1


def test_no_default_vpc_asks_for_a_subnet_and_then_uses_it(account):
    box = account(default_vpc=False)
    job = "busy-novpc"
    go = pathlib.Path(box.folder(job)) / "go"  # the row waits, so its instance (and address) are there to see
    jobs = jobs_file(box, job, [("t3.micro", waits_for(go.parent, go.name) + "; echo in my subnet")])
    run = create_dispatch(box, job, jobs)
    assert run.returncode == 2
    assert run.stderr == ('error: region us-east-1 has no default VPC: name the subnets to launch in, e.g. '
                          'ARGS="--subnet subnet-0abc --subnet subnet-0def" (one per zone, for failover)\n')
    assert box.ec2.describe_key_pairs()["KeyPairs"] == [] and box.s3.list_buckets()["Buckets"] == []
    vpc = box.ec2.create_vpc(CidrBlock="10.7.0.0/16")["Vpc"]["VpcId"]
    subnet = box.ec2.create_subnet(VpcId=vpc, CidrBlock="10.7.1.0/24", AvailabilityZone="us-east-1c")["Subnet"]
    run = create_dispatch(box, job, jobs, "--subnet", subnet["SubnetId"])
    assert run.returncode == 0, run.stderr
    group = box.ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["awsrun-" + job]}])
    assert [g["VpcId"] for g in group["SecurityGroups"]] == [vpc]
    instance = box.instances(job)[0]
    assert (instance["SubnetId"], instance["VpcId"]) == (subnet["SubnetId"], vpc)
    assert instance.get("PublicIpAddress")  # the subnet maps none: awsrun asked for one
    release(go.parent, go.name)
    until(lambda: states(box, job) == {job + "0": "succeeded"}, what="the row")


def test_subnets_that_map_no_public_ip_get_one_for_each_node(account, tmp_path):
    box = account(public_ips=False)
    job = "busy-noip"
    row = "echo reachable; " + waits_for(tmp_path, "go")  # running until the address is checked
    run = create_dispatch(box, job, jobs_file(box, job, [("t3.micro", row)]))
    assert run.returncode == 0, run.stderr
    assert all(i.get("PublicIpAddress") for i in box.instances(job))
    release(tmp_path, "go")
    until(lambda: states(box, job) == {job + "0": "succeeded"}, what="the row")


def test_the_ssh_rule_follows_the_callers_new_address(box):
    job = "busy-moved"
    jobs = jobs_file(box, job, [("t3.micro", "echo moved")])
    home = box.run("dispatcher.py", "auto", job, jobs, "-c", env={"AWSRUN_SSH_CIDR": "198.51.100.7/32"})
    assert home.returncode == 0, home.stderr
    cafe = box.run("dispatcher.py", "auto", job, jobs, "-d", env={"AWSRUN_SSH_CIDR": "203.0.113.9/32"})
    assert cafe.returncode == 0, cafe.stderr
    assert "SSH to job machines: now from 203.0.113.9/32 only (was 198.51.100.7/32)" in cafe.stderr
    group = box.ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["awsrun-" + job]}])
    rules = [(p["FromPort"], r["CidrIp"]) for p in group["SecurityGroups"][0]["IpPermissions"] for r in p["IpRanges"]]
    assert rules == [(22, "203.0.113.9/32")]
    until(lambda: states(box, job) == {job + "0": "succeeded"}, what="the row")


def test_every_launched_machine_is_armed_to_end_before_it_is_prepared(box):
    job = "busy-guard"
    jobs = jobs_file(box, job, [("t3.micro", "echo never")])
    install = write(box.folder(job) / "broken.sh", "exit 1\n")
    run = box.run("dispatcher.py", "auto", job, jobs, "-c", "--install", install, "--install-tries", "1",
                  "--install-timeout", "20", "--ssh-timeout", "30", "--keep-failed")
    assert run.returncode == 1
    instance = box.instances(job)[0]["InstanceId"]
    assert states(box, job) == {job + "0": "install-failed"}  # kept up, as asked...
    # ...but its boot-time guard (user data, run by cloud-init) will end it: 30 s of SSH, one
    # try of 20 s (+15) and 10 minutes, in minutes, rounded up
    assert "+12" in [e["when"] for e in box.decisions() if e.get("power") == instance]
    box.ec2.terminate_instances(InstanceIds=[instance])


def test_install_sh_waits_for_apt_locks_within_a_deadline(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "calls.log"
    write(fake / "python3", "#!/bin/sh\nexit 1\n")  # no boto3 yet
    write(fake / "sudo", '#!/bin/sh\nexec env "$@"\n')
    write(fake / "sleep", '#!/bin/sh\necho "sleep $*" >> %s\n' % log)
    write(fake / "apt-get", '#!/bin/sh\necho "apt-get $*" >> %s\n'
          'n=$(grep -c "apt-get.* update" %s)\n'
          'case "$*" in *update*) [ "$n" -ge 3 ] || { echo "E: Could not get lock /var/lib/apt/lists/lock" >&2; '
          'exit 100; } ;; esac\n' % (log, log))
    for name in ("python3", "sudo", "sleep", "apt-get"):
        os.chmod(fake / name, 0o755)
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(["bash", os.path.join(ROOT, "INSTALL.sh")], cwd=work, capture_output=True, text=True,
                          env={"PATH": "%s:/usr/bin:/bin" % fake, "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (work / "READY").exists()
    calls = log.read_text().splitlines()
    assert [c.split()[0] for c in calls] == ["apt-get", "sleep", "apt-get", "sleep", "apt-get", "apt-get"]
    assert calls[1:4:2] == ["sleep 5", "sleep 10"] and "install -y -q python3-boto3" in calls[-1]


def test_a_type_list_falls_back_to_its_next_type_when_no_zone_has_capacity(box):
    job = "busy-list"
    box.faults([{"action": "ec2:RunInstances", "params": {"InstanceType": "t3.small"},
                 "code": "InsufficientInstanceCapacity", "status": 500, "message": "no capacity"}])
    jobs = jobs_file(box, job, [("t3.small|t3.micro", "echo listed > output/x.txt"), ("t3.small", "echo alone"),
                                ("t3.micro|t3.small", "echo first")])
    run = create_dispatch(box, job, jobs)
    assert run.returncode == 1  # the row with one type never changes it: it waits for t3.small
    assert "1 of the rows of t3.small|t3.micro: trying t3.micro" in run.stderr
    assert run.stderr.strip().endswith("error: 1 rows could not be launched: busy-list1; "
                                       "`make retry` launches them later")
    assert sorted(i["InstanceType"] for i in box.instances(job)) == ["t3.micro", "t3.micro"]
    until(lambda: states(box, job) == {job + "0": "succeeded", job + "2": "succeeded"}, what="the listed rows")
    status = {r["tag"]: r["type"] for r in json.loads(box.run("operate.py", "status", job, "--json").stdout)}
    assert status == {job + "0": "t3.micro", job + "2": "t3.micro"}
    manifest = box.manifest(job, job + "0")
    assert (manifest["instance_type"], manifest["host"]["instance_type"]) == ("t3.micro", "t3.micro")
    bad = jobs_file(box, "busy-list-bad", [("t3.micro|T3", "echo x")])
    refused = box.run("dispatcher.py", "auto", "busy-list-bad", bad, "--dry-run")
    assert (refused.returncode, refused.stderr.splitlines()[-1]) == (2, "error: %s, line 2: instance type "
                                                                     "'t3.micro|T3' is not like t3.micro (or a list "
                                                                     "tried in turn, c5.xlarge|c5a.xlarge)" % bad)
    pooled = box.run("dispatcher.py", "auto", job, jobs, "-c", "--pool", "1")
    assert (pooled.returncode, pooled.stderr) == (2, "error: %s, line 2: a type list (t3.small|t3.micro) is for one "
                                                     "machine per row: in pool mode give each row one type\n" % jobs)
