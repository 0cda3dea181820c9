"""The command line of a job's state and teardown: status, wait, down and clean, and two
helpers the Makefile uses. Runs on the user's machine.

    python operate.py status              # counts of instances by state
    python operate.py status JOBNAME      # one line per tag of the job
    python operate.py status JOBNAME --watch   # refresh until every job has finished
    python operate.py wait JOBNAME        # until every node has finished
    python operate.py down JOBNAME        # terminate every instance of the job
    python operate.py clean JOBNAME [--delete-bucket]   # and delete all it created
    python operate.py default-ami [--arch arm64]   # the current Ubuntu LTS image
    python operate.py job-name awsjobs/x.csv

`python cloud_setup.py ...` runs the same command line.
"""
from __future__ import annotations

import argparse
import shutil

from botocore.exceptions import WaiterError

import cloud_setup as cs
import launch
import job_state
import pool
import ssh
from cloud_setup import UserError, log


def down(job, timeout=600):
    """Terminate every instance of the job, wait until they have terminated, list them."""
    nodes = [n for n in job_state.find_nodes(job) if n["state"] != "terminated"]
    ids = [n["id"] for n in nodes]
    if ids:
        cs.terminate(ids)
        try:
            cs.client("ec2").get_waiter("instance_terminated").wait(
                InstanceIds=ids, WaiterConfig={"Delay": 5, "MaxAttempts": max(1, timeout // 5)})
        except WaiterError as e:
            raise UserError("not every instance terminated in %d s: %s" % (timeout, e)) from e
    for n in sorted(nodes, key=lambda n: n["tag"] or ""):
        print("%s\t%s\tterminated" % (n["tag"], n["id"]))
    log("job %s: %d instances terminated" % (job, len(ids)) if ids else "job %s: no instance was running" % job)


def clean(job, delete_bucket=False, timeout=600):
    """down(), then delete the job's security group, key pair (and ~/.ssh/JOB.pem), role and
    instance profile, queues (pool mode), and awsrun's state for it; the bucket too only if asked."""
    bucket = job_state.job_bucket(job, job_state.find_nodes(job))
    down(job, timeout)
    cs.delete_security_group(job, timeout)
    ssh.delete_key_pair(job)
    cs.delete_instance_profile(job)
    queues = pool.delete_queues(job)
    shutil.rmtree(cs.state_dir(job), ignore_errors=True)
    made = "security group, key pair, role, instance profile" + (", %d queues" % queues if queues else "")
    if delete_bucket:
        cs.delete_bucket(bucket)
        log("job %s: %s and bucket %s deleted" % (job, made, bucket))
    else:
        log("job %s: %s deleted; bucket %s kept (DELETE_BUCKET=yes deletes it)" % (job, made, bucket))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    status_cmd = sub.add_parser("status", help="instance counts, or one line per tag of JOB")
    status_cmd.add_argument("job", nargs="?")
    status_cmd.add_argument("--watch", action="store_true", help="refresh until every job has finished")
    status_cmd.add_argument("--json", action="store_true", help="print the rows as JSON")
    status_cmd.add_argument("--interval", type=float, default=10.0, help="seconds between refreshes")
    wait = sub.add_parser("wait", help="wait until every node of JOB has finished")
    wait.add_argument("job")
    wait.add_argument("--timeout", type=int, default=24 * 3600, help="seconds (default: a day)")
    down_cmd = sub.add_parser("down", help="terminate every instance of JOB and wait for it")
    down_cmd.add_argument("job")
    clean_cmd = sub.add_parser("clean", help="down, then delete JOB's security group, key pair and role")
    clean_cmd.add_argument("job")
    clean_cmd.add_argument("--delete-bucket", action="store_true", help="delete the results bucket too")
    ami_cmd = sub.add_parser("default-ami", help="print the current Ubuntu LTS AMI of the region")
    ami_cmd.add_argument("--arch", choices=sorted(launch.UBUNTU_ARCH.values()), default="amd64")
    name = sub.add_parser("job-name", help="print the default job name for a job file")
    name.add_argument("jobfile")
    args = parser.parse_args(argv)

    def run():
        if args.command == "job-name":
            print(cs.default_job_name(args.jobfile))
            return 0
        if args.command == "default-ami":
            print(launch.default_ami(args.arch))
            return 0
        if not getattr(args, "job", None):
            job_state.print_num_running()
            return 0
        cs.check_job_name(args.job)
        if args.command == "status":
            job_state.status(args.job, args.watch, args.json, args.interval)
        elif args.command == "wait":
            job_state.wait_finished(args.job, args.timeout)
        elif args.command == "down":
            down(args.job)
        elif args.command == "clean":
            clean(args.job, args.delete_bucket)
        return 0
    return cs.run_cli(run)


if __name__ == "__main__":
    cs.leave(main())
