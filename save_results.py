"""Runs ON the node after the job's command: uploads the results, then terminates the node.

    python3 .awsrun/save_results.py     # from the node's work directory (run.sh does this)

Runs on the node image's own boto3: Ubuntu 24.04's packaged 1.34.46 or later.

Uploads to s3://BUCKET/TAG/: every file under output/ (relative paths kept), the extra
output files (-o), screen_output.txt, the install logs (logs/), then manifest.json (job,
tag, instance, command, exit code, the machine's launch and install times, the row's start,
end and upload times, every file with its size and SHA-256, and the host: type, zone, spot or
on-demand, image, kernel, CPU, memory and awsrun's version), and last a small marker
_awsrun/TAG/exit=N,runtime=S that status lists (it names the instance and the upload's time,
so every upload's marker differs). Then it terminates its own instance through the EC2 API.
It never changes the bucket's settings.

Exit status, which run.sh acts on: 0 when the results are in the bucket (run.sh then also
shuts the machine down, in case the API call did not get through); UPLOAD_FAILED (75, in
cloud_setup.NODE_EXIT) when the upload failed: the node is tagged awsrun:status=upload-failed
with awsrun:until, and run.sh keeps it up until then so that nothing is lost; anything else (a
crash) and run.sh shuts it down.

Reads .awsrun/ in the work directory: node.json (written by the dispatcher) and started,
ended and exit_code (written by node/row.sh, the one row runner); needs only the
standard library and boto3, on Python 3.8 or later.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

import cloud_setup as cs
import job_state

UPLOAD_FAILED = cs.NODE_EXIT["UPLOAD_FAILED"]
# botocore 1.36 added per-request checksums and the option to turn them off; older ones send none.
NO_CHECKSUMS = ({"request_checksum_calculation": "when_required"}
                if "request_checksum_calculation" in Config.OPTION_DEFAULTS else {})
# S3 answers a busy prefix with 503 SlowDown and a conflicting operation with 409
# OperationAborted; botocore's standard mode retries the first only, so both are retried here.
RETRIED = ("OperationAborted", "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout")

# Uploads at once: 4 per core, at most 32 (more lose on a small machine, where the uploader's
# Python competes for the CPU: BENCHMARKS.md). Files under 128 MB go in one request each.
TRANSFER = TransferConfig(max_concurrency=min(32, 4 * (os.cpu_count() or 2)), multipart_threshold=128 << 20,
                          multipart_chunksize=16 << 20)


def read(path, default=""):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def result_files(root, outputs):
    """(local path, name in the bucket) for output/**, the extra outputs, the log and the
    install logs (as logs/install.N.log) of the work directory `root`; and the extra outputs
    that do not exist."""
    files, missing = [], []
    for folder, dirs, names in os.walk(os.path.join(root, "output")):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                files.append((path, key_of(os.path.relpath(path, root))))
    for out in outputs:
        if os.path.isfile(os.path.join(root, out)):
            files.append((os.path.join(root, out), out.replace(os.sep, "/")))
        else:
            missing.append(out)
    if os.path.isfile(os.path.join(root, "screen_output.txt")):
        files.append((os.path.join(root, "screen_output.txt"), "screen_output.txt"))
    for name in sorted(os.listdir(os.path.join(root, ".awsrun"))):
        if name.startswith("install.") and name.endswith(".log"):
            files.append((os.path.join(root, ".awsrun", name), "logs/" + name))
    return files, missing


def key_of(path):
    """A file's name in the bucket: its relative path, with bytes that are not UTF-8 written
    as \\xNN (S3 keys are UTF-8; such a name would otherwise stop the upload)."""
    raw = os.fsencode(path).replace(os.sep.encode(), b"/")
    return raw.decode("utf-8", "backslashreplace")


def make_manifest(node, root, files, missing):
    code = read(os.path.join(root, ".awsrun", "exit_code"))
    limit = node.get("max_runtime")
    manifest = {"job": node["job"], "tag": node["tag"], "instance_id": node["instance_id"],
                "instance_type": node["instance_type"], "command": node["command"],
                "exit_code": cs.exit_code_of(code),
                "launched": node.get("launched"), "spot": bool(node.get("spot")),
                "install_started": read(os.path.join(root, ".awsrun", "install_started")) or None,
                "install_ended": read(os.path.join(root, ".awsrun", "install_ended")) or None,
                "started": read(os.path.join(root, ".awsrun", "started")),
                "ended": read(os.path.join(root, ".awsrun", "ended")),
                "uploaded": cs.now_text(),
                "files": [], "missing_outputs": missing, "max_runtime": limit,
                "timed_out": bool(limit) and cs.exit_code_of(code) in (
                    cs.NODE_EXIT["TIMED_OUT"], cs.NODE_EXIT["KILLED"]),
                "stopped_by": read(os.path.join(root, ".awsrun", "stopped_by")) or None}
    if node.get("attempt"):  # pool mode: which time SQS gave this row out, on which machine
        manifest.update(attempt=node["attempt"], machine=node.get("machine"), idle=node.get("idle"),
                        slots=node.get("slots"))
    manifest["host"] = host(node)
    return manifest


def host(node):
    """Where the row ran, as a paper reports a timing: the machine (from the metadata service,
    which knows it best, else node.json), its kernel, CPU and memory (this machine's own), the
    row's attempt and the awsrun that sent it."""
    meta = machine()
    return {"instance_type": meta.get("instance-type") or node["instance_type"],
            "instance_id": node["instance_id"], "zone": meta.get("placement/availability-zone"),
            "lifecycle": meta.get("instance-life-cycle") or ("spot" if node.get("spot") else "on-demand"),
            "ami": meta.get("ami-id"), "kernel": platform.release(), "cpu_model": meta["cpu_model"],
            "cpus": os.cpu_count(), "memory_mb": meta["memory_mb"], "attempt": node.get("attempt") or 1,
            "awsrun": node.get("awsrun")}


@functools.lru_cache(maxsize=None)
def machine():
    """What the metadata service and /proc say of this machine: asked once (a pool worker
    uploads many rows)."""
    meta = cs.instance_metadata("instance-type", "placement/availability-zone", "ami-id", "instance-life-cycle")
    return dict(meta, cpu_model=cpu_model(), memory_mb=memory_mb())


def cpu_model():
    """The CPU's name: /proc/cpuinfo's model name (x86), else lscpu's (Arm, whose cpuinfo has none)."""
    for line in read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    try:
        listed = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((line.partition(":")[2].strip() for line in listed.splitlines() if line.startswith("Model name")),
                None)


def memory_mb():
    """MemTotal of /proc/meminfo, in MiB."""
    for line in read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return None


def describe(path, key):
    return {"path": key, "size": os.path.getsize(path), "sha256": cs.file_hash(path, "sha256")}


def upload(s3, bucket, tag, files):
    """Upload every file to TAG/ in parallel with the transfer manager, hashing them at the
    same time for the manifest (hashlib lets go of the GIL). A file that S3 turned away with
    a retryable answer is sent again. Every transfer ends on its own before an error is
    raised: leaving the manager with one raised cancels the others midway, and botocore then
    sends each cancelled one again, ten times (s3transfer 0.10). Returns the manifest's files."""
    with ThreadPoolExecutor(2) as hashing:
        described = [hashing.submit(describe, path, key) for path, key in files]
        pending = files
        for delay in cs.backoff(time.monotonic() + 300, first=1.0, cap=20.0):
            again, refused = [], []
            with create_transfer_manager(s3, TRANSFER) as manager:
                futures = [(f, manager.upload(f[0], bucket, "%s/%s" % (tag, f[1]))) for f in pending]
                for f, future in futures:
                    try:
                        future.result()
                    except ClientError as e:
                        if cs.error_code(e) in RETRIED and delay is not None:
                            again.append(f)
                        else:
                            refused.append(e)
            if refused:
                raise refused[0]
            if not again:
                break
            print("%d files: S3 asked to try again" % len(again), file=sys.stderr)
            pending = again
        return [d.result() for d in described]


def finish(s3, bucket, tag, manifest):
    """Put the manifest, then the outcome marker that status reads: a manifest in the bucket
    means that everything it lists is there; the marker, that the node is done."""
    body = json.dumps(manifest, indent=1, ensure_ascii=False).encode("utf-8")
    cs.retrying(lambda: s3.put_object(Bucket=bucket, Key=tag + "/manifest.json", ContentType="application/json",
                                      Body=body), cs.error_code_in(*RETRIED), 300, first=1.0, cap=20.0, what="manifest")
    started, ended = cs.parse_time(manifest["started"]), cs.parse_time(manifest["ended"])
    runtime = ended - started if started and ended else 0
    marker = ("%s %s\n" % (manifest.get("instance_id"), manifest.get("uploaded"))).encode()
    key = job_state.marker_key(tag, manifest["exit_code"], runtime, manifest.get("stopped_by"))
    cs.retrying(lambda: s3.put_object(Bucket=bucket, Key=key, Body=marker), cs.error_code_in(*RETRIED), 300,
                first=1.0, cap=20.0, what="marker")


def clients(node):
    """S3 and EC2 clients for the node's region; every S3 request names the job's account as the
    bucket's owner, so a bucket of another account refuses it. Uploads carry no per-request checksum: each
    file's SHA-256 is in the manifest and checked end to end by get_s3_files.py, and HTTPS
    protects every byte on the way. EC2 calls retry little: an OS shutdown backs them."""
    session = cs.node_session(node["region"])
    s3 = cs.name_owner(session.client("s3", config=cs.retries(10, max_pool_connections=32, **NO_CHECKSUMS)),
                       node["account"])
    ec2 = session.client("ec2", config=cs.retries(4))
    return s3, ec2


def mark(ec2, node, status, extra=None):
    """Tag this node's status; a failure to tag is reported, never fatal."""
    try:
        job_state.set_status([node["instance_id"]], status, extra, ec2=ec2)
    except (BotoCoreError, ClientError) as e:
        print("could not tag this node %s: %s" % (status, e), file=sys.stderr)


def save(node, root=".", clients_=None, end_node=True):
    """Upload the results of the work directory `root`; then (end_node) terminate this node.
    Returns 0 when they are all in the bucket, or UPLOAD_FAILED with the node tagged
    upload-failed. The pool worker passes its own clients and ends its machine itself."""
    s3, ec2 = clients_ or clients(node)
    if end_node:
        mark(ec2, node, "uploading")
    files, missing = result_files(root, node.get("outputs", []))
    try:
        manifest = make_manifest(node, root, files, missing)
        manifest["files"] = upload(s3, node["bucket"], node["tag"], files)
        finish(s3, node["bucket"], node["tag"], manifest)
    except (BotoCoreError, ClientError, OSError) as e:
        hold = int(node.get("upload_hold") or 0)
        until = cs.now_text(hold)
        print("%s: upload failed, leaving this node up until %s so nothing is lost: %s" % (node["tag"], until, e),
              file=sys.stderr)
        mark(ec2, node, "upload-failed", {cs.ERROR_TAG: str(e)[:250], cs.UNTIL_TAG: until})
        return UPLOAD_FAILED
    print("uploaded %d files to s3://%s/%s/" % (len(files) + 1, node["bucket"], node["tag"]))
    if end_node:
        end(ec2, node)
    return 0


def end(ec2, node):
    """Terminate this instance through the API; run.sh's OS shutdown backs it if this fails."""
    try:
        ec2.terminate_instances(InstanceIds=[node["instance_id"]])
        print("terminating %s" % node["instance_id"])
    except (BotoCoreError, ClientError) as e:
        print("could not terminate %s through the API, the OS shutdown will: %s" % (node["instance_id"], e),
              file=sys.stderr)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--status", help="only tag this node with a status (run.sh: running)")
    parser.add_argument("--expire", metavar="REASON",
                        help="terminate this node without results (the idle guard: idle-timeout)")
    args = parser.parse_args(argv)
    with open(".awsrun/node.json", encoding="utf-8") as f:
        node = json.load(f)
    if args.status:
        mark(clients(node)[1], node, args.status)
        return 0
    if args.expire:
        if os.path.exists(".awsrun/dispatched"):
            print("%s: not expiring, the job has started" % args.expire)
            return 0
        ec2 = clients(node)[1]
        mark(ec2, node, args.expire)
        end(ec2, node)
        return 0
    try:
        return save(node)
    except Exception as e:  # a bug here must still end the machine: run.sh shuts it down
        try:  # say so in `make status` if the API can be reached at all
            mark(clients(node)[1], node, "crashed", {cs.ERROR_TAG: ("%s: %s" % (type(e).__name__, e))[:250]})
        finally:
            raise e


if __name__ == "__main__":
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    sys.exit(main())
