"""The set-up steps docs/aws-setup.md tells a user to take, run as written against the sandbox with the
AWS CLI (in .venv-bench, which make test installs), under IAM's own size limits."""
import json
import os
import re
import subprocess

import pytest

import cloud_setup as cs
from testbed import sandbox_ec2
from conftest import ROOT

AWS = os.path.join(ROOT, ".venv-bench", "bin", "aws")


def readme_block(name):
    """The shell block that follows `<!-- setup: NAME -->` in docs/aws-setup.md, as a user copies it."""
    with open(os.path.join(ROOT, "docs", "aws-setup.md"), encoding="utf-8") as f:
        text = f.read()
    found = re.search(r"<!-- setup: %s -->\s*```\n(.*?)```" % name, text, re.S)
    assert found, "docs/aws-setup.md has no block after <!-- setup: %s -->" % name
    return "\n".join(line.strip() for line in found.group(1).splitlines())


def aws_cli(box, script):
    """Run shell lines with the AWS CLI on PATH, as the account's admin, in the checkout."""
    if not os.path.exists(AWS):
        pytest.fail("the AWS CLI is missing: make test installs it (make %s)" % os.path.relpath(AWS, ROOT))
    env = dict(box.env, PATH=os.path.dirname(AWS) + os.pathsep + os.environ["PATH"],
               AWS_ACCESS_KEY_ID="sandbox-admin", AWS_SECRET_ACCESS_KEY="sandbox-admin")
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_readmes_policy_setup_runs_as_written_and_the_inline_one_is_refused(account):
    box = account(boundary=False)  # an account set up from nothing: the block makes the boundary
    iam = box.client("iam")
    iam.create_user(UserName="setup-user")
    iam.create_role(RoleName="setup-role", AssumeRolePolicyDocument=json.dumps(cs.EC2_TRUST))
    inline = aws_cli(box, "aws iam put-user-policy --user-name setup-user --policy-name awsrun "
                          "--policy-document file://awsrun-user-policy.json")
    assert inline.returncode != 0
    assert ("An error occurred (LimitExceeded) when calling the PutUserPolicy operation: Maximum policy size of "
            "2048 bytes exceeded for user setup-user") in inline.stderr
    for block, name in (("user", "setup-user"), ("role", "setup-role")):
        done = aws_cli(box, readme_block(block).replace("YOUR_USER", name).replace("YOUR_ROLE", name))
        assert done.returncode == 0, done.stderr
    arn = "arn:aws:iam::%s:policy/awsrun" % sandbox_ec2.ACCOUNT
    assert [p["PolicyArn"] for p in iam.list_attached_user_policies(UserName="setup-user")["AttachedPolicies"]] == [arn]
    assert [p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName="setup-role")["AttachedPolicies"]] == [arn]
    version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
    document = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"]
    with open(os.path.join(ROOT, "awsrun-user-policy.json")) as f:
        assert document == json.load(f)
    boundary = sandbox_ec2.ACCOUNT.join(("arn:aws:iam::", ":policy/awsrun-node-boundary"))
    version = iam.get_policy(PolicyArn=boundary)["Policy"]["DefaultVersionId"]
    with open(os.path.join(ROOT, "awsrun-node-boundary.json")) as f:
        assert iam.get_policy_version(PolicyArn=boundary, VersionId=version)["PolicyVersion"]["Document"] == \
            json.load(f)


def test_a_managed_policy_over_6144_characters_is_refused_as_iam_refuses_it(box):
    big = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::bucket-%04d/*" % i}
        for i in range(120)]}
    path = os.path.join(box.folder("setup-big"), "big.json")
    with open(path, "w") as f:
        json.dump(big, f, indent=4)
    assert sandbox_ec2.policy_size(json.dumps(big, indent=4)) > sandbox_ec2.MANAGED_LIMIT
    made = aws_cli(box, "aws iam create-policy --policy-name too-big --policy-document file://%s" % path)
    assert made.returncode != 0
    assert "(LimitExceeded) when calling the CreatePolicy operation: Cannot exceed quota for PolicySize: 6144" \
        in made.stderr


def test_both_policies_as_built_fit_iams_limits():
    """The user policy as a managed policy (6,144), the node policy inline on its role (10,240),
    for the longest job name (50) and bucket name (63); white space is not counted."""
    with open(os.path.join(ROOT, "awsrun-user-policy.json")) as f:
        assert sandbox_ec2.policy_size(f.read()) <= sandbox_ec2.MANAGED_LIMIT
    node = json.dumps(cs.node_policy("j" * 50, "b" * 63))
    assert sandbox_ec2.policy_size(node) <= sandbox_ec2.INLINE_LIMITS["PutRolePolicy"][2]


def wheel(folder, name="demo_dep", value=42):
    """A tiny pure-Python wheel, built here, so that pip installs it with no network."""
    import zipfile
    path = folder / ("%s-1.0-py3-none-any.whl" % name)
    info = "%s-1.0.dist-info/" % name
    files = {name + "/__init__.py": "VALUE = %d\n" % value,
             info + "METADATA": "Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n" % name,
             info + "WHEEL": "Wheel-Version: 1.0\nGenerator: awsrun-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[info + "RECORD"] = "".join("%s,,\n" % f for f in files) + info + "RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for member, text in files.items():
            z.writestr(member, text)
    return path


def test_install_shs_python_recipe_works_on_the_node_image_which_has_no_pip(box):
    """Ubuntu 24.04's image has no pip and its Python refuses pip installs (PEP 668): the recipe
    INSTALL.sh shows (a venv in the work directory; rows call its Python) works there."""
    job = "setup-venv"
    code = box.folder(job) / "code"
    (code / "wheels").mkdir(parents=True, exist_ok=True)
    (code / "requirements.txt").write_text("./wheels/%s\n" % wheel(code / "wheels").name)
    with open(os.path.join(ROOT, "INSTALL.sh")) as f:
        recipe = [line.strip().lstrip("#").strip() for line in f if "python3 -m venv" in line]
    assert len(recipe) == 1, recipe  # the Python part of INSTALL.sh's recipe (apt-get is the image's part)
    install = box.folder(job) / "install.sh"
    install.write_text("set -e\n! python3 -m pip --version\n%s\ntouch READY\n" % recipe[0])
    jobs = box.folder(job) / "jobs.csv"
    jobs.write_text('instance_type,command\nt3.micro,".venv/bin/python -c \'import demo_dep; print(demo_dep.VALUE)\' '
                    '> output/v.txt"\n')
    run = box.run("dispatcher.py", "auto", job, str(jobs), "-c", "-d", "--code", str(code), "--install", str(install))
    assert run.returncode == 0, run.stderr
    from test_operate import states, until
    until(lambda: states(box, job) == {job + "0": "succeeded"}, what="the row", timeout=90)
    assert box.read(job, job + "0/output/v.txt") == "42\n"
    assert "No module named pip" in box.read(job, job + "0/logs/install.1.log")
