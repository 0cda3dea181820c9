"""The sandbox's IAM: which IAM actions on which resources an AWS request needs, and whether a
policy allows them, decided the way IAM decides. Used by sandbox_server.py on every request its AWS
receives; runs on the user's machine only (the sandbox), never on a node.

moto's own enforcement cannot judge our policies: for EC2, IAM and SSM it matches every
statement against resource `*` and passes conditions whose key is absent. This module knows
only the requests awsrun makes (an unknown one is denied, so a new call is noticed), and the
condition operators that IAM defines for strings and ARNs, with IfExists, Null and the
ForAllValues/ForAnyValue set operators. The rules follow the IAM User Guide: an explicit Deny
wins; otherwise some Allow must match the action, the resource and every condition; a missing
key fails a condition unless the operator is negated or ends in IfExists.
"""
from __future__ import annotations

import base64
import functools
import json
import re
import urllib.parse
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape as xml_escape

# ---------------------------------------------------------------------------- evaluation


def like(pattern, value, case=True):
    """IAM's wildcard match: * any run, ? one character, nothing else special."""
    return _wildcard(pattern, case).fullmatch(value) is not None


@functools.lru_cache(maxsize=1024)
def _wildcard(pattern, case):
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(regex, re.DOTALL if case else re.IGNORECASE | re.DOTALL)


def _values(x):
    return x if isinstance(x, list) else [x]


STRING_TESTS = {
    "StringEquals": lambda p, v: p == v,
    "StringEqualsIgnoreCase": lambda p, v: p.lower() == v.lower(),
    "StringLike": like,
    "ArnEquals": lambda p, v: p == v,
    "ArnLike": like,
    "Bool": lambda p, v: str(p).lower() == str(v).lower(),
}
NEGATED = {"StringNotEquals": "StringEquals", "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
           "StringNotLike": "StringLike", "ArnNotEquals": "ArnEquals", "ArnNotLike": "ArnLike"}


def condition_holds(operator, key, wanted, context):
    """One operator on one key, against the request context (key -> str or list of str)."""
    wanted = [str(w) for w in _values(wanted)]
    present = key in context
    if operator == "Null":
        return (not present) == (wanted[0].lower() == "true")
    qualifier, _, operator = operator.rpartition(":")
    if_exists = operator.endswith("IfExists")
    operator = operator[:-len("IfExists")] if if_exists else operator
    negated = operator in NEGATED
    test = STRING_TESTS.get(NEGATED.get(operator, operator))
    if test is None:
        raise ValueError("the sandbox's IAM does not know the condition operator %s" % operator)
    if not present:
        return if_exists or negated or qualifier == "ForAllValues"

    def matches(value):
        hit = any(test(w, value) for w in wanted)
        return not hit if negated else hit
    values = _values(context[key])
    if qualifier == "ForAllValues":
        return all(matches(v) for v in values)
    if qualifier == "ForAnyValue":
        return any(matches(v) for v in values)
    return matches(values[0]) if len(values) == 1 else False


VARIABLE = re.compile(r"\$\{([^}]+)\}")


def resolve(value, context):
    """A policy value with its ${key} variables replaced from the request context, as IAM does;
    None when a variable has no value there (the statement then cannot match)."""
    if "${" not in value:
        return value
    missing = [k for k in VARIABLE.findall(value) if not isinstance(context.get(k), str)]
    return None if missing else VARIABLE.sub(lambda m: context[m.group(1)], value)


def statement_applies(statement, action, resource, context):
    actions = _values(statement.get("Action", []))
    resources = _values(statement.get("Resource", []))
    if "NotAction" in statement or "NotResource" in statement:
        raise ValueError("the sandbox's IAM does not evaluate NotAction or NotResource")
    if not any(like(a, action, case=False) for a in actions):
        return False
    if not any(like(r, resource) for r in (resolve(r, context) for r in resources) if r is not None):
        return False
    for op, block in statement.get("Condition", {}).items():
        for key, wanted in block.items():
            wanted = [resolve(str(w), context) for w in _values(wanted)]
            if None in wanted or not condition_holds(op, key, wanted, context):
                return False
    return True


def decide(policies, action, resource, context, principal=None):
    """'allowed', 'denied' (an explicit Deny) or 'not allowed' (no Allow matched). With
    `principal` (an ARN), the policies are resource policies: a statement counts only if its
    Principal names that ARN, its account, or everyone."""
    verdict = "not allowed"
    for policy in policies:
        for statement in _values(policy.get("Statement", [])):
            if principal and not names_principal(statement.get("Principal"), principal):
                continue
            if statement_applies(statement, action, resource, context):
                if statement["Effect"] == "Deny":
                    return "denied"
                verdict = "allowed"
    return verdict


def names_principal(named, arn):
    """Whether a resource policy's Principal names this caller: "*", {"AWS": "*"}, its account
    (an id or arn:aws:iam::ID:root, which names every principal of the account), or its ARN."""
    if named == "*":
        return True
    account = arn.split(":")[4]
    listed = _values(named.get("AWS", [])) if isinstance(named, dict) else []
    return any(n in ("*", account, arn, "arn:aws:iam::%s:root" % account) for n in listed)


def within(identity, boundary):
    """The verdict of identity policies under a permissions boundary: the request is allowed only
    if both allow it; an explicit Deny in either wins (IAM User Guide, policy evaluation logic)."""
    if "denied" in (identity, boundary):
        return "denied"
    return "allowed" if identity == boundary == "allowed" else "not allowed"


def combine(identity, resource, same_account):
    """The verdict of an identity policy and a resource policy together: an explicit Deny in
    either wins; within one account an Allow in either suffices; across accounts both must allow."""
    if "denied" in (identity, resource):
        return "denied"
    if same_account:
        return "allowed" if "allowed" in (identity, resource) else "not allowed"
    return "allowed" if identity == resource == "allowed" else "not allowed"


# ---------------------------------------------------------------------------- requests


JSON_SERVICES = ("ssm", "servicequotas", "pricing")  # the services awsrun calls with the JSON protocol only
# SQS speaks both: botocore 1.43 (the user's) sends JSON with X-Amz-Target, the node image's
# botocore 1.34.46 the query protocol (form fields, Action=...). Each gets its errors in its own.


class Unmapped(Exception):
    """A request this module does not know: the sandbox denies it, so that it is noticed."""


def scope(headers, query):
    """(access key, region, service) of a signed request, from its signature's credential."""
    found = re.search(r"Credential=([^/,\s]+)/\d+/([^/]+)/([^/]+)/", headers.get("authorization", ""))
    if found:
        return found.groups()
    cred = urllib.parse.parse_qs(query).get("X-Amz-Credential", [""])[0].split("/")  # a presigned URL
    return (cred[0], cred[2], cred[3]) if len(cred) > 3 else ("", "us-east-1", "")


def needs_body(service, method):
    """Whether authorizing the request reads its body: all but S3's object and bucket bodies
    (only S3's DeleteObjects names its keys there)."""
    return service != "s3" or method == "POST"


def parse(method, path, query, headers, body):
    """What a raw request is: {principal key, service, region, operation, params}."""
    key, region, service = scope(headers, query)
    request = {"key": key, "region": region, "service": service, "method": method, "path": path,
               "query": query, "headers": headers, "body": body}
    if service in ("ec2", "iam", "sts") or (service == "sqs" and not headers.get("x-amz-target")):
        params = dict(urllib.parse.parse_qsl(query))
        if body and "x-www-form-urlencoded" in headers.get("content-type", ""):
            params.update(urllib.parse.parse_qsl(body.decode("utf-8")))
        request["operation"], request["params"] = params.get("Action", ""), params
    elif service in JSON_SERVICES or service == "sqs":
        request["operation"] = headers.get("x-amz-target", "").rpartition(".")[2]
        request["params"] = json.loads(body or b"{}")
    return request


def speaks_json(request):
    """Whether the request, and so its error answer, uses the JSON protocol."""
    return request["service"] in JSON_SERVICES or bool(request["headers"].get("x-amz-target"))


def queue_name(params):
    """The queue a request names, by QueueName or by the last part of its QueueUrl."""
    return params.get("QueueName") or params.get("QueueUrl", "").rstrip("/").rsplit("/", 1)[-1]


def _indexed(params, prefix):
    """Values of query parameters PREFIX.1, PREFIX.2, ... in order."""
    found = []
    for name, value in params.items():
        m = re.fullmatch(re.escape(prefix) + r"\.(\d+)", name)
        if m:
            found.append((int(m.group(1)), value))
    return [v for _, v in sorted(found)]


def _tags(params, prefix):
    """{key: value} from PREFIX.N.Key / PREFIX.N.Value query parameters."""
    numbers = sorted({m.group(1) for m in (re.fullmatch(re.escape(prefix) + r"\.(\d+)\.Key", k) for k in params) if m})
    return {params["%s.%s.Key" % (prefix, n)]: params.get("%s.%s.Value" % (prefix, n), "") for n in numbers}


def _tag_specs(params):
    """resource type -> {key: value} from TagSpecification.N.ResourceType and .Tag.M.Key/Value."""
    return {kind: _tags(params, "TagSpecification.%s.Tag" % m.group(1))
            for name, kind in params.items() for m in [re.fullmatch(r"TagSpecification\.(\d+)\.ResourceType", name)]
            if m}


def _tag_context(tags):
    context = {"aws:RequestTag/" + k: v for k, v in tags.items()}
    if tags:
        context["aws:TagKeys"] = sorted(tags)
    return context


SPOT_ROLE = "aws-service-role/spot.amazonaws.com/AWSServiceRoleForEC2Spot"


class World:
    """What the authorizer needs to know of AWS's state: account, region and resource tags.
    sandbox_server.py fills it from moto's backends; tests give a plain one."""

    account = "123456789012"

    def tags(self, kind, name):
        return {}

    def default_vpc(self):
        return "vpc-*"

    def profile_role(self, profile):
        """The role in an instance profile, or None."""
        return None

    def has_spot_role(self):
        """Whether the account has the spot service-linked role yet."""
        return True

    def role_boundary(self, name):
        """The ARN of a role's permissions boundary, or None."""
        return None

    def bucket_owner(self, bucket):
        """The account that owns a bucket, or None if it does not exist."""
        return self.account

    def bucket_policy(self, bucket):
        """A bucket's policy (a dict), or None."""
        return None


def needs(request, world):
    """The (action, resource ARN, context) checks a request needs, as IAM authorizes it."""
    service, op, p = request["service"], request.get("operation"), request.get("params", {})
    region, account = request["region"], world.account
    if service == "s3":
        return _s3_needs(request, world)
    if service == "sts":
        if op == "GetCallerIdentity":
            return []
        raise Unmapped("sts:%s" % op)
    if service == "servicequotas":
        if op == "GetServiceQuota":
            return [("servicequotas:GetServiceQuota", "arn:aws:servicequotas:%s:%s:%s/%s" % (
                region, account, p.get("ServiceCode"), p.get("QuotaCode")), {})]
        raise Unmapped("servicequotas:%s" % op)
    if service == "sqs":
        return _sqs_needs(op, p, region, account, world)
    if service == "pricing":  # the Price List API has no resource-level permissions
        if op == "GetProducts":
            return [("pricing:GetProducts", "*", {})]
        raise Unmapped("pricing:%s" % op)
    if service == "ssm":
        if op == "GetParameter":
            return [("ssm:GetParameter", "arn:aws:ssm:%s::parameter/%s" % (region, p["Name"].lstrip("/")), {})]
        raise Unmapped("ssm:%s" % op)

    def ec2(kind, name):
        return "arn:aws:ec2:%s:%s:%s/%s" % (region, account, kind, name)

    def with_tags(kind, name, extra=None):
        context = {"aws:ResourceTag/" + k: v for k, v in world.tags(kind, name).items()}
        context.update(extra or {})
        return context

    if service == "ec2":
        action = "ec2:" + op
        if op.startswith("Describe"):
            return [(action, "*", {})]
        specs = _tag_specs(p)
        if op == "RunInstances":
            request_tags = _tag_context(specs.get("instance", {}))
            market = "spot" if p.get("InstanceMarketOptions.MarketType") == "spot" else "on-demand"
            checks = [(action, ec2("instance", "*"), dict(request_tags, **{"ec2:InstanceMarketType": market})),
                      (action, ec2("volume", "*"), _tag_context(specs.get("volume", {}))),
                      (action, ec2("network-interface", "*"), {}),
                      (action, ec2("subnet", p.get("SubnetId") or p.get("NetworkInterface.1.SubnetId", "*")), {}),
                      (action, "arn:aws:ec2:%s::image/%s" % (region, p["ImageId"]), {})]
            checks += [(action, ec2("security-group", g), with_tags("security-group", g))
                       for g in _indexed(p, "SecurityGroupId") + _indexed(p, "NetworkInterface.1.SecurityGroupId")]
            if p.get("KeyName"):
                checks.append((action, ec2("key-pair", p["KeyName"]), with_tags("key-pair", p["KeyName"])))
            if market == "spot":
                checks.append((action, ec2("spot-instances-request", "*"), {}))
                if not world.has_spot_role():  # EC2 makes it, as the caller (EC2 User Guide)
                    checks.append(("iam:CreateServiceLinkedRole", "arn:aws:iam::%s:role/%s" % (account, SPOT_ROLE),
                                   {"iam:AWSServiceName": "spot.amazonaws.com"}))
            role = world.profile_role(p["IamInstanceProfile.Name"]) if p.get("IamInstanceProfile.Name") else None
            if role:
                checks.append(("iam:PassRole", "arn:aws:iam::%s:role/%s" % (account, role),
                               {"iam:PassedToService": "ec2.amazonaws.com"}))
            return checks + _create_tags(specs, op, lambda kind: ec2(kind, "*"))
        if op in ("CreateKeyPair", "ImportKeyPair"):
            arn = ec2("key-pair", p["KeyName"])
            return [(action, arn, _tag_context(specs.get("key-pair", {})))] + \
                _create_tags(specs, op, lambda kind: arn)
        if op == "DeleteKeyPair":
            return [(action, ec2("key-pair", p["KeyName"]), with_tags("key-pair", p["KeyName"]))]
        if op == "CreateSecurityGroup":
            return [(action, ec2("security-group", "*"), _tag_context(specs.get("security-group", {}))),
                    (action, ec2("vpc", p.get("VpcId") or world.default_vpc()), {})] + \
                _create_tags(specs, op, lambda kind: ec2(kind, "*"))
        if op in ("AuthorizeSecurityGroupIngress", "DeleteSecurityGroup", "RevokeSecurityGroupIngress"):
            return [(action, ec2("security-group", p["GroupId"]), with_tags("security-group", p["GroupId"]))]
        if op in ("TerminateInstances", "StopInstances"):
            return [(action, ec2("instance", i), with_tags("instance", i)) for i in _indexed(p, "InstanceId")]
        if op in ("CreateTags", "DeleteTags"):
            tags = _tags(p, "Tag")
            checks = []
            for rid in _indexed(p, "ResourceId"):
                kind = {"i": "instance", "sg": "security-group", "key": "key-pair", "vol": "volume"}.get(
                    rid.split("-")[0], "unknown")
                checks.append((action, ec2(kind, rid), with_tags(kind, rid, _tag_context(tags))))
            return checks
        raise Unmapped(action)

    if service == "iam":
        action = "iam:" + op

        def role(name):
            return "arn:aws:iam::%s:role/%s" % (account, name)

        def profile(name):
            return "arn:aws:iam::%s:instance-profile/%s" % (account, name)

        def with_boundary(arn):  # iam:PermissionsBoundary: the boundary asked for, or the role's
            return {"iam:PermissionsBoundary": arn} if arn else {}
        if op == "CreateRole":
            tags = _tags(p, "Tags.member")
            context = dict(_tag_context(tags), **with_boundary(p.get("PermissionsBoundary")))
            checks = [(action, role(p["RoleName"]), context)]
            if tags:
                checks.append(("iam:TagRole", role(p["RoleName"]), _tag_context(tags)))
            return checks
        if op == "PutRolePermissionsBoundary":
            return [(action, role(p["RoleName"]), with_boundary(p.get("PermissionsBoundary")))]
        if op in ("GetRole", "PutRolePolicy", "ListRolePolicies", "DeleteRolePolicy", "DeleteRole", "TagRole"):
            context = {"aws:ResourceTag/" + k: v for k, v in world.tags("role", p["RoleName"]).items()}
            if op in ("PutRolePolicy", "DeleteRolePolicy"):
                context.update(with_boundary(world.role_boundary(p["RoleName"])))
            return [(action, role(p["RoleName"]), context)]
        if op == "GetPolicy":
            return [(action, p["PolicyArn"], {})]
        if op in ("CreateInstanceProfile", "GetInstanceProfile", "DeleteInstanceProfile",
                  "RemoveRoleFromInstanceProfile"):
            return [(action, profile(p["InstanceProfileName"]), {})]
        if op == "AddRoleToInstanceProfile":
            # The caller must also be allowed to pass the role (IAM API reference); no service
            # is named, so iam:PassedToService is absent from that check.
            return [(action, profile(p["InstanceProfileName"]), {}), ("iam:PassRole", role(p["RoleName"]), {})]
        if op == "CreateServiceLinkedRole":
            name = p["AWSServiceName"]
            return [(action, role("aws-service-role/%s/*" % name), {"iam:AWSServiceName": name})]
        raise Unmapped(action)
    raise Unmapped("%s:%s" % (service, op))


def _create_tags(specs, op, arn_of):
    """The implicit ec2:CreateTags of tagging on create: only here does ec2:CreateAction exist."""
    return [("ec2:CreateTags", arn_of(kind), dict(_tag_context(tags), **{"ec2:CreateAction": op}))
            for kind, tags in specs.items() if tags]


SQS_ACTIONS = {"SendMessageBatch": "SendMessage", "DeleteMessageBatch": "DeleteMessage",
               "ChangeMessageVisibilityBatch": "ChangeMessageVisibility"}  # a batch needs its single action
SQS_QUEUE_OPERATIONS = ("GetQueueUrl", "GetQueueAttributes", "SetQueueAttributes", "SendMessage", "ReceiveMessage",
                        "DeleteMessage", "ChangeMessageVisibility", "PurgeQueue", "DeleteQueue", "TagQueue",
                        "ListQueueTags")


def _sqs_needs(op, p, region, account, world):
    name = queue_name(p)
    arn = "arn:aws:sqs:%s:%s:%s" % (region, account, name)
    if op == "ListQueues":
        return [("sqs:ListQueues", "*", {})]
    if op == "CreateQueue":  # tags on create need sqs:TagQueue too (SQS API reference)
        tags = p.get("tags") if isinstance(p.get("tags"), dict) else _tags(p, "Tag")
        return [("sqs:CreateQueue", arn, _tag_context(tags))] + (
            [("sqs:TagQueue", arn, _tag_context(tags))] if tags else [])
    op = SQS_ACTIONS.get(op, op)
    if op in SQS_QUEUE_OPERATIONS:
        return [("sqs:" + op, arn, {"aws:ResourceTag/" + k: v for k, v in world.tags("queue", name).items()})]
    raise Unmapped("sqs:%s" % op)


def s3_target(request):
    """(bucket, key) of an S3 request, path-style or virtual-hosted; ("", "") for ListBuckets."""
    host = request["headers"].get("host", "").split(":")[0]
    parts = urllib.parse.unquote(request["path"]).lstrip("/").split("/", 1)
    if host and not re.fullmatch(r"[\d.]+|localhost|s3[.-].*amazonaws\.com", host) and "." in host:
        return host.split(".")[0], "/".join(parts)  # virtual-hosted style
    return parts[0], parts[1] if len(parts) > 1 else ""


def _s3_needs(request, world):
    """The checks of an S3 request; on an existing bucket each carries s3:ResourceAccount, the
    account that owns it, as S3 supplies it."""
    bucket = s3_target(request)[0]
    owner = world.bucket_owner(bucket) if bucket else None
    checks = _s3_checks(request, world)
    return [(a, r, dict(c, **{"s3:ResourceAccount": owner})) for a, r, c in checks] if owner else checks


def _s3_checks(request, world):
    method = request["method"]
    query = dict(urllib.parse.parse_qsl(request["query"], keep_blank_values=True))
    bucket, key = s3_target(request)
    if not bucket:
        return [("s3:ListAllMyBuckets", "*", {})]
    b, o = "arn:aws:s3:::" + bucket, "arn:aws:s3:::%s/%s" % (bucket, key)
    if not key:
        sub = {"publicAccessBlock": "BucketPublicAccessBlock", "encryption": "EncryptionConfiguration",
               "tagging": "BucketTagging", "policy": "BucketPolicy", "versioning": "BucketVersioning"}
        for name, what in sub.items():
            if name in query:  # (deleting a bucket's encryption is s3:PutEncryptionConfiguration)
                verb = {"GET": "Get", "PUT": "Put", "DELETE": "Put" if name == "encryption" else "Delete"}[method]
                return [("s3:%s%s" % (verb, what), b, {})]
        if "location" in query:
            return [("s3:GetBucketLocation", b, {})]
        if "uploads" in query:
            return [("s3:ListBucketMultipartUploads", b, {})]
        if method == "POST" and "delete" in query:
            keys = [e.text for e in ET.fromstring(request["body"]).iter() if e.tag.endswith("Key")]
            return [("s3:DeleteObject", "arn:aws:s3:::%s/%s" % (bucket, k), {}) for k in keys]
        if method in ("GET", "HEAD"):
            return [("s3:ListBucket", b, {"s3:prefix": query["prefix"]} if "prefix" in query else {})]
        if method == "PUT":
            return [("s3:CreateBucket", b, {})]
        if method == "DELETE":
            return [("s3:DeleteBucket", b, {})]
        raise Unmapped("s3 %s on a bucket" % method)
    if "uploadId" in query and method == "DELETE":
        return [("s3:AbortMultipartUpload", o, {})]
    if "uploadId" in query and method == "GET":
        return [("s3:ListMultipartUploadParts", o, {})]
    if "tagging" in query:
        return [("s3:%sObjectTagging" % {"GET": "Get", "PUT": "Put", "DELETE": "Delete"}[method], o, {})]
    if method in ("GET", "HEAD"):
        return [("s3:GetObject", o, {})]
    if method in ("PUT", "POST"):
        checks = [("s3:PutObject", o, {})]
        source = request["headers"].get("x-amz-copy-source")
        if source:
            checks.append(("s3:GetObject", "arn:aws:s3:::" + urllib.parse.unquote(source).lstrip("/"), {}))
        return checks
    if method == "DELETE":
        return [("s3:DeleteObject", o, {})]
    raise Unmapped("s3 %s on an object" % method)


# ---------------------------------------------------------------------------- answers


def error_response(service, code, message, status, json_protocol=None):
    """An AWS-shaped error (status, headers, body) for a service's protocol (JSON when
    json_protocol, or for the JSON-only services)."""
    if json_protocol or (json_protocol is None and service in JSON_SERVICES):
        headers = [("Content-Type", "application/x-amz-json-1.0" if service == "sqs" else "application/x-amz-json-1.1")]
        if service == "sqs":  # how SQS's JSON answers name the query protocol's code too
            headers.append(("x-amzn-query-error", "%s;Sender" % code))
        return status, headers, json.dumps({"__type": code, "message": message}).encode()
    esc = xml_escape(message)
    if service == "ec2":
        body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>%s</Code>"
                "<Message>%s</Message></Error></Errors><RequestID>sandbox</RequestID></Response>" % (code, esc))
    elif service == "s3":
        body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>%s</Code><Message>%s</Message>"
                "<RequestId>sandbox</RequestId></Error>" % (code, esc))
    else:
        body = ("<ErrorResponse><Error><Type>Sender</Type><Code>%s</Code><Message>%s</Message></Error>"
                "<RequestId>sandbox</RequestId></ErrorResponse>" % (code, esc))
    return status, [("Content-Type", "text/xml")], body.encode()


def denial(request, principal_arn, action, resource):
    service = request["service"]
    message = "User: %s is not authorized to perform: %s on resource: %s" % (principal_arn, action, resource)
    if service == "ec2":  # with the blob `aws sts decode-authorization-message` reads on AWS
        encoded = base64.b64encode(json.dumps({"allowed": False, "context": {
            "principal": {"arn": principal_arn}, "action": action, "resource": resource}}).encode()).decode()
        return error_response("ec2", "UnauthorizedOperation", "You are not authorized to perform this "
                              "operation. %s because no identity-based policy allows the %s action. Encoded "
                              "authorization failure message: %s" % (message, action, encoded), 403)
    if speaks_json(request):
        return error_response(service, "AccessDeniedException", message, 400, json_protocol=True)
    return error_response(service, "AccessDenied", message, 403)
