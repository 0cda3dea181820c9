"""Fixtures: fake AWS credentials and folders for unit tests (moto's mock_aws in-process),
and the sandbox (moto server + sshd on 127.0.0.1) for end-to-end tests through the CLI."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import boto3
import pytest
from moto import mock_aws

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import cloud_setup as cs  # noqa: E402
from testbed import sandbox_ec2  # noqa: E402
from testbed import sandbox_iam  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: waits on long idles, leases or timers by design (run first, "
                                       "so that the short tests run beside it; never skipped)")


def pytest_collection_modifyitems(items):
    """The slow tests first: with several workers (make test), the short ones fill in beside them."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def aws_env(tmp_path, monkeypatch):
    """Throwaway credentials, and every folder awsrun writes to inside tmp_path."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "AWSRUN_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AWSRUN_KEY_DIR", str(tmp_path / "keys"))
    monkeypatch.setenv("AWSRUN_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AWSRUN_SSH_CIDR", "198.51.100.7/32")
    for cached in (cs.client, cs.session, cs.account):
        cached.cache_clear()
    yield tmp_path
    for cached in (cs.client, cs.session, cs.account):
        cached.cache_clear()


@pytest.fixture
def aws(aws_env):
    """moto's mock_aws in this process; yields an EC2 client. RunInstances launches MaxCount
    instances when there is room, as on EC2 and in the sandbox (moto launches MinCount).
    Bucket policies are not weighed here (the sandbox's gate weighs them)."""
    sandbox_ec2.launch_up_to_max_count()
    sandbox_ec2.leave_bucket_policies_to_the_gate()  # moto's own check refuses every request to a TLS-only bucket
    with mock_aws():
        yield boto3.client("ec2", region_name="us-east-1")


def instance_states(ec2):
    return [i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]


def start_sandbox(folder, **env):
    """A sandbox in its own process (sandbox.py serve), with these extra variables; returns
    (process, its environment for awsrun)."""
    if not (shutil.which("sshd") or os.path.exists("/usr/sbin/sshd")):
        pytest.fail("the end-to-end tests need sshd: apt-get install openssh-server")
    log = open(folder / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "sandbox.py"), "serve", str(folder)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, **env))
    deadline = time.monotonic() + 60
    while not (folder / "env.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the sandbox did not start: " + (folder / "serve.log").read_text())
        time.sleep(0.05)
    return proc, json.loads((folder / "env.json").read_text())


def stop_sandbox(proc, env):
    """Stop a sandbox; fail if any call of its tests would be refused on AWS, or if any
    instance was left running with nothing to end it."""
    proc.terminate()
    proc.wait(20)
    refused = [e for e in iam_decisions(env) if e.get("decision", "allowed") != "allowed" and not deliberate(e)]
    if refused:  # every call of every test, checked against the policy that governs it
        pytest.fail("%d calls would be refused on AWS, e.g. %s" % (len(refused), refused[:5]))
    with open(os.path.join(env["AWSRUN_SANDBOX"], "unguarded.json")) as f:
        unguarded = json.load(f)
    if unguarded:
        pytest.fail("instances left running with nothing to end them: %s" % unguarded)


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory):
    """A sandbox in its own process for the whole session; yields its environment."""
    proc, env = start_sandbox(tmp_path_factory.mktemp("sandbox"))
    yield env
    stop_sandbox(proc, env)


@pytest.fixture
def account(tmp_path_factory):
    """A sandbox of its own for one test, with an account's settings (testbed/sandbox_ec2.py):
    account(vcpu_quota=4) returns a Sandbox helper."""
    started = []

    def make(**settings):
        proc, env = start_sandbox(tmp_path_factory.mktemp("account"), AWSRUN_SANDBOX_ACCOUNT=json.dumps(settings))
        started.append((proc, env))
        return Sandbox(env)
    yield make
    for proc, env in started:
        stop_sandbox(proc, env)


# Calls that a test makes on purpose to see the sandbox refuse them as AWS would: (principal,
# action, resource), with IAM's wildcards.
DELIBERATE = [("user", "s3:PutBucketVersioning", "*"), ("user", "ec2:DeleteVpc", "*"),
              # test_owner.py: a node's upload to a bucket that became another account's; a read of
              # another account's bucket that was not shared; a read without TLS
              ("node:*", "s3:PutObject", "arn:aws:s3:::owner-taken-*"),
              ("user", "s3:ListBucket", "arn:aws:s3:::owner-private"),
              ("user", "s3:GetObject", "arn:aws:s3:::owner-named/*"),
              # test_inputs.py: a node reads outside its --inputs prefix
              ("node:*", "s3:GetObject", "arn:aws:s3:::inputs-eu/data/set2/*"),
              ("node:*", "s3:ListBucket", "arn:aws:s3:::inputs-eu"),
              # test_boundary.py: a node role given every permission, and node roles without the boundary
              ("node:*", "iam:CreateRole", "arn:aws:iam::*:role/bound-escalated"),
              ("user", "iam:*", "arn:aws:iam::*:role/awsrun-bound-free-node")]


def deliberate(entry):
    return any(sandbox_iam.like(p, entry.get("principal", "")) and sandbox_iam.like(a, entry.get("action", ""))
               and sandbox_iam.like(r, entry.get("resource", "")) for p, a, r in DELIBERATE)


def iam_decisions(env):
    """Every IAM decision the sandbox has recorded so far (testbed/sandbox_server.py: DIR/iam.jsonl)."""
    try:
        with open(os.path.join(env["AWSRUN_SANDBOX"], "iam.jsonl")) as f:
            return [json.loads(line) for line in f]
    except OSError:
        return []


class Sandbox:
    """Drives awsrun's commands against the sandbox, and looks at what they left in AWS."""

    def __init__(self, env):
        self.env = dict(os.environ)
        for name in list(self.env):
            if name.startswith(("AWS_", "AWSRUN_")):
                del self.env[name]
        self.env.update(env)
        # The tests look at AWS with the sandbox's own key, which its IAM does not check;
        # awsrun's commands sign as the user (env), whose every call is checked.
        self.kw = dict(endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
                       aws_access_key_id="sandbox-admin", aws_secret_access_key="sandbox-admin")
        self.ec2, self.s3 = self.client("ec2"), self.client("s3")
        self.nodes_dir = env["AWSRUN_REMOTE_ROOT"]
        self.fault_mark = 0

    def client(self, service, region=None):
        return boto3.client(service, **dict(self.kw, region_name=region or self.kw["region_name"]))

    def other_account(self, service):
        """A client of someone else's account (sandbox_ec2.OTHER_ACCOUNT), as its administrator:
        keys of a role assumed there, which the sandbox's IAM leaves to that account."""
        keys = self.client("sts").assume_role(RoleArn="arn:aws:iam::%s:role/admin" % sandbox_ec2.OTHER_ACCOUNT,
                                              RoleSessionName="other")["Credentials"]
        return boto3.client(service, endpoint_url=self.kw["endpoint_url"], region_name=self.kw["region_name"],
                            aws_access_key_id=keys["AccessKeyId"], aws_secret_access_key=keys["SecretAccessKey"],
                            aws_session_token=keys["SessionToken"])

    def run(self, *argv, env=None, timeout=180):
        """Run one of awsrun's scripts as a user would; returns the CompletedProcess."""
        full = dict(self.env, **(env or {}))
        return subprocess.run([sys.executable] + list(argv), cwd=ROOT, env=full, capture_output=True,
                              text=True, timeout=timeout)

    def instances(self, job):
        pages = self.ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "tag:awsrun:job", "Values": [job]}])
        return [i for p in pages for r in p["Reservations"] for i in r["Instances"]]

    def states(self, job):
        return sorted(i["State"]["Name"] for i in self.instances(job))

    def objects(self, bucket):
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {o["Key"]: o for p in pages for o in p.get("Contents", [])}

    def read(self, bucket, key):
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")

    def manifest(self, bucket, tag):
        return json.loads(self.read(bucket, tag + "/manifest.json"))

    def folder(self, job):
        """A folder of the test's own for a job's files (job file, install script), in the sandbox's."""
        path = pathlib.Path(self.env["AWSRUN_SANDBOX"]) / "jobs" / job
        path.mkdir(parents=True, exist_ok=True)
        return path

    def decisions(self):
        return iam_decisions(self.env)

    def fault_hits(self, code):
        """How many requests the sandbox answered with the fault `code` since faults() was called."""
        return sum(1 for e in self.decisions()[self.fault_mark:] if e.get("fault") == code)

    def interrupt(self, instance_id):
        """Show a spot instance EC2's interruption notice (testbed/sandbox_server.py: interruptions.json)."""
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 120))
        with open(os.path.join(self.env["AWSRUN_SANDBOX"], "interruptions.json"), "w") as f:
            json.dump({instance_id: when}, f)

    def faults(self, rules):
        """Make the sandbox's AWS answer with these errors (testbed/sandbox_server.py: faults on demand).
        fault_hits() counts only those answered from here on, not an earlier test's."""
        self.fault_mark = len(self.decisions())
        with open(os.path.join(self.env["AWSRUN_SANDBOX"], "faults.json"), "w") as f:
            json.dump(rules, f)


@pytest.fixture
def box(sandbox):
    yield Sandbox(sandbox)
    faults = os.path.join(sandbox["AWSRUN_SANDBOX"], "faults.json")
    if os.path.exists(faults):
        os.remove(faults)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)
