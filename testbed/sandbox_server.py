"""The sandbox itself: the local stand-in for AWS, a moto server and a real OpenSSH sshd, both on
127.0.0.1. Linux only; sandbox.py at the top is its entry point (make demo and the tests start
it through that), and the rest of testbed/ its IAM, its account and the nodes' stand-ins.

    python sandbox.py run -- make _demo     # start it, run a command inside it, stop it
    python sandbox.py run -- bash           # a shell whose awsrun commands all go to the sandbox
    python sandbox.py serve DIR             # run until stopped; DIR/env.json says how to reach it

boto3 talks to the moto server over HTTP (AWS_ENDPOINT_URL). One sshd stands in for every
node: each node gets its own work directory under DIR/nodes. The sandbox is as strict as a
real account (README, "What the sandbox checks"):

- IAM checked: every request is authorized as IAM would (testbed/sandbox_iam.py), for the user against
  awsrun-user-policy.json and for a node against its role's policy in moto, and denied with
  AWS's error if a permission is missing. Every decision is appended to DIR/iam.jsonl.
- Node credentials the EC2 way: a metadata service on 127.0.0.1 (a process of its own,
  testbed/sandbox_imds.py) hands each node temporary keys
  for its own instance profile's role (botocore finds it through
  AWS_EC2_METADATA_SERVICE_ENDPOINT); the node is told apart by the process that asks.
- Node image: node sessions run the Python of .venv-node, pinned to Ubuntu 24.04's boto3.
- Like EC2: a launched key pair may log in (as cloud-init would); a terminated instance's
  processes end; `shutdown` on a node terminates its instance (InstanceInitiatedShutdownBehavior).
- Spot interruptions on demand: DIR/interruptions.json names the instances whose metadata
  shows EC2's two-minute interruption notice.
- Faults on demand: DIR/faults.json (or AWSRUN_SANDBOX_FAULTS at start) lists AWS errors to
  answer instead, e.g. [{"action": "s3:PutObject", "principal": "node*", "code": "SlowDown",
  "status": 503, "times": 2}].

Nothing here touches the machine outside DIR, except the empty privilege separation folder
/run/sshd that a root sshd requires (its service would make it). `shutdown`, `apt-get` and
`sudo` are stand-ins on the nodes' PATH.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import getpass
import http.server
import io
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import cloud_setup as cs
import launch
from testbed import sandbox_ec2, sandbox_iam
from testbed.sandbox_ec2 import (ACCOUNT, REGION, MotoWorld, instance_role, kill_processes_under, play_ec2, power_off)

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout

USER_KEY, ADMIN_KEY = "sandbox", "sandbox-admin"  # the user's access key; the tests' own, unchecked
USER_ARN = "arn:aws:iam::%s:user/awsrun-user" % ACCOUNT
NODE_VENV = os.path.join(HERE, ".venv-node")
UBUNTU_NAME = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-%s-server-sandbox"
POWER = ("shutdown", "poweroff", "reboot", "halt")
STANDINS = POWER + ("apt-get", "apt", "sudo", "cloud-init")
STANDIN = os.path.join(HERE, "testbed", "standin.sh")        # each stand-in is a link to it
IMDS = os.path.join(HERE, "testbed", "sandbox_imds.py")      # the metadata service's process
NODE_SHELL = os.path.join(HERE, "testbed", "node-shell.sh")  # sshd's ForceCommand


class SandboxError(Exception):
    pass


def find_sshd():
    for path in (shutil.which("sshd"), "/usr/sbin/sshd"):
        if path and os.path.exists(path):
            return path
    raise SandboxError("sshd is missing: install it with `sudo apt-get install openssh-server` "
                       "(Debian/Ubuntu) or `sudo dnf install openssh-server`")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sandbox:
    """A moto server behind the IAM gate, a metadata service, and an sshd, under `folder`."""

    def __init__(self, folder):
        self.dir = os.path.abspath(folder)
        self.moto = self.plain = self.sshd = self.imds = None
        self.lock = threading.Lock()
        self.node_keys = {}     # access key -> (instance id, role name)
        self.credentials = {}   # instance id -> the metadata service's answer
        self.power = {}         # instance id -> the timer of its scheduled shutdown
        self.fault_hits = {}
        self.queues_born = {}   # queue name -> when the sandbox saw it created
        self.decisions = None   # DIR/iam.jsonl, open for appending once the first is made
        self.world = MotoWorld()

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def start(self):
        if not sys.platform.startswith("linux"):
            raise SandboxError("the sandbox runs its nodes on this machine with Linux's tools (setsid, GNU "
                               "timeout, /proc): use Linux, or WSL on Windows; awsrun itself, on AWS, needs "
                               "only Python and SSH")
        sshd = find_sshd()
        node_python = os.path.join(setting_node_venv(), "bin", "python3")
        if not os.path.exists(node_python):
            raise SandboxError("the node image's Python is missing: run `make node-venv` (it installs "
                               "requirements-node.txt into %s)" % setting_node_venv())
        if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
            os.makedirs("/run/sshd", mode=0o755)  # what the openssh-server service would make
        for sub in ("ssh", "bin", "nodes", "keys", "state", "aws", "home", "imds"):
            os.makedirs(self.path(sub), mode=0o700, exist_ok=True)
        for name, variable in (("faults.json", "AWSRUN_SANDBOX_FAULTS"), ("account.json", "AWSRUN_SANDBOX_ACCOUNT")):
            if os.environ.get(variable):
                with open(self.path(name), "w") as f:
                    f.write(os.environ[variable])
        self.node_path = ":".join([self.path("bin"), os.path.dirname(node_python),
                                   "/usr/local/bin", "/usr/bin", "/bin"])
        self.start_moto()
        sandbox_ec2.shape_network(self.account())
        if self.account().get("boundary", True):  # as the admin made it at set-up, unless the account says not yet
            sandbox_ec2.make_boundary(BOUNDARY_POLICY)
        self.start_imds()
        self.start_sshd(sshd)
        return self

    # -- AWS, behind the IAM gate

    def start_moto(self):
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        app = DomainDispatcherApplication(create_backend_app)
        sandbox_ec2.services_found_once(app)
        self.moto = make_server("127.0.0.1", 0, lambda env, start: self.gate(app, env, start), threaded=True)
        # The same AWS as it answers a request sent without TLS (aws:SecureTransport false): the
        # main endpoint stands for AWS's HTTPS endpoints, which botocore uses.
        self.plain = make_server("127.0.0.1", 0, lambda env, start: self.gate(app, dict(env, plain=True), start),
                                 threaded=True)
        for server in (self.moto, self.plain):
            threading.Thread(target=server.serve_forever, daemon=True).start()
        self.endpoint = "http://127.0.0.1:%d" % self.moto.server_port
        play_ec2(self.path("ssh", "authorized_keys"), self.path("nodes"), self.node_path, self.account,
                 self.tell_metadata)
        sandbox_ec2.leave_bucket_policies_to_the_gate()
        sandbox_ec2.queues_that_do_not_slow_down()
        sandbox_ec2.times_written_without_dateutil()
        self.seed_ubuntu()

    def seed_ubuntu(self):
        """Ubuntu images for amd64 and arm64, and the public parameters that name them, as in a
        real region. self.ami is the amd64 one."""
        import boto3
        from moto.ssm.models import Parameter, ssm_backends
        ec2 = boto3.client("ec2", endpoint_url=self.endpoint, region_name=REGION,
                           aws_access_key_id=ADMIN_KEY, aws_secret_access_key=ADMIN_KEY)
        params = ssm_backends[ACCOUNT][REGION]._parameters
        for arch, ubuntu in sorted(launch.UBUNTU_ARCH.items()):
            ami = ec2.register_image(Name=UBUNTU_NAME % ubuntu, Architecture=arch,
                                     RootDeviceName="/dev/sda1")["ImageId"]
            sandbox_ec2.ec2_backend().amis[ami].architecture = arch  # moto's RegisterImage drops it
            name = launch.ubuntu_parameter(ubuntu)
            params[name].append(Parameter(
                account_id=ACCOUNT, name=name, value=ami, parameter_type="String",
                description=None, allowed_pattern=None, keyid=None, last_modified_date=time.time(),
                version=1, data_type="aws:ec2:image"))
            if ubuntu == "amd64":
                self.ami = ami

    def gate(self, app, environ, start_response):
        """Authorize one request as IAM would, or answer a fault; else pass it to moto."""
        from werkzeug.wrappers import Request
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        headers["content-type"] = environ.get("CONTENT_TYPE", "")
        method, query = environ["REQUEST_METHOD"], environ.get("QUERY_STRING", "")
        body = b""
        if sandbox_iam.needs_body(sandbox_iam.scope(headers, query)[2], method):  # not S3's uploads: they pass
            body = Request(environ).get_data()
            environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(body), str(len(body))
            environ.pop("HTTP_TRANSFER_ENCODING", None)
        request = sandbox_iam.parse(method, environ.get("PATH_INFO", ""), query, headers, body)
        request["secure"] = not environ.get("plain")
        answer = self.wrong_region(request) or self.authorize(request) or self.play_account(request, environ)
        if answer is None:
            return app(environ, start_response)
        if not body:  # an upload refused here: read it first, as S3 does, or the closing socket
            Request(environ).get_data()  # resets the connection and the caller retries in vain
        status, response_headers, payload = answer
        start_response("%d %s" % (status, http.server.BaseHTTPRequestHandler.responses.get(status, ("",))[0]),
                       response_headers + [("Content-Length", str(len(payload)))])
        return [payload]

    def principal(self, key):
        """(name, ARN, policies, boundary) of the signer of a request (boundary: the documents of
        its permissions boundary, or None); None for the tests' own key, and for the keys of
        another account (OTHER_ACCOUNT's, made by assuming a role there): that account's own
        administrator, whose policies are not awsrun's."""
        if key == ADMIN_KEY:
            return None
        if key == USER_KEY:
            return "user", USER_ARN, [user_policy(os.path.getmtime(USER_POLICY))], None
        if key in self.node_keys:
            instance, role = self.node_keys[key]
            found = [r for r in sandbox_ec2.iam_backend().roles.values() if r.name == role]
            policies = [json.loads(p) for r in found for p in r.policies.values()]
            bounds = [r.permissions_boundary_arn for r in found if r.permissions_boundary_arn]
            boundary = [sandbox_ec2.managed_policy(arn) or {} for arn in bounds] if bounds else None
            return ("node:" + instance, "arn:aws:sts::%s:assumed-role/%s/%s" % (ACCOUNT, role, instance), policies,
                    boundary)
        if key and sandbox_ec2.key_account(key) != ACCOUNT:
            return None
        return "unknown", "unknown", [], None

    def wrong_region(self, request):
        """S3's answer to a request signed for another region than its bucket's: 400
        AuthorizationHeaderMalformed, naming the right one (botocore then asks again there)."""
        bucket = sandbox_iam.s3_target(request)[0] if request["service"] == "s3" else ""
        found = sandbox_ec2.bucket_of(bucket) if bucket and "location" not in request["query"] else None
        if found is None or found.region_name == request["region"]:
            return None
        who = self.principal(request["key"])
        self.record({"principal": who[0] if who else "admin", "wrong_region": request["region"], "bucket": bucket})
        status, headers, body = sandbox_iam.error_response(
            "s3", "AuthorizationHeaderMalformed", "The authorization header is malformed; the region '%s' is wrong; "
            "expecting '%s'" % (request["region"], found.region_name), 400)
        body = body.replace(b"</Message>", b"</Message><Region>%s</Region>" % found.region_name.encode())
        headers.append(("x-amz-bucket-region", found.region_name))
        return status, headers, b"" if request["method"] == "HEAD" else body

    def authorize(self, request):
        """None to let the request through, or the error answer (status, headers, body)."""
        who = self.principal(request["key"])
        if who is None:
            return None
        name, arn, policies, boundary = who
        try:
            checks = sandbox_iam.needs(request, self.world)
        except (sandbox_iam.Unmapped, KeyError, ValueError) as e:
            self.record({"principal": name, "action": str(e), "decision": "unmapped",
                         "request": "%s %s" % (request["method"], request["path"])})
            return sandbox_iam.denial(request, arn, str(e), "*")
        denied = None
        bucket = sandbox_iam.s3_target(request)[0] if request["service"] == "s3" else ""
        owner = self.world.bucket_owner(bucket) if bucket else None
        bucket_policy = [self.world.bucket_policy(bucket) or {}] if owner else []
        given = {"aws:PrincipalAccount": ACCOUNT, "aws:SecureTransport": str(request["secure"]).lower()}
        for action, resource, context in checks:
            context = dict(context, **given)
            decision = sandbox_iam.decide(policies, action, resource, context)
            if boundary is not None:  # a role's permissions boundary caps what its policies allow
                decision = sandbox_iam.within(decision, sandbox_iam.decide(boundary, action, resource, context))
            if owner:  # S3 weighs the bucket's policy too: another account's must allow this caller itself
                decision = sandbox_iam.combine(decision, sandbox_iam.decide(bucket_policy, action, resource, context,
                                                                            principal=arn), owner == ACCOUNT)
            entry = {"principal": name, "action": action, "resource": resource, "decision": decision}
            if bucket:  # the account the request expects to own the bucket (ExpectedBucketOwner)
                entry["owner"] = request["headers"].get("x-amz-expected-bucket-owner")
            self.record(entry)
            if decision != "allowed" and denied is None:
                denied = sandbox_iam.denial(request, arn, action, resource)
        if denied is None and request["service"] == "ec2" and request.get("params", {}).get("DryRun") == "true":
            # EC2's DryRun: the permissions only (no capacity or quota), nothing made. Only a fault
            # rule that says "dry_run": true answers one.
            return self.fault(request["service"], name, checks, request, dry_run=True) or \
                sandbox_iam.error_response("ec2", "DryRunOperation",
                                           "Request would have succeeded, but DryRun flag is set.", 412)
        if denied is None and any(a == "iam:CreateServiceLinkedRole" for a, _, _ in checks):
            self.world.make_spot_role()  # as EC2 does on the first spot launch
        return denied or self.fault(request["service"], name, checks, request)

    def account(self):
        """The account's settings (testbed/sandbox_ec2.py): DIR/account.json, read on every call."""
        try:
            with open(self.path("account.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def play_account(self, request, environ):
        """What a real account answers where moto differs: Service Quotas for EC2, how many
        instances a launch gets (the body moto sees is rewritten to that count), a new SQS
        queue that cannot be used for its first second, the Price List API (moto has none), and
        IAM's size limits on policies (moto has none), for every caller."""
        if request["service"] == "s3":
            return self.bucket_owner_answer(request)
        if request["service"] == "iam" and request.get("operation"):
            refused = sandbox_ec2.policy_size_answer(request.get("params", {}), request["operation"]) or \
                sandbox_ec2.boundary_answer(request.get("params", {}), request["operation"])
            if refused:
                return refused
        if request["service"] == "servicequotas" and request.get("operation") == "GetServiceQuota":
            return sandbox_ec2.quota_answer(request["params"], self.account())
        if request["service"] == "sqs":
            return self.young_queue(request)
        if request["service"] == "pricing" and request.get("operation") == "GetProducts":
            return sandbox_ec2.price_answer(request["params"], self.account())
        if request["service"] != "ec2" or request.get("operation") != "RunInstances":
            return None
        count, error = sandbox_ec2.launch_count(request["params"], self.account())
        if error:
            return sandbox_iam.error_response("ec2", error[0], error[1], 400)
        params = dict(request["params"], MaxCount=str(count))  # moto then launches MaxCount
        if "InstanceMarketOptions.SpotOptions.MaxPrice" in params:  # moto keeps no spot price: the tests read it here
            self.record({"launch": params.get("InstanceType"),
                         "spot_max_price": params["InstanceMarketOptions.SpotOptions.MaxPrice"]})
        body = urllib.parse.urlencode(params).encode()
        environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(body), str(len(body))
        environ["QUERY_STRING"] = ""
        return None

    def bucket_owner_answer(self, request):
        """S3's bucket owner condition: a request that names an expected owner (ExpectedBucketOwner)
        of a bucket that another account owns is refused with 403 Access Denied, whoever signs it."""
        expected = request["headers"].get("x-amz-expected-bucket-owner")
        bucket = sandbox_iam.s3_target(request)[0]
        owner = self.world.bucket_owner(bucket) if expected and bucket else None
        if owner and owner != expected:
            self.record({"principal": "*", "action": "ExpectedBucketOwner", "resource": "arn:aws:s3:::" + bucket,
                         "owner": expected, "refused": "the bucket belongs to " + owner})
            return sandbox_iam.error_response("s3", "AccessDenied", "Access Denied", 403)
        return None

    def young_queue(self, request):
        """SQS: "After you create a queue, you must wait at least one second after the queue is
        created to be able to use the queue" (CreateQueue, SQS API Reference). Until then its
        URL answers as a queue that does not exist."""
        name = sandbox_iam.queue_name(request.get("params", {}))
        with self.lock:
            if request.get("operation") == "CreateQueue":
                if name not in sandbox_ec2.sqs_backend().queues:
                    self.queues_born[name] = time.monotonic()
                return None
            born = self.queues_born.get(name)
        if born is None or time.monotonic() - born >= 1.0 or request.get("operation") == "ListQueues":
            return None
        json_protocol = sandbox_iam.speaks_json(request)
        return sandbox_iam.error_response("sqs", "QueueDoesNotExist" if json_protocol else
                                          "AWS.SimpleQueueService.NonExistentQueue",
                                          "The specified queue does not exist.", 400, json_protocol)

    def fault_matches(self, rule, principal, checks, params):
        """Whether a fault rule applies to a request: its principal, one of its checks' action
        and resource (IAM wildcards), its parameters and its availability zone."""
        return (sandbox_iam.like(rule.get("principal", "*"), principal)
                and all(str(params.get(k)) == str(v) for k, v in rule.get("params", {}).items())
                and ("zone" not in rule or self.world.zone_of(params) == rule["zone"])
                and any(sandbox_iam.like(rule.get("action", "*"), a, case=False)
                        and sandbox_iam.like(rule.get("resource", "*"), r) for a, r, _ in checks))

    def fault(self, service, name, checks, request, dry_run=False):
        """The AWS error of the first fault rule that matches the request, or None; a rule's
        "delay" answers that many seconds late (with its error, or the call's own answer)."""
        rule = self.take_fault(name, checks, request.get("params", {}), dry_run)
        if rule and rule.get("delay"):
            time.sleep(rule["delay"])
        return rule and "code" in rule and sandbox_iam.error_response(
            service, rule["code"], rule.get("message", "sandbox fault"), int(rule.get("status", 400)),
            sandbox_iam.speaks_json(request)) or None

    def take_fault(self, name, checks, params, dry_run=False):
        """The first fault rule of DIR/faults.json that matches, while it has times left (for an
        EC2 DryRun request, only the rules marked "dry_run": true); its hit is recorded."""
        try:
            with open(self.path("faults.json")) as f:
                rules = json.load(f)
        except (OSError, ValueError):
            return None
        for rule in rules:
            if bool(rule.get("dry_run")) == dry_run and self.fault_matches(rule, name, checks, params):
                with self.lock:
                    key = json.dumps(rule, sort_keys=True)
                    hits = self.fault_hits.get(key, 0)
                    if "times" in rule and hits >= rule["times"]:
                        continue
                    self.fault_hits[key] = hits + 1
                self.record({"principal": name, "action": checks[0][0], "resource": checks[0][1],
                             "fault": rule.get("code", rule.get("status"))})
                return rule
        return None

    def refused_calls(self):
        """Every recorded IAM decision that was not `allowed` (faults on demand are not refusals)."""
        try:
            with open(self.path("iam.jsonl")) as f:
                entries = [json.loads(line) for line in f]
        except OSError:
            return []
        return [e for e in entries if e.get("decision", "allowed") != "allowed"]

    def record(self, entry):
        """Append one decision to DIR/iam.jsonl: a line, written at once (the file is kept open,
        line-buffered: opening it for each of a fetch's thousand requests was 3% of the server's
        CPU; the metadata service appends its own lines to the same file)."""
        line = json.dumps(entry) + "\n"
        with self.lock:
            if self.decisions is None:
                self.decisions = open(self.path("iam.jsonl"), "a", buffering=1)
            self.decisions.write(line)

    # -- the instance metadata service, and the nodes' power button

    def start_imds(self):
        """The metadata service, in a process of its own (testbed/sandbox_imds.py), and the
        thread that answers its questions."""
        ours, theirs = socket.socketpair()
        self.imds = subprocess.Popen([sys.executable, IMDS, str(theirs.fileno()), self.dir], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, pass_fds=[theirs.fileno()], text=True)
        theirs.close()
        port = self.imds.stdout.readline().strip()
        if not port.isdigit():
            raise SandboxError("the metadata service did not start (exit %s)" % self.imds.wait())
        self.imds_port, self.imds_url = int(port), "http://127.0.0.1:%s" % port
        threading.Thread(target=self.answer_metadata, args=[ours], daemon=True).start()

    def instance_answer(self, instance, role=None):
        """What the metadata service may tell an instance: its facts, its role (that of its
        instance profile, or `role`) and its keys."""
        role = role or instance_role(instance)
        return dict(sandbox_ec2.instance_facts(instance), role=role,
                    credentials=role and self.node_credentials(instance, role))

    def tell_metadata(self, instances, profile):
        """At launch, write what the metadata service will tell each instance to DIR/imds/ID.json,
        where it reads it without a question to this busy process (a hundred nodes that boot at
        once asked one by one, and their credential requests timed out)."""
        role = profile and self.world.profile_role(profile)
        for instance in instances:
            path = self.path("imds", instance.id + ".json")
            with open(path + ".tmp", "w") as f:
                json.dump(self.instance_answer(instance.id, role), f)
            os.replace(path + ".tmp", path)

    def answer_metadata(self, channel):
        """Answer the metadata service's questions, a JSON line each: what it may tell an
        instance (its role and keys), a fault rule's status, a shutdown on a node."""
        reader = channel.makefile("r", encoding="utf-8")
        for line in reader:
            kind, instance, *rest = json.loads(line)
            try:
                if kind == "instance":
                    answer = self.instance_answer(instance)
                elif kind == "fault":  # imds:GetToken comes before the caller is told apart
                    arn = "arn:aws:ec2:%s:%s:instance/%s" % (REGION, ACCOUNT, instance or "*")
                    rule = self.take_fault("node:" + (instance or "*"), [(rest[0], arn, None)], {})
                    answer = rule and {"status": rule.get("status"), "delay": rule.get("delay")}
                else:
                    answer = self.schedule_power(instance, *rest)
            except Exception as e:  # the service must get its answer; the sandbox's log says why
                cs.log("sandbox: the metadata service's question %s failed: %r" % (line.strip(), e))
                answer = {"role": None, "credentials": None} if kind == "instance" else None
            channel.sendall((json.dumps(answer) + "\n").encode())

    def node_credentials(self, instance, role):
        """Temporary keys for the instance's role, as EC2's metadata service gives them."""
        with self.lock:
            if instance not in self.credentials:
                key = "ASIA" + secrets.token_hex(8).upper()
                expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=6)
                self.node_keys[key] = (instance, role)
                self.credentials[instance] = {
                    "Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": key,
                    "SecretAccessKey": secrets.token_hex(20), "Token": secrets.token_hex(64),
                    "Expiration": expires.strftime(cs.TIME_FORMAT),
                    "LastUpdated": cs.now_text()}
            return self.credentials[instance]

    def schedule_power(self, instance, when, asked):
        """An OS shutdown on the node: terminates (or stops) the instance, as its
        InstanceInitiatedShutdownBehavior says; `cancel` undoes a scheduled one."""
        with self.lock:
            timer = self.power.pop(instance, None)
            if timer:
                timer.cancel()
            if when == "cancel":
                return
            minutes = 0 if when == "now" else int(when.lstrip("+") or 0)
            timer = threading.Timer(max(0.2, minutes * 60.0), power_off, [instance])
            timer.daemon = True
            self.power[instance] = timer
            timer.start()
        self.record({"power": instance, "when": when, "at": asked + minutes * 60})

    def unguarded(self):
        """Live instances that nothing will end: no OS shutdown is scheduled on them."""
        with self.lock:
            armed = {i for i, timer in self.power.items() if timer.is_alive()}
        return sorted(i.id for i in sandbox_ec2.live_instances() if i.id not in armed)

    # -- the nodes' SSH server

    def start_sshd(self, sshd):
        ssh = self.path("ssh")
        host_key = os.path.join(ssh, "host_ed25519_key")
        if not os.path.exists(host_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", host_key], check=True)
        open(os.path.join(ssh, "authorized_keys"), "a").close()
        with open(self.path("bin", "standin.env"), "w") as f:
            f.write("LOG=%s PORT=%d POWER=%s\n" % (shlex.quote(self.path("standins.log")), self.imds_port,
                                                 shlex.quote(" ".join(POWER))))
        for name in STANDINS:
            if os.path.lexists(self.path("bin", name)):
                os.remove(self.path("bin", name))  # a sandbox folder made before may link another file
            os.symlink(STANDIN, self.path("bin", name))
        node_path = self.node_path
        # EC2's metadata service answers in a millisecond; this one looks the caller up in /proc,
        # which with hundreds of node processes on a laptop's cores can take longer than
        # botocore's default of 1 s and one attempt.
        # A node's home is its own, DIR/home, as a machine's is (SetEnv overrides sshd's HOME):
        # sshd runs every command with the login shell, and bash, seeing SSH_CLIENT, reads
        # ~/.bashrc first; this machine's is not a node's (pyenv's init in it took seconds a
        # session under load), nor are its Python user site-packages.
        node_env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_EC2_METADATA_SERVICE_ENDPOINT": self.imds_url,
                    "AWS_METADATA_SERVICE_TIMEOUT": "10", "AWS_METADATA_SERVICE_NUM_ATTEMPTS": "3",
                    "AWS_CONFIG_FILE": self.path("aws", "config"),
                    "AWS_SHARED_CREDENTIALS_FILE": self.path("aws", "credentials"), "PATH": node_path,
                    "HOME": self.path("home")}
        self.sshd_log = open(self.path("sshd.log"), "ab")
        for _ in range(5):  # a port picked free may be taken before sshd binds it (another sandbox)
            self.ssh_port = free_port()
            config = "\n".join([
                "Port %d" % self.ssh_port, "ListenAddress 127.0.0.1", "HostKey " + host_key,
                "PidFile none", "AuthorizedKeysFile " + os.path.join(ssh, "authorized_keys"),
                "StrictModes no", "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", "AllowUsers " + getpass.getuser(),
                "MaxStartups 1024:30:2048", "MaxSessions 64", "LoginGraceTime 60", "UseDNS no",
                "ForceCommand %s %s" % (shlex.quote(NODE_SHELL), shlex.quote(node_path)),
                "SetEnv " + " ".join('%s="%s"' % kv for kv in sorted(node_env.items())), ""])
            with open(os.path.join(ssh, "sshd_config"), "w") as f:
                f.write(config)
            self.sshd = subprocess.Popen([sshd, "-D", "-e", "-f", os.path.join(ssh, "sshd_config")],
                                         stdin=subprocess.DEVNULL, stdout=self.sshd_log, stderr=self.sshd_log)
            if self.wait_for_banner():
                return
        raise SandboxError("sshd could bind none of 5 free ports: " + self.sshd_tail())

    def sshd_tail(self):
        with open(self.path("sshd.log"), errors="replace") as f:
            return f.read()[-500:].strip()

    def wait_for_banner(self, timeout=15):
        """True once this sandbox's own sshd listens on its port and answers with a banner;
        False if it exited (its port was taken). Another program on the port is not taken for it."""
        deadline = time.monotonic() + timeout
        for delay in cs.backoff(deadline, first=0.05, cap=0.5):
            if self.sshd.poll() is not None:
                return False
            if delay is None:
                raise SandboxError("sshd did not start: " + self.sshd_tail())
            if not listens(self.sshd.pid, self.ssh_port):
                continue
            try:
                with socket.create_connection(("127.0.0.1", self.ssh_port), timeout=2) as s:
                    if s.recv(8).startswith(b"SSH-"):
                        return True
            except OSError:
                pass

    # -- what the caller's processes see

    def environment(self):
        """Variables that point awsrun (and boto3) at the sandbox, with the user's credentials."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
                "AWS_ACCESS_KEY_ID": USER_KEY, "AWS_SECRET_ACCESS_KEY": USER_KEY,
                "AWS_CONFIG_FILE": self.path("aws", "config"),
                "AWS_SHARED_CREDENTIALS_FILE": self.path("aws", "credentials"),
                "AWSRUN_SSH_HOST": "127.0.0.1", "AWSRUN_SSH_PORT": str(self.ssh_port),
                "AWSRUN_SSH_USER": getpass.getuser(), "AWSRUN_REMOTE_ROOT": self.path("nodes"),
                "AWSRUN_SSH_CIDR": "127.0.0.1/32",
                "AWSRUN_KEY_DIR": self.path("keys"), "AWSRUN_STATE_DIR": self.path("state"),
                "AWSRUN_SANDBOX": self.dir,
                "AWSRUN_SANDBOX_PLAIN_HTTP": "http://127.0.0.1:%d" % self.plain.server_port}

    def child_environment(self):
        env = {k: v for k, v in os.environ.items()
               if k not in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")}
        env.update(self.environment())
        return env

    def stop(self):
        """Stop sshd, every job process still running in a node folder, and the servers.
        Writes DIR/unguarded.json: the instances left running with nothing to end them."""
        if self.moto:
            with open(self.path("unguarded.json"), "w") as f:
                json.dump(self.unguarded(), f)
        if self.sshd and self.sshd.poll() is None:
            self.sshd.terminate()
            try:
                self.sshd.wait(5)
            except subprocess.TimeoutExpired:
                self.sshd.kill()
                self.sshd.wait()
        for timer in self.power.values():
            timer.cancel()
        kill_processes_under(self.path("nodes"))
        for server in (self.moto, self.plain):
            if server:
                server.shutdown()
        with self.lock:
            if self.decisions:
                self.decisions.close()
                self.decisions = None
        if self.imds:
            self.imds.stdin.close()  # its end
            try:
                self.imds.wait(5)
            except subprocess.TimeoutExpired:
                self.imds.kill()
                self.imds.wait()
        self.moto = self.plain = self.imds = None


USER_POLICY = os.path.join(HERE, "awsrun-user-policy.json")
BOUNDARY_POLICY = os.path.join(HERE, "awsrun-node-boundary.json")


@functools.lru_cache(maxsize=4)
def user_policy(mtime):
    """The user's policy, read again when the file changes."""
    with open(USER_POLICY) as f:
        return json.load(f)


def setting_node_venv():
    return os.environ.get("AWSRUN_SANDBOX_NODE_VENV") or NODE_VENV


def listens(pid, port):
    """Whether process `pid` holds the socket listening on 127.0.0.1:`port` (/proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        inodes = {fields[9] for fields in (line.split() for line in f.read().splitlines()[1:])
                  if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port}
    try:
        return any(os.readlink("/proc/%d/fd/%s" % (pid, fd)) in {"socket:[%s]" % i for i in inodes}
                   for fd in os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return False


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the sandbox, run COMMAND in it, stop it")
    run.add_argument("--keep", action="store_true", help="keep the sandbox folder afterwards")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    serve = sub.add_parser("serve", help="run until stopped; write DIR/env.json when ready")
    serve.add_argument("dir")
    args = p.parse_args(argv)

    if args.command == "serve":
        box = Sandbox(args.dir)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *a: stop.set())
        try:
            box.start()
            with open(os.path.join(box.dir, "env.json.tmp"), "w") as f:
                json.dump(box.environment(), f, indent=1)
            os.rename(os.path.join(box.dir, "env.json.tmp"), os.path.join(box.dir, "env.json"))
            stop.wait()
        except SandboxError as e:
            print("error: %s" % e, file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            pass
        finally:
            box.stop()
        return 0

    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        p.error("give a command after --")
    folder = tempfile.mkdtemp(prefix="awsrun-sandbox-")
    box = Sandbox(folder)
    try:
        box.start()
        cs.log("sandbox: AWS at %s, nodes' sshd at 127.0.0.1:%d, files in %s"
               % (box.endpoint, box.ssh_port, folder))
        code = subprocess.call(command, env=box.child_environment())
        unguarded = box.unguarded()
        if unguarded:
            cs.log("sandbox: %d instances were left running with nothing to end them: %s"
                   % (len(unguarded), " ".join(unguarded)))
            code = code or 1
        refused = box.refused_calls()
        for entry in refused:
            cs.log("sandbox: IAM would refuse %s" % json.dumps(entry))
        if refused:
            cs.log("sandbox: %d calls would fail on AWS: grant them in the policy that governs them"
                   % len(refused))
        return code or (1 if refused else 0)
    except SandboxError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        box.stop()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
