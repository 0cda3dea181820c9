"""Download every result of a job's bucket.

    python get_s3_files.py BUCKET OUT_DIR           # OUT_DIR/TAG/... as in the bucket
    python get_s3_files.py BUCKET OUT_DIR --flat    # base names only, as the original did

Downloads run in parallel with boto3's transfer manager. A file already in OUT_DIR with the
same content is skipped, so running it again fetches only what is new. Files listed in a
job's manifest are checked against their SHA-256 after download. With --flat, each tag's
logs and manifest become TAG_screen_output.txt, TAG_install.1.log and TAG_manifest.json,
and two results with the same base name stop the fetch before anything is written.
awsrun's own status markers (_awsrun/) are not downloaded.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

from boto3.s3.transfer import TransferConfig, create_transfer_manager

import cloud_setup as cs
from cloud_setup import UserError, log

TRANSFER = TransferConfig(max_concurrency=16, multipart_threshold=64 << 20, multipart_chunksize=16 << 20)
OWN_FILES = ("screen_output.txt", "manifest.json")


def list_objects(s3, bucket):
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [o for page in pages for o in page.get("Contents", []) if not o["Key"].startswith(cs.MARKERS)]
    except s3.exceptions.NoSuchBucket:
        raise UserError("bucket %s does not exist: check BUCKET= (it is the job name unless you "
                        "gave --bucket)" % bucket)


def expected_hashes(s3, bucket, objects):
    """key -> SHA-256 from every manifest in the bucket."""
    hashes = {}
    for o in objects:
        tag, _, name = o["Key"].rpartition("/")
        if name == "manifest.json" and tag and "/" not in tag:
            manifest = json.loads(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())
            for f in manifest.get("files", []):
                hashes["%s/%s" % (tag, f["path"])] = f["sha256"]
    return hashes


def local_name(key, flat):
    """Where an object goes under OUT_DIR; never outside it."""
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UserError("refusing the object %r: its name would leave the output folder" % key)
    if not flat:
        return os.path.join(*parts)
    if (len(parts) == 2 and parts[1] in OWN_FILES) or (len(parts) == 3 and parts[1] == "logs"):
        return "%s_%s" % (parts[0], parts[-1])
    return parts[-1]


def plan(objects, flat):
    """key -> local relative path; with --flat, refuse two keys with one name."""
    names, seen = {}, {}
    for o in objects:
        name = local_name(o["Key"], flat)
        if name in seen:
            raise UserError("--flat: %s and %s would both be saved as %s: fetch without --flat"
                            % (seen[name], o["Key"], name))
        seen[name] = o["Key"]
        names[o["Key"]] = name
    return names


def file_hash(path, algorithm):
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def unchanged(path, obj, sha256):
    """True if the local file already holds this object: same size, and the same SHA-256
    (from the manifest) or MD5 (the ETag of an object uploaded in one part)."""
    try:
        if os.path.getsize(path) != obj["Size"]:
            return False
    except OSError:
        return False
    if sha256:
        return file_hash(path, "sha256") == sha256
    etag = obj.get("ETag", "").strip('"')
    return "-" not in etag and file_hash(path, "md5") == etag


def fetch(bucket, out, flat=False):
    """Download the bucket into `out`. Returns (downloaded, unchanged) counts."""
    s3 = cs.client("s3")
    objects = list_objects(s3, bucket)
    names = plan(objects, flat)
    hashes = expected_hashes(s3, bucket, objects)
    todo = [o for o in objects
            if not unchanged(os.path.join(out, names[o["Key"]]), o, hashes.get(o["Key"]))]
    with create_transfer_manager(s3, TRANSFER) as manager:
        futures = []
        for o in todo:
            path = os.path.join(out, names[o["Key"]])
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            futures.append(manager.download(bucket, o["Key"], path))
        for future in futures:
            future.result()
    for o in todo:
        path, want = os.path.join(out, names[o["Key"]]), hashes.get(o["Key"])
        if want and file_hash(path, "sha256") != want:
            os.remove(path)
            raise UserError("%s arrived damaged (its SHA-256 differs from the manifest): fetch again"
                            % o["Key"])
    return len(todo), len(objects) - len(todo)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bucket")
    p.add_argument("out", help="folder to download into (created if missing)")
    p.add_argument("--flat", action="store_true", help="base names only, refusing collisions")
    args = p.parse_args(argv)

    def run():
        os.makedirs(args.out, exist_ok=True)
        got, same = fetch(args.bucket, args.out, args.flat)
        log("fetched %d files from s3://%s into %s (%d already there)" % (got, args.bucket, args.out, same))
        return 0
    return cs.run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
