"""Results never land in someone else's bucket: bucket names are global, and anyone may make a
bucket under a job's name first, in their own account, with a policy that lets everyone write.
The sandbox has that second account (sandbox_ec2.OTHER_ACCOUNT), answers ExpectedBucketOwner as
S3 does, and weighs each bucket's policy and the S3 condition keys as IAM does."""
import json
import os

import boto3
import pytest
from botocore.exceptions import ClientError

from testbed import sandbox_ec2
from conftest import write
from test_dry_run import nothing_made  # the squatter's bucket is not the user account's: not listed
from test_operate import release, until, waits_for

FOREIGN = "error: bucket %s belongs to another AWS account: choose another JOB= or --bucket\n"


def squat(box, bucket):
    """Make `bucket` in the other account, open to every account's writes and reads."""
    other = box.other_account("s3")
    other.create_bucket(Bucket=bucket)
    other.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": "s3:*",
         "Resource": ["arn:aws:s3:::" + bucket, "arn:aws:s3:::%s/*" % bucket]}]}))
    return other


def keys(s3, bucket):
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_create_refuses_a_bucket_of_another_account_under_the_jobs_name(box, tmp_path):
    job = "owner-squat"
    other = squat(box, job)
    jobs = write(tmp_path / "jobs.csv", "instance_type,command\nt3.micro,echo result > output/r.txt\n")
    run = box.run("dispatcher.py", "auto", job, jobs, "-c", "-d")
    assert (run.returncode, run.stderr) == (1, FOREIGN % job)
    nothing_made(box, job)
    assert keys(other, job) == []  # not a dispatch record, not a marker
    dry = box.run("dispatcher.py", "auto", job, jobs, "--dry-run")
    assert dry.returncode == 1
    assert "FAIL  bucket: " + (FOREIGN % job)[len("error: "):] in dry.stderr
    assert keys(other, job) == []


def test_a_run_names_its_account_as_the_owner_in_every_s3_request_and_its_bucket_refuses_plain_http(box, tmp_path):
    job = "owner-named"
    jobs = write(tmp_path / "jobs.csv", "instance_type,command\nt3.micro,echo result > output/r.txt\n")
    before = len(box.decisions())
    run = box.run("dispatcher.py", "auto", job, jobs, "-c", "-d")
    assert run.returncode == 0, run.stderr
    assert box.run("cloud_setup.py", "wait", job, "--timeout", "60").returncode == 0
    fetched = box.run("get_s3_files.py", job, str(tmp_path / "out"))
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "out" / (job + "0") / "output" / "r.txt").read_text() == "result\n"
    asked = [e for e in box.decisions()[before:] if e.get("resource", "").startswith("arn:aws:s3:::" + job)
             and "decision" in e]
    by = {e["principal"].split(":")[0] for e in asked}
    assert by == {"user", "node"}
    assert {e["action"] for e in asked if e["principal"].startswith("node")} >= {"s3:PutObject"}
    unnamed = [e for e in asked if e["owner"] != sandbox_ec2.ACCOUNT and e["action"] != "s3:CreateBucket"]
    assert unnamed == []  # CreateBucket alone has no ExpectedBucketOwner: the bucket is made in the caller's account
    assert json.loads(box.s3.get_bucket_policy(Bucket=job)["Policy"])["Statement"][0]["Condition"] == {
        "Bool": {"aws:SecureTransport": "false"}}
    user = dict(region_name=box.env["AWS_REGION"], aws_access_key_id=box.env["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=box.env["AWS_SECRET_ACCESS_KEY"])
    tls = boto3.client("s3", endpoint_url=box.env["AWS_ENDPOINT_URL"], **user)
    assert tls.get_object(Bucket=job, Key=job + "0/output/r.txt")["Body"].read() == b"result\n"
    plain = boto3.client("s3", endpoint_url=box.env["AWSRUN_SANDBOX_PLAIN_HTTP"], **user)
    with pytest.raises(ClientError) as e:
        plain.get_object(Bucket=job, Key=job + "0/output/r.txt")
    assert e.value.response["Error"]["Code"] == "AccessDenied"


def test_a_node_whose_bucket_became_another_accounts_holds_its_results(box, tmp_path):
    """The job's bucket is deleted and made again by the other account while a row runs (bucket
    names are freed for anyone): the node's upload is refused, and the machine is held."""
    job = "owner-taken-row"
    jobs = write(tmp_path / "jobs.csv", "instance_type,command\nt3.micro,\"%s; echo result > output/r.txt\"\n"
                 % waits_for(tmp_path, "go"))
    run = box.run("dispatcher.py", "auto", job, jobs, "-c", "-d", "--upload-hold", "2h")
    assert run.returncode == 0, run.stderr
    for key in keys(box.s3, job):
        box.s3.delete_object(Bucket=job, Key=key)
    box.s3.delete_bucket(Bucket=job)
    other = squat(box, job)
    before = len(box.decisions())
    release(tmp_path, "go")

    def status():
        tags = {t["Key"]: t["Value"] for t in box.instances(job)[0]["Tags"]}
        return tags.get("awsrun:status")
    until(lambda: status() == "upload-failed", what="the upload to be refused", timeout=90)
    assert box.states(job) == ["running"]
    assert keys(other, job) == []
    tag_dir = os.path.join(box.nodes_dir, job + "0")
    with open(os.path.join(tag_dir, "output", "r.txt")) as f:
        assert f.read() == "result\n"  # kept on the node
    refused = [e for e in box.decisions()[before:] if e.get("principal", "").startswith("node:")
               and e.get("action") == "s3:PutObject"]
    assert refused and all(e["decision"] == "not allowed" for e in refused)  # the node policy's own account only
    assert all(e["owner"] == sandbox_ec2.ACCOUNT for e in refused)  # and S3 would refuse its owner check too
    box.ec2.terminate_instances(InstanceIds=[box.instances(job)[0]["InstanceId"]])


def test_fetch_reads_a_bucket_of_another_account_it_was_given_and_says_so(box, tmp_path):
    given = "owner-given"
    other = box.other_account("s3")
    other.create_bucket(Bucket=given)
    other.put_object(Bucket=given, Key="JOB0/output/shared.txt", Body=b"shared\n")
    other.put_bucket_policy(Bucket=given, Policy=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::%s:root" % sandbox_ec2.ACCOUNT},
         "Action": ["s3:ListBucket", "s3:GetObject"],
         "Resource": ["arn:aws:s3:::" + given, "arn:aws:s3:::%s/*" % given]}]}))
    run = box.run("get_s3_files.py", given, str(tmp_path / "out"))
    assert run.returncode == 0, run.stderr
    assert "bucket owner-given belongs to another AWS account: reading it as you were given it\n" in run.stderr
    assert (tmp_path / "out" / "JOB0" / "output" / "shared.txt").read_text() == "shared\n"
    private = "owner-private"
    other.create_bucket(Bucket=private)
    run = box.run("get_s3_files.py", private, str(tmp_path / "out2"))
    assert (run.returncode, run.stderr) == (1, "error: bucket owner-private belongs to another AWS account, and your "
                                               "credentials may not read it: ask its owner to grant you "
                                               "s3:ListBucket and s3:GetObject\n")
