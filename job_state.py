"""Job state: the job's instances, found by their tags, and what each tag of the job is doing,
from those tags and the outcome markers in its bucket; and the commands that read it (status,
watch, wait). Retry, logs, the report and get_s3_files read it too. Runs on the user's machine,
and is also copied to every node, next to cloud_setup.py: the node side tags its instance
(set_status) and names its markers (marker_key for save_results.py, start_key for
node/pool_worker.py).

    python operate.py status JOBNAME      # the table (operate.py keeps the command line)
"""
from __future__ import annotations

import calendar
import json
import os
import re
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from botocore.exceptions import ClientError

import cloud_setup as cs
from cloud_setup import UserError, log

STARTED = ("running", "uploading", "upload-failed")  # a node's status once its work has begun

STATE_GROUPS = [("pending or running", ("pending", "running")), ("shutting down", ("shutting-down",)),
                ("stopping or stopped", ("stopping", "stopped")), ("terminated", ("terminated",))]


# ---------------------------------------------------------------------------- the job's instances, by their tags
# Every instance of a job carries its tags from the launch call on (launch.py). One launch tags
# many nodes alike, so a node's own tag is JOB + one of the numbers in ROWS_TAG, picked by its
# AmiLaunchIndex; the rows are written as runs, which keeps a large launch within a tag value.

def encode_rows(numbers):
    """[0, 1, 2, 5] -> '0-2,5' and [1, 3, 5, 7] -> '1-7:2': the node numbers of one launch,
    in launch order, as runs (job files often alternate instance types row by row)."""
    parts, i = [], 0
    while i < len(numbers):
        j = i + 1
        step = numbers[j] - numbers[i] if j < len(numbers) else 0
        while j + 1 < len(numbers) and numbers[j + 1] - numbers[j] == step:
            j += 1
        if step > 0 and (j - i >= 2 or step == 1):
            parts.append("%d-%d" % (numbers[i], numbers[j]) + (":%d" % step if step > 1 else ""))
            i = j + 1
        else:
            parts.append(str(numbers[i]))
            i += 1
    return ",".join(parts)


def decode_rows(text):
    """'0-2,5' -> [0, 1, 2, 5]: encode_rows() undone."""
    numbers = []
    for part in filter(None, text.split(",")):
        span, _, step = part.partition(":")
        first, _, last = span.partition("-")
        numbers.extend(range(int(first), int(last or first) + 1, int(step or 1)))
    return numbers


def launch_batches(numbers, limit=255):
    """Split node numbers into launches whose encoded rows fit in one tag value."""
    batches, current = [], []
    for n in numbers:
        if current and len(encode_rows(current + [n])) > limit:
            batches.append(current)
            current = []
        current.append(n)
    return batches + [current] if current else batches


def node_from_instance(instance):
    """The facts awsrun uses about one instance, with its tag worked out."""
    tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
    numbers = decode_rows(tags.get(cs.ROWS_TAG, ""))
    index = instance.get("AmiLaunchIndex", 0)
    job, pool_type = tags.get(cs.JOB_TAG, ""), tags.get(cs.POOL_TAG, "")
    number = numbers[index] if index < len(numbers) else None
    tag = None if number is None else cs.pool_tag(job, pool_type, number) if pool_type else cs.tag_name(job, number)
    return {"id": instance["InstanceId"], "type": instance["InstanceType"], "state": instance["State"]["Name"],
            "reason": instance.get("StateReason", {}).get("Message", ""), "job": job, "pool": pool_type, "tag": tag,
            "bucket": tags.get(cs.BUCKET_TAG, job), "status": tags.get(cs.STATUS_TAG, ""),
            "error": tags.get(cs.ERROR_TAG, ""), "launched": instance["LaunchTime"],
            "spot": instance.get("InstanceLifecycle") == "spot",
            "since": cs.parse_time(tags.get(cs.SINCE_TAG, "")), "progress": tags.get(cs.PROGRESS_TAG, ""),
            "until": tags.get(cs.UNTIL_TAG, ""), "deadline": tags.get(cs.DEADLINE_TAG, ""),
            "budget_end": cs.parse_time(tags.get(cs.BUDGET_TAG, "")), "ended": ended_at(instance),
            "address": instance.get("PrivateIpAddress", "") if cs.awsrun_env("SSH_ADDRESS", "public") == "private"
            else instance.get("PublicIpAddress") or instance.get("PublicDnsName") or ""}


def ended_at(instance):
    """When an instance that has ended (or is ending) was told to, from the time EC2 writes in its
    StateTransitionReason ("User initiated (2026-12-01 14:00:00 GMT)"), or None."""
    if instance["State"]["Name"] not in ("shutting-down", "terminated", "stopping", "stopped"):
        return None
    found = re.search(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:GMT|UTC)\)", instance.get("StateTransitionReason", ""))
    return calendar.timegm(time.strptime(found.group(1), "%Y-%m-%d %H:%M:%S")) if found else None


def set_status(ids, status, extra=None, ec2=None):
    """Tag instances with a status (and when it began) in one CreateTags call."""
    if ids:
        tags = [{"Key": cs.STATUS_TAG, "Value": status}, {"Key": cs.SINCE_TAG, "Value": cs.now_text()}]
        tags += [{"Key": k, "Value": v} for k, v in (extra or {}).items()]
        ids = list(ids)
        for i in range(0, len(ids), 1000):  # CreateTags takes up to 1000 resources
            (ec2 or cs.client("ec2")).create_tags(Resources=ids[i:i + 1000], Tags=tags)


def find_nodes(job, states=None):
    """Every instance of a job, from one (paginated) DescribeInstances call."""
    filters = [{"Name": "tag:" + cs.JOB_TAG, "Values": [job]}]
    if states:
        filters.append({"Name": "instance-state-name", "Values": list(states)})
    pages = cs.client("ec2").get_paginator("describe_instances").paginate(Filters=filters)
    return [node_from_instance(i) for page in pages for r in page["Reservations"] for i in r["Instances"]]


LIVE = ("pending", "running")


def newest_per_tag(nodes):
    """tag -> the node that stands for it: a live one if any, else the newest."""
    best = {}
    for n in sorted(nodes, key=lambda n: (n["state"] in LIVE, n["launched"])):
        best[n["tag"]] = n
    return best


# ---------------------------------------------------------------------------- status

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
# _awsrun/TAG/exit=N,runtime=S, so that one listing tells the outcome of every tag. In pool
# mode, the worker also marks each start of a row, _awsrun/TAG/start=INSTANCE,attempt=K, and
# dispatch marks the rows it puts in a queue, a few hundred per object:
# _awsrun/queued/TYPE/attempts=A,rows=0-99,120 (the row numbers as in awsrun:rows).
MARKERS = "_awsrun/"
QUEUED = MARKERS + "queued/"
# Each dispatch also writes what it started, _awsrun/dispatch/TIME.json (record_dispatch): the
# machines' launch and install times and the rows' commands, for report.py.
DISPATCHED = MARKERS + "dispatch/"
BUDGET = MARKERS + "budget/budget.json"  # the job's budget and the machines launched under it (cost.Budget)
FINISHED = ("succeeded", "failed", "lost", "install-failed", "upload-failed", "ended", "stopped by budget")


def marker_key(tag, exit_code, runtime, stopped=None):
    """The outcome marker of a row; `stopped`: what stopped it (budget) if not itself."""
    return "%s%s/exit=%s,runtime=%d%s" % (MARKERS, tag, exit_code, runtime, ",stopped=" + stopped if stopped else "")


def start_key(tag, instance_id, attempt):
    return "%s%s/start=%s,attempt=%d" % (MARKERS, tag, instance_id, attempt)


def queued_key(instance_type, attempts, numbers):
    return "%s%s/attempts=%d,rows=%s" % (QUEUED, instance_type, attempts, encode_rows(numbers))


def launch_time(node):
    """When EC2 launched the node, as the node's own times are written (cloud_setup.parse_time)."""
    return node["launched"].strftime(cs.TIME_FORMAT) if node.get("launched") else None


def record_dispatch(bucket, about, nodes, results, rows):
    """Write what a dispatch started to the bucket (DISPATCHED): each machine's launch and
    install times and each row's command, so that a report made after the machines are gone
    still knows them, even for a row lost before it uploaded anything. `about`: the job, its
    placement and limits; `rows`: {tag: (line, type, command)}: the rows queued, and those whose
    own machine started."""
    machines = {}
    for n in nodes:
        if results.get(n["tag"]) == "started":
            times = (n.get("install_times") or []) + [None, None]
            machines[n["id"]] = {"tag": n["tag"], "type": n["type"], "spot": n.get("spot", False),
                                 "launched": launch_time(n), "install_started": times[0], "install_ended": times[1]}
    ids = {n["tag"]: n["id"] for n in nodes if n["id"] in machines}
    rows = {tag: {"command": command, "instance_type": itype, "instance_id": ids.get(tag)}
            for tag, (_, itype, command) in rows.items()}
    if machines or rows:
        write_dispatch(bucket, dict(about, dispatched=cs.now_text(), machines=machines, rows=rows))


def write_dispatch(bucket, record):
    """Put a dispatch's record in the bucket; a failure is said, never fatal (the rows run)."""
    now = time.time()
    key = "%s%s.%06dZ.json" % (DISPATCHED, time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)), now % 1 * 1e6)
    try:
        cs.client("s3").put_object(Bucket=bucket, Key=key, ContentType="application/json",
                                   Body=json.dumps(record, indent=1, ensure_ascii=False).encode())
    except ClientError as e:
        log("could not record this dispatch in s3://%s/%s (the report will lack its launch and install times): %s"
            % (bucket, key, e))


def list_markers(bucket):
    """Every marker object of the bucket, oldest first: one listing call."""
    try:
        pages = cs.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=MARKERS)
        return sorted((o for page in pages for o in page.get("Contents", [])), key=lambda o: o["LastModified"])
    except ClientError as e:
        if cs.error_code(e) == "NoSuchBucket":
            return []
        raise


def fields_of(text):
    return dict(f.partition("=")[::2] for f in text.split(","))


def tag_markers(objects):
    """(tag, fields, when) of every per-tag marker, oldest first."""
    for o in objects:
        tag, _, fields = o["Key"][len(MARKERS):].partition("/")
        yield tag, fields_of(fields), o["LastModified"]


def outcomes(objects):
    """tag -> the newest outcome {exit, runtime, when}."""
    found = {}
    for tag, values, when in tag_markers(objects):
        if "exit" in values:
            exit_code = values["exit"]
            found[tag] = {"exit": cs.exit_code_of(exit_code), "stopped": values.get("stopped"),
                          "runtime": int(values.get("runtime", "0") or 0), "when": when}
    return found


def starts(objects):
    """tag -> the newest start of a pool row {instance, attempt, when}."""
    return {tag: {"instance": values["start"], "attempt": int(values.get("attempt") or 1), "when": when}
            for tag, values, when in tag_markers(objects) if "start" in values}


def queued(objects, job):
    """tag -> when its row was last put in a queue {type, attempts, when} (pool mode)."""
    found = {}
    for o in objects:
        if o["Key"].startswith(QUEUED):
            itype, _, rest = o["Key"][len(QUEUED):].partition("/")
            attempts, _, rows = rest.partition(",rows=")
            for n in decode_rows(rows):
                found[cs.tag_name(job, n)] = {"type": itype, "attempts": int(fields_of(attempts)["attempts"]),
                                              "when": o["LastModified"]}
    return found


def read_json(s3, bucket, key):
    """An object's JSON, or None if it is not there."""
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as e:
        if cs.error_code(e) in ("NoSuchKey", "404"):
            return None
        raise


def read_manifests(s3, bucket, tags):
    """{tag: its manifest} of these tags, those whose manifest is in the bucket; 32 GETs at a time."""
    with ThreadPoolExecutor(32) as reading:
        found = dict(zip(tags, reading.map(lambda t: read_json(s3, bucket, t + "/manifest.json"), tags)))
    return {t: m for t, m in found.items() if m}


def read_markers(bucket):
    """tag -> the newest outcome {exit, runtime, when} in the bucket: one listing call."""
    return outcomes(list_markers(bucket))


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
    live = node is not None and node["state"] in LIVE
    if marker is not None and not (live and node["launched"] > marker["when"]):
        done = outcome_state(marker)
        if live:
            return done[:-1] + ", ending)" if done.endswith(")") else done + " (ending)"
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


def outcome_state(marker):
    if marker.get("stopped") == "budget":
        return "stopped by budget"
    return "succeeded" if marker["exit"] == 0 else "failed (exit %s)" % marker["exit"]


def pool_row_state(queue, start, marker, machines):
    """(state, instance id) of a row in pool mode, from the newest of its queued, start and
    outcome markers (in that order when S3 gives them the same second). A started row whose
    machine is gone is queued again, by SQS, until it has been lost `attempts` times: then
    SQS moves it to the dead-letter queue."""
    events = [(e["when"], rank, e) for rank, e in enumerate((queue, start, marker)) if e is not None]
    _, rank, newest = max(events, key=lambda e: e[:2])
    if rank == 2:
        return outcome_state(newest), ""
    if rank == 0:
        return "queued", ""
    machine = machines.get(newest["instance"])
    if machine is not None and machine["state"] in LIVE and machine.get("status") != "upload-failed":
        return "running", newest["instance"]  # (a held machine has handed back every row it had)
    if queue is not None and newest["attempt"] >= queue["attempts"]:
        return "failed (lost %d times)" % newest["attempt"], newest["instance"]
    return "queued", ""


def machine_state(node):
    """The state of a pool machine: its own status while it is up; ended once its worker has
    ended it, else lost."""
    if node["state"] in LIVE:
        if node["status"] in ("installing", "ready", "upload-failed"):
            return node["status"]
        return "working" if node["status"] == "running" else "launching"
    if node["status"] in ("ended", "install-failed"):
        return node["status"]
    return "lost (worker crashed)" if node["status"] == "crashed" else "lost"


def since_of(node):
    """When a node's current status began (or, without one, its launch), in epoch seconds."""
    return node["since"] or node["launched"].timestamp()


def job_status(job, now=None):
    """One row per tag of the job: tag, instance, type, state, elapsed, progress; in pool mode
    the rows, then the pool machines. Costs one DescribeInstances and one S3 listing, however
    many tags there are."""
    found = newest_per_tag(find_nodes(job))
    nodes = {t: n for t, n in found.items() if not n["pool"]}
    machines = {t: n for t, n in found.items() if n["pool"]}
    by_id = {n["id"]: n for n in machines.values()}
    objects = list_markers(job_bucket(job, found.values()))
    markers, started, waiting = outcomes(objects), starts(objects), queued(objects, job)
    now = now or time.time()
    rows = []
    for tag in sorted(set(nodes) | set(markers) | set(waiting), key=cs.tag_order):
        node, marker = nodes.get(tag), markers.get(tag)
        if tag in waiting:
            state, instance = pool_row_state(waiting[tag], started.get(tag), marker, by_id)
            done = state.startswith(("succ", "failed (exit"))  # not `failed (lost K times)`
            since = started[tag]["when"] if instance else waiting[tag]["when"]
            seconds = marker["runtime"] if done else now - since.timestamp()
            attempt = started[tag]["attempt"] if tag in started else 0
            rows.append({"tag": tag, "instance": instance, "type": waiting[tag]["type"], "state": state,
                         "exit": marker["exit"] if done else None,
                         "elapsed": int(seconds), "progress": "attempt %d" % attempt if attempt > 1 else "",
                         "held_until": "", "deadline": "", "kind": "row"})
            continue
        state = node_state(node, marker)
        if state.startswith(("succeeded", "failed")):
            seconds = marker["runtime"]
        elif node is not None:
            seconds = now - since_of(node)
        else:
            seconds = 0
        rows.append({"tag": tag, "instance": node["id"] if node else "", "type": node["type"] if node else "",
                     "state": state, "exit": marker["exit"] if marker and state.startswith(("succ", "fail")) else None,
                     "elapsed": int(seconds), "progress": node["progress"] if node else "",
                     "held_until": node["until"] if node and state == "upload-failed" else "",
                     "deadline": node["deadline"] if node and state == "running" else "", "kind": "row"})
    running = Counter(r["instance"] for r in rows if r["state"] == "running")
    for tag, node in sorted(machines.items(), key=lambda kv: (len(kv[0]), kv[0])):
        rows.append({"tag": tag, "instance": node["id"], "type": node["type"], "state": machine_state(node),
                     "exit": None, "elapsed": int(now - since_of(node)), "held_until": node["until"],
                     "progress": ("%d rows running" % running[node["id"]] if running[node["id"]] else "")
                     or node["progress"],
                     "kind": "machine"})
    return rows


def is_finished(row):
    """Finished, and its machine has ended (or is kept up on purpose: upload-failed)."""
    return row["state"].startswith(FINISHED) and not row["state"].endswith("ending)")


STATUS_FORMAT = "%-*s %-20s %-11s %-16s %8s  %-20s  %s"


def print_job_status(job, rows):
    if not rows:
        print("no instances or results found for job %s" % job, file=sys.stderr)
        return
    width = max([16] + [len(r["tag"]) for r in rows])
    print(STATUS_FORMAT % (width, "TAG", "INSTANCE", "TYPE", "STATE", "ELAPSED", "STOPS AT", "PROGRESS"))
    for r in rows:
        progress = "kept up until %s" % r["held_until"] if r["state"] == "upload-failed" else r["progress"]
        print(STATUS_FORMAT % (width, r["tag"], r["instance"] or "-", r["type"] or "-", r["state"],
                               elapsed(r["elapsed"]), r.get("deadline") or "-", progress))
    for kind, word in (("row", "jobs"), ("machine", "pool machines")):
        counts = {}
        for r in rows:
            if r.get("kind", "row") == kind:
                key = r["state"].split(" (")[0]
                counts[key] = counts.get(key, 0) + 1
        if counts:
            print("%d %s: %s" % (sum(counts.values()), word,
                                 ", ".join("%d %s" % (n, k) for k, n in sorted(counts.items()))))


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


def stranded_rows(rows):
    """Queued rows of an instance type that has no pool machine up any more."""
    up = {r["type"] for r in rows if r["kind"] == "machine" and not is_finished(r)}
    return [r["tag"] for r in rows if r["state"] == "queued" and r["type"] not in up]


def wait_finished(job, timeout):
    """Wait until every node of the job has finished (uploaded and terminated itself, failed,
    or been lost). Raises UserError at the deadline, or naming the jobs that did not succeed."""
    deadline = time.monotonic() + timeout
    for delay in cs.backoff(deadline, first=0.5, cap=5.0):
        rows = job_status(job)
        busy = [r["tag"] for r in rows if not is_finished(r)]
        if not busy:
            break
        stranded = stranded_rows(rows)
        if stranded:
            raise UserError("%d rows are queued but no pool machine of their type is left to run them (%s): "
                            "`make retry` launches the pool again" % (len(stranded), " ".join(stranded[:10])))
        if delay is None:
            raise UserError("still running after %d s: %s (see `make status JOB=%s`)"
                            % (timeout, " ".join(busy), job))
    stuck = [r for r in rows if r["state"] == "upload-failed"]
    if stuck:
        raise UserError("upload failed on %s: those nodes are kept up until %s; see `make status JOB=%s`"
                        % (" ".join(r["tag"] for r in stuck), min(r["held_until"] or "?" for r in stuck), job))
    log("every node of job %s has finished: %s" % (job, ", ".join(
        "%s %s" % (r["tag"], r["state"]) for r in rows)))
