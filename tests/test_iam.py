"""The sandbox's IAM (testbed/sandbox_iam.py) decides as IAM does, and both policies pass a linter.
The end-to-end tests then run every call awsrun makes through it (see conftest.sandbox)."""
import json
import os

import pytest
from parliament import analyze_policy_string

import cloud_setup as cs
from testbed import sandbox_iam as iam
from conftest import ROOT

USER_POLICY = json.load(open(os.path.join(ROOT, "awsrun-user-policy.json")))
ACCOUNT, REGION = "123456789012", "us-east-1"
INSTANCE = "arn:aws:ec2:%s:%s:instance/i-0abc" % (REGION, ACCOUNT)
GIVEN = {"aws:PrincipalAccount": ACCOUNT, "aws:SecureTransport": "true"}  # what the sandbox adds to every check
OTHER = "111111111111"


class Tagged(iam.World):
    """One instance of job j1, one untagged instance, and a node role in its profile."""

    def tags(self, kind, name):
        return {"awsrun:job": "j1"} if name == "i-0abc" else {}

    def profile_role(self, profile):
        return "awsrun-j1-node"

    def has_spot_role(self):
        return False


def checks(service, operation, **params):
    request = {"service": service, "region": REGION, "operation": operation,
               "params": dict(params, Action=operation)}
    return iam.needs(request, Tagged())


def allowed(policy, service, operation, **params):
    return [iam.decide([policy], a, r, c) for a, r, c in checks(service, operation, **params)]


def test_create_action_exists_only_inside_run_instances():
    only_while_creating = {"Statement": [{"Effect": "Allow", "Action": "ec2:CreateTags", "Resource": "*",
                                          "Condition": {"StringEquals": {"ec2:CreateAction": "RunInstances"}}}]}
    direct = dict(**{"ResourceId.1": "i-0abc", "Tag.1.Key": "awsrun:status", "Tag.1.Value": "running"})
    assert allowed(only_while_creating, "ec2", "CreateTags", **direct) == ["not allowed"]
    launch = {"ImageId": "ami-1", "TagSpecification.1.ResourceType": "instance",
              "TagSpecification.1.Tag.1.Key": "awsrun:job", "TagSpecification.1.Tag.1.Value": "j1"}
    tagging = [(a, c) for a, _, c in checks("ec2", "RunInstances", **launch) if a == "ec2:CreateTags"]
    assert tagging == [("ec2:CreateTags", {"aws:RequestTag/awsrun:job": "j1", "aws:TagKeys": ["awsrun:job"],
                                           "ec2:CreateAction": "RunInstances"})]
    # The shipped policy allows the direct status tags on the job's instances, and no others:
    assert allowed(USER_POLICY, "ec2", "CreateTags", **direct) == ["allowed"]
    untagged = dict(direct, **{"ResourceId.1": "i-0other"})
    assert allowed(USER_POLICY, "ec2", "CreateTags", **untagged) == ["not allowed"]
    job_tag = dict(direct, **{"Tag.1.Key": "awsrun:job", "Tag.1.Value": "someone-else"})
    assert allowed(USER_POLICY, "ec2", "CreateTags", **job_tag) == ["not allowed"]


@pytest.mark.parametrize("operator, key, wanted, context, expected", [
    ("StringEquals", "k", "a", {}, False),                     # an absent key fails...
    ("StringEqualsIfExists", "k", "a", {}, True),              # ...unless IfExists
    ("StringEqualsIfExists", "k", "a", {"k": "b"}, False),
    ("StringNotEquals", "k", "a", {}, True),                   # negated operators pass an absent key
    ("StringNotEquals", "k", ["a", "b"], {"k": "b"}, False),   # NOR over the policy's values
    ("StringLike", "k", "awsrun-*-node", {"k": "awsrun-j1-node"}, True),
    ("StringLike", "k", "a?c", {"k": "abbc"}, False),
    ("Null", "k", "true", {}, True),
    ("Null", "k", "false", {}, False),
    ("ForAllValues:StringEquals", "k", ["a", "b"], {"k": ["a", "b"]}, True),
    ("ForAllValues:StringEquals", "k", ["a"], {"k": ["a", "c"]}, False),
    ("ForAllValues:StringEquals", "k", ["a"], {}, True),        # vacuously true: pair it with a Null check
    ("ForAllValues:StringNotEquals", "k", ["x"], {"k": ["a", "x"]}, False),
    ("ForAnyValue:StringEquals", "k", ["a"], {"k": ["c", "a"]}, True),
    ("ForAnyValue:StringEquals", "k", ["a"], {}, False),
])
def test_condition_operators(operator, key, wanted, context, expected):
    assert iam.condition_holds(operator, key, wanted, context) is expected


def test_an_explicit_deny_wins_and_unknown_operators_are_refused():
    allow = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
    deny = {"Effect": "Deny", "Action": "s3:DeleteBucket", "Resource": "arn:aws:s3:::keep"}
    assert iam.decide([{"Statement": [allow, deny]}], "s3:DeleteBucket", "arn:aws:s3:::keep", {}) == "denied"
    assert iam.decide([{"Statement": [allow, deny]}], "s3:DeleteBucket", "arn:aws:s3:::other", {}) == "allowed"
    odd = {"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"IpAddress": {"aws:SourceIp": "1.2.3.4"}}}
    with pytest.raises(ValueError):
        iam.decide([{"Statement": [odd]}], "s3:GetObject", "*", {})


def test_run_instances_is_authorized_on_every_resource_it_touches():
    launch = {"ImageId": "ami-1", "KeyName": "j1", "SecurityGroupId.1": "sg-1",
              "IamInstanceProfile.Name": "awsrun-j1-node", "InstanceMarketOptions.MarketType": "spot",
              "TagSpecification.1.ResourceType": "instance",
              "TagSpecification.1.Tag.1.Key": "awsrun:job", "TagSpecification.1.Tag.1.Value": "j1"}
    needed = checks("ec2", "RunInstances", **launch)
    assert sorted({(a, r.split(":")[-1].split("/")[0]) for a, r, _ in needed}) == [
        ("ec2:CreateTags", "instance"), ("ec2:RunInstances", "image"), ("ec2:RunInstances", "instance"),
        ("ec2:RunInstances", "key-pair"), ("ec2:RunInstances", "network-interface"),
        ("ec2:RunInstances", "security-group"), ("ec2:RunInstances", "spot-instances-request"),
        ("ec2:RunInstances", "subnet"), ("ec2:RunInstances", "volume"),
        ("iam:CreateServiceLinkedRole", "role"), ("iam:PassRole", "role")]
    assert set(allowed(USER_POLICY, "ec2", "RunInstances", **launch)) == {"allowed"}
    only_instances = {"Statement": [{"Effect": "Allow", "Action": "ec2:RunInstances",
                                     "Resource": "arn:aws:ec2:*:*:instance/*"}]}
    assert "not allowed" in allowed(only_instances, "ec2", "RunInstances", **launch)
    untagged = {k: v for k, v in launch.items() if not k.startswith("TagSpecification")}
    assert "not allowed" in allowed(USER_POLICY, "ec2", "RunInstances", **untagged)  # every instance is the job's


def test_the_node_policy_writes_objects_only_and_keeps_the_ownership_tags():
    node = cs.node_policy("j1", "b1")

    def s3(method, path, query=""):
        request = {"service": "s3", "region": REGION, "method": method, "path": path, "query": query,
                   "headers": {"host": "127.0.0.1:5000"}, "body": b""}
        return [iam.decide([node], a, r, dict(c, **GIVEN)) for a, r, c in iam.needs(request, Tagged())]
    assert s3("PUT", "/b1/j10/output/x.txt") == ["allowed"]
    assert s3("DELETE", "/b1/j10/big.bin", "uploadId=u1") == ["allowed"]
    assert s3("PUT", "/b1", "encryption") == ["not allowed"]
    assert s3("PUT", "/b1", "publicAccessBlock") == ["not allowed"]
    assert s3("PUT", "/b1") == ["not allowed"]                      # CreateBucket
    assert s3("PUT", "/other-bucket/x") == ["not allowed"]
    status = {"ResourceId.1": "i-0abc", "Tag.1.Key": "awsrun:status", "Tag.1.Value": "uploading"}
    assert allowed(node, "ec2", "CreateTags", **status) == ["allowed"]
    assert allowed(node, "ec2", "CreateTags", **dict(status, **{"Tag.1.Key": "percent_complete"})) == ["allowed"]
    for owned in cs.PROTECTED_TAGS:
        assert allowed(node, "ec2", "CreateTags", **dict(status, **{"Tag.2.Key": owned})) == ["not allowed"]
    assert allowed(node, "ec2", "TerminateInstances", **{"InstanceId.1": "i-0abc"}) == ["allowed"]
    assert allowed(node, "ec2", "TerminateInstances", **{"InstanceId.1": "i-0other"}) == ["not allowed"]


def test_clean_and_spot_are_granted_to_the_user():
    role = {"RoleName": "awsrun-j1-node"}
    for op in ("ListRolePolicies", "DeleteRolePolicy", "DeleteRole"):
        assert allowed(USER_POLICY, "iam", op, **role) == ["allowed"]
    profile = {"InstanceProfileName": "awsrun-j1-node", "RoleName": "awsrun-j1-node"}
    for op in ("RemoveRoleFromInstanceProfile", "DeleteInstanceProfile", "AddRoleToInstanceProfile"):
        assert set(allowed(USER_POLICY, "iam", op, **profile)) == {"allowed"}
    assert allowed(USER_POLICY, "ec2", "DeleteSecurityGroup", GroupId="sg-1") == ["not allowed"]  # not the job's
    assert allowed(USER_POLICY, "iam", "DeleteRole", RoleName="someone-elses") == ["not allowed"]
    assert allowed(USER_POLICY, "iam", "CreateServiceLinkedRole", AWSServiceName="spot.amazonaws.com") == ["allowed"]
    assert allowed(USER_POLICY, "iam", "CreateServiceLinkedRole", AWSServiceName="rds.amazonaws.com") == \
        ["not allowed"]


def lint(policy):
    return [(f.issue, f.detail) for f in analyze_policy_string(json.dumps(policy)).findings]


def test_both_policies_name_only_real_actions_and_condition_keys():
    assert lint(cs.node_policy("j1", "b1")) == []
    # parliament checks each statement alone; RunInstances is split on purpose (AWS's own
    # example: a tag condition on instances only), so its per-statement mismatch is expected.
    # And the user may set a bucket policy (create's TLS-only policy) on its own account's
    # buckets, which parliament reads as a way to grant oneself s3:PutObject there. And parliament
    # types iam:PermissionsBoundary as an ARN, which StringEquals (the IAM user guide's own form
    # for it) compares as usable.
    for issue, detail in lint(USER_POLICY):
        assert (issue == "RESOURCE_MISMATCH" and {d["action"] for d in detail} == {"ec2:RunInstances"}) or (
            issue == "RESOURCE_POLICY_PRIVILEGE_ESCALATION" and "s3:PutBucketPolicy" in detail) or (
            issue == "MISMATCHED_TYPE_BUT_USABLE" and "StringEquals requires a value of type String but given Arn"
            in detail), (issue, detail)
    assert lint(json.load(open(os.path.join(ROOT, "awsrun-node-boundary.json")))) == []
    typo = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ec2:CreateTag", "Resource": "*"}]}
    assert [issue for issue, _ in lint(typo)] == ["UNKNOWN_ACTION"]


def sqs_request(operation, params, json_protocol):
    """An SQS request as botocore sends it: JSON (1.43, the user's) or query (1.34, the node's)."""
    if json_protocol:
        return iam.parse("POST", "/", "", {"authorization": "Credential=k/20260101/us-east-1/sqs/aws4_request,",
                                           "x-amz-target": "AmazonSQS." + operation,
                                           "content-type": "application/x-amz-json-1.0"},
                         json.dumps(params).encode())
    import urllib.parse
    return iam.parse("POST", "/", "", {"authorization": "Credential=k/20260101/us-east-1/sqs/aws4_request,",
                                       "content-type": "application/x-www-form-urlencoded; charset=utf-8"},
                     urllib.parse.urlencode(dict(params, Action=operation)).encode())


@pytest.mark.parametrize("json_protocol", [True, False])
def test_sqs_requests_are_authorized_in_both_protocols(json_protocol):
    url = "http://127.0.0.1:5000/%s/awsrun-j1--t3-micro" % ACCOUNT
    node, user = cs.node_policy("j1", "b1"), USER_POLICY

    def verdicts(policy, operation, **params):
        request = sqs_request(operation, params, json_protocol)
        return [iam.decide([policy], a, r, c) for a, r, c in iam.needs(request, iam.World())]
    for op in ("ReceiveMessage", "ChangeMessageVisibility", "DeleteMessage"):
        assert verdicts(node, op, QueueUrl=url) == ["allowed"]
        assert verdicts(node, op, QueueUrl=url.replace("j1--", "j1-b--")) == ["not allowed"]  # job j1-b's queue
    assert verdicts(node, "SendMessageBatch", QueueUrl=url) == ["not allowed"]
    for op in ("SendMessageBatch", "GetQueueAttributes", "PurgeQueue", "DeleteQueue", "SetQueueAttributes"):
        assert verdicts(user, op, QueueUrl=url) == ["allowed"]
    assert verdicts(user, "DeleteQueue", QueueUrl="http://127.0.0.1:5000/%s/someone-elses" % ACCOUNT) == \
        ["not allowed"]
    tags = {"tags": {"awsrun:job": "j1"}} if json_protocol else {"Tag.1.Key": "awsrun:job", "Tag.1.Value": "j1"}
    made = iam.needs(sqs_request("CreateQueue", dict(QueueName="awsrun-j1--t3-micro", **tags), json_protocol),
                     iam.World())
    assert [(a, c["aws:RequestTag/awsrun:job"]) for a, _, c in made] == [("sqs:CreateQueue", "j1"),
                                                                          ("sqs:TagQueue", "j1")]
    assert verdicts(user, "ListQueues", QueueNamePrefix="awsrun-j1--") == ["allowed"]
    denied = iam.denial(sqs_request("ReceiveMessage", {"QueueUrl": url}, json_protocol), "arn", "sqs:X", "r")
    assert ("x-amzn-query-error", "AccessDeniedException;Sender") in denied[1] if json_protocol else \
        b"<Code>AccessDenied</Code>" in denied[2]


def test_the_user_may_write_only_the_queued_and_dispatch_markers():
    def put(key):
        request = {"service": "s3", "region": REGION, "method": "PUT", "path": "/b1/" + key, "query": "",
                   "headers": {"host": "127.0.0.1:5000"}, "body": b""}
        return [iam.decide([USER_POLICY], a, r, dict(c, **GIVEN)) for a, r, c in iam.needs(request, iam.World())]
    assert put("_awsrun/queued/t3.micro/attempts=3,rows=0-9") == ["allowed"]
    assert put("_awsrun/dispatch/20261129T160000.000001Z.json") == ["allowed"]
    assert put("_awsrun/j10/exit=0,runtime=1") == ["not allowed"]
    assert put("j10/output/x.txt") == ["not allowed"]


class Elsewhere(iam.World):
    """Buckets named theirs* belong to another account; every other bucket to this one."""

    def bucket_owner(self, bucket):
        return OTHER if bucket.startswith("theirs") else self.account


def s3_decisions(policy, method, path, query=""):
    request = {"service": "s3", "region": REGION, "method": method, "path": path, "query": query,
               "headers": {"host": "127.0.0.1:5000"}, "body": b""}
    return [iam.decide([policy], a, r, dict(c, **GIVEN)) for a, r, c in iam.needs(request, Elsewhere())]


def test_both_policies_write_only_to_buckets_of_the_callers_own_account():
    assert s3_decisions(cs.node_policy("j1", "b1"), "PUT", "/b1/j10/output/x.txt") == ["allowed"]
    assert s3_decisions(cs.node_policy("theirs", "theirs"), "PUT", "/theirs/j10/output/x.txt") == ["not allowed"]
    marker = "/%s/_awsrun/queued/t3.micro/attempts=3,rows=0-9"
    for bucket, verdict in (("b1", "allowed"), ("theirs", "not allowed")):
        assert s3_decisions(USER_POLICY, "PUT", marker % bucket) == [verdict]
        assert s3_decisions(USER_POLICY, "DELETE", "/%s/j10/x.txt" % bucket) == [verdict]
        assert s3_decisions(USER_POLICY, "DELETE", "/" + bucket) == [verdict]
        for setting in ("policy", "publicAccessBlock", "encryption"):
            assert s3_decisions(USER_POLICY, "PUT", "/" + bucket, setting) == [verdict]
        # reads stay open: get_s3_files.py may fetch a bucket that another account shared
        assert s3_decisions(USER_POLICY, "GET", "/%s/j10/x.txt" % bucket) == ["allowed"]
        assert s3_decisions(USER_POLICY, "GET", "/" + bucket, "list-type=2") == ["allowed"]


def test_policy_variables_and_bucket_policies_are_weighed_as_iam_does():
    own = {"Statement": [{"Effect": "Allow", "Action": "s3:PutObject", "Resource": "*",
                          "Condition": {"StringEquals": {"s3:ResourceAccount": "${aws:PrincipalAccount}"}}}]}
    put = ("s3:PutObject", "arn:aws:s3:::b1/x")
    assert iam.decide([own], *put, {"s3:ResourceAccount": ACCOUNT, "aws:PrincipalAccount": ACCOUNT}) == "allowed"
    assert iam.decide([own], *put, {"s3:ResourceAccount": OTHER, "aws:PrincipalAccount": ACCOUNT}) == "not allowed"
    assert iam.decide([own], *put, {"s3:ResourceAccount": ACCOUNT}) == "not allowed"  # the variable has no value
    node = "arn:aws:sts::%s:assumed-role/awsrun-j1-node/i-0abc" % ACCOUNT
    assert iam.names_principal("*", node) and iam.names_principal({"AWS": "*"}, node)
    assert iam.names_principal({"AWS": ["arn:aws:iam::%s:root" % ACCOUNT]}, node)
    assert iam.names_principal({"AWS": ACCOUNT}, node)
    assert not iam.names_principal({"AWS": "arn:aws:iam::%s:root" % OTHER}, node)
    assert not iam.names_principal({"Service": "ec2.amazonaws.com"}, node)
    assert iam.combine("allowed", "not allowed", same_account=True) == "allowed"
    assert iam.combine("not allowed", "allowed", same_account=True) == "allowed"
    assert iam.combine("allowed", "not allowed", same_account=False) == "not allowed"
    assert iam.combine("allowed", "allowed", same_account=False) == "allowed"
    assert iam.combine("allowed", "denied", same_account=True) == "denied"
    tls_only = cs.bucket_policy("b1")
    for key in ("arn:aws:s3:::b1", "arn:aws:s3:::b1/j10/x.txt"):
        assert iam.decide([tls_only], "s3:GetObject", key, {"aws:SecureTransport": "false"}, principal=node) == \
            "denied"
        assert iam.decide([tls_only], "s3:GetObject", key, {"aws:SecureTransport": "true"}, principal=node) == \
            "not allowed"  # grants nothing: the user's and the node's own policies do
    assert lint(tls_only) == []


def test_the_node_role_reads_its_inputs_prefixes_and_nothing_else():
    node = cs.node_policy("j1", "b1", [("data", "sets/a/"), ("data", "sets/b/"), ("whole", "")])
    assert s3_decisions(node, "GET", "/data/sets/a/x/y.mps") == ["allowed"]
    assert s3_decisions(node, "GET", "/data/sets/b/z.mps") == ["allowed"]
    assert s3_decisions(node, "GET", "/data/sets/c/z.mps") == ["not allowed"]
    assert s3_decisions(node, "GET", "/data/sets/a2/z.mps") == ["not allowed"]
    assert s3_decisions(node, "GET", "/data", "list-type=2&prefix=sets%2Fa%2F") == ["allowed"]
    assert s3_decisions(node, "GET", "/data", "list-type=2&prefix=sets%2Fc%2F") == ["not allowed"]
    assert s3_decisions(node, "GET", "/data", "list-type=2") == ["not allowed"]
    assert s3_decisions(node, "HEAD", "/data") == ["not allowed"]
    assert s3_decisions(node, "GET", "/whole", "list-type=2") == ["allowed"]
    assert s3_decisions(node, "GET", "/whole/any/key") == ["allowed"]
    assert s3_decisions(node, "PUT", "/data/sets/a/x") == ["not allowed"]
    assert s3_decisions(cs.node_policy("j1", "b1"), "GET", "/b1/j10/output/x.txt") == ["not allowed"]  # as before


BOUNDARY_ARN = "arn:aws:iam::%s:policy/awsrun-node-boundary" % ACCOUNT
BOUNDARY = json.load(open(os.path.join(ROOT, "awsrun-node-boundary.json")))


class Bounded(Tagged):
    """Job j1's node role has the boundary; j2's was made by an awsrun from before it."""

    def role_boundary(self, name):
        return BOUNDARY_ARN if name == "awsrun-j1-node" else None


def test_the_user_makes_and_changes_node_roles_only_within_the_boundary():
    def user(operation, **params):
        request = {"service": "iam", "region": REGION, "operation": operation, "params": params}
        return [iam.decide([USER_POLICY], a, r, dict(c, **GIVEN)) for a, r, c in iam.needs(request, Bounded())]
    trust = json.dumps(cs.EC2_TRUST)
    assert user("CreateRole", RoleName="awsrun-j3-node", AssumeRolePolicyDocument=trust,
                PermissionsBoundary=BOUNDARY_ARN) == ["allowed"]
    assert user("CreateRole", RoleName="awsrun-j3-node", AssumeRolePolicyDocument=trust) == ["not allowed"]
    assert user("CreateRole", RoleName="awsrun-j3-node", AssumeRolePolicyDocument=trust,
                PermissionsBoundary="arn:aws:iam::aws:policy/AdministratorAccess") == ["not allowed"]
    assert user("PutRolePolicy", RoleName="awsrun-j1-node", PolicyName="p") == ["allowed"]
    assert user("PutRolePolicy", RoleName="awsrun-j2-node", PolicyName="p") == ["not allowed"]
    assert user("PutRolePermissionsBoundary", RoleName="awsrun-j2-node", PermissionsBoundary=BOUNDARY_ARN) == \
        ["allowed"]
    assert user("DeleteRolePolicy", RoleName="awsrun-j2-node", PolicyName="p") == ["allowed"]  # clean of an old job
    assert user("GetPolicy", PolicyArn=BOUNDARY_ARN) == ["allowed"]


def test_the_boundary_allows_what_any_node_policy_allows_and_caps_everything_else():
    node = cs.node_policy("j1", "b1", [("data", "sets/a/")])
    everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    status = {"ResourceId.1": "i-0abc", "Tag.1.Key": "awsrun:status", "Tag.1.Value": "uploading"}
    needed = [iam.needs({"service": "s3", "region": REGION, "method": m, "path": path, "query": query,
                         "headers": {"host": "127.0.0.1:5000"}, "body": b""}, Tagged())
              for m, path, query in (("PUT", "/b1/j10/output/x.txt", ""), ("DELETE", "/b1/j10/big.bin", "uploadId=u1"),
                                     ("GET", "/data/sets/a/x", ""), ("GET", "/data", "list-type=2&prefix=sets%2Fa%2F"))]
    needed += [checks("ec2", "CreateTags", **status), checks("ec2", "TerminateInstances", **{"InstanceId.1": "i-0abc"})]
    needed.append(iam.needs({"service": "sqs", "region": REGION, "operation": "ReceiveMessage", "headers": {},
                             "params": {"QueueUrl": "https://sqs/123456789012/awsrun-j1--rows"}}, Tagged()))
    for a, r, c in (check for checks_ in needed for check in checks_):
        c = dict(c, **GIVEN, **{"s3:ResourceAccount": ACCOUNT})
        assert iam.decide([node], a, r, c) == "allowed", (a, r)
        assert iam.within(iam.decide([everything], a, r, c), iam.decide([BOUNDARY], a, r, c)) == "allowed", (a, r)
    beyond = [checks("ec2", "TerminateInstances", **{"InstanceId.1": "i-0other"}),   # not awsrun's
              checks("iam", "CreateRole", RoleName="anything", AssumeRolePolicyDocument="{}"),
              checks("ec2", "CreateTags", **dict(status, **{"Tag.1.Key": "awsrun:job"}))]
    for a, r, c in (check for checks_ in beyond for check in checks_):
        c = dict(c, **GIVEN)
        assert iam.within(iam.decide([everything], a, r, c), iam.decide([BOUNDARY], a, r, c)) == "not allowed", (a, r)
    assert iam.within("allowed", "denied") == iam.within("denied", "allowed") == "denied"
