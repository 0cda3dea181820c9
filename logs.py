"""Print a job's log: from the node over SSH while it runs, from the bucket once it has finished.
Runs on the user's machine.

    python logs.py JOBNAME TAG              # the command's screen_output.txt
    python logs.py JOBNAME TAG --install    # the install script's logs, every try

A node that failed its install and was terminated has its install output kept on this machine
(awsrun's state folder); that is printed when nothing else is left.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

import cloud_setup as cs
import job_state
from cloud_setup import UserError
import ssh as remote


def from_node(job, node, install, folder=""):
    """The log read over SSH (from `folder` in the node's work directory: a pool row's), or
    None if the node has none yet."""
    cs.refresh_ssh_rule(job)  # the caller may be on another network since create
    connections = remote.Connections(job, timeout=60)
    ssh = connections.connect(node)
    try:
        d = remote.remote_dir(node["tag"]) + ("/" + shlex.quote(folder) if folder else "")
        files = ".awsrun/install.*.log" if install else "screen_output.txt"
        command = "cd %s && for f in %s; do [ -f \"$f\" ] || exit 3; %s\"$f\"; done" % (
            d, files, 'echo "--- $f"; cat ' if install else "cat ")
        code, output = remote.run(ssh, command, timeout=120)
    finally:
        remote.close(ssh)
    return output if code == 0 else None


def from_bucket(bucket, tag, install):
    """The log from the bucket, or None."""
    s3 = cs.client("s3")
    keys = ["%s/screen_output.txt" % tag]
    if install:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="%s/logs/" % tag)
        keys = sorted(o["Key"] for p in pages for o in p.get("Contents", []))
    parts = []
    for key in keys:
        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8", "replace")
        except (s3.exceptions.NoSuchKey, s3.exceptions.NoSuchBucket):
            continue
        parts.append(("--- %s\n" % key.rsplit("/", 1)[1] if install else "") + body)
    return "".join(parts) if parts else None


def logs(job, tag, install=False):
    nodes = job_state.newest_per_tag(job_state.find_nodes(job))
    node, folder = nodes.get(tag), ""
    if node is None:  # pool mode: the machine that runs the row now, if any
        start = job_state.starts(job_state.list_markers(job_state.job_bucket(job, nodes.values()))).get(tag)
        machines = {n["id"]: n for n in nodes.values() if n["pool"]}
        if start and start["instance"] in machines:
            node, folder = machines[start["instance"]], ".awsrun/rows/" + tag
    if node is not None and node["state"] == "running":
        text = from_node(job, node, install, folder)
        if text is not None:
            return text
    text = from_bucket(job_state.job_bucket(job, nodes.values()), tag, install)
    if text is not None:
        return text
    kept = os.path.join(cs.state_dir(job), "%s.install.log" % tag)
    if install and os.path.exists(kept):
        with open(kept) as f:
            return f.read()
    if node is None:
        raise UserError("no machine and no results for %s: check JOB= and TAG= (`make status JOB=%s`)" % (tag, job))
    raise UserError("%s has no %s log yet (it is %s)" % (tag, "install" if install else "job", node["state"]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job")
    p.add_argument("tag")
    p.add_argument("--install", action="store_true", help="the install script's logs instead")
    args = p.parse_args(argv)

    def run():
        cs.check_job_name(args.job)
        sys.stdout.write(logs(args.job, args.tag, args.install))
        return 0
    return cs.run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
