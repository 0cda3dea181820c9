"""Unit tests: the job file, job names and the AWS helpers, against moto's mock_aws."""
import argparse
import json
import os
import socket
import stat
import time

import boto3
import pytest

import cloud_setup as cs
import launch
import job_state
import dispatcher
import save_results
import ssh
from conftest import ROOT, instance_states, write


# ---------------------------------------------------------------------------- the job file

BAD_JOB_FILES = [
    ("type,cmd\nt3.micro,echo hi\n", "line 1: the header must be exactly `instance_type,command`, found 'type,cmd'"),
    ("", "line 1: the header must be exactly `instance_type,command`, found ''"),
    ("instance_type,command\n", "line 1: no jobs: add one row `instance_type,command` per job"),
    ("instance_type,command\nt3.micro,echo a,b\n",
     "line 2: expected 2 fields (instance_type,command), found 3: put a command that contains commas in double quotes"),
    ("instance_type,command\nt3.micro\n",
     "line 2: expected 2 fields (instance_type,command), found 1: put a command that contains commas in double quotes"),
    ("instance_type,command\nt3.micro,echo ok\nt3.micro,   \n", "line 3: the command is empty"),
    ("instance_type,command\nbig,echo hi\n", "line 2: instance type 'big' is not like t3.micro (or a list tried "
                                              "in turn, c5.xlarge|c5a.xlarge)"),
]


@pytest.mark.parametrize("text,expected", BAD_JOB_FILES)
def test_bad_job_file_is_refused_with_its_line_and_nothing_launched(aws, tmp_path, capsys, text, expected):
    jobs = write(tmp_path / "jobs.csv", text)
    rc = dispatcher.main(["ami-12345678", "good-job", jobs, "-c", "-d"])
    assert rc == 2
    assert capsys.readouterr().err == "error: %s, %s\n" % (jobs, expected)
    assert instance_states(aws) == []


def test_missing_and_non_utf8_job_files(aws, tmp_path, capsys):
    assert dispatcher.main(["ami-1", "good-job", str(tmp_path / "nope.csv"), "-c"]) == 2
    assert capsys.readouterr().err == "error: job file %s does not exist\n" % (tmp_path / "nope.csv")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("instance_type,command\nt3.micro,echo caf\xe9\n".encode("latin-1"))
    assert dispatcher.main(["ami-1", "good-job", str(latin), "-c"]) == 2
    assert capsys.readouterr().err == "error: %s is not UTF-8 text: save it as UTF-8 CSV\n" % latin
    assert instance_states(aws) == []


def test_bom_crlf_quotes_and_comments_are_read(tmp_path):
    path = tmp_path / "jobs.csv"
    path.write_bytes(b'\xef\xbb\xbfinstance_type,command\r\n# a comment\r\nt3.micro,"echo a,b"\r\n\r\n'
                     b'c5.large,python3 x.py --n 2\r\n')
    assert dispatcher.read_jobs(str(path)) == [(3, "t3.micro", "echo a,b"), (5, "c5.large", "python3 x.py --n 2")]


@pytest.mark.parametrize("argv,expected", [
    (["-c", "--code", "/no/such/dir"], "error: --code /no/such/dir is not a folder\n"),
    (["-c", "--install", "/no/INSTALL.sh"],
     "error: install script /no/INSTALL.sh does not exist: pass --install FILE\n"),
    (["-c", "-i", "/no/file=x"], "error: -i: /no/file does not exist\n"),
    (["-c", "-i", "noequals"], "error: -i 'noequals' must be LOCAL=REMOTE, e.g. -i data/x.csv=data/x.csv\n"),
    (["-d", "-o", "../up.txt"], "error: -o '../up.txt' must be a relative path inside the work directory\n"),
    (["-d", "-o", "manifest.json"], "error: -o manifest.json: that name is uploaded already or kept by awsrun\n"),
])
def test_bad_options_are_refused_before_any_aws_call(aws, tmp_path, capsys, argv, expected):
    jobs = write(tmp_path / "jobs.csv", "instance_type,command\nt3.micro,echo hi\n")
    assert dispatcher.main(["ami-1", "good-job", jobs] + argv) == 2
    assert capsys.readouterr().err == expected
    assert instance_states(aws) == []


# ---------------------------------------------------------------------------- job names

@pytest.mark.parametrize("name,why", [
    ("Alice-X", "may hold only lowercase letters, digits and hyphens, and must start and end with a letter or digit"),
    ("a.b.c", "may hold only lowercase letters, digits and hyphens, and must start and end with a letter or digit"),
    ("ab", "must be 3 to 50 characters long"),
    ("x" * 51, "must be 3 to 50 characters long"),
    ("job-", "may hold only lowercase letters, digits and hyphens, and must start and end with a letter or digit"),
    ("xn--job", "uses a prefix, suffix or double hyphen that S3 reserves"),
])
def test_bad_job_name_is_refused_and_nothing_launched(aws, tmp_path, capsys, name, why):
    jobs = write(tmp_path / "jobs.csv", "instance_type,command\nt3.micro,echo hi\n")
    assert dispatcher.main(["ami-1", name, jobs, "-c"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: job name %r %s (it names the S3 bucket): try JOB=" % (name, why))
    suggested = err.strip().rsplit("JOB=", 1)[1]
    cs.check_job_name(suggested)  # the suggestion is itself a valid name
    assert instance_states(aws) == []


def test_default_job_name_is_bucket_safe(monkeypatch):
    monkeypatch.setattr(cs.getpass, "getuser", lambda: "Alice_B")
    assert cs.default_job_name("awsjobs/My Sweep.v2.csv") == "alice-b-my-sweep-v2"
    cs.check_job_name(cs.default_job_name("awsjobs/My Sweep.v2.csv"))


def test_rows_tag_round_trips_and_fits_a_tag_value():
    assert job_state.encode_rows([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert job_state.decode_rows("0-2,5,7-8") == [0, 1, 2, 5, 7, 8]
    numbers = list(range(0, 2000, 2))
    batches = job_state.launch_batches(numbers)
    assert sum(batches, []) == numbers
    assert all(len(job_state.encode_rows(b)) <= 255 for b in batches)
    assert job_state.launch_batches(list(range(500))) == [list(range(500))]
    assert job_state.encode_rows(list(range(1, 512, 2))) == "1-511:2"  # rows alternating between two types
    assert job_state.decode_rows("1-511:2,600,700-702") == list(range(1, 512, 2)) + [600, 700, 701, 702]
    import random
    scattered = sorted(random.Random(3).sample(range(5000), 400))
    batches = job_state.launch_batches(scattered)
    assert sum(batches, []) == scattered and all(len(job_state.encode_rows(b)) <= 255 for b in batches)
    assert all(job_state.decode_rows(job_state.encode_rows(b)) == b for b in batches)


# ---------------------------------------------------------------------------- images and types

def test_missing_ami_is_refused_before_anything_is_created(aws, tmp_path, capsys):
    jobs = write(tmp_path / "jobs.csv", "instance_type,command\nt3.micro,echo hi\n")
    assert dispatcher.main(["ami-12345678", "good-job", jobs, "-c"]) == 1
    assert capsys.readouterr().err == \
        "error: AMI ami-12345678 does not exist in region us-east-1: check AMI= (AMIs are per region)\n"
    assert instance_states(aws) == []
    assert aws.describe_key_pairs()["KeyPairs"] == []


def test_unknown_instance_type_is_refused(aws, tmp_path, capsys):
    ami = aws.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    jobs = write(tmp_path / "jobs.csv", "instance_type,command\nt3.micro,echo hi\nt3.bogus,echo hi\n")
    assert dispatcher.main([ami, "good-job", jobs, "-c"]) == 2
    assert capsys.readouterr().err == \
        "error: instance type 't3.bogus' does not exist in region us-east-1: fix the job file\n"
    assert instance_states(aws) == []


def test_auto_ami_without_the_public_parameter_asks_for_ami(aws, tmp_path, capsys):
    jobs = write(tmp_path / "jobs.csv", "instance_type,command\nt3.micro,echo hi\n")
    assert dispatcher.main(["auto", "good-job", jobs, "-c"]) == 1
    assert capsys.readouterr().err == \
        "error: could not look up the current Ubuntu image (ParameterNotFound): name one with AMI=ami-...\n"


def test_no_credentials_is_one_line(aws_env, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    jobs = write(tmp_path / "jobs.csv", "instance_type,command\nt3.micro,echo hi\n")
    assert dispatcher.main(["ami-1", "good-job", jobs, "-c"]) == 1
    assert capsys.readouterr().err == "error: no AWS credentials found: run `aws configure` or set AWS_PROFILE\n"


# ---------------------------------------------------------------------------- key pair

def test_key_file_is_0600_from_the_first_byte_and_reused(aws, monkeypatch):
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open",
                        lambda p, flags, mode=0o777: opened.append((p, flags, mode)) or real_open(p, flags, mode))
    path = ssh.ensure_key_pair("job-a")
    assert opened == [(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path == os.path.join(os.environ["AWSRUN_KEY_DIR"], "job-a.pem")
    before = open(path).read()
    assert ssh.ensure_key_pair("job-a") == path and open(path).read() == before
    assert [k["KeyName"] for k in aws.describe_key_pairs()["KeyPairs"]] == ["job-a"]


def test_key_in_aws_but_file_gone_says_what_to_do(aws):
    path = ssh.ensure_key_pair("job-a")
    os.remove(path)
    with pytest.raises(cs.UserError) as e:
        ssh.ensure_key_pair("job-a")
    assert str(e.value) == ("key pair 'job-a' exists in AWS but its private key %s is gone: restore the file, "
                            "or delete the key pair with `aws ec2 delete-key-pair --key-name job-a` and run "
                            "create again" % path)


def test_key_file_without_aws_key_is_imported(aws):
    path = ssh.ensure_key_pair("job-a")
    aws.delete_key_pair(KeyName="job-a")
    assert ssh.ensure_key_pair("job-a") == path
    assert [k["KeyName"] for k in aws.describe_key_pairs()["KeyPairs"]] == ["job-a"]


# ---------------------------------------------------------------------------- security group, policy

def test_security_group_opens_only_ssh_to_the_caller(aws):
    group_id = cs.ensure_security_group("job-a", "198.51.100.7/32")
    assert cs.ensure_security_group("job-a", "198.51.100.7/32") == group_id
    group = aws.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    assert [(p["IpProtocol"], p["FromPort"], p["ToPort"], [r["CidrIp"] for r in p["IpRanges"]])
            for p in group["IpPermissions"]] == [("tcp", 22, 22, ["198.51.100.7/32"])]


def test_instance_profile_policy_is_scoped_to_bucket_and_job(aws):
    name = cs.ensure_instance_profile("job-a", "bucket-a")
    assert cs.ensure_instance_profile("job-a", "bucket-a") == name
    iam = boto3.client("iam")
    profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [name]
    policy = iam.get_role_policy(RoleName=name, PolicyName="awsrun-node")["PolicyDocument"]
    policy = json.loads(policy) if isinstance(policy, str) else policy
    s3, sqs, ec2 = policy["Statement"]
    assert s3["Resource"] == "arn:aws:s3:::bucket-a/*"  # objects only: never the bucket's settings
    assert sorted(s3["Action"]) == ["s3:AbortMultipartUpload", "s3:PutObject"]
    assert sqs["Resource"] == "arn:aws:sqs:*:*:awsrun-job-a--*"  # its own job's queues only
    assert sorted(sqs["Action"]) == ["sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:ReceiveMessage"]
    assert sorted(ec2["Action"]) == ["ec2:CreateTags", "ec2:TerminateInstances"]
    assert ec2["Condition"] == {"StringEquals": {"aws:ResourceTag/awsrun:job": "job-a"},
                                "ForAllValues:StringNotEquals": {
                                    "aws:TagKeys": ["awsrun:job", "awsrun:rows", "awsrun:bucket", "awsrun:pool",
                                                    "awsrun:budget-end"]}}
    trust = iam.get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}


def test_bucket_blocks_public_access_and_encrypts(aws):
    s3 = boto3.client("s3")
    assert cs.ensure_bucket(s3, "bucket-a", "us-east-1") is True
    block = s3.get_public_access_block(Bucket="bucket-a")["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    rules = s3.get_bucket_encryption(Bucket="bucket-a")["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_an_existing_bucket_keeps_its_own_settings(aws):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="users-own")
    kms = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "k-1"}}]}
    s3.put_bucket_encryption(Bucket="users-own", ServerSideEncryptionConfiguration=kms)
    calls = []
    s3.meta.events.register("before-call.s3", lambda model, **kw: calls.append(model.name))
    assert cs.ensure_bucket(s3, "users-own", "us-east-1") is False  # in us-east-1 CreateBucket would succeed
    assert calls == ["HeadBucket"]
    rule = s3.get_bucket_encryption(Bucket="users-own")["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"] == kms["Rules"][0]["ApplyServerSideEncryptionByDefault"]


# ---------------------------------------------------------------------------- launching

def launch_setup(aws, job, rows):
    ami = aws.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    args = argparse.Namespace(job=job, tag_offset=0, pool=None)
    wanted = dispatcher.rows_wanted(args, rows)
    key = ssh.ensure_key_pair(job)
    group = cs.ensure_security_group(job, "198.51.100.7/32")
    profile = cs.ensure_instance_profile(job, job)
    calls = []
    cs.session().events.register("before-call.ec2.RunInstances", lambda **kw: calls.append(1))  # every client
    args.spot, args.ssh_timeout, args.install_tries, args.install_timeout = False, 600, 3, 1800
    subnets = launch.launch_subnets()
    amis = {itype: ami for _, itype, _ in rows}
    return lambda: launch.launch_all(args, dispatcher.OnePerRow(args), launch.to_launch(job, wanted)[0], amis,
                                     os.path.basename(key)[:-4], group, profile, job, subnets), calls


ROWS = [(2, "t3.micro", "a"), (3, "t3.small", "b"), (4, "t3.micro", "c"), (5, "t3.micro", "d"), (6, "t3.small", "e")]


def test_one_run_instances_call_per_type_and_every_instance_tagged(aws):
    launch, calls = launch_setup(aws, "job-a", ROWS)
    assert len(launch()[0]) == 5
    assert len(calls) == 2
    nodes = job_state.find_nodes("job-a")
    assert sorted((n["tag"], n["type"]) for n in nodes) == [
        ("job-a0", "t3.micro"), ("job-a1", "t3.small"), ("job-a2", "t3.micro"),
        ("job-a3", "t3.micro"), ("job-a4", "t3.small")]
    assert all(n["bucket"] == "job-a" for n in nodes)


def test_create_again_launches_only_missing_tags(aws):
    launch, calls = launch_setup(aws, "job-a", ROWS)
    first, _ = launch()
    assert launch() == ([], {}) and len(calls) == 2  # nothing missing: nothing launched
    assert len(instance_states(aws)) == 5
    gone = [n for n in job_state.find_nodes("job-a") if n["tag"] == "job-a3"][0]
    aws.terminate_instances(InstanceIds=[gone["id"]])
    assert len(set(launch()[0]) - set(first)) == 1 and len(calls) == 3
    live = job_state.newest_per_tag(job_state.find_nodes("job-a", job_state.LIVE))
    assert sorted(live) == ["job-a0", "job-a1", "job-a2", "job-a3", "job-a4"]
    assert live["job-a3"]["id"] != gone["id"]


def test_status_counts_instances_by_state(aws, capsys):
    launch, _ = launch_setup(aws, "job-a", ROWS)
    launch()
    aws.terminate_instances(InstanceIds=[job_state.find_nodes("job-a")[0]["id"]])
    job_state.print_num_running()
    assert capsys.readouterr().out == ("pending or running:  4\nshutting down:       0\n"
                                      "stopping or stopped: 0\nterminated:          1\n")


def test_fetch_of_a_missing_bucket_says_what_to_check(aws, tmp_path, capsys):
    import get_s3_files
    assert get_s3_files.main(["no-such-bucket", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == ("error: bucket no-such-bucket does not exist: check BUCKET= "
                                       "(it is the job name unless you gave --bucket)\n")


def test_fetch_refuses_object_names_that_leave_the_output_folder(aws, tmp_path, capsys):
    import get_s3_files
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="bucket-a")
    s3.put_object(Bucket="bucket-a", Key="tag0/../../escape.txt", Body=b"x")
    assert get_s3_files.main(["bucket-a", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == \
        "error: refusing the object 'tag0/../../escape.txt': its name would leave the output folder\n"
    assert not (tmp_path / "escape.txt").exists()


# ---------------------------------------------------------------------------- status

def status_calls(aws, job, n):
    """Launch n nodes of a job with outcomes in its bucket; count the AWS calls of one refresh."""
    launch, _ = launch_setup(aws, job, [(i + 2, "t3.micro", "x") for i in range(n)])
    launch()
    s3 = boto3.client("s3")
    cs.ensure_bucket(s3, job, "us-east-1")
    for i in range(0, n, 2):
        s3.put_object(Bucket=job, Key=job_state.marker_key("%s%d" % (job, i), i % 3, 60), Body=b"")
        s3.put_object(Bucket=job, Key="%s%d/output/x.txt" % (job, i), Body=b"result")
    calls = []
    for service in ("ec2", "s3"):
        cs.client(service).meta.events.register("before-call", lambda model, **kw: calls.append(model.name))
    rows = job_state.job_status(job)
    assert len(rows) == n
    return sorted(calls), rows


def test_a_status_refresh_costs_the_same_for_5_jobs_as_for_50(aws):
    five, rows5 = status_calls(aws, "job-five", 5)
    fifty, rows50 = status_calls(aws, "job-fifty", 50)
    assert five == fifty == ["DescribeInstances", "ListObjectsV2"]
    # results are in, but the machines still run: never plain `succeeded` while they bill
    assert [r["state"] for r in rows5] == ["succeeded (ending)", "launching", "failed (exit 2, ending)", "launching",
                                           "failed (exit 1, ending)"]


def test_state_of_a_tag_from_its_instance_and_outcome():
    import datetime
    t0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    later = t0 + datetime.timedelta(hours=1)

    def node(state="running", status="", launched=t0):
        return {"state": state, "status": status, "launched": launched}
    ok, bad = {"exit": 0, "when": later}, {"exit": 3, "when": later}
    cases = [(node(), ok, "succeeded (ending)"), (node(), bad, "failed (exit 3, ending)"),
             (node("terminated", "crashed"), None, "lost (uploader crashed)"),
             (node(), None, "launching"), (node(status="installing"), None, "installing"),
             (node(status="ready"), None, "ready"), (node(status="running"), None, "running"),
             (node(status="uploading"), None, "uploading"), (node("terminated", "uploading"), ok, "succeeded"),
             (node("terminated", "uploading"), bad, "failed (exit 3)"), (node("terminated", "running"), None, "lost"),
             (None, None, "lost"), (None, ok, "succeeded"),
             (node("terminated", "install-failed"), None, "install-failed"),
             (node(status="upload-failed"), None, "upload-failed"),
             (node("terminated", "idle-timeout"), None, "lost (idle)"),
             (node(status="running", launched=later + datetime.timedelta(minutes=1)), bad, "running")]  # a retry
    assert [job_state.node_state(n, m) for n, m, _ in cases] == [want for _, _, want in cases]


def test_durations_for_max_runtime_and_idle_timeout():
    assert [dispatcher.duration(t) for t in ("90", "45s", "30m", "2h", "1d", "1h30m")] == \
        [90, 45, 1800, 7200, 86400, 5400]
    with pytest.raises(argparse.ArgumentTypeError):
        dispatcher.duration("soon")


# ---------------------------------------------------------------------------- fetch

def put_job_result(s3, bucket, tag, text, instance):
    """What a node leaves: its result, a manifest with the result's SHA-256, and a marker."""
    import hashlib
    import save_results
    s3.put_object(Bucket=bucket, Key=tag + "/output/r.txt", Body=text.encode())
    manifest = {"tag": tag, "exit_code": 0, "started": "2026-01-01T00:00:00Z", "ended": "2026-01-01T00:00:05Z",
                "instance_id": instance, "uploaded": instance,
                "files": [{"path": "output/r.txt", "size": len(text),
                           "sha256": hashlib.sha256(text.encode()).hexdigest()}]}
    save_results.finish(s3, bucket, tag, manifest)


def test_fetch_skips_listing_until_a_node_finishes_again(aws, tmp_path):
    import get_s3_files
    s3 = boto3.client("s3")
    cs.ensure_bucket(s3, "bucket-a", "us-east-1")
    put_job_result(s3, "bucket-a", "job0", "first", "i-1")
    out = str(tmp_path / "out")
    os.makedirs(out)
    assert get_s3_files.fetch("bucket-a", out) == (2, 0)
    calls = []
    cs.session().events.register("before-call.s3", lambda model, **kw: calls.append(model.name))  # every client
    assert get_s3_files.fetch("bucket-a", out) == (0, 2)
    assert calls == ["ListObjectsV2"]  # the markers only
    put_job_result(s3, "bucket-a", "job0", "second", "i-2")  # a retry of the same tag
    assert get_s3_files.fetch("bucket-a", out) == (2, 0)
    assert open(os.path.join(out, "job0", "output", "r.txt")).read() == "second"
    os.remove(os.path.join(out, "job0", "output", "r.txt"))  # a file deleted here is fetched again
    assert get_s3_files.fetch("bucket-a", out) == (1, 1)


def test_fetch_refuses_a_damaged_file(aws, tmp_path, capsys):
    import get_s3_files
    s3 = boto3.client("s3")
    cs.ensure_bucket(s3, "bucket-a", "us-east-1")
    put_job_result(s3, "bucket-a", "job0", "right", "i-1")
    s3.put_object(Bucket="bucket-a", Key="job0/output/r.txt", Body=b"wrong")  # not what the manifest says
    assert get_s3_files.main(["bucket-a", str(tmp_path / "out"), "--full"]) == 1
    assert capsys.readouterr().err == ("error: job0/output/r.txt arrived damaged (their hashes differ from the "
                                       "manifest or ETag): fetch again\n")
    assert not (tmp_path / "out" / "job0" / "output" / "r.txt").exists()


# ---------------------------------------------------------------------------- the node's uploader

def node_folder(aws, tmp_path, monkeypatch, bucket):
    """A node's work directory after its command, on an instance of job j1 (current boto3)."""
    ami = aws.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance = aws.run_instances(ImageId=ami, MinCount=1, MaxCount=1, TagSpecifications=[
        {"ResourceType": "instance", "Tags": [{"Key": cs.JOB_TAG, "Value": "j1"}]}])["Instances"][0]["InstanceId"]
    node = {"job": "j1", "tag": "j10", "instance_id": instance, "instance_type": "t3.micro", "bucket": bucket,
            "account": "123456789012", "region": "us-east-1", "command": "echo hi", "outputs": [],
            "max_runtime": None, "upload_hold": 3600}
    write(tmp_path / "node" / ".awsrun" / "node.json", json.dumps(node))
    for name, text in [(".awsrun/exit_code", "0\n"), (".awsrun/started", "2026-01-01T00:00:00Z\n"),
                       (".awsrun/ended", "2026-01-01T00:01:00Z\n"), ("screen_output.txt", "hi\n"),
                       ("output/result.txt", "42\n")]:
        write(tmp_path / "node" / name, text)
    monkeypatch.chdir(tmp_path / "node")
    return instance


def test_uploader_on_current_boto3_uploads_then_ends_its_instance(aws, tmp_path, monkeypatch):
    boto3.client("s3").create_bucket(Bucket="bucket-1")
    node_folder(aws, tmp_path, monkeypatch, "bucket-1")
    assert save_results.main([]) == 0
    s3 = boto3.client("s3")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="bucket-1")["Contents"])
    assert keys == ["_awsrun/j10/exit=0,runtime=60", "j10/manifest.json", "j10/output/result.txt",
                    "j10/screen_output.txt"]
    assert s3.get_object(Bucket="bucket-1", Key="j10/output/result.txt")["Body"].read() == b"42\n"
    assert instance_states(aws) == ["terminated"]


def test_uploader_that_cannot_upload_holds_its_node_with_a_deadline(aws, tmp_path, monkeypatch):
    instance = node_folder(aws, tmp_path, monkeypatch, "no-such-bucket")
    assert save_results.main([]) == save_results.UPLOAD_FAILED == 75  # run.sh holds the node on 75
    tags = {t["Key"]: t["Value"] for t in aws.describe_tags(
        Filters=[{"Name": "resource-id", "Values": [instance]}])["Tags"]}
    assert tags[cs.STATUS_TAG] == "upload-failed" and "NoSuchBucket" in tags[cs.ERROR_TAG]
    assert 3500 < cs.parse_time(tags[cs.UNTIL_TAG]) - cs.parse_time(cs.now_text()) <= 3600
    assert instance_states(aws) == ["running"]


# ---------------------------------------------------------------------------- a busy account

def test_a_large_launch_is_split_into_calls_of_at_most_250(aws):
    rows = [(i + 2, "t3.micro", "x") for i in range(600)]
    launch, calls = launch_setup(aws, "job-big", rows)
    ids, missing = launch()
    assert len(ids) == 600 and missing == {} and len(calls) == 3


def test_an_instance_that_ends_while_starting_is_reported_not_waited_for(aws):
    ami = aws.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ids = [i["InstanceId"] for i in aws.run_instances(ImageId=ami, MinCount=2, MaxCount=2)["Instances"]]
    aws.terminate_instances(InstanceIds=ids[1:])
    found, failed = launch.wait_running(ids, timeout=30)
    assert {n["id"]: n["state"] for n in found} == {ids[0]: "running", ids[1]: "terminated"}
    assert list(failed) == ids[1:] and failed[ids[1]].startswith("terminated")


def test_with_nothing_launched_create_waits_for_nothing(aws):
    """A create whose machines all run already launches nothing: the wait must ask EC2 nothing
    (DescribeInstances with no ids lists the whole account) and find no instance of its own."""
    ami = aws.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    aws.run_instances(ImageId=ami, MinCount=1, MaxCount=1)  # another job's machine
    asked = []
    cs.session().events.register("before-call.ec2.DescribeInstances", lambda **kw: asked.append(1))
    assert launch.wait_running([], timeout=5) == ([], {})
    assert asked == []


def test_ctrl_c_while_a_node_connects_leaves_no_connection_open(monkeypatch):
    """Ctrl-C closes every open SSH connection; one being made at that moment must not be
    made after it (its row would hold create up for the 30 s of a read timeout)."""
    import paramiko
    ssh.STOP.clear()
    attempts = []

    class Client(paramiko.SSHClient):
        def __init__(self):
            super().__init__()
            ssh.STOP.set()  # Ctrl-C arrives now: after the check, before the connection is known

        def connect(self, *args, **kwargs):
            attempts.append(args)
    monkeypatch.setattr(ssh.paramiko, "SSHClient", Client)
    with socket.socket() as listener:  # a node's port on this machine, that takes the TCP connection
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        monkeypatch.setenv("AWSRUN_SSH_PORT", str(listener.getsockname()[1]))
        node = {"id": "i-1", "tag": "x0", "address": "127.0.0.1"}
        try:
            with pytest.raises(ssh.NodeError, match="interrupted"):
                ssh.connect(node, None, ssh.HostKeyMemory(os.devnull), time.monotonic() + 5)
        finally:
            ssh.STOP.clear()
    assert attempts == [] and not ssh.OPEN


def test_host_keys_are_remembered_per_instance_not_per_address(tmp_path):
    import paramiko
    memory = ssh.HostKeyMemory(str(tmp_path / "known_hosts"))
    first, second = paramiko.RSAKey.generate(1024), paramiko.RSAKey.generate(1024)
    memory.for_node("i-1").missing_host_key(None, "203.0.113.5", first)
    memory.for_node("i-2").missing_host_key(None, "203.0.113.5", second)  # AWS gave i-1's address to i-2
    with pytest.raises(paramiko.BadHostKeyException):
        memory.for_node("i-1").missing_host_key(None, "198.51.100.1", second)
    again = ssh.HostKeyMemory(str(tmp_path / "known_hosts"))  # kept in the job's file
    again.for_node("i-2").missing_host_key(None, "198.51.100.1", second)


def test_nodes_reached_by_private_address_when_asked(aws, monkeypatch):
    instance = {"InstanceId": "i-1", "InstanceType": "t3.micro", "State": {"Name": "running"}, "LaunchTime": 0,
                "PublicIpAddress": "203.0.113.5", "PrivateIpAddress": "10.0.0.5", "Tags": []}
    assert job_state.node_from_instance(instance)["address"] == "203.0.113.5"
    monkeypatch.setenv("AWSRUN_SSH_ADDRESS", "private")
    assert job_state.node_from_instance(instance)["address"] == "10.0.0.5"


@pytest.mark.parametrize("itype, family", [("t3.micro", "standard"), ("c7i.large", "standard"), ("g5.xlarge", "g"),
                                           ("vt1.3xlarge", "g"), ("p4d.24xlarge", "p"), ("inf2.xlarge", "inf"),
                                           ("x2iedn.xlarge", "x"), ("trn1.2xlarge", None), ("mac2.metal", None)])
def test_instance_types_map_to_their_vcpu_quota(itype, family):
    assert launch.quota_family(itype) == family


def test_the_sandbox_says_what_it_needs_off_linux(monkeypatch, capsys, tmp_path):
    from testbed import sandbox_server as sandbox
    monkeypatch.setattr(sandbox.sys, "platform", "darwin")
    monkeypatch.setattr(sandbox.tempfile, "mkdtemp", lambda prefix: str(tmp_path / "box"))
    assert sandbox.main(["run", "--", "true"]) == 1
    assert capsys.readouterr().err == (
        "error: the sandbox runs its nodes on this machine with Linux's tools (setsid, GNU timeout, /proc): "
        "use Linux, or WSL on Windows; awsrun itself, on AWS, needs only Python and SSH\n")


def test_fetch_progress_is_one_updating_line_at_a_terminal_only():
    import io
    import get_s3_files

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    shown, quiet = Terminal(), io.StringIO()
    for stream in (shown, quiet):
        progress = get_s3_files.Progress(2, 3_000_000, stream=stream)
        progress.on_progress(None, 1_000_000)
        progress.on_done(None)
        progress.on_progress(None, 2_000_000)
        progress.on_done(None)
    assert quiet.getvalue() == ""
    lines = shown.getvalue().split("\r")
    assert lines[0] == "" and lines[-1].startswith("2/2 files, 3.0 MB/3.0 MB, ")
    assert lines[-1].endswith("/s \033[K\n")
    assert [get_s3_files.human(n) for n in (999, 12_345, 6_500_000, 7e12)] == \
        ["999 B", "12.3 KB", "6.5 MB", "7000.0 GB"]
    assert "\n" not in "".join(lines[:-1])  # one line, rewritten in place


def test_state_of_a_pool_row_from_its_queued_start_and_outcome_markers():
    import datetime
    t0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)

    def at(seconds, **values):
        return dict(values, when=t0 + datetime.timedelta(seconds=seconds))
    queued, up = at(0, type="t3.micro", attempts=3), {"i-a": {"state": "running"}, "i-gone": {"state": "terminated"},
                                                      "i-held": {"state": "running", "status": "upload-failed"}}
    cases = [(queued, None, None, ("queued", "")),
             (queued, at(0, instance="i-a", attempt=1), None, ("running", "i-a")),   # the same second: started
             (queued, at(5, instance="i-gone", attempt=1), None, ("queued", "")),   # lost: SQS gives it out again
             (queued, at(5, instance="i-held", attempt=1), None, ("queued", "")),   # handed back by a held machine
             (queued, at(5, instance="i-x", attempt=2), None, ("queued", "")),      # EC2 forgot the machine
             (queued, at(9, instance="i-gone", attempt=3), None, ("failed (lost 3 times)", "i-gone")),
             (queued, at(5, instance="i-a", attempt=1), at(5, exit=0), ("succeeded", "")),
             (queued, at(5, instance="i-a", attempt=1), at(6, exit=2), ("failed (exit 2)", "")),
             (at(60, type="t3.micro", attempts=3), at(5, instance="i-a", attempt=1), at(6, exit=2), ("queued", ""))]
    assert [job_state.pool_row_state(q, s, m, up) for q, s, m, _ in cases] == [want for *_, want in cases]


def test_queued_markers_name_hundreds_of_rows_in_one_key_and_round_trip():
    import datetime
    batches = job_state.launch_batches(list(range(0, 1000, 3)), 700)
    keys = [job_state.queued_key("t3.micro", 3, numbers) for numbers in batches]
    assert len(keys) == 1 and len(keys[0]) < 1024
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    found = job_state.queued([{"Key": k, "LastModified": when} for k in keys], "j")
    assert sorted(found, key=lambda t: int(t[1:])) == ["j%d" % n for n in range(0, 1000, 3)]
    assert found["j999"] == {"type": "t3.micro", "attempts": 3, "when": when}
    starts = job_state.starts([{"Key": job_state.start_key("j4", "i-1", 2), "LastModified": when},
                               {"Key": job_state.marker_key("j4", 0, 5), "LastModified": when}])
    assert starts == {"j4": {"instance": "i-1", "attempt": 2, "when": when}}
    assert job_state.outcomes([{"Key": job_state.start_key("j4", "i-1", 2), "LastModified": when}]) == {}


def test_pool_sizes_from_the_option_or_the_vcpu_quota(aws, monkeypatch):
    import pool
    assert pool.pool_size("8", {"t3.micro": 20, "c5.large": 3}, {}) == {"t3.micro": 8, "c5.large": 3}
    monkeypatch.setattr(launch, "vcpu_quota", lambda family, spot=False: {"standard": 16, "g": None}[family])
    assert pool.pool_size("auto", {"t3.micro": 40}, {"t3.micro": 2}) == {"t3.micro": 8}
    assert pool.pool_size("auto", {"t3.micro": 3}, {"t3.micro": 2}) == {"t3.micro": 3}
    assert pool.pool_size("auto", {"t3.micro": 30, "c5.xlarge": 10}, {"t3.micro": 2, "c5.xlarge": 4}) == \
        {"t3.micro": 6, "c5.xlarge": 1}
    with pytest.raises(cs.UserError, match="could not read the vCPU quota of g5.xlarge: give the number"):
        pool.pool_size("auto", {"g5.xlarge": 4}, {"g5.xlarge": 4})
    with pytest.raises(cs.UserError, match="use a job name of at most 48 characters"):
        pool.queue_name("j" * 50, "u7in-32tb.224xlarge")


def test_the_pool_worker_sees_a_spot_interruption_notice(monkeypatch):
    import http.server
    import threading
    monkeypatch.syspath_prepend(os.path.join(ROOT, "node"))  # on a node it sits in .awsrun/ beside its imports
    import pool_worker
    notice = {"on": False}

    class Metadata(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_PUT(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"token")

        def do_GET(self):
            found = notice["on"] and self.path == "/latest/meta-data/spot/instance-action" and \
                self.headers.get("X-aws-ec2-metadata-token") == "token"
            self.send_response(200 if found else 404)
            self.end_headers()
            self.wfile.write(b'{"action": "terminate", "time": "2026-01-01T00:02:00Z"}' if found else b"")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:%d" % server.server_port)
    try:
        assert pool_worker.spot_interrupted() is False
        notice["on"] = True
        assert pool_worker.spot_interrupted() is True
    finally:
        server.shutdown()


def test_the_sandbox_finds_a_metadata_caller_past_an_old_connection_from_the_same_port():
    from testbed import sandbox_imds as sandbox
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    old = "   0: 0100007F:A1B2 0100007F:1F90 06 00000000:00000000 03:00000A2B 00000000     0        0 0 3 0\n"
    new = "   1: 0100007F:A1B2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 98765 1 0\n"
    assert sandbox.connection_inode(header + old + new, 0xA1B2, 0x1F90) == "98765"  # not the TIME_WAIT one
    assert sandbox.connection_inode(header + old, 0xA1B2, 0x1F90) is None


def test_the_sandbox_finds_a_metadata_callers_process_by_its_socket():
    from testbed import sandbox_imds
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()) as client:
            port = client.getsockname()[1]
            assert sandbox_imds.socket_owner(port, server.getsockname()[1], []) == os.getpid()
            assert sandbox_imds.socket_owner(port, server.getsockname()[1], []) == os.getpid()  # from the map
        why = []
        assert sandbox_imds.socket_owner(port, server.getsockname()[1], why) is None and why


def test_a_terminated_instance_ends_the_processes_of_a_node_folder_that_was_deleted_under_them(tmp_path):
    import subprocess
    from testbed import sandbox_ec2
    folder = tmp_path / "i-0123"
    folder.mkdir()
    process = subprocess.Popen(["sleep", "60"], cwd=folder)
    try:
        folder.rmdir()  # its working directory now reads "... (deleted)"
        sandbox_ec2.kill_processes_under(str(folder))
        assert process.wait(10) == -9
    finally:
        process.kill()


def test_collect_patterns_read_as_glob_reads_them():
    import collect
    assert collect.matches("output/*.csv", "output/r.csv")
    assert not collect.matches("output/*.csv", "output/plots/walk.csv")  # * stays in its folder
    assert collect.matches("output/**.csv", "output/plots/walk.csv")
    assert not collect.matches("output/*.csv", "output/r.csv.bak") and not collect.matches("a.b/*", "aXb/x")


def test_aws_region_alone_chooses_the_region_though_boto3_reads_only_aws_default_region(aws_env, monkeypatch):
    # boto3 ignores AWS_REGION (boto/boto3#3620); the AWS CLI v2 and the other SDKs read it first.
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    cs.session.cache_clear()
    cs.client.cache_clear()
    try:
        assert cs.region() == "eu-west-1"
        assert cs.client("s3").meta.region_name == "eu-west-1"
        monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")  # AWS_REGION wins, as in the AWS CLI v2
        cs.session.cache_clear()
        assert cs.region() == "eu-west-1"
    finally:
        cs.session.cache_clear()
        cs.client.cache_clear()


def test_fetch_does_not_download_a_foreign_multipart_object_again(aws, tmp_path):
    # A multipart upload's ETag is no MD5 and a foreign bucket has no manifest: nothing to hash,
    # so the file is known again by the ETag of the object it was written from.
    import get_s3_files
    from boto3.s3.transfer import TransferConfig
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="foreign")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 << 20))
    s3.upload_file(str(big), "foreign", "data/big.bin", Config=TransferConfig(multipart_threshold=5 << 20,
                                                                             multipart_chunksize=5 << 20))
    assert "-" in s3.head_object(Bucket="foreign", Key="data/big.bin")["ETag"]
    out = str(tmp_path / "out")
    assert get_s3_files.fetch("foreign", out) == (1, 0)
    assert get_s3_files.fetch("foreign", out) == (0, 1)
    with open(os.path.join(out, "data", "big.bin"), "ab") as f:
        f.write(b"changed here")
    os.truncate(os.path.join(out, "data", "big.bin"), 6 << 20)  # same size, other time: fetched again
    assert get_s3_files.fetch("foreign", out) == (1, 0)
    assert open(os.path.join(out, "data", "big.bin"), "rb").read() == big.read_bytes()


def test_a_read_cut_off_midway_is_tried_again(tmp_path):
    import hashlib
    import get_s3_files
    from botocore.exceptions import ResponseStreamingError
    data = os.urandom(600 << 10)

    class Body:
        def __init__(self, cut):
            self.cut = cut

        def iter_chunks(self, size):
            yield data[:size]
            if self.cut:
                raise ResponseStreamingError(error="Connection broken: IncompleteRead")
            yield data[size:]

    class S3:
        calls = 0

        def get_object(self, **kw):
            S3.calls += 1
            assert kw == {"Bucket": "b", "Key": "t/output/x", "IfMatch": '"e"'}
            return {"Body": Body(cut=S3.calls == 1)}
    obj = {"Key": "t/output/x", "ETag": '"e"', "Size": len(data)}
    damaged = []
    get_s3_files.fetch_each(S3(), "b", str(tmp_path), {obj["Key"]: "t/output/x"}, [obj],
                            {obj["Key"]: ("sha256", hashlib.sha256(data).hexdigest())},
                            get_s3_files.Cache(str(tmp_path)), damaged, get_s3_files.Progress(1, len(data)))
    assert (S3.calls, damaged) == (2, [])
    assert (tmp_path / "t" / "output" / "x").read_bytes() == data
    assert not (tmp_path / "t" / "output" / "x.awsrun-part").exists()


def project_imports(path, ours):
    """The project modules a file imports, anywhere in it (its `__main__` block too)."""
    import ast
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found & ours


def test_no_module_imports_one_that_imports_it_back():
    files = [f for f in os.listdir(ROOT) if f.endswith(".py")]
    ours = {f[:-3] for f in files}
    graph = {f[:-3]: project_imports(os.path.join(ROOT, f), ours) for f in files}
    assert not graph["cloud_setup"]  # the ground floor imports nothing of awsrun's

    def circle_from(start, path):
        for nxt in sorted(graph[path[-1]]):
            if nxt == start:
                return path + [nxt]
            if nxt not in path:
                found = circle_from(start, path + [nxt])
                if found:
                    return found
        return None
    circles = [c for c in (circle_from(m, [m]) for m in sorted(graph)) if c]
    assert circles == []


def test_every_page_the_readme_and_docs_link_to_exists():
    import re
    docs = ["docs/" + f for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md")]
    pages = ["README.md", "BENCHMARKS.md"] + docs
    for page in pages:
        text = open(os.path.join(ROOT, page), encoding="utf-8").read()
        for target in re.findall(r"\]\(([^)#]+?)(?:#[^)]*)?\)", text):
            if "://" not in target:
                assert os.path.exists(os.path.join(ROOT, os.path.dirname(page), target)), (page, target)


@pytest.mark.parametrize("text", ["2026-12-01T23:57:32.000Z", "2026-12-01T23:57:32Z", "2026-12-01T23:57:32+01:00",
                                  "Tue, 01 Dec 2026 23:57:32 GMT", "2026-12-01T23:57:32", "1764633452",
                                  "Tue, 01 Dec 2026 23:57:32 -0000"])
def test_aws_times_are_read_as_botocore_reads_them(text):
    import botocore.utils
    ours, theirs = cs.aws_time(text), botocore.utils.parse_timestamp(text)
    assert (ours, ours.utcoffset(), ours.isoformat()) == (theirs, theirs.utcoffset(), theirs.isoformat())


def test_the_sessions_clients_read_times_with_aws_time(aws):
    import datetime
    s3 = cs.client("s3")
    s3.create_bucket(Bucket="times")
    s3.put_object(Bucket="times", Key="k", Body=b"")
    listed = s3.list_objects_v2(Bucket="times")["Contents"][0]["LastModified"]
    header = s3.head_object(Bucket="times", Key="k")["LastModified"]
    assert listed.tzinfo is header.tzinfo is datetime.timezone.utc  # the standard library's, not dateutil's
