"""--dry-run (make dry-run) in the sandbox, through the command a user types: every check's
line, the one line of each failure with what to do, its exit code, and nothing made in AWS."""
import os

from conftest import ROOT, write

DEMO = os.path.join(ROOT, "awsjobs", "demo.csv")


def dry_run(box, job, jobs, *extra, ami="auto"):
    return box.run("dispatcher.py", ami, job, jobs, "--dry-run", *extra)


def nothing_made(box, job):
    iam = box.client("iam")
    assert box.instances(job) == []
    assert box.ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [job]}])["KeyPairs"] == []
    assert box.ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["awsrun-" + job]}])[
        "SecurityGroups"] == []
    assert job not in [b["Name"] for b in box.s3.list_buckets()["Buckets"]]
    assert "awsrun-%s-node" % job not in [r["RoleName"] for r in iam.list_roles()["Roles"]]


def lines(run, word):
    return [line for line in run.stderr.splitlines() if line.startswith(word)]


def test_a_dry_run_of_the_demo_passes_asks_aws_and_makes_nothing(box):
    job = "dry-demo"
    before = len(box.decisions())
    run = dry_run(box, job, DEMO, "--code", os.path.join(ROOT, "awsjobs", "demo"))
    assert run.returncode == 0, run.stderr
    checks = [line.split(":")[0].split(None, 1)[1] for line in lines(run, "ok    ")]
    assert checks == ["python", "ssh client", "credentials", "images", "network", "SSH from", "vCPU quota", "bucket",
                      "node role", "permissions"]
    assert lines(run, "FAIL") == []
    assert run.stderr.splitlines()[-1] == ("dry run: all 10 checks passed; create would launch up to 3 machines for "
                                           "3 rows; nothing was made")
    assert "ok    permissions: RunInstances (t3.micro, t3.small), Create security group, Create key pair allowed" \
        in run.stderr
    asked = {(e["action"], e["decision"]) for e in box.decisions()[before:] if e.get("principal") == "user"}
    assert {("ec2:RunInstances", "allowed"), ("ec2:CreateSecurityGroup", "allowed"), ("ec2:CreateKeyPair", "allowed"),
            ("iam:GetRole", "allowed"), ("s3:ListBucket", "allowed")} <= asked  # asked of IAM, as DryRun or reads
    nothing_made(box, job)


def test_a_dry_run_names_each_failure_in_one_line_and_exits_1(account):
    box = account(default_vpc=False, vcpu_quota=2)
    job = "dry-fails"
    jobs = write(box.folder(job) / "jobs.csv", "instance_type,command\nt3.small,echo a\nt3.small,echo b\n")
    box.faults([{"action": "s3:ListBucket", "code": "403", "status": 403, "message": "Forbidden"}])
    run = dry_run(box, job, jobs)
    assert run.returncode == 1
    assert lines(run, "FAIL") == [
        'FAIL  network: region us-east-1 has no default VPC: name the subnets to launch in, e.g. ARGS="--subnet '
        'subnet-0abc --subnet subnet-0def" (one per zone, for failover)',
        "FAIL  vCPU quota: the job needs 4 vCPUs of on-demand Standard (A, C, D, H, I, M, R, T, Z) instances "
        "(2 x t3.small), but the account's quota in us-east-1 allows 2: ask for more (`aws service-quotas "
        "request-service-quota-increase --service-code ec2 --quota-code L-1216C47A --desired-value 4`), or run the "
        "rows on 1 machines, in pool mode: POOL=1 (--pool 1)",
        "FAIL  bucket: bucket dry-fails belongs to another AWS account, or your credentials may not read it: choose "
        "another JOB= or --bucket"]
    assert lines(run, "skip") == ["skip  permissions: needs the images and the network"]
    assert run.stderr.splitlines()[-1] == ("error: dry run: 3 of 9 checks failed (network, vCPU quota, bucket), "
                                           "1 could not run; nothing was made")
    box.faults([])
    image = dry_run(box, job, jobs, ami="ami-00000000000000000")
    assert image.returncode == 1
    assert lines(image, "FAIL  images") == ["FAIL  images: AMI ami-00000000000000000 does not exist in region "
                                            "us-east-1: check AMI= (AMIs are per region)"]
    nothing_made(box, job)


def test_a_launch_the_policy_refuses_fails_the_dry_run_and_create_before_anything_is_made(box):
    job = "dry-denied"
    jobs = write(box.folder(job) / "jobs.csv", "instance_type,command\nt3.micro,echo a\n")
    box.faults([{"action": "ec2:RunInstances", "principal": "user", "dry_run": True, "code": "UnauthorizedOperation",
                 "status": 403, "message": "You are not authorized to perform this operation."}])
    run = dry_run(box, job, jobs)
    assert run.returncode == 1
    assert lines(run, "FAIL") == ["FAIL  permissions: your credentials may not call ec2:RunInstances "
                                  "(UnauthorizedOperation): attach awsrun-user-policy.json to your user or role "
                                  "(docs/aws-setup.md, step 2)"]
    create = box.run("dispatcher.py", "auto", job, jobs, "-c", "-d")
    assert (create.returncode, create.stderr) == (1, "error: your credentials may not call ec2:RunInstances "
                                                     "(UnauthorizedOperation): attach awsrun-user-policy.json to "
                                                     "your user or role (docs/aws-setup.md, step 2)\n")
    nothing_made(box, job)
