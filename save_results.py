"""Runs ON the node after the job's command: uploads the results, then terminates the node.

    python3 .awsrun/save_results.py     # from the node's work directory (run.sh does this)

Uploads to s3://BUCKET/TAG/: every file under output/ (relative paths kept), the extra
output files (-o), screen_output.txt, and last manifest.json (job, tag, instance, command,
exit code, start and end times, and every file with its size and SHA-256). Then it
terminates its own instance through the EC2 API. If the upload fails, the node stays up,
is tagged awsrun:status=upload-failed, and this exits 1: nothing is lost.

Reads what the dispatcher wrote in .awsrun/ (node.json, started, ended, exit_code); needs
only the standard library and boto3, on Python 3.8 or later.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

import cloud_setup as cs

TRANSFER = TransferConfig(max_concurrency=16, multipart_threshold=64 << 20, multipart_chunksize=16 << 20)


def read(path, default=""):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def result_files(outputs):
    """(local path, name in the bucket) for output/**, the extra outputs and the log;
    and the extra outputs that do not exist."""
    files, missing = [], []
    for root, dirs, names in os.walk("output"):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            if os.path.isfile(path):
                files.append((path, os.path.relpath(path, ".").replace(os.sep, "/")))
    for out in outputs:
        if os.path.isfile(out):
            files.append((out, out.replace(os.sep, "/")))
        else:
            missing.append(out)
    if os.path.isfile("screen_output.txt"):
        files.append(("screen_output.txt", "screen_output.txt"))
    return files, missing


def make_manifest(node, files, missing):
    code = read(".awsrun/exit_code")
    return {"job": node["job"], "tag": node["tag"], "instance_id": node["instance_id"],
            "instance_type": node["instance_type"], "command": node["command"],
            "exit_code": int(code) if code.lstrip("-").isdigit() else None,
            "started": read(".awsrun/started"), "ended": read(".awsrun/ended"),
            "uploaded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": [{"path": key, "size": os.path.getsize(path), "sha256": sha256_of(path)}
                      for path, key in files],
            "missing_outputs": missing}


def upload(s3, bucket, tag, files, manifest):
    """Upload every file in parallel with the transfer manager, then the manifest last:
    a manifest in the bucket means that everything it lists is there."""
    with create_transfer_manager(s3, TRANSFER) as manager:
        futures = [manager.upload(path, bucket, "%s/%s" % (tag, key)) for path, key in files]
        for future in futures:
            future.result()
    s3.put_object(Bucket=bucket, Key=tag + "/manifest.json", ContentType="application/json",
                  Body=json.dumps(manifest, indent=1, ensure_ascii=False).encode("utf-8"))


def main():
    with open(".awsrun/node.json", encoding="utf-8") as f:
        node = json.load(f)
    session = boto3.session.Session(region_name=node["region"])
    config = Config(retries={"mode": "standard", "max_attempts": 10}, max_pool_connections=32)
    s3, ec2 = session.client("s3", config=config), session.client("ec2", config=config)
    files, missing = result_files(node.get("outputs", []))
    try:
        manifest = make_manifest(node, files, missing)
        cs.ensure_bucket(s3, node["bucket"], node["region"])
        upload(s3, node["bucket"], node["tag"], files, manifest)
    except (BotoCoreError, ClientError, OSError, cs.UserError) as e:
        print("upload failed, leaving this node up so nothing is lost: %s" % e, file=sys.stderr)
        try:
            ec2.create_tags(Resources=[node["instance_id"]], Tags=[
                {"Key": cs.STATUS_TAG, "Value": "upload-failed"},
                {"Key": cs.ERROR_TAG, "Value": str(e)[:250]}])
        except (BotoCoreError, ClientError) as tag_error:
            print("could not tag the node either: %s" % tag_error, file=sys.stderr)
        return 1
    print("uploaded %d files to s3://%s/%s/" % (len(files) + 1, node["bucket"], node["tag"]))
    ec2.terminate_instances(InstanceIds=[node["instance_id"]])
    print("terminating %s" % node["instance_id"])
    return 0


if __name__ == "__main__":
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    sys.exit(main())
