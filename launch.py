"""Launching a job's machines: the image of each instance type, the subnets (one per zone, for
failover), the vCPU quotas, and RunInstances itself, tagged in the same call, armed with a
boot-time guard, and placed zone after zone when capacity runs out; then waiting until they
run. And before any of it, the preflight: what `create` needs, asked of AWS before anything is
made; `--dry-run` prints every check, and `create` runs the same ones first and stops at the
first that fails. Runs on the user's machine; the nodes never launch anything.

    python dispatcher.py AMI JOBNAME JOBFILE --dry-run [create's options]    # make dry-run

Each preflight check reads, or asks with EC2's DryRun flag, and makes, changes and deletes
nothing: the caller's identity and region, the image of every instance type, the network, the
vCPU quotas, the bucket name, and the permissions create and dispatch use (RunInstances with the
job's real parameters, CreateSecurityGroup and CreateKeyPair as DryRun; the node role and the
pool's queues by a read that tells "denied" from "absent"); and this machine: Python, an ssh
client, the address the SSH rule will allow. The calls are per instance type, flat in the number
of rows.
"""
from __future__ import annotations

import re
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from botocore.exceptions import BotoCoreError, ClientError

from cloud_setup import (BOUNDARY, BUCKET_TAG, BUDGET_TAG, JOB_TAG, POOL_TAG, ROWS_TAG, TIME_FORMAT, UserError,
                         account, alternatives, awsrun_env, backoff, boundary_arn, bucket_is_ours, caller_cidr, client,
                         client_with, error_code, error_code_in, group_filters, group_name, job_tags, log, number_of,
                         region, retrying, role_name, terminate)
import get_s3_files
from job_state import LIVE, encode_rows, find_nodes, launch_batches, newest_per_tag, node_from_instance

UBUNTU_ARCH = {"x86_64": "amd64", "arm64": "arm64"}  # EC2's architecture -> Ubuntu's name for it


def ubuntu_parameter(arch="amd64"):
    """AWS's public parameter that names the current Ubuntu 24.04 LTS image of an architecture."""
    return "/aws/service/canonical/ubuntu/server/24.04/stable/current/%s/hvm/ebs-gp3/ami-id" % arch


def default_ami(arch="amd64"):
    """The current Ubuntu LTS image of an architecture (amd64, arm64), from AWS's public parameter store."""
    try:
        return client("ssm").get_parameter(Name=ubuntu_parameter(arch))["Parameter"]["Value"]
    except (ClientError, BotoCoreError) as e:
        raise UserError("could not look up the current Ubuntu image (%s): name one with AMI=ami-..."
                        % (error_code(e) if isinstance(e, ClientError) else e)) from e


def instance_types(types):
    """{instance type: what DescribeInstanceTypes says of it}; UserError naming an unknown one."""
    ec2 = client("ec2")
    try:
        found = ec2.describe_instance_types(InstanceTypes=sorted(types))["InstanceTypes"]
    except ClientError as e:
        if error_code(e) != "InvalidInstanceType":
            raise
        found = []
        for t in sorted(types):  # find which one is unknown
            try:
                found += ec2.describe_instance_types(InstanceTypes=[t])["InstanceTypes"]
            except ClientError:
                pass
    known = {t["InstanceType"]: t for t in found}
    for t in sorted(types):
        if t not in known:
            raise UserError("instance type %r does not exist in region %s: fix the job file" % (t, region()), 2)
    return known


def check_image_and_types(ami, types):
    """Before any launch: every instance type exists, and has an image it can run: with `auto`,
    the current Ubuntu LTS of its own architecture (one parameter read per architecture), else
    `ami`, which must exist and match every type. A type list (a|b) is each of its types.
    Returns ({type: AMI}, {type: its vCPUs}), for every type named."""
    types = {a for t in types for a in alternatives(t)}
    known = instance_types(types)
    archs = {t: known[t].get("ProcessorInfo", {}).get("SupportedArchitectures", ["x86_64"]) for t in types}
    if ami == "auto":
        wanted = {}
        for t in sorted(types):
            arch = next((a for a in ("x86_64", "arm64") if a in archs[t]), None)
            if arch is None:
                raise UserError("instance type %s runs %s, which has no Ubuntu image: name one with AMI=ami-..."
                                % (t, "/".join(archs[t])), 2)
            wanted[t] = UBUNTU_ARCH[arch]
        images = {arch: default_ami(arch) for arch in sorted(set(wanted.values()))}
        amis = {t: images[wanted[t]] for t in types}
    else:
        try:
            found = client("ec2").describe_images(ImageIds=[ami])["Images"]
        except ClientError as e:
            if not error_code(e).startswith("InvalidAMIID"):
                raise
            found = []
        if not found:
            raise UserError("AMI %s does not exist in region %s: check AMI= (AMIs are per region)"
                            % (ami, region()))
        arch = found[0].get("Architecture", "x86_64")
        for t in sorted(types):
            if arch not in archs[t]:
                raise UserError("instance type %s runs %s, but AMI %s is %s: pick a matching AMI or type, or AMI=auto"
                                % (t, "/".join(archs[t]), ami, arch), 2)
        amis = {t: ami for t in types}
    return amis, {t: known[t].get("VCpuInfo", {}).get("DefaultVCpus", 1) for t in types}


# ---------------------------------------------------------------------------- launching

MAX_PER_LAUNCH = 250  # RunInstances' resource bucket holds 1,000 instances and refills at 2 a second
CAPACITY_ERRORS = ("InsufficientInstanceCapacity", "InsufficientHostCapacity", "Unsupported")
BOOT_GUARD = """#!/bin/bash
# awsrun: a machine that is never prepared ends by itself, %(minutes)d minutes after cloud-init runs
# this at boot, and under a budget by its deadline, end= (seconds since the epoch; 0: none). The
# clock is read again once shutdown has armed: it counts from its own reading, a moment later.
# awsrun's guard (node/guard.sh) replaces this shutdown with its own when it prepares the machine.
minutes=%(minutes)d end=%(end)d
while [ "$minutes" -gt 0 ]; do
    printf -v now '%%(%%s)T' -1
    if [ "$end" = 0 ] || [ $(( now + 1 + minutes * 60 )) -le "$end" ]; then
        shutdown -h +"$minutes"
        printf -v now '%%(%%s)T' -1
        { [ "$end" = 0 ] || [ $(( now + 1 + minutes * 60 )) -le "$end" ]; } && exit 0
    fi
    minutes=$(( (end - now - 1) / 60 ))
done
shutdown -h now
"""


def launch_subnets(subnet_ids=()):
    """The subnets to launch in, in order: the given ones, else the default VPC's default
    subnets (one per zone). Each {id, zone, vpc, public}. UserError when there are none."""
    ec2 = client("ec2")
    if subnet_ids:
        try:
            found = ec2.describe_subnets(SubnetIds=list(subnet_ids))["Subnets"]
        except ClientError as e:
            if not error_code(e).startswith("InvalidSubnetID"):
                raise
            raise UserError("--subnet: %s: check the ids with `aws ec2 describe-subnets`"
                            % e.response["Error"].get("Message", e), code=2) from None
        found.sort(key=lambda s: list(subnet_ids).index(s["SubnetId"]))
    else:
        found = sorted(ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"],
                       key=lambda s: s["AvailabilityZone"])
        if not found:
            raise UserError("region %s has no default VPC: name the subnets to launch in, e.g. "
                            "ARGS=\"--subnet subnet-0abc --subnet subnet-0def\" (one per zone, for failover)"
                            % region(), code=2)
    vpcs = sorted({s["VpcId"] for s in found})
    if len(vpcs) > 1:
        raise UserError("--subnet: the subnets are in %d VPCs (%s): give subnets of one VPC"
                        % (len(vpcs), ", ".join(vpcs)), code=2)
    return [{"id": s["SubnetId"], "zone": s["AvailabilityZone"], "vpc": s["VpcId"],
             "public": bool(s.get("MapPublicIpOnLaunch"))} for s in found]


class NoCapacity(str):
    """Why a node was not launched, when it is that no zone had capacity for its type: the
    row's next type, if it lists one, is tried."""


def launch(job, ami, instance_type, numbers, key_name, group_id, profile, bucket, subnets, spot=False,
           boot_guard=0, pool=False, budget=None):
    """Launch one instance type's nodes: calls of at most MAX_PER_LAUNCH instances with
    MinCount=1, each in one subnet, every instance tagged in its call. What a zone has no
    capacity for is tried in the next subnet, until every one was tried. Returns (instance ids,
    {node number: why it could not be launched})."""
    ids, pending, zones, why = [], list(numbers), list(subnets), ""
    while pending and zones:
        batch = launch_batches(pending[:MAX_PER_LAUNCH])[0]
        params = launch_params(job, ami, instance_type, batch, key_name, group_id, profile, bucket, zones[0],
                               spot, boot_guard, pool, budget)
        try:
            got = run_instances(params)
        except ClientError as e:
            if error_code(e) not in CAPACITY_ERRORS:
                problem = launch_error(e, instance_type, ami)
                if not isinstance(problem, UserError):
                    raise
                why = str(problem)
                break
            why = "no %s capacity in %s (%s)" % (instance_type, zones[0]["zone"], error_code(e))
            log("%s: trying the next zone" % why)
            zones.pop(0)
            continue
        ids += got
        pending = batch[len(got):] + pending[len(batch):]
        if len(got) < len(batch):
            why = "%s had %s capacity for %d of %d" % (zones[0]["zone"], instance_type, len(got), len(batch))
            zones.pop(0)
    if pending and not zones:
        why = NoCapacity("AWS has no %s capacity in any of the %d zones tried (%s): try later, another type (or a "
                         "list, c5.xlarge|c5a.xlarge), or more subnets (--subnet), then `make retry`"
                         % (instance_type, len(subnets), why))
    return ids, {n: why for n in pending}


def launch_params(job, ami, instance_type, numbers, key_name, group_id, profile, bucket, subnet, spot, boot_guard,
                  pool=False, budget=None):
    """The RunInstances arguments for one launch: tagged in the call, ended by an OS shutdown,
    with a boot-time guard, in one subnet (given a public address if it maps none). Pool
    machines carry POOL_TAG, and `numbers` are their machine numbers. Under a budget
    (`budget`: the deadline, and the USD per hour it counts), the machines carry their deadline
    in BUDGET_TAG, the boot-time guard ends them by then, and a spot machine's MaxPrice is that
    price."""
    tags = [{"Key": "Name", "Value": job}, {"Key": JOB_TAG, "Value": job},
            {"Key": ROWS_TAG, "Value": encode_rows(numbers)}, {"Key": BUCKET_TAG, "Value": bucket}]
    if pool:
        tags.append({"Key": POOL_TAG, "Value": instance_type})
    if budget:
        tags.append({"Key": BUDGET_TAG, "Value": time.strftime(TIME_FORMAT, time.gmtime(budget[0]))})
    params = dict(ImageId=ami, InstanceType=instance_type, MinCount=1, MaxCount=len(numbers),
                  KeyName=key_name, IamInstanceProfile={"Name": profile},
                  InstanceInitiatedShutdownBehavior="terminate",
                  # IMDSv2 only, whatever the image and the account's default; a hop limit of 2 lets
                  # a container on the node reach its credentials too.
                  MetadataOptions={"HttpTokens": "required", "HttpPutResponseHopLimit": 2, "HttpEndpoint": "enabled"},
                  TagSpecifications=[{"ResourceType": "instance", "Tags": tags},
                                     {"ResourceType": "volume", "Tags": tags[:2]}])
    if boot_guard:
        # The deadline is counted on the machine: cloud-init runs the script a while after the launch.
        params["UserData"] = BOOT_GUARD % {"minutes": max(1, (boot_guard + 59) // 60),
                                           "end": int(budget[0]) if budget else 0}
    if subnet["public"] or awsrun_env("SSH_ADDRESS", "public") == "private":
        params.update(SubnetId=subnet["id"], SecurityGroupIds=[group_id])
    else:  # a subnet that maps no public IP: ask for one, or the node cannot be reached
        params["NetworkInterfaces"] = [{"DeviceIndex": 0, "SubnetId": subnet["id"], "Groups": [group_id],
                                        "AssociatePublicIpAddress": True}]
    if spot:  # an interrupted spot node is terminated, shows as lost, and `retry` runs it again
        # The first spot launch of an account makes its spot service-linked role, with the
        # caller's iam:CreateServiceLinkedRole (the policy grants it for spot.amazonaws.com).
        params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
            "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
        if budget:  # a rise of the spot price cannot break the budget: the machine is interrupted
            params["InstanceMarketOptions"]["SpotOptions"]["MaxPrice"] = "%.6f" % budget[1]
    return params


def launch_client():
    """An EC2 client that does not retry by itself: a zone out of capacity must fail at once, so
    that the next zone is tried (botocore would retry its 500 answer). run_instances retries."""
    return client_with("ec2", attempts=1)


def run_instances(params, seconds=300):
    """One RunInstances call; returns the new instance ids. Throttling is waited out, with
    backoff, and so is a new instance profile, which takes a few seconds to reach EC2; both
    up to a deadline. Capacity and quota errors are raised at once."""
    ec2 = launch_client()

    def waiting(e):
        return error_code(e) == "RequestLimitExceeded" or (
            error_code(e) == "InvalidParameterValue" and "instance profile" in str(e).lower())
    return [i["InstanceId"] for i in retrying(lambda: ec2.run_instances(**params), waiting, seconds)["Instances"]]


# Service Quotas' codes of EC2's vCPU quotas, per group of instance families: (on-demand, spot).
QUOTAS = {"standard": ("L-1216C47A", "L-34B43A08"), "g": ("L-DB2E81BA", "L-3819A6DF"),
          "p": ("L-417A185B", "L-7212CCBC"), "x": ("L-7295265B", "L-E3A00192"),
          "f": ("L-74FC7D96", "L-88CF9481"), "inf": ("L-1945791B", "L-B5D1601B")}
QUOTA_NAMES = {"standard": "Standard (A, C, D, H, I, M, R, T, Z)", "g": "G and VT", "p": "P", "x": "X",
               "f": "F", "inf": "Inf"}


def quota_family(instance_type):
    """The vCPU quota group of an instance type (t3.micro -> standard, g5.xlarge -> g), or None."""
    prefix = re.match(r"[a-z]*", instance_type).group(0)
    if prefix.startswith(("dl", "hpc", "mac", "trn", "u")):
        return None
    if prefix.startswith("inf"):
        return "inf"
    if prefix.startswith(("g", "vt")):
        return "g"
    if prefix[:1] in ("p", "x", "f"):
        return prefix[0]
    return "standard" if prefix[:1] and prefix[0] in "acdhimrtz" else None


def quota_advice(family, needed=None, spot=False, pool=None):
    """What to do about a vCPU quota group's limit; with `pool`, the pool size that fits."""
    fewer = ("or run the rows on %d machines, in pool mode: POOL=%d (--pool %d)" % (pool, pool, pool) if pool
             else "or run fewer rows at once")
    if family is None:
        return "ask for more in Service Quotas, " + fewer
    code = QUOTAS[family][spot]
    return ("ask for more (`aws service-quotas request-service-quota-increase --service-code ec2 --quota-code %s "
            "--desired-value %s`), %s" % (code, needed or "N", fewer))


def vcpu_quota(family, spot=False):
    """The account's vCPU quota of a quota group in this region, or None if it cannot be read."""
    try:
        quota = client("service-quotas").get_service_quota(ServiceCode="ec2", QuotaCode=QUOTAS[family][spot])
        return int(quota["Quota"]["Value"])
    except (ClientError, BotoCoreError):
        return None


def quota_need(counts, vcpus):
    """{type: (machines, vCPUs each)} for check_quotas from {type or type list: machines}: a list's
    machines are counted, in each quota family of its types, as its largest type there."""
    need = {}
    for itype, n in counts.items():
        largest = {}
        for t in alternatives(itype):
            family = quota_family(t)
            if family not in largest or vcpus[t] > vcpus[largest[family]]:
                largest[family] = t
        for t in largest.values():
            need[t] = (need.get(t, (0, vcpus[t]))[0] + n, vcpus[t])
    return need


def check_quotas(need, spot=False, pooled=False):
    """Before launching: refuse a job that needs more vCPUs of a quota group than the account's
    quota allows. `need` is {instance type: (count, vCPUs each)}. A quota that cannot be read
    is not checked: the launch's own error then says the same. Unless the machines are a pool
    already, the error names the pool size that fits."""
    groups = {}
    for itype, (count, each) in need.items():
        family = quota_family(itype)
        if family:
            total, types, most = groups.get(family, (0, [], 0))
            groups[family] = (total + count * each, types + ["%d x %s" % (count, itype)], max(most, each))
    for family, (needed, types, most) in sorted(groups.items()):
        allowed = vcpu_quota(family, spot)
        if allowed is None or needed <= allowed:
            continue
        fits = allowed // most if not pooled else None
        raise UserError("the job needs %d vCPUs of %s %s instances (%s), but the account's quota in %s "
                        "allows %d: %s" % (needed, "spot" if spot else "on-demand", QUOTA_NAMES[family],
                                           ", ".join(types), region(), allowed,
                                           quota_advice(family, needed, spot, fits)))


def launch_error(e, instance_type, ami):
    """Turn the launch failures a user can fix into one clear line."""
    code = error_code(e)
    hints = {
        "InstanceLimitExceeded": "an instance quota is reached: ask AWS for more, or run fewer rows",
        "VcpuLimitExceeded": "the account's vCPU quota for %s instances is reached: %s" % (
            instance_type, quota_advice(quota_family(instance_type))),
        "InsufficientInstanceCapacity": "AWS has no %s capacity right now: try later or another type" % instance_type,
        "OptInRequired": "accept the terms of AMI %s in the AWS Marketplace first" % ami,
        "UnauthorizedOperation": "your credentials may not launch instances: see awsrun-user-policy.json",
        "Unsupported": "%s is not offered here: try another type or region" % instance_type,
        "SpotMaxPriceTooLow": "the spot price of %s is above the price the budget counts: give a higher one in "
                              "--prices, or launch on demand" % instance_type,
    }
    if code in hints:
        return UserError("launching %s failed: %s (%s)" % (instance_type, hints[code], code))
    return e


def wait_running(ids, timeout=600):
    """Wait until every instance launched (`ids`) is running or has ended. Returns (each of them
    as find_nodes gives it, from the last look; {id: why} for those that ended or were still
    pending at the deadline, which are terminated). New ids may be unknown for a moment. With
    none, nothing is asked (DescribeInstances without ids lists every instance of the account)."""
    ids, seen = list(ids), {}
    if not ids:
        return [], {}
    for delay in backoff(time.monotonic() + timeout, first=1.0, cap=10.0):
        try:
            pages = client("ec2").get_paginator("describe_instances").paginate(InstanceIds=ids)
            seen = {i["InstanceId"]: node_from_instance(i) for p in pages for r in p["Reservations"]
                    for i in r["Instances"]}
        except ClientError as e:
            if error_code(e) != "InvalidInstanceID.NotFound":  # new ids take a moment to be seen
                raise
        if all(i in seen and seen[i]["state"] != "pending" for i in ids) or delay is None:
            break
    failed, late = {}, []
    for i in ids:
        state = seen[i]["state"] if i in seen else "not seen"
        if state == "running":
            continue
        if state in ("pending", "not seen"):
            late.append(i)
            state += " after %d s" % timeout
        reason = seen[i]["reason"] if i in seen else ""
        failed[i] = state + (": " + reason if reason else "")
    terminate(late)
    return list(seen.values()), failed


def to_launch(job, wanted):
    """(instance type -> the node numbers of the wanted tags that have no live instance, the
    job's live instances). UserError if a tag runs already as another type."""
    found = find_nodes(job, LIVE)
    live = newest_per_tag(found)
    for tag, node in live.items():
        if tag in wanted and node["type"] not in alternatives(wanted[tag][1]):
            raise UserError("%s is already running as %s, but line %d asks for %s: terminate %s first"
                            % (tag, node["type"], wanted[tag][0], wanted[tag][1], node["id"]))
    by_type = {}
    for tag, (_line, itype, _command) in sorted(wanted.items(), key=lambda kv: (kv[1][0], kv[0])):
        if tag not in live:
            by_type.setdefault(itype, []).append(number_of(job, tag))
    return by_type, found


def launch_all(args, placement, by_type, amis, key_name, group_id, profile, bucket, subnets, budget=None):
    """Launch every missing node, per instance type (each with its image, `amis`), failing over
    between zones; under a budget (`budget`: the deadline, {type: USD per hour}), ended by the
    deadline. Returns (the new instance ids, {tag: why it could not be launched})."""
    ids, missing, spot = [], {}, getattr(args, "spot", False)
    guard = args.ssh_timeout + args.install_tries * (args.install_timeout + 15) + 600
    for itype, numbers in sorted(by_type.items()):
        lacking = dict.fromkeys(numbers)
        for alternative in alternatives(itype):  # the next type only for those no zone had capacity for
            if alternative != alternatives(itype)[0]:
                log("%d of the rows of %s: trying %s" % (len(lacking), itype, alternative))
            got, lacking = launch(args.job, amis[alternative], alternative, sorted(lacking), key_name, group_id,
                                  profile, bucket, subnets, spot=spot, boot_guard=guard, pool=placement.pooled,
                                  budget=budget and (budget[0], budget[1][alternative]))
            ids += got
            log("launched %d x %s%s%s" % (len(got), alternative, " (spot)" if spot else "", " (pool)"
                                          if placement.pooled else "") +
                (" (%d could not be launched)" % len(lacking) if lacking else ""))
            if not lacking or not all(isinstance(why, NoCapacity) for why in lacking.values()):
                break
        missing.update({placement.machine_tag(itype, n): why for n, why in lacking.items()})
    if not by_type:
        log("all machines already exist")
    return ids, missing



# ---------------------------------------------------------------------------- preflight

DENIED = ("UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "403")
POLICY_HINT = "attach awsrun-user-policy.json to your user or role (docs/aws-setup.md, step 2)"


def raise_if_denied(e, action):
    """The one line for a call the caller's policy does not allow, raised if `e` is a refusal;
    else nothing: the caller goes on with its own handling of `e`."""
    if error_code(e) in DENIED:
        raise UserError("your credentials may not call %s (%s): %s" % (action, error_code(e), POLICY_HINT)) from None


def dry_run(call, action, **params):
    """Ask EC2 whether `call` would be allowed, with DryRun: 'allowed', or UserError. Throttling
    is waited out, as create waits it out."""
    try:
        retrying(lambda: call(DryRun=True, **params), error_code_in("RequestLimitExceeded"), 120)
    except ClientError as e:
        if error_code(e) == "DryRunOperation":
            return "allowed"
        raise_if_denied(e, action)
        raise UserError("%s would fail: %s" % (action, e.response.get("Error", {}).get("Message", e))) from None
    raise UserError("%s answered a DryRun request without DryRunOperation" % action)


class Preflight:
    """The checks of one create, in order; their facts (images, vCPUs, subnets, address, account)
    for create to use. With `say`, every check's line is printed and all of them run; without,
    the first failure is raised as it is."""

    def __init__(self, args, placement, wanted, say=False):
        self.args, self.placement, self.wanted, self.say = args, placement, wanted, say
        self.types = sorted({itype for _, itype, _ in wanted.values()})
        self.spot = getattr(args, "spot", False)
        self.failed, self.skipped, self.passed = [], [], 0
        self.amis = self.vcpus = self.subnets = self.cidr = self.account = None
        self.prefixes = []  # (url, DIR, region) of each --inputs prefix

    def check(self, what, work, can=True):
        """Run one check (`can`: True, or why it cannot run because an earlier one failed)."""
        if can is not True:
            self.skipped.append(what)
            if self.say:
                log("skip  %s: %s" % (what, can))
            return False
        try:
            result = work()
        except UserError as e:
            if not self.say:
                raise
            self.failed.append(what)
            log("FAIL  %s: %s" % (what, e))
            return False
        self.passed += 1
        if self.say:
            log("ok    %s: %s" % (what, result))
        return True

    # -- this machine

    def python(self):
        if sys.version_info < (3, 10):
            raise UserError("Python %d.%d: awsrun needs 3.10 or later" % sys.version_info[:2])
        return "Python %d.%d.%d" % sys.version_info[:3]

    def ssh_client(self):
        found = shutil.which("ssh")
        return ("%s (for make ssh; awsrun itself connects with paramiko)" % found if found else
                "none found: awsrun connects with paramiko, but make ssh needs OpenSSH's client")

    def address(self):
        self.cidr = caller_cidr()
        return "port 22 will be open to %s only" % self.cidr

    # -- the account

    def identity(self):
        who = client("sts").get_caller_identity()
        self.account = who["Account"]
        return "%s (account %s), region %s" % (who["Arn"], who["Account"], region())

    def images(self):
        self.amis, self.vcpus = check_image_and_types(self.args.ami, set(self.types))
        return ", ".join("%s on %s" % kv for kv in sorted(self.amis.items()))

    def network(self):
        self.subnets = launch_subnets(self.args.subnet)
        private = awsrun_env("SSH_ADDRESS", "public") == "private"
        public = sum(s["public"] for s in self.subnets)
        return "VPC %s, %d subnets (%s)%s" % (
            self.subnets[0]["vpc"], len(self.subnets), " ".join(s["zone"] for s in self.subnets),
            "; SSH by private address" if private else "" if public == len(self.subnets) else
            "; %d map no public IP: each node asks for one" % (len(self.subnets) - public))

    def quota(self):
        machines = self.placement.machines(self.wanted, self.vcpus, self.spot)
        counts = {}
        for _, itype, _ in machines.values():
            counts[itype] = counts.get(itype, 0) + 1
        check_quotas(quota_need(counts, self.vcpus), self.spot, pooled=self.placement.pooled)
        return "%s within the account's vCPU quotas" % ", ".join("%d x %s" % (n, t) for t, n in sorted(counts.items()))

    def bucket(self):
        name = self.args.bucket or self.args.job
        if bucket_is_ours(client("s3"), name):
            return "%s is yours already: its settings are kept" % name
        return "%s is free: create makes it (public access blocked, encrypted, TLS only)" % name

    def permissions(self):
        """RunInstances as DryRun, per instance type, with the parameters create would send (the
        key, group and profile only where they exist already: a DryRun naming one that does not
        is refused as invalid, not as denied)."""
        ec2, job = client("ec2"), self.args.job
        groups = ec2.describe_security_groups(Filters=group_filters(job, self.subnets[0]["vpc"]))
        group = (groups["SecurityGroups"] or [{}])[0].get("GroupId")
        keys = ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [job]}])["KeyPairs"]
        profile = role_name(job) if self.role_exists() else None
        for itype in sorted(self.amis):  # every type a row may run on
            params = launch_params(job, self.amis[itype], itype, [0], job, group, profile,
                                      self.args.bucket or job, self.subnets[0], self.spot, 600, self.placement.pooled)
            if not keys:
                params.pop("KeyName")
            if not profile:
                params.pop("IamInstanceProfile")
            if not group:
                params.pop("SecurityGroupIds", None)
                for interface in params.get("NetworkInterfaces", []):
                    interface.pop("Groups")
            dry_run(ec2.run_instances, "ec2:RunInstances", **params)
        made = []
        if not group:
            dry_run(ec2.create_security_group, "ec2:CreateSecurityGroup", GroupName=group_name(job),
                    Description="awsrun job %s: SSH from the dispatcher only" % job, VpcId=self.subnets[0]["vpc"],
                    TagSpecifications=job_tags("security-group", job))
            made.append("security group")
        if not keys:
            dry_run(ec2.create_key_pair, "ec2:CreateKeyPair", KeyName=job, KeyType="rsa",
                    TagSpecifications=job_tags("key-pair", job))
            made.append("key pair")
        return "RunInstances (%s)%s allowed" % (", ".join(sorted(self.amis)), "".join(", Create " + m for m in made))

    def inputs(self):
        """Every --inputs prefix readable and not empty; a line for each that is not."""
        self.prefixes, problems, count, size = [], [], 0, 0
        for url, folder in self.args.prefixes:
            try:
                _, _, region, objects, bytes_ = get_s3_files.check_prefix(url)
            except UserError as e:
                problems.append(str(e))
                continue
            self.prefixes.append((url, folder, region))
            count, size = count + objects, size + bytes_
        if problems:
            raise UserError("\n".join(problems), code=2)
        under = "1 prefix" if len(self.prefixes) == 1 else "%d prefixes" % len(self.prefixes)
        return "%d objects, %s, under %s: each machine downloads them all" % (count, get_s3_files.human(size), under)

    def role_exists(self):
        """Whether the node role exists; UserError if the caller may not even read it."""
        iam = client("iam")
        try:
            iam.get_role(RoleName=role_name(self.args.job))
            return True
        except iam.exceptions.NoSuchEntityException:
            return False
        except ClientError as e:
            raise_if_denied(e, "iam:GetRole")
            raise

    def role(self):
        name = role_name(self.args.job)
        iam = client("iam")
        try:
            iam.get_policy(PolicyArn=boundary_arn())
        except iam.exceptions.NoSuchEntityException:
            raise UserError("the permissions boundary %s is not in account %s: an admin makes it once from "
                            "awsrun-node-boundary.json (docs/aws-setup.md, step 2)" % (BOUNDARY, account()),
                            code=2) from None
        except ClientError as e:
            raise_if_denied(e, "iam:GetPolicy")
            raise
        within = ", within %s" % BOUNDARY
        return ("%s exists: create updates its policy" % name if self.role_exists() else
                "%s is free: create makes it" % name) + within

    def run(self, local=True):
        """Every check in order; a check that needs an earlier one's facts is skipped when that
        failed. create (local=False) leaves out this machine's checks and the quota: it checks
        the quota itself, for the machines still missing only. The checks that need no other's
        facts ask AWS at once, each in a thread of its own; their results are taken in order."""
        if local:
            self.check("python", self.python)
            self.check("ssh client", self.ssh_client)
        alone = [("credentials", self.identity), ("images", self.images), ("network", self.network),
                 ("bucket", self.bucket)] + [("inputs", self.inputs)] * bool(self.args.prefixes)
        alone.append(("node role", self.role))
        with ThreadPoolExecutor(len(alone)) as asking:
            answers = {what: asking.submit(work) for what, work in alone}
            self.check("credentials", answers["credentials"].result)
            has_images = self.check("images", answers["images"].result)
            has_network = self.check("network", answers["network"].result)
            if local:
                self.check("SSH from", self.address)
            if local:
                self.check("vCPU quota", self.quota, has_images or "needs the images' vCPUs")
            for what, _ in alone[3:]:  # the bucket, the inputs, the node role
                self.check(what, answers[what].result)
        self.check("permissions", self.permissions, (has_images and has_network) or "needs the images and the network")
        for what, work in self.placement.checks(self.types):
            self.check(what, work)
        return self


def dry_run_command(args, placement, wanted):
    """--dry-run: print every check; exit 0 only if create would start."""
    checks = Preflight(args, placement, wanted, say=True).run()
    if checks.failed:
        raise UserError("dry run: %d of %d checks failed (%s)%s; nothing was made"
                        % (len(checks.failed), len(checks.failed) + checks.passed, ", ".join(checks.failed),
                           ", %d could not run" % len(checks.skipped) if checks.skipped else ""))
    machines = placement.machines(wanted, checks.vcpus, checks.spot)
    log("dry run: all %d checks passed; create would launch up to %d machines for %d rows; nothing was made"
        % (checks.passed, len(machines), len(wanted)))
    return 0
