"""--inputs s3://BUCKET/PREFIX in the strict sandbox: the rows read a prefix of a bucket in
another region, from its region, and the nodes may read nothing else; a prefix that cannot be
read stops create before anything is launched, with a line for each."""
import json

from conftest import write
from test_pool import FAST, rows_of, wait

PROBE = """import boto3, botocore
s3 = boto3.client("s3", region_name="eu-west-1")
def code(call):
    try:
        call()
        return "ok"
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
print(code(lambda: s3.get_object(Bucket="inputs-eu", Key="data/set2/secret.txt")),
      code(lambda: s3.list_objects_v2(Bucket="inputs-eu", Prefix="data/set2/")),
      code(lambda: s3.list_objects_v2(Bucket="inputs-eu")))
"""


def make_inputs(box):
    """s3://inputs-eu, a bucket in eu-west-1 (the sandbox's region is us-east-1), once."""
    if "inputs-eu" in {b["Name"] for b in box.s3.list_buckets()["Buckets"]}:
        return
    box.s3.create_bucket(Bucket="inputs-eu", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    eu = box.client("s3", region="eu-west-1")
    for key, text in (("data/set1/a.txt", "alpha\n"), ("data/set1/sub/b c.txt", "beta\n"),
                      ("data/set1/", ""), ("data/set10/c.txt", "not this\n"), ("data/set2/secret.txt", "no\n")):
        eu.put_object(Bucket="inputs-eu", Key=key, Body=text.encode())


def test_rows_read_their_inputs_from_a_bucket_in_another_region_and_nothing_else(box):
    job = "inputs-pool"
    make_inputs(box)
    folder = box.folder(job)
    write(folder / "probe.py", PROBE)
    jobs = write(folder / "jobs.csv", "instance_type,command\n"
                 't3.micro,"cat inputs/a.txt \'inputs/sub/b c.txt\' > output/got.txt; ls inputs > output/ls.txt"\n'
                 "t3.micro,python3 probe.py > output/probe.txt\n"
                 't3.micro,"cat data/a.txt > output/got.txt"\n')
    run = box.run("dispatcher.py", "auto", job, jobs, "-c", "-d", "--pool", "1", "--slots", "2", "--code", str(folder),
                  "--inputs", "s3://inputs-eu/data/set1", "--inputs", "s3://inputs-eu/data/set1/=data",
                  env=FAST, timeout=240)
    assert run.returncode == 0, run.stderr
    assert "ok    inputs" not in run.stderr  # create checks quietly; --dry-run says it
    wait(box, job)
    assert {t: r["state"] for t, r in rows_of(box, job).items()} == {job + "0": "succeeded", job + "1": "succeeded",
                                                                     job + "2": "succeeded"}
    assert box.read(job, job + "0/output/got.txt") == "alpha\nbeta\n"
    assert box.read(job, job + "0/output/ls.txt") == "a.txt\nsub\n"  # not set10's, not the folder object
    assert box.read(job, job + "2/output/got.txt") == "alpha\n"
    assert box.read(job, job + "1/output/probe.txt") == "AccessDenied AccessDenied AccessDenied\n"
    mine = {"node:" + i["InstanceId"] for i in box.instances(job)}  # not other tests' nodes in this sandbox
    node_calls = [e for e in box.decisions() if e.get("principal") in mine]
    assert not [e for e in node_calls if "wrong_region" in e]  # the machine read the bucket from its region
    refused = {(e["action"], e["resource"]) for e in node_calls if e.get("decision") not in (None, "allowed")}
    assert refused == {("s3:GetObject", "arn:aws:s3:::inputs-eu/data/set2/secret.txt"),
                       ("s3:ListBucket", "arn:aws:s3:::inputs-eu")}
    role = box.client("iam").get_role_policy(RoleName="awsrun-%s-node" % job, PolicyName="awsrun-node")
    statements = {s["Sid"]: s for s in role["PolicyDocument"]["Statement"]}
    assert statements["ReadInputs"]["Resource"] == ["arn:aws:s3:::inputs-eu/data/set1/*"]
    assert statements["ListInputs0"]["Condition"] == {"StringLike": {"s3:prefix": ["data/set1/*"]}}


def test_prefixes_that_cannot_be_read_stop_create_with_a_line_each_and_nothing_launched(box):
    job = "inputs-missing"
    make_inputs(box)
    jobs = write(box.folder(job) / "jobs.csv", "instance_type,command\nt3.micro,ls inputs\n")
    given = ["--inputs", "s3://inputs-eu/nothing/here", "--inputs", "s3://inputs-eu/data/set1=in",
             "--inputs", "s3://no-such-inputs-bucket/x"]
    run = box.run("dispatcher.py", "auto", job, jobs, "-c", "-d", *given)
    assert (run.returncode, run.stderr.splitlines()[-2:]) == (2, [
        "error: --inputs s3://inputs-eu/nothing/here: no object under it: check the prefix",
        "--inputs s3://no-such-inputs-bucket/x: bucket no-such-inputs-bucket does not exist"])
    assert box.instances(job) == []
    dry = box.run("dispatcher.py", "auto", job, jobs, "--dry-run", *given)
    assert dry.returncode == 1
    assert "FAIL  inputs: --inputs s3://inputs-eu/nothing/here: no object under it: check the prefix\n" \
           "--inputs s3://no-such-inputs-bucket/x: bucket no-such-inputs-bucket does not exist\n" in dry.stderr
    good = box.run("dispatcher.py", "auto", job, jobs, "--dry-run", "--inputs", "s3://inputs-eu/data/set1")
    assert "ok    inputs: 2 objects, 11 B, under 1 prefix: each machine downloads them all" in good.stderr, good.stderr
    bad = box.run("dispatcher.py", "auto", job, jobs, "-c", "--inputs", "inputs-eu/data")
    assert (bad.returncode, bad.stderr) == (2, "error: --inputs 'inputs-eu/data' must be s3://BUCKET/PREFIX[=DIR]\n")
    assert json.loads(box.run("operate.py", "status", job, "--json").stdout) == []
