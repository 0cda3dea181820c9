"""How the sandbox's EC2 behaves like a real account's, where moto's does not: every instance of
a launch gets its instance profile; a launch places MinCount to MaxCount instances, as many as
the account's quotas allow; cloud-init runs an instance's user data; Service Quotas answers for
EC2; an OS shutdown ends the instance; an account can have no default VPC, or default subnets
that map no public IP. Used by sandbox_server.py on the user's machine only.

The account's settings come from AWSRUN_SANDBOX_ACCOUNT (JSON) when the sandbox starts, or from
DIR/account.json at any time:
    {"vcpu_quota": 8, "instance_quota": 20, "default_vpc": false, "public_ips": false,
     "user_data_after": 10}
vcpu_quota caps the running vCPUs of each quota family (Running On-Demand Standard instances
and the others, as Service Quotas names them); instance_quota caps running instances.
user_data_after delays the user data that many seconds past the launch (cloud-init's final
stage runs it after sshd has started); by default it runs at once.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading

import launch
from testbed import sandbox_iam

REGION = "us-east-1"
ACCOUNT = "123456789012"
OTHER_ACCOUNT = "111111111111"  # someone else's account, which may hold a bucket of any name
DEFAULT_VCPU_QUOTA = 1152
# The Price List API's on-demand Linux prices (USD per hour) in us-east-1 for the types the
# demo uses, as AWS publishes them; an account setting "prices" replaces them.
DEFAULT_PRICES = {"t3.micro": 0.0104, "t3.small": 0.0208}


def ec2_backend():
    from moto.ec2.models import ec2_backends
    return ec2_backends[ACCOUNT][REGION]


def sqs_backend():
    from moto.sqs.models import sqs_backends
    return sqs_backends[ACCOUNT][REGION]


def iam_backend():
    from moto.iam.models import iam_backends
    return iam_backends[ACCOUNT]["aws"]


def key_account(access_key):
    """The account moto holds an access key in (a role's temporary keys are in the role's)."""
    from moto.iam.models import get_account_id_from
    return get_account_id_from(access_key)


def bucket_of(name):
    """moto's bucket of that name, in whichever account owns it, or None."""
    from moto.s3.models import s3_backends
    owner = s3_backends.bucket_accounts.get(name)
    return s3_backends[owner[1]][owner[0]].buckets.get(name) if owner else None


class MotoWorld(sandbox_iam.World):
    """What IAM would know when it authorizes a request: resource tags and roles, from moto."""

    account = ACCOUNT

    def tags(self, kind, name):
        if kind == "role":
            role = next((r for r in iam_backend().roles.values() if r.name == name), None)
            tags = (role.tags.values() if isinstance(role.tags, dict) else role.tags) if role else []
            return {t["Key"]: t["Value"] for t in tags}
        if kind == "queue":
            queue = sqs_backend().queues.get(name)
            return dict(queue.tags) if queue else {}
        ec2 = ec2_backend()
        if kind == "key-pair":
            pair = ec2.key_pairs.get(name)
            name = pair.id if pair else name
        return dict(ec2.tags.get(name, {}))

    def default_vpc(self):
        vpcs = [v for v in ec2_backend().vpcs.values() if v.is_default]
        return vpcs[0].id if vpcs else "vpc-*"

    def has_spot_role(self):
        return any(r.path == "/aws-service-role/spot.amazonaws.com/"
                   for r in iam_backend().roles.values())

    def role_boundary(self, name):
        role = next((r for r in iam_backend().roles.values() if r.name == name), None)
        return role.permissions_boundary_arn if role else None

    def make_spot_role(self):
        if not self.has_spot_role():
            iam_backend().create_service_linked_role("spot.amazonaws.com", "", "")

    def zone_of(self, params):
        """The availability zone a RunInstances call asks for, by subnet or placement."""
        subnet = params.get("SubnetId") or params.get("NetworkInterface.1.SubnetId")
        if subnet:
            return ec2_backend().get_subnet(subnet).availability_zone
        return params.get("Placement.AvailabilityZone") or REGION + "a"

    def bucket_owner(self, bucket):
        found = bucket_of(bucket)
        return found.account_id if found else None

    def bucket_policy(self, bucket):
        found = bucket_of(bucket)
        return json.loads(found.policy) if found and found.policy else None

    def profile_role(self, profile):
        found = [p for p in iam_backend().instance_profiles.values() if p.name == profile]
        return found[0].roles[0].name if found and found[0].roles else None


def instance_role(instance_id):
    """The role of the instance profile an instance was launched with, from moto."""
    association = ec2_backend().iam_instance_profile_associations.get(instance_id)
    roles = association.iam_instance_profile.roles if association else []
    return roles[0].name if roles else None


def instance_facts(instance_id):
    """What an instance's metadata service tells of it, by path under /latest/meta-data/."""
    instance = ec2_backend().get_instance(instance_id)
    return {"instance-type": instance.instance_type, "placement/availability-zone": instance._placement.zone,
            "ami-id": instance.image_id, "instance-life-cycle": "spot" if instance.lifecycle == "spot" else "on-demand"}


def power_off(instance_id):
    """What an OS shutdown does to an EC2 instance: terminate it, or stop it."""
    ec2 = ec2_backend()
    instance = ec2.get_instance(instance_id)
    if instance._state.name in ("pending", "running"):
        if instance.instance_initiated_shutdown_behavior == "terminate":
            ec2.terminate_instances([instance_id])
        else:
            ec2.stop_instances([instance_id])


def processes_under(folder):
    """Process ids whose working directory is inside `folder` (left-over node jobs), also when
    the folder was deleted under them (Linux then reads their directory as "PATH (deleted)")."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                cwd = os.readlink("/proc/%s/cwd" % name).removesuffix(" (deleted)")
            except OSError:
                continue
            if cwd == folder or cwd.startswith(folder + os.sep):
                found.append(int(name))
    return found


def kill_processes_under(folder):
    """End every process of a node folder, as the machine's end would."""
    for pid in processes_under(folder):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def launch_up_to_max_count():
    """As on EC2, a launch gets MaxCount instances when there is room for them; moto launches
    MinCount. (sandbox_server.py first lowers MaxCount to what the account's quotas allow.)"""
    from moto.ec2.responses.instances import InstanceResponse
    original = getattr(InstanceResponse.run_instances, "awsrun_original", InstanceResponse.run_instances)

    def run_instances(self):
        if self._get_param("MaxCount"):
            self.params["MinCount"] = self._get_param("MaxCount")
        return original(self)
    run_instances.awsrun_original = original
    InstanceResponse.run_instances = run_instances


def leave_bucket_policies_to_the_gate():
    """moto judges a bucket's policy itself, and wrongly: a statement with any condition counts
    as a Deny (so a Deny of plain HTTP refuses every request). sandbox_server.py's gate weighs bucket
    policies as S3 does (sandbox_iam.combine), so moto's own verdict is left out."""
    from moto.iam.access_control import PermissionResult
    from moto.s3.models import FakeBucket
    FakeBucket.get_permission = lambda self, action, resource: PermissionResult.NEUTRAL


def services_found_once(app):
    """moto's server finds each request's service by listing its own package folder (a stat for
    each of its 150 services) and then trying its URL patterns one after another, under one lock:
    a sixth of the server's CPU for a GET of a small object. A host's service never changes: it
    is found once (the search runs under that lock, and so does this)."""
    found, search = {}, app.get_backend_for_host

    def backend_for(host):
        if host not in found:
            found[host] = search(host)
        return found[host]
    app.get_backend_for_host = backend_for


def times_written_without_dateutil():
    """moto writes each time of an answer (every object's LastModified in a listing) by reading
    it first with botocore's parse_to_aware_datetime, whose dateutil parse was a twentieth of the
    server's CPU in a fetch. A time with its zone is read as the user's botocore reads it
    (cloud_setup.aws_time: the standard library's parsers); the rest as before."""
    import moto.core.serialize as serialize
    from cloud_setup import aws_time
    slow = serialize.parse_to_aware_datetime

    def parse(value):
        found = aws_time(value) if isinstance(value, str) else None
        return found if found is not None and found.tzinfo is not None else slow(value)
    serialize.parse_to_aware_datetime = parse


def queues_that_do_not_slow_down():
    """moto's SQS reads every message's clock (a datetime each) to count a queue's messages,
    counts them in full whenever it reads any of the queue's attributes, and reads them for
    each message it takes in or hands out: sending or receiving one row of a queue of 2,000
    cost the server 0.2 s of CPU, so that queueing 2,000 rows took 100 s, and pool mode's
    benchmark measured moto. SQS does not slow down with its queue's length. Here a queue is
    counted at one instant, with the same outcome, and the retention period is read directly;
    the received messages' groups are read from a copy."""
    from moto.core.utils import unix_time, unix_time_millis
    from moto.sqs.models import Queue, SQSBackend

    def ready(queue):  # visible and not delayed, as Message.visible and Message.delayed say
        now = unix_time_millis()
        return [m for m in queue._messages if now > m.visible_at and not now < m.delayed_until]

    def delayed(queue):
        now = unix_time_millis()
        return sum(now < m.delayed_until for m in queue._messages)

    def not_visible(queue):
        now = unix_time_millis()
        return sum(not now > m.visible_at for m in queue._messages)

    def is_message_valid_based_on_retention_period(self, queue_name, message):
        period = int(self.get_queue(queue_name).message_retention_period)
        return period + message.sent_timestamp / 1000 > unix_time()
    Queue.messages = property(ready)
    # moto takes no lock: a receive read the set of received messages while a delete on another
    # of the server's threads changed it ("Set changed size during iteration", a 500). A copy
    # of a set is made in one step.
    Queue.pending_message_groups = property(
        lambda queue: {m.group_id for m in list(queue._pending_messages) if m.group_id is not None})
    Queue.approximate_number_of_messages = property(lambda queue: len(ready(queue)))
    Queue.approximate_number_of_messages_delayed = property(delayed)
    Queue.approximate_number_of_messages_not_visible = property(not_visible)
    SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period


def play_ec2(authorized_keys, nodes_dir, node_path=None, account=dict, launched=None):
    """Make moto's instances act on this machine as EC2's do on theirs: like cloud-init, let
    an instance's key pair log in when it is launched, give every instance of a launch its
    instance profile, and run its user data; when an instance is terminated, end every process
    of its node folder (the one whose .awsrun/instance names it). `launched(instances, profile)`
    is told of every launch, before the user data runs."""
    from moto.ec2.models.instances import InstanceBackend
    moto_launch = getattr(InstanceBackend.run_instances, "awsrun_original", InstanceBackend.run_instances)
    end = getattr(InstanceBackend.terminate_instances, "awsrun_original", InstanceBackend.terminate_instances)
    lock = threading.Lock()
    launch_up_to_max_count()

    def run_instances(self, *args, **kwargs):
        reservation = moto_launch(self, *args, **kwargs)
        # moto gives the instance profile to the first instance of a launch only; EC2, to all.
        for instance in reservation.instances[1:]:
            if kwargs.get("iam_instance_profile_name") or kwargs.get("iam_instance_profile_arn"):
                self.associate_iam_instance_profile(
                    instance_id=instance.id, iam_instance_profile_name=kwargs.get("iam_instance_profile_name"),
                    iam_instance_profile_arn=kwargs.get("iam_instance_profile_arn"))
        if launched:  # moto's answer associates the first instance's profile only after this
            arn = kwargs.get("iam_instance_profile_arn") or ""
            launched(reservation.instances, kwargs.get("iam_instance_profile_name") or arn.rpartition("/")[2] or None)
        asked = kwargs.get("associate_public_ip") or any(
            str(n.get("AssociatePublicIpAddress")).lower() == "true" for n in kwargs.get("nics") or [])
        for instance in reservation.instances:
            if account().get("public_ips", True) is False and not asked:
                instance.nics[0].public_ip = None  # its subnet maps no public IP, and none was asked for
            run_user_data(instance, args[2] if len(args) > 2 else kwargs.get("user_data"), nodes_dir,
                          node_path or os.environ["PATH"], account().get("user_data_after", 0))
        pair = self.key_pairs.get(kwargs.get("key_name") or "")
        if pair is not None:
            line = pair.public_key.strip()
            with lock:
                with open(authorized_keys) as f:
                    known = f.read().splitlines()
                if line not in known:
                    with open(authorized_keys, "a") as f:
                        f.write(line + "\n")
        return reservation

    def terminate_instances(self, instance_ids):
        result = end(self, instance_ids)
        for name in os.listdir(nodes_dir):
            folder = os.path.join(nodes_dir, name)
            try:
                with open(os.path.join(folder, ".awsrun", "instance")) as f:
                    owner = f.read().strip()
            except OSError:
                continue
            if owner in instance_ids:
                kill_processes_under(folder)
        return result

    run_instances.awsrun_original, terminate_instances.awsrun_original = moto_launch, end
    InstanceBackend.run_instances, InstanceBackend.terminate_instances = run_instances, terminate_instances




def vcpus(instance_type):
    from moto.ec2.models.instance_types import INSTANCE_TYPES
    return INSTANCE_TYPES.get(instance_type, {}).get("VCpuInfo", {}).get("DefaultVCpus", 2)


def live_instances():
    return [i for r in ec2_backend().reservations.values() for i in r.instances
            if i._state.name in ("pending", "running")]


def quota_answer(params, account):
    """Service Quotas' GetServiceQuota for EC2's vCPU quotas, from the account's setting."""
    code = params.get("QuotaCode", "")
    if params.get("ServiceCode") != "ec2" or code not in {c for pair in launch.QUOTAS.values() for c in pair}:
        return 400, [("Content-Type", "application/x-amz-json-1.1")], json.dumps(
            {"__type": "NoSuchResourceException", "Message": "The request failed because the specified "
             "service quota does not exist."}).encode()
    quota = {"ServiceCode": "ec2", "QuotaCode": code, "Value": float(account.get("vcpu_quota", DEFAULT_VCPU_QUOTA)),
             "QuotaArn": "arn:aws:servicequotas:%s:%s:ec2/%s" % (REGION, ACCOUNT, code), "Unit": "None"}
    return 200, [("Content-Type", "application/x-amz-json-1.1")], json.dumps({"Quota": quota}).encode()


def price_product(instance_type, region, usd_per_hour):
    """One EC2 product of the Price List API, in the shape GetProducts gives each PriceList
    entry (as a JSON string): a Linux, shared-tenancy instance type's on-demand price."""
    sku, term = "SANDBOX%s" % instance_type.upper().replace(".", ""), "JRTCKXETXF"
    attributes = {"instanceType": instance_type, "regionCode": region, "operatingSystem": "Linux",
                  "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used",
                  "licenseModel": "No License required", "servicecode": "AmazonEC2"}
    dimension = {"unit": "Hrs", "beginRange": "0", "endRange": "Inf", "appliesTo": [],
                 "rateCode": "%s.%s.6YS6EN2CT7" % (sku, term), "pricePerUnit": {"USD": "%.10f" % usd_per_hour},
                 "description": "$%s per On Demand Linux %s Instance Hour" % (usd_per_hour, instance_type)}
    return {"product": {"productFamily": "Compute Instance", "attributes": attributes, "sku": sku},
            "serviceCode": "AmazonEC2", "version": "20261101000000", "publicationDate": "2026-11-01T00:00:00Z",
            "terms": {"OnDemand": {"%s.%s" % (sku, term): {
                "priceDimensions": {dimension["rateCode"]: dimension}, "sku": sku, "offerTermCode": term,
                "effectiveDate": "2026-11-01T00:00:00Z", "termAttributes": {}}}}}


def price_answer(params, account):
    """The Price List API's GetProducts for EC2 (moto has none), from the account's setting
    {"prices": {type: USD per hour}} or DEFAULT_PRICES, filtered as TERM_MATCH does."""
    products = [price_product(t, REGION, float(usd)) for t, usd in account.get("prices", DEFAULT_PRICES).items()]
    if params.get("ServiceCode") == "AmazonEC2":
        for f in params.get("Filters", []):
            products = [p for p in products if p["product"]["attributes"].get(f["Field"]) == f["Value"]]
    else:
        products = []
    return 200, [("Content-Type", "application/x-amz-json-1.1")], json.dumps(
        {"FormatVersion": "aws_v1", "PriceList": [json.dumps(p) for p in products]}).encode()


def launch_count(params, account):
    """How many instances a RunInstances call gets: as many of MinCount..MaxCount as the quotas
    allow, or an error (code, message) as EC2 answers it."""
    wanted = int(params.get("MaxCount") or params.get("MinCount") or 1)
    least = int(params.get("MinCount") or 1)
    itype = params.get("InstanceType", "m1.small")
    spot = params.get("InstanceMarketOptions.MarketType") == "spot"
    fits = wanted
    if "instance_quota" in account:
        fits = min(fits, int(account["instance_quota"]) - len(live_instances()))
        if fits < least:
            return None, ("InstanceLimitExceeded", "You have requested more instances (%d) than your current "
                          "instance limit of %s allows for the specified instance type."
                          % (least, account["instance_quota"]))
    if "vcpu_quota" in account:
        family = launch.quota_family(itype)
        used = sum(vcpus(i.instance_type) for i in live_instances() if launch.quota_family(i.instance_type) == family
                   and (i.lifecycle == "spot") == spot)
        fits = min(fits, (int(account["vcpu_quota"]) - used) // vcpus(itype))
        if fits < least:
            return None, ("VcpuLimitExceeded", "You have requested more vCPU capacity than your current vCPU limit of "
                          "%s allows for the instance bucket that the specified instance type belongs to. Please "
                          "visit http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this "
                          "limit." % account["vcpu_quota"])
    return fits, None


def shape_network(account):
    """At start: an account without a default VPC, or whose default subnets map no public IP."""
    ec2 = ec2_backend()
    for vpc in [v for v in ec2.vpcs.values() if v.is_default]:
        for subnet in ec2.describe_subnets(filters={"vpc-id": vpc.id}):
            if account.get("public_ips", True) is False:
                subnet.map_public_ip_on_launch = False
            if account.get("default_vpc", True) is False:
                ec2.delete_subnet(subnet.id)
        if account.get("default_vpc", True) is False:
            ec2.groups.pop(vpc.id, None)  # its default security group goes with it
            ec2.delete_vpc(vpc.id)


def run_user_data(instance, user_data, nodes_dir, path, after=0):
    """Like cloud-init: run an instance's user data script at boot, in a folder of its own
    (nodes/.boot-ID, whose .awsrun/instance names it), with the sandbox's PATH, then write
    boot-finished there (cloud-init's last act, /var/lib/cloud/instance/boot-finished, which the
    nodes' `cloud-init status --wait` stand-in waits for). cloud-init runs it in its final stage,
    after sshd has started (on Ubuntu, after multi-user.target): `after` seconds from the launch."""
    if user_data is None:
        return
    script = user_data.decode() if hasattr(user_data, "decode") else str(user_data)
    folder = os.path.join(nodes_dir, ".boot-" + instance.id)
    os.makedirs(os.path.join(folder, ".awsrun"), exist_ok=True)
    with open(os.path.join(folder, ".awsrun", "instance"), "w") as f:
        f.write(instance.id + "\n")
    with open(os.path.join(folder, "user-data"), "w") as f:
        f.write(script)
    final = 'sleep "$1"; bash user-data; : > boot-finished' if after else "bash user-data; : > boot-finished"
    with open(os.path.join(folder, "cloud-init.log"), "ab") as log:
        subprocess.Popen(["/bin/bash", "-c", final, "cloud-final", str(after)], cwd=folder, stdin=subprocess.DEVNULL,
                         stdout=log, stderr=log, env=dict(os.environ, PATH=path), start_new_session=True)


# IAM's character limits on policies, white space not counted (IAM and AWS STS quotas): all the
# inline policies of a user together, of a role together, and each managed policy.
INLINE_LIMITS = {"PutUserPolicy": ("user", "UserName", 2048), "PutRolePolicy": ("role", "RoleName", 10240)}
MANAGED_LIMIT = 6144


def policy_size(document):
    return len(re.sub(r"\s", "", document))


def policy_size_answer(params, operation):
    """IAM's LimitExceeded for a policy over its size limit, as AWS words it; else None."""
    document = params.get("PolicyDocument", "")
    if operation in ("CreatePolicy", "CreatePolicyVersion") and policy_size(document) > MANAGED_LIMIT:
        return sandbox_iam.error_response("iam", "LimitExceeded", "Cannot exceed quota for PolicySize: %d"
                                          % MANAGED_LIMIT, 409)
    if operation not in INLINE_LIMITS:
        return None
    kind, name_key, limit = INLINE_LIMITS[operation]
    name = params.get(name_key, "")
    entities = iam_backend().users.values() if kind == "user" else iam_backend().roles.values()
    others = [doc for e in entities if e.name == name for key, doc in e.policies.items()
              if key != params.get("PolicyName")]
    if sum(map(policy_size, others)) + policy_size(document) > limit:
        return sandbox_iam.error_response("iam", "LimitExceeded", "Maximum policy size of %d bytes exceeded for %s %s"
                                          % (limit, kind, name), 409)
    return None


def managed_policy(arn):
    """The document (a dict) of a managed policy's default version, or None if there is none."""
    policy = iam_backend().managed_policies.get(arn)
    if policy is None:
        return None
    version = next(v for v in policy.versions if v.is_default)
    return json.loads(version.document)


def make_boundary(path):
    """The permissions boundary an admin makes once at set-up (docs/aws-setup.md), from its file."""
    with open(path) as f:
        iam_backend().create_policy("awsrun nodes' permissions boundary", "/", f.read(),
                                    os.path.basename(path)[:-len(".json")], [])


def boundary_answer(params, operation):
    """IAM's answer to a role given a permissions boundary that is not a managed policy of the
    account (moto takes any well-formed ARN), or None."""
    arn = params.get("PermissionsBoundary")
    if operation not in ("CreateRole", "PutRolePermissionsBoundary") or not arn or managed_policy(arn) is not None:
        return None
    return sandbox_iam.error_response("iam", "NoSuchEntity", "Scope ARN: %s does not exist or is not attachable." % arn,
                                      404)
