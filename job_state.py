"""Job state: what each tag of a job is doing, from its instances' tags and the outcome markers
in its bucket, and the commands that read it (status, watch, wait); retry, logs and get_s3_files
read it too. Runs on the user's machine; the node side uses only marker_key (save_results.py),
so this file is also copied to every node, next to cloud_setup.py.

    python cloud_setup.py status JOBNAME      # the table (cloud_setup.py keeps the command line)
"""
from __future__ import annotations

import json
import os
import sys
import time

from botocore.exceptions import ClientError

import cloud_setup as cs
from cloud_setup import UserError, log

STATE_GROUPS = [("pending or running", ("pending", "running")), ("shutting down", ("shutting-down",)),
                ("stopping or stopped", ("stopping", "stopped")), ("terminated", ("terminated",))]


def count_states():
    """Instances in the account and region, counted by state group."""
    pages = cs.client("ec2").get_paginator("describe_instances").paginate()
    states = [i["State"]["Name"] for p in pages for r in p["Reservations"] for i in r["Instances"]]
    return [(label, sum(s in group for s in states)) for label, group in STATE_GROUPS]


def print_num_running():
    """Print how many instances are pending or running, shutting down, stopped, terminated."""
    for label, count in count_states():
        print("%-20s %d" % (label + ":", count))


# A node that has uploaded its results also writes a small marker object
# _awsrun/TAG/exit=N,runtime=S, so that one listing tells the outcome of every tag.
MARKERS = "_awsrun/"
FINISHED = ("succeeded", "failed", "lost", "install-failed", "upload-failed")


def marker_key(tag, exit_code, runtime):
    return "%s%s/exit=%s,runtime=%d" % (MARKERS, tag, exit_code, runtime)


def read_markers(bucket):
    """tag -> the newest outcome {exit, runtime, when} in the bucket: one listing call."""
    found = {}
    try:
        pages = cs.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=MARKERS)
        objects = [o for page in pages for o in page.get("Contents", [])]
    except ClientError as e:
        if cs.error_code(e) == "NoSuchBucket":
            return found
        raise
    for o in sorted(objects, key=lambda o: o["LastModified"]):
        tag, _, fields = o["Key"][len(MARKERS):].partition("/")
        values = dict(f.partition("=")[::2] for f in fields.split(","))
        exit_code = values.get("exit", "")
        found[tag] = {"exit": int(exit_code) if exit_code.lstrip("-").isdigit() else None,
                      "runtime": int(values.get("runtime", "0") or 0), "when": o["LastModified"]}
    return found


def job_bucket(job, nodes=()):
    """The job's bucket: from its instances' tags, else from create's note, else the job name."""
    for n in nodes:
        return n["bucket"]
    try:
        with open(os.path.join(cs.state_dir(job), "bucket")) as f:
            return f.read().strip() or job
    except OSError:
        return job


def node_state(node, marker):
    """The state of one tag, from its newest instance and its newest outcome marker. A tag
    whose results are in but whose instance still runs is `succeeded (ending)`: its machine
    has not ended yet, and is still billing."""
    live = node is not None and node["state"] in cs.LIVE
    if marker is not None and not (live and node["launched"] > marker["when"]):
        done = "succeeded" if marker["exit"] == 0 else "failed (exit %s)" % marker["exit"]
        if live:
            return done + " (ending)" if done == "succeeded" else done[:-1] + ", ending)"
        return done
    if node is None:
        return "lost"
    if node["status"] in ("install-failed", "upload-failed"):
        return node["status"]
    if not live:
        return "stopped" if node["state"] in ("stopping", "stopped") else (
            "lost (idle)" if node["status"] == "idle-timeout" else
            "lost (uploader crashed)" if node["status"] == "crashed" else "lost")
    return node["status"] if node["status"] in ("installing", "ready", "running", "uploading") else "launching"


def elapsed(seconds):
    seconds = int(max(0, seconds))
    if seconds >= 3600:
        return "%dh%02dm" % (seconds // 3600, seconds % 3600 // 60)
    return "%dm%02ds" % (seconds // 60, seconds % 60) if seconds >= 60 else "%ds" % seconds


def job_status(job, now=None):
    """One row per tag of the job: tag, instance, type, state, elapsed, progress.
    Costs one DescribeInstances and one S3 listing, however many tags there are."""
    nodes = cs.current_nodes(cs.find_nodes(job))
    markers = read_markers(job_bucket(job, nodes.values()))
    now = now or time.time()
    rows = []
    for tag in sorted(set(nodes) | set(markers), key=lambda t: (len(t), t)):
        node, marker = nodes.get(tag), markers.get(tag)
        state = node_state(node, marker)
        if state.startswith(("succeeded", "failed")):
            seconds = marker["runtime"]
        elif node is not None:
            since = node["since"] or node["launched"].timestamp()
            seconds = now - since
        else:
            seconds = 0
        rows.append({"tag": tag, "instance": node["id"] if node else "", "type": node["type"] if node else "",
                     "state": state, "exit": marker["exit"] if marker and state.startswith(("succ", "fail")) else None,
                     "elapsed": int(seconds), "progress": node["progress"] if node else "",
                     "held_until": node["until"] if node and state == "upload-failed" else ""})
    return rows


def is_finished(row):
    """Finished, and its machine has ended (or is kept up on purpose: upload-failed)."""
    return row["state"].startswith(FINISHED) and not row["state"].endswith("ending)")


STATUS_FORMAT = "%-16s %-20s %-11s %-16s %8s  %s"


def print_job_status(job, rows):
    if not rows:
        print("no instances or results found for job %s" % job, file=sys.stderr)
        return
    print(STATUS_FORMAT % ("TAG", "INSTANCE", "TYPE", "STATE", "ELAPSED", "PROGRESS"))
    for r in rows:
        progress = "kept up until %s" % r["held_until"] if r.get("held_until") else r["progress"]
        print(STATUS_FORMAT % (r["tag"], r["instance"] or "-", r["type"] or "-", r["state"],
                               elapsed(r["elapsed"]), progress))
    counts = {}
    for r in rows:
        key = r["state"].split(" (")[0]
        counts[key] = counts.get(key, 0) + 1
    print("%d jobs: %s" % (len(rows), ", ".join("%d %s" % (n, k) for k, n in sorted(counts.items()))))


def status(job, watch=False, as_json=False, interval=10.0):
    """Print the job's table (or JSON); with watch, refresh until every job has finished."""
    while True:
        rows = job_status(job)
        if as_json:
            print(json.dumps(rows, indent=1), flush=True)
        else:
            if watch and sys.stdout.isatty():
                print("\033[H\033[J", end="")
            print_job_status(job, rows)
            sys.stdout.flush()
        if not watch or all(is_finished(r) for r in rows):
            return rows
        time.sleep(interval)


def wait_finished(job, timeout):
    """Wait until every node of the job has finished (uploaded and terminated itself, failed,
    or been lost). Raises UserError at the deadline, or naming the jobs that did not succeed."""
    deadline = time.monotonic() + timeout
    for delay in cs.backoff(deadline, first=0.5, cap=5.0):
        rows = job_status(job)
        busy = [r["tag"] for r in rows if not is_finished(r)]
        if not busy:
            break
        if delay is None:
            raise UserError("still running after %d s: %s (see `make status JOB=%s`)"
                            % (timeout, " ".join(busy), job))
    stuck = [r for r in rows if r["state"] == "upload-failed"]
    if stuck:
        raise UserError("upload failed on %s: those nodes are kept up until %s; see `make status JOB=%s`"
                        % (" ".join(r["tag"] for r in stuck), min(r["held_until"] or "?" for r in stuck), job))
    log("every node of job %s has finished: %s" % (job, ", ".join(
        "%s %s" % (r["tag"], r["state"]) for r in rows)))
