"""awsrun's ground floor and the job's AWS resources. The ground floor: settings, clients,
errors, names and tags, times, retries, the node's exit codes and the one-line error of every
command (run_cli). The resources: the security group, instance profile and bucket, each made
(ensure_*) and deleted (delete_*) here; the key pair is ssh.py's and the queues pool.py's. It imports
nothing of awsrun's: the modules above it do (job_state.py finds and tags the job's instances,
launch.py launches them, operate.py holds the command line of status, wait, down and clean,
which `python cloud_setup.py ...` still runs).

Runs on the user's machine, and is also copied to every node (save_results.py and
update_tags.py import it), so it uses only the standard library and boto3 (1.34.46 or later),
and runs on Python 3.8.
"""
from __future__ import annotations

import calendar
import datetime
import email.utils
import functools
import gc
import getpass
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

import boto3
import botocore.session
import botocore.utils
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

# Tags that awsrun puts on every instance (job_state.py reads them back).
JOB_TAG = "awsrun:job"
ROWS_TAG = "awsrun:rows"
BUCKET_TAG = "awsrun:bucket"
STATUS_TAG = "awsrun:status"
ERROR_TAG = "awsrun:error"
SINCE_TAG = "awsrun:since"        # when awsrun:status last changed
PROGRESS_TAG = "awsrun:progress"  # the latest value set with update_tags.py
UNTIL_TAG = "awsrun:until"        # an upload-failed node is kept up until then
DEADLINE_TAG = "awsrun:deadline"  # a row's command is stopped then (its --max-runtime)
POOL_TAG = "awsrun:pool"          # on a pool machine: the instance type whose queue it serves
BUDGET_TAG = "awsrun:budget-end"  # under --budget: the machine is shut down by then at the latest
PROTECTED_TAGS = (JOB_TAG, ROWS_TAG, BUCKET_TAG, POOL_TAG, BUDGET_TAG)  # what a node may never change


def retries(attempts, **config):
    """botocore's standard retry mode with this many attempts in all, and other Config settings."""
    return Config(retries={"mode": "standard", "max_attempts": attempts}, **config)


RETRIES = retries(8, max_pool_connections=64)


class UserError(Exception):
    """Something the user can fix. Printed as one line, exit status `code`."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------- settings

def log(message):
    """Progress goes to stderr; stdout is kept for data."""
    print(message, file=sys.stderr, flush=True)


def awsrun_env(name, default):
    """An AWSRUN_* environment variable, or its default when unset or empty."""
    return os.environ.get("AWSRUN_" + name) or default


def state_dir(job):
    """The toolkit's own folder for a job: known host keys and kept logs."""
    base = awsrun_env("STATE_DIR", os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "awsrun"))
    path = os.path.join(base, job)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


@functools.lru_cache(maxsize=None)
def version():
    """awsrun's own version, for the results' provenance: its git commit (-dirty with changes
    not committed), or `unknown` outside a git checkout."""
    try:
        return subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "describe", "--always",
                               "--dirty", "--abbrev=12"], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


SESSION_LOCK = threading.RLock()  # client() asks region() while holding it


@functools.lru_cache(maxsize=None)
def session():
    """One boto3 session for the whole run: it reads the configuration and credentials once.
    Its region: AWS_REGION, which boto3 alone among the AWS SDKs ignores (boto/boto3#3620),
    first, as the AWS CLI v2 reads it; then boto3's chain (AWS_DEFAULT_REGION, the profile).
    Its clients parse times with aws_time (botocore lets a session choose its parser)."""
    core = botocore.session.get_session()
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=aws_time)
    return boto3.session.Session(botocore_session=core, region_name=os.environ.get("AWS_REGION") or None)


def aws_time(value):
    """A time in an AWS answer, as botocore's own parser reads it, but the two forms S3 sends
    for every object (ISO 8601 in listings, RFC 1123 in headers) by the standard library's
    C code: botocore's (dateutil) cost a tenth of the client's CPU in a fetch of small files.
    Anything else, or without a zone, goes to botocore's parser."""
    if isinstance(value, str):
        try:
            found = (datetime.datetime.fromisoformat(value) if len(value) >= 10 and value[4] == "-"
                     else email.utils.parsedate_to_datetime(value))
            if found.tzinfo is not None:
                return found
        except (TypeError, ValueError):
            pass
    return botocore.utils.parse_timestamp(value)


def region():
    """The session's region (AWS_REGION, AWS_DEFAULT_REGION, the profile's), else us-east-1."""
    with SESSION_LOCK:
        return session().region_name or "us-east-1"


@functools.lru_cache(maxsize=None)
def client(service):
    """One shared client per service, from one shared session (which loads the endpoint and
    partition data once). Clients are thread-safe; making them from one session is not. The S3
    client expects every bucket to be the caller's account's (name_owner)."""
    made = client_with(service)
    return name_owner(made, account) if service == "s3" else made


@functools.lru_cache(maxsize=None)
def account():
    """The AWS account of the caller's credentials (sts:GetCallerIdentity needs no permission)."""
    return client("sts").get_caller_identity()["Account"]


def name_owner(s3, owner):
    """Make every request of this S3 client that can name its bucket's owner name `owner` (an
    account id, or a function that returns it, asked at the first request) as ExpectedBucketOwner:
    S3 refuses it with 403 if another account owns the bucket, so no result is written to, or
    read from, a bucket someone else made under the job's name."""
    def add(params, model, **_):
        if "ExpectedBucketOwner" in model.input_shape.members:
            params.setdefault("ExpectedBucketOwner", owner() if callable(owner) else owner)
    s3.meta.events.register("provide-client-params.s3", add)
    return s3


def node_session(region_name, patience=120):
    """A boto3 session for code on a node, with its credentials from the metadata service: each
    request up to 5 times, 3 s each (botocore: once, 1 s), and the whole lookup again with backoff
    for up to `patience` seconds, so that a slow answer cannot fail an upload and hold the machine
    up for a day. (botocore gives up at once on a token request that timed out, and asks without
    a token instead, which a node launched with HttpTokens=required is refused.)"""
    core = botocore.session.get_session()
    core.set_config_variable("metadata_service_num_attempts", 5)
    core.set_config_variable("metadata_service_timeout", 3)
    for delay in backoff(time.monotonic() + patience, first=1, cap=10):
        if delay is None or core.get_credentials() is not None:  # None is not kept: asked again
            break
    return boto3.session.Session(botocore_session=core, region_name=region_name)


def instance_metadata(*paths):
    """This instance's answers to IMDSv2 (one session token) for paths under
    /latest/meta-data/, {path: text}; a path with no answer is left out, and off EC2 all are."""
    base = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://169.254.169.254").rstrip("/")
    found = {}
    try:
        with urllib.request.urlopen(urllib.request.Request(
                base + "/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}),
                timeout=2) as answer:
            token = answer.read().decode()
    except OSError:
        return found
    for path in paths:
        try:
            with urllib.request.urlopen(urllib.request.Request(
                    base + "/latest/meta-data/" + path, headers={"X-aws-ec2-metadata-token": token}),
                    timeout=2) as answer:
                found[path] = answer.read().decode().strip()
        except OSError:  # 404 (not there, as a spot notice mostly is) is an HTTPError, an OSError
            pass
    return found


def client_with(service, attempts=None, region_name=None, **config):
    """A new client from the shared session, in this region (default: the session's), with these
    botocore Config settings (and this many attempts per call) on top of RETRIES."""
    config = RETRIES.merge(retries(attempts, **config) if attempts else Config(**config))
    with SESSION_LOCK:
        return session().client(service, region_name=region_name or region(), config=config)


def file_hash(path, algorithm):
    """The hex digest of a file, read in 1 MB chunks (hashlib lets go of the GIL on them)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def error_code(e):
    return e.response.get("Error", {}).get("Code", "")


# ---------------------------------------------------------------------------- names

RESERVED_PREFIXES = ("xn-", "sthree-", "amzn-s3-demo-")
RESERVED_SUFFIXES = ("-s3alias",)


def check_job_name(job):
    """Job names become bucket names, so they follow S3's bucket-name rules (no dots,
    which break HTTPS to the bucket). Raises UserError saying what to change."""
    why = None
    if not 3 <= len(job) <= 50:
        why = "must be 3 to 50 characters long"
    elif not re.fullmatch(r"[a-z0-9][a-z0-9-]*[a-z0-9]", job):
        why = "may hold only lowercase letters, digits and hyphens, and must start and end with a letter or digit"
    elif "--" in job or job.startswith(RESERVED_PREFIXES) or job.endswith(RESERVED_SUFFIXES):
        why = "uses a prefix, suffix or double hyphen that S3 reserves"
    if why:
        raise UserError("job name %r %s (it names the S3 bucket): try JOB=%s"
                        % (job, why, default_job_name(job)), code=2)


def default_job_name(source):
    """A bucket-safe job name from the user's name and a job file's name."""
    stem = os.path.splitext(os.path.basename(source))[0]
    name = "%s-%s" % (getpass.getuser(), stem) if os.path.splitext(source)[1] else stem
    name = re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", name.lower())).strip("-")
    name = (name[:40].strip("-") or "awsrun").ljust(3, "0")
    if name.startswith(RESERVED_PREFIXES):
        name = "job-" + name
    return name + "-1" if name.endswith(RESERVED_SUFFIXES) else name


def alternatives(itype):
    """The instance types a row may run on, in order: `c5.xlarge|c5a.xlarge` lists two, tried
    in turn when AWS has no capacity for the one before (one type: itself)."""
    return itype.split("|")


def tag_name(job, number):
    return "%s%d" % (job, number)


def pool_tag(job, instance_type, number):
    """The tag of pool machine `number` of an instance type: JOB-pool-TYPE-K, never a row's."""
    return "%s-pool-%s-%d" % (job, instance_type, number)


def number_of(job, tag):
    """The number in a row's tag (JOBN) or a pool machine's (JOB-pool-TYPE-K)."""
    return int(tag[len(job):].rsplit("-", 1)[-1])


def job_tags(kind, job):
    """TagSpecifications that mark a new resource as the job's (the policies rely on it)."""
    return [{"ResourceType": kind, "Tags": [{"Key": JOB_TAG, "Value": job}]}]


# ---------------------------------------------------------------------------- security group

def caller_cidr():
    """AWSRUN_SSH_CIDR, else the caller's own public address as a /32."""
    cidr = awsrun_env("SSH_CIDR", None)
    if cidr:
        return cidr
    try:
        with urllib.request.urlopen("https://checkip.amazonaws.com", timeout=10) as reply:
            return reply.read().decode().strip() + "/32"
    except OSError as e:
        raise UserError("could not learn your public address (%s): set AWSRUN_SSH_CIDR, "
                        "e.g. AWSRUN_SSH_CIDR=203.0.113.7/32" % e) from e


def ssh_rule(cidr):
    """The only ingress rule a job's security group has: SSH from one address range."""
    return {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
            "IpRanges": [{"CidrIp": cidr, "Description": "awsrun: SSH from the dispatcher"}]}


def group_name(job):
    return "awsrun-" + job


def group_filters(job, vpc_id=None):
    """The DescribeSecurityGroups filters that find the job's group (in one VPC)."""
    return [{"Name": "group-name", "Values": [group_name(job)]}] + (
        [{"Name": "vpc-id", "Values": [vpc_id]}] if vpc_id else [])


def ensure_security_group(job, cidr, vpc_id=None):
    """Security group awsrun-JOB in the launch's VPC, allowing port 22 from `cidr` only."""
    ec2, name = client("ec2"), group_name(job)
    groups = ec2.describe_security_groups(Filters=group_filters(job, vpc_id))["SecurityGroups"]
    if groups:
        group = groups[0]
    else:
        made = dict(GroupName=name, Description="awsrun job %s: SSH from the dispatcher only" % job,
                    TagSpecifications=job_tags("security-group", job))
        if vpc_id:
            made["VpcId"] = vpc_id
        group = {"GroupId": ec2.create_security_group(**made)["GroupId"], "IpPermissions": []}
    allow_ssh_only_from(group, cidr)
    return group["GroupId"]


def allow_ssh_only_from(group, cidr):
    """Keep the group's one SSH rule on `cidr`: a rule for an address used before is replaced.
    A group made a moment ago may not be visible yet (InvalidGroup.NotFound): retried."""
    ec2 = client("ec2")
    allowed = [r["CidrIp"] for p in group["IpPermissions"] if p.get("FromPort") == 22
               for r in p.get("IpRanges", [])]
    if cidr not in allowed:
        retrying(lambda: ec2.authorize_security_group_ingress(GroupId=group["GroupId"], IpPermissions=[ssh_rule(cidr)]),
                 error_code_in("InvalidGroup.NotFound"), 60)
    stale = [c for c in allowed if c != cidr]
    if stale:
        ec2.revoke_security_group_ingress(GroupId=group["GroupId"], IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": c} for c in stale]}])
        log("SSH to job machines: now from %s only (was %s)" % (cidr, ", ".join(stale)))


def delete_security_group(job, timeout=600):
    """Delete the job's security group, once no instance holds it (a just-terminated one does
    for a while)."""
    ec2 = client("ec2")
    for group in ec2.describe_security_groups(Filters=group_filters(job))["SecurityGroups"]:
        retrying(functools.partial(ec2.delete_security_group, GroupId=group["GroupId"]),
                 error_code_in("DependencyViolation"), timeout, first=1.0, cap=10.0)


def refresh_ssh_rule(job):
    """Before SSH to a job's machines: if the caller's address changed since create (another
    network), replace the old rule with one for the new address."""
    groups = client("ec2").describe_security_groups(Filters=group_filters(job))["SecurityGroups"]
    if groups:
        cidr = caller_cidr()
        for group in groups:
            allow_ssh_only_from(group, cidr)


# ---------------------------------------------------------------------------- instance profile

def queue_prefix(job):
    """What the names of a job's queues start with (pool mode): job names hold no `--`, so no
    other job's queues share it."""
    return "awsrun-%s--" % job


def node_policy(job, bucket, reads=()):
    """Everything a node may do: write objects to its job's bucket (never its settings), and only
    while the bucket is its own account's; read the objects under its --inputs prefixes `reads`
    [(bucket, prefix)] and list nothing else; take rows from its job's queues (pool mode), tag
    and terminate its job's instances, but never change the tags that say whose they are."""
    inputs = []
    if reads:
        inputs.append({"Sid": "ReadInputs", "Effect": "Allow", "Action": "s3:GetObject",
                       "Resource": sorted({"arn:aws:s3:::%s/%s*" % r for r in reads})})
    for i, name in enumerate(sorted({b for b, _ in reads})):
        prefixes = sorted({p for b, p in reads if b == name})
        listing = {"Sid": "ListInputs%d" % i, "Effect": "Allow", "Action": "s3:ListBucket",
                   "Resource": "arn:aws:s3:::" + name}
        if "" not in prefixes:  # a whole bucket ("") is listed without a prefix
            listing["Condition"] = {"StringLike": {"s3:prefix": [p + "*" for p in prefixes]}}
        inputs.append(listing)
    return {"Version": "2012-10-17", "Statement": inputs + [
        {"Sid": "WriteResults", "Effect": "Allow",
         "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
         "Resource": "arn:aws:s3:::%s/*" % bucket,
         "Condition": {"StringEquals": {"s3:ResourceAccount": "${aws:PrincipalAccount}"}}},
        {"Sid": "TakeRowsFromJobQueues", "Effect": "Allow",
         "Action": ["sqs:ReceiveMessage", "sqs:ChangeMessageVisibility", "sqs:DeleteMessage"],
         "Resource": "arn:aws:sqs:*:*:%s*" % queue_prefix(job)},
        {"Sid": "TagAndEndOwnJob", "Effect": "Allow",
         "Action": ["ec2:CreateTags", "ec2:TerminateInstances"],
         "Resource": "arn:aws:ec2:*:*:instance/*",
         "Condition": {"StringEquals": {"aws:ResourceTag/" + JOB_TAG: job},
                       "ForAllValues:StringNotEquals": {"aws:TagKeys": list(PROTECTED_TAGS)}}},
    ]}


EC2_TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}


def role_name(job):
    """The name of the job's node role, and of its instance profile."""
    return "awsrun-%s-node" % job


BOUNDARY = "awsrun-node-boundary"  # the managed policy an admin makes once from awsrun-node-boundary.json


def boundary_arn():
    """The permissions boundary of every node role: the most any node may do, whatever policy
    its role is given (the user policy lets awsrun make and change node roles only with it)."""
    return "arn:aws:iam::%s:policy/%s" % (account(), BOUNDARY)


def ensure_instance_profile(job, bucket, reads=()):
    """Role and instance profile awsrun-JOB-node holding node_policy(), within the permissions
    boundary; returns its name."""
    iam, name = client("iam"), role_name(job)
    try:
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(EC2_TRUST),
                        Description="awsrun nodes of job " + job, PermissionsBoundary=boundary_arn(),
                        Tags=[{"Key": JOB_TAG, "Value": job}])
    except iam.exceptions.EntityAlreadyExistsException:  # (made by an awsrun before the boundary: set it)
        iam.put_role_permissions_boundary(RoleName=name, PermissionsBoundary=boundary_arn())
    iam.put_role_policy(RoleName=name, PolicyName="awsrun-node",
                        PolicyDocument=json.dumps(node_policy(job, bucket, reads)))
    try:
        iam.create_instance_profile(InstanceProfileName=name)
    except iam.exceptions.EntityAlreadyExistsException:
        pass
    # a profile made a moment ago may not be visible yet
    roles = retrying(lambda: iam.get_instance_profile(InstanceProfileName=name), error_code_in("NoSuchEntity"),
                     60)["InstanceProfile"]["Roles"]
    if not any(r["RoleName"] == name for r in roles):
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return name


def delete_instance_profile(job):
    """Delete the job's instance profile and role, with the role's policy."""
    iam, name = client("iam"), role_name(job)
    try:
        for role in iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]:
            iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=role["RoleName"])
        iam.delete_instance_profile(InstanceProfileName=name)
    except iam.exceptions.NoSuchEntityException:
        pass
    try:
        for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
            iam.delete_role_policy(RoleName=name, PolicyName=policy)
        iam.delete_role(RoleName=name)
    except iam.exceptions.NoSuchEntityException:
        pass


# ---------------------------------------------------------------------------- bucket

FOREIGN_BUCKET = "bucket %s belongs to another AWS account: choose another JOB= or --bucket"


def whose_bucket(s3, bucket):
    """"ours", "free" (no one has it), "theirs" (another account's, which we may read) or
    "unreadable" (another account's, or one our credentials may not read), whatever its policy
    allows. `s3` names the owner (name_owner) in the first HeadBucket; the second does not."""
    try:
        s3.head_bucket(Bucket=bucket)
        return "ours"
    except ClientError as e:
        if error_code(e) in ("404", "NoSuchBucket"):
            return "free"
        if error_code(e) not in ("403", "AccessDenied"):
            raise
    try:  # asked again without naming the owner: a 200 now means the bucket is another account's
        client_with("s3").head_bucket(Bucket=bucket)
    except ClientError as e:
        if error_code(e) in ("403", "AccessDenied"):
            return "unreadable"
        raise
    return "theirs"


def bucket_is_ours(s3, bucket):
    """True if the bucket exists and is the caller's account's, False if no one has it yet;
    UserError if another account has it."""
    whose = whose_bucket(s3, bucket)
    if whose == "unreadable":
        raise UserError("bucket %s belongs to another AWS account, or your credentials may not read it: "
                        "choose another JOB= or --bucket" % bucket)
    if whose == "theirs":
        raise UserError(FOREIGN_BUCKET % bucket)
    return whose == "ours"


def bucket_policy(bucket):
    """The policy awsrun gives a bucket it makes: every request without TLS is refused, as AWS's
    security best practices for S3 advise (aws:SecureTransport)."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "RefusePlainHTTP", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
         "Resource": ["arn:aws:s3:::" + bucket, "arn:aws:s3:::%s/*" % bucket],
         "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}


def ensure_bucket(s3, bucket, where):
    """Create the bucket, public access blocked, encrypted at rest and refusing plain HTTP, if it
    does not exist. An existing bucket of yours is left as it is: its settings may be your own.
    (In us-east-1 CreateBucket on a bucket you own succeeds again, so its answer cannot tell.)"""
    if bucket_is_ours(s3, bucket):
        return False
    try:
        if where == "us-east-1":
            s3.create_bucket(Bucket=bucket)
        else:
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": where})
    except ClientError as e:
        if error_code(e) == "BucketAlreadyExists":
            raise UserError(FOREIGN_BUCKET % bucket) from None
        if error_code(e) == "BucketAlreadyOwnedByYou":
            return False  # made a moment ago by another run: its settings are its own
        raise
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True,
        "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(bucket_policy(bucket)))
    return True


def delete_bucket(bucket):
    """Delete the bucket with everything in it (clean --delete-bucket)."""
    s3 = client("s3")
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        s3.delete_bucket(Bucket=bucket)
    except s3.exceptions.NoSuchBucket:
        pass


# ---------------------------------------------------------------------------- retries, times, exit codes

def retrying(call, retry_if, seconds, first=0.5, cap=5.0, what=None):
    """call(), again with backoff while it raises a ClientError that retry_if(error) accepts,
    up to `seconds`; then the error is raised. With `what`, each retry is logged."""
    for delay in backoff(time.monotonic() + seconds, first=first, cap=cap):
        try:
            return call()
        except ClientError as e:
            if not retry_if(e) or delay is None:
                raise
            if what:
                log("%s: %s, trying again" % (what, error_code(e)))


def error_code_in(*codes):
    """A retry_if for retrying(): the error's code is one of these."""
    return lambda e: error_code(e) in codes


def backoff(deadline, first=0.2, cap=5.0):
    """Delays for a wait loop: yields until the deadline, then yields None once.
    Use it as `for delay in backoff(deadline):` ... `if delay is None: give up`."""
    delay = first
    while time.monotonic() + delay < deadline:
        yield delay
        time.sleep(delay)
        delay = min(cap, delay * 2)
    yield None


TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # how awsrun writes every time: UTC, to the second
# The node's exit codes, named once: the node's shell reads them (and TIME_FORMAT) from
# .awsrun/names.sh, which dispatcher.make_bundle writes from this table.
NODE_EXIT = {
    "INSTALL_FAILED": 1,    # prepare.sh: INSTALL.sh never created READY
    "BAD_BUNDLE": 2,        # create: the work directory or its files could not be set up
    "NO_WORK_DIR": 10,      # dispatch: the node has no work directory
    "NOT_READY": 11,        # dispatch: the node is not prepared, or was prepared for another instance
    "STARTED_ALREADY": 12,  # dispatch: the row was started before
    "BAD_FILES": 13,        # dispatch: the row's files could not be unpacked
    "UPLOAD_FAILED": 75,    # the uploader (EX_TEMPFAIL): run.sh holds the node up for the upload hold
    "TIMED_OUT": 124,       # timeout(1): the row's command reached --max-runtime
    "KILLED": 137,          # timeout(1): ... and ignored the TERM for 60 s
}


def parse_time(text):
    """Seconds since the epoch from an ISO time written by now_text(), or None."""
    try:
        return calendar.timegm(time.strptime(text, TIME_FORMAT))
    except ValueError:
        return None


def now_text(later=0):
    """Now (or `later` seconds from now), as awsrun writes times."""
    return time.strftime(TIME_FORMAT, time.gmtime(time.time() + later))


def exit_code_of(text):
    """An exit code as the node writes it (a file, a marker), or None if it is not a number."""
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else None


def tag_order(tag):
    """Tags in row order: JOB2 before JOB10."""
    return len(tag), tag


def terminate(ids):
    if ids:
        client("ec2").terminate_instances(InstanceIds=list(ids))


# ---------------------------------------------------------------------------- command line

BAD_CREDENTIALS = ("AuthFailure", "InvalidClientTokenId", "UnrecognizedClientException",
                   "SignatureDoesNotMatch", "ExpiredToken", "InvalidAccessKeyId")


def run_cli(main):
    """Run main(); print a UserError or an AWS error as one line, with its exit code."""
    try:
        return main()
    except UserError as e:
        print("error: %s" % e, file=sys.stderr)
        return e.code
    except NoCredentialsError:
        print("error: no AWS credentials found: run `aws configure` or set AWS_PROFILE", file=sys.stderr)
        return 1
    except NoRegionError:
        print("error: no AWS region set: set AWS_REGION", file=sys.stderr)
        return 1
    except ClientError as e:
        if error_code(e) in BAD_CREDENTIALS:
            print("error: AWS refused your credentials (%s): check them with `aws sts get-caller-identity`"
                  % error_code(e), file=sys.stderr)
        else:
            print("error: AWS refused %s: %s" % (e.operation_name, e), file=sys.stderr)
        return 1
    except BotoCoreError as e:
        print("error: could not reach AWS: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def leave(code):
    """End a command's process with its exit code. Its objects are frozen first: else the
    interpreter's exit walks every one still alive looking for cycles to free (botocore's
    service models among them: 180,000 objects after create+dispatch of 64 machines, 0.8 s of
    CPU), which the end of the process frees anyway."""
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":  # the documented script form runs operate.py, the command line, as a script
    import runpy
    runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "operate.py"), run_name="__main__")
