"""What `create` needs, asked of AWS before anything is made: `--dry-run` prints every check, and
`create` runs the same ones first and stops at the first that fails. Runs on the user's machine.

    python dispatcher.py AMI JOBNAME JOBFILE --dry-run [create's options]    # make dry-run

Each check reads, or asks with EC2's DryRun flag, and makes, changes and deletes nothing: the
caller's identity and region, the image of every instance type, the network, the vCPU quotas,
the bucket name, and the permissions create and dispatch use (RunInstances with the job's real
parameters, CreateSecurityGroup and CreateKeyPair as DryRun; the node role and the pool's
queues by a read that tells "denied" from "absent"); and this machine: Python, an ssh client,
the address the SSH rule will allow. The calls are per instance type, flat in the number of rows.
"""
from __future__ import annotations

import shutil
import sys

from botocore.exceptions import ClientError

import cloud_setup as cs
import launch
import pool
from cloud_setup import UserError, log

DENIED = ("UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "403")
POLICY_HINT = "attach awsrun-user-policy.json to your user or role (docs/aws-setup.md, step 2)"


def denied(e, action):
    """The one line for a call the caller's policy does not allow."""
    return UserError("your credentials may not call %s (%s): %s" % (action, cs.error_code(e), POLICY_HINT))


def dry_run(call, action, **params):
    """Ask EC2 whether `call` would be allowed, with DryRun: 'allowed', or UserError. Throttling
    is waited out, as create waits it out."""
    try:
        cs.retrying(lambda: call(DryRun=True, **params), cs.error_code_in("RequestLimitExceeded"), 120)
    except ClientError as e:
        if cs.error_code(e) == "DryRunOperation":
            return "allowed"
        if cs.error_code(e) in DENIED:
            raise denied(e, action) from None
        raise UserError("%s would fail: %s" % (action, e.response.get("Error", {}).get("Message", e))) from None
    raise UserError("%s answered a DryRun request without DryRunOperation" % action)


class Preflight:
    """The checks of one create, in order; their facts (images, vCPUs, subnets, address, account)
    for create to use. With `say`, every check's line is printed and all of them run; without,
    the first failure is raised as it is."""

    def __init__(self, args, wanted, say=False):
        self.args, self.wanted, self.say = args, wanted, say
        self.types = sorted({itype for _, itype, _ in wanted.values()})
        self.spot = getattr(args, "spot", False)
        self.failed, self.skipped, self.passed = [], [], 0
        self.amis = self.vcpus = self.subnets = self.cidr = self.account = None

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
        self.cidr = cs.caller_cidr()
        return "port 22 will be open to %s only" % self.cidr

    # -- the account

    def identity(self):
        who = cs.client("sts").get_caller_identity()
        self.account = who["Account"]
        return "%s (account %s), region %s" % (who["Arn"], who["Account"], cs.region())

    def images(self):
        self.amis, self.vcpus = launch.check_image_and_types(self.args.ami, set(self.types))
        return ", ".join("%s on %s" % kv for kv in sorted(self.amis.items()))

    def network(self):
        self.subnets = launch.launch_subnets(self.args.subnet)
        private = cs.setting("SSH_ADDRESS", "public") == "private"
        public = sum(s["public"] for s in self.subnets)
        return "VPC %s, %d subnets (%s)%s" % (
            self.subnets[0]["vpc"], len(self.subnets), " ".join(s["zone"] for s in self.subnets),
            "; SSH by private address" if private else "" if public == len(self.subnets) else
            "; %d map no public IP: each node asks for one" % (len(self.subnets) - public))

    def quota(self):
        machines = self.wanted
        if self.args.pool:
            machines = pool.machine_plan(self.args.job, self.wanted, self.args.pool, self.vcpus, self.spot)
        counts = {}
        for _, itype, _ in machines.values():
            counts[itype] = counts.get(itype, 0) + 1
        launch.check_quotas({t: (n, self.vcpus[t]) for t, n in counts.items()}, self.spot, pooled=bool(self.args.pool))
        return "%s within the account's vCPU quotas" % ", ".join("%d x %s" % (n, t) for t, n in sorted(counts.items()))

    def bucket(self):
        name = self.args.bucket or self.args.job
        if cs.bucket_is_ours(cs.client("s3"), name):
            return "%s is yours already: its settings are kept" % name
        return "%s is free: create makes it (public access blocked, encrypted, TLS only)" % name

    def permissions(self):
        """RunInstances as DryRun, per instance type, with the parameters create would send (the
        key, group and profile only where they exist already: a DryRun naming one that does not
        is refused as invalid, not as denied)."""
        ec2, job = cs.client("ec2"), self.args.job
        groups = ec2.describe_security_groups(Filters=cs.group_filters(job, self.subnets[0]["vpc"]))
        group = (groups["SecurityGroups"] or [{}])[0].get("GroupId")
        keys = ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [job]}])["KeyPairs"]
        profile = cs.role_name(job) if self.role_exists() else None
        for itype in self.types:
            params = launch.launch_params(job, self.amis[itype], itype, [0], job, group, profile,
                                      self.args.bucket or job, self.subnets[0], self.spot, 600, bool(self.args.pool))
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
            dry_run(ec2.create_security_group, "ec2:CreateSecurityGroup", GroupName=cs.group_name(job),
                    Description="awsrun job %s: SSH from the dispatcher only" % job, VpcId=self.subnets[0]["vpc"],
                    TagSpecifications=cs.job_tags("security-group", job))
            made.append("security group")
        if not keys:
            dry_run(ec2.create_key_pair, "ec2:CreateKeyPair", KeyName=job, KeyType="rsa",
                    TagSpecifications=cs.job_tags("key-pair", job))
            made.append("key pair")
        return "RunInstances (%s)%s allowed" % (", ".join(self.types), "".join(", Create " + m for m in made))

    def role_exists(self):
        """Whether the node role exists; UserError if the caller may not even read it."""
        iam = cs.client("iam")
        try:
            iam.get_role(RoleName=cs.role_name(self.args.job))
            return True
        except iam.exceptions.NoSuchEntityException:
            return False
        except ClientError as e:
            if cs.error_code(e) in DENIED:
                raise denied(e, "iam:GetRole") from None
            raise

    def role(self):
        name = cs.role_name(self.args.job)
        return "%s exists: create updates its policy" % name if self.role_exists() else \
            "%s is free: create makes it" % name

    def queues(self):
        sqs = cs.client("sqs")
        found = []
        for itype in self.types:
            try:
                sqs.get_queue_url(QueueName=pool.queue_name(self.args.job, itype))
                found.append(itype)
            except ClientError as e:
                if cs.error_code(e) in DENIED:
                    raise denied(e, "sqs:GetQueueUrl") from None
                if "NonExistentQueue" not in cs.error_code(e) and cs.error_code(e) != "QueueDoesNotExist":
                    raise
        return "%d of %d queues exist already" % (len(found), len(self.types))

    def run(self, local=True):
        """Every check in order; a check that needs an earlier one's facts is skipped when that
        failed. create (local=False) leaves out this machine's checks and the quota: it checks
        the quota itself, for the machines still missing only."""
        if local:
            self.check("python", self.python)
            self.check("ssh client", self.ssh_client)
        self.check("credentials", self.identity)
        has_images = self.check("images", self.images)
        has_network = self.check("network", self.network)
        if local:
            self.check("SSH from", self.address)
        if local:
            self.check("vCPU quota", self.quota, has_images or "needs the images' vCPUs")
        self.check("bucket", self.bucket)
        self.check("node role", self.role)
        self.check("permissions", self.permissions, (has_images and has_network) or "needs the images and the network")
        if self.args.pool:
            self.check("queues", self.queues)
        return self


def dry_run_command(args, wanted):
    """--dry-run: print every check; exit 0 only if create would start."""
    checks = Preflight(args, wanted, say=True).run()
    if checks.failed:
        raise UserError("dry run: %d of %d checks failed (%s)%s; nothing was made"
                        % (len(checks.failed), len(checks.failed) + checks.passed, ", ".join(checks.failed),
                           ", %d could not run" % len(checks.skipped) if checks.skipped else ""))
    machines = pool.machine_plan(args.job, wanted, args.pool, checks.vcpus, checks.spot) if args.pool else wanted
    log("dry run: all %d checks passed; create would launch up to %d machines for %d rows; nothing was made"
        % (checks.passed, len(machines), len(wanted)))
    return 0
