"""The node roles' permissions boundary (awsrun-node-boundary.json): whatever policy a node role is
given, its nodes can do no more than the boundary allows, and awsrun's user policy makes and
changes node roles only with the boundary set. Without it, a user could give a node role any
permission, launch a node with it and act through the node beyond the user's own rights."""
import json

import boto3
import pytest
from botocore.exceptions import ClientError

import cloud_setup as cs
from conftest import write
from test_operate import states, until
from testbed import sandbox_ec2

ADMIN_POLICY = json.dumps({"Version": "2012-10-17",
                           "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})


def as_user(box, service):
    """A client with the awsrun user's own keys, whose every call the sandbox's IAM checks."""
    return boto3.client(service, endpoint_url=box.kw["endpoint_url"], region_name=box.kw["region_name"],
                        aws_access_key_id=box.env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=box.env["AWS_SECRET_ACCESS_KEY"])


def test_a_node_role_given_every_permission_still_cannot_make_a_role_of_its_own(box):
    job = "bound-escalate"
    # The row makes a role that it could then have anything assumed with: beyond the user's own
    # rights (the user may make only awsrun-*-node roles, and only within the boundary).
    code = box.folder(job) / "code"
    write(code / "escalate.py", "import json, boto3\nboto3.client('iam', region_name='us-east-1').create_role("
          "RoleName='bound-escalated', AssumeRolePolicyDocument=json.dumps(%r))\n" % cs.EC2_TRUST)
    jobs = write(box.folder(job) / "jobs.csv", "instance_type,command\nt3.micro,python3 escalate.py\n")
    try:
        made = box.run("dispatcher.py", "auto", job, jobs, "-c", "--code", str(code))
        assert made.returncode == 0, made.stderr
        # The user gives the job's node role every permission: IAM lets them (the role has the
        # boundary), but the boundary caps what the role's nodes may do.
        as_user(box, "iam").put_role_policy(RoleName=cs.role_name(job), PolicyName="everything",
                                            PolicyDocument=ADMIN_POLICY)
        started = box.run("dispatcher.py", "auto", job, jobs, "-d", "--code", str(code))
        assert started.returncode == 0, started.stderr
        until(lambda: states(box, job) == {job + "0": "failed (exit 1)"}, what="the row to fail")
        assert [e["decision"] for e in box.decisions() if e.get("action") == "iam:CreateRole"
                and e.get("resource", "").endswith(":role/bound-escalated")] == ["not allowed"], \
            box.read(job, job + "0/screen_output.txt")
        assert "AccessDenied" in box.read(job, job + "0/screen_output.txt")
        assert "bound-escalated" not in [r["RoleName"] for r in box.client("iam").list_roles()["Roles"]]
        role = box.client("iam").get_role(RoleName=cs.role_name(job))["Role"]
        assert role["PermissionsBoundary"]["PermissionsBoundaryArn"] == \
            "arn:aws:iam::%s:policy/awsrun-node-boundary" % sandbox_ec2.ACCOUNT
    finally:
        box.run("cloud_setup.py", "clean", job)


def test_the_user_cannot_make_or_change_a_node_role_without_the_boundary(box):
    iam, name = as_user(box, "iam"), "awsrun-bound-free-node"
    with pytest.raises(ClientError) as made:
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(cs.EC2_TRUST))
    assert made.value.response["Error"]["Code"] == "AccessDenied"
    # as an awsrun from before the boundary made it
    box.client("iam").create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(cs.EC2_TRUST))
    try:
        with pytest.raises(ClientError) as put:
            iam.put_role_policy(RoleName=name, PolicyName="everything", PolicyDocument=ADMIN_POLICY)
        assert put.value.response["Error"]["Code"] == "AccessDenied"
        with pytest.raises(ClientError) as other:  # nor with a boundary of the user's choosing
            iam.put_role_permissions_boundary(RoleName=name,
                                              PermissionsBoundary="arn:aws:iam::aws:policy/AdministratorAccess")
        assert other.value.response["Error"]["Code"] == "AccessDenied"
    finally:
        box.client("iam").delete_role(RoleName=name)


def test_create_gives_a_role_made_before_the_boundary_the_boundary(box):
    job = "bound-old"
    box.client("iam").create_role(RoleName=cs.role_name(job), AssumeRolePolicyDocument=json.dumps(cs.EC2_TRUST))
    jobs = write(box.folder(job) / "jobs.csv", "instance_type,command\nt3.micro,echo x > output/a.txt\n")
    try:
        made = box.run("dispatcher.py", "auto", job, jobs, "-c")
        assert made.returncode == 0, made.stderr
        role = box.client("iam").get_role(RoleName=cs.role_name(job))["Role"]
        assert role["PermissionsBoundary"]["PermissionsBoundaryArn"].endswith(":policy/awsrun-node-boundary")
    finally:
        box.run("cloud_setup.py", "clean", job)


def test_create_without_the_boundary_in_the_account_says_so_and_makes_nothing(account, tmp_path):
    box = account(boundary=False)
    job = "bound-missing"
    jobs = write(tmp_path / "jobs.csv", "instance_type,command\nt3.micro,echo x\n")
    for argv, code in ((["-c"], 2), (["--dry-run"], 1)):
        run = box.run("dispatcher.py", "auto", job, jobs, *argv)
        assert run.returncode == code, run.stderr
        assert ("the permissions boundary awsrun-node-boundary is not in account %s: an admin makes it once from "
                "awsrun-node-boundary.json (docs/aws-setup.md, step 2)" % sandbox_ec2.ACCOUNT) in run.stderr
        assert "Traceback" not in run.stderr
    assert box.instances(job) == []
    assert job not in [b["Name"] for b in box.s3.list_buckets()["Buckets"]]
    assert cs.role_name(job) not in [r["RoleName"] for r in box.client("iam").list_roles()["Roles"]]
