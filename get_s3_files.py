"""Download every result of a job's bucket. Runs on the user's machine.

    python get_s3_files.py BUCKET OUT_DIR           # OUT_DIR/TAG/... as in the bucket
    python get_s3_files.py BUCKET OUT_DIR --flat    # base names only, as the original did
    python get_s3_files.py s3://BUCKET/PREFIX DIR   # every object under a prefix (a node's --inputs)

Downloads run in parallel. An object with a hash to check (the SHA-256 in its job's manifest,
or the MD5 of a single-part upload's ETag) is fetched with one GetObject and hashed as it
streams to disk; objects of 256 MB and more, and those with neither (multipart uploads from
outside awsrun), go through boto3's transfer manager, which fetches big ones in parallel
ranges and checks S3's own checksum where the object has one. A file already in OUT_DIR with
the same content is skipped, so running it again fetches only what is new: a file counts as
unchanged when its size matches and its SHA-256 (or MD5) does, or, for an object with
neither, when this command wrote it from an object with the same ETag and it has not changed
since. The hashes of the files this command wrote are remembered in OUT_DIR/.awsrun-fetch.json
with their size and modification time, so that unchanged files need not be read again. Each
node ends its upload with an outcome marker, so if the markers are those of the last complete
fetch and no fetched file was changed here, the bucket is not even listed again (--full lists
and checks it all). With --flat, each tag's logs and manifest become TAG_screen_output.txt,
TAG_install.1.log and TAG_manifest.json, and two results with the same base name stop the
fetch before anything is written. awsrun's own status markers (_awsrun/) are not downloaded.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.exceptions import ClientError
from s3transfer.subscribers import BaseSubscriber
from s3transfer.utils import S3_RETRYABLE_DOWNLOAD_ERRORS

import cloud_setup as cs
import job_state
from cloud_setup import UserError, log

# 24 parallel requests; files over 256 MB in 8 MB parts; at most 64 x 256 KB chunks queued for
# writing, so memory stays bounded whatever the file sizes (the default queue holds 1,000).
TRANSFER = TransferConfig(max_concurrency=24, multipart_threshold=256 << 20, multipart_chunksize=8 << 20,
                          max_io_queue=64)
# Objects below the transfer manager's multipart threshold that have a hash to check: one
# GetObject each, in 16 threads, without the transfer manager's futures, queues and callbacks
# per object, which costs less client CPU (BENCHMARKS.md).
# A read cut off in the middle is tried again, as the transfer manager does.
SINGLE_CONCURRENCY, READ_TRIES, CHUNK = 16, 5, 256 << 10
OWN_FILES = ("screen_output.txt", "manifest.json")
CACHE = ".awsrun-fetch.json"


def list_objects(s3, bucket):
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [o for page in pages for o in page.get("Contents", []) if not o["Key"].startswith(job_state.MARKERS)]
    except s3.exceptions.NoSuchBucket:
        raise UserError("bucket %s does not exist: check BUCKET= (it is the job name unless you "
                        "gave --bucket)" % bucket) from None


def expected_hashes(s3, bucket, objects, cache):
    """key -> SHA-256 from every manifest in the bucket; a manifest whose ETag is unchanged
    since the last fetch is read from the cache instead of S3."""
    hashes = {}
    for o in objects:
        tag, _, name = o["Key"].rpartition("/")
        if name == "manifest.json" and tag and "/" not in tag:
            known = cache.manifests.get(o["Key"])
            if known and known["etag"] == o["ETag"]:
                files = known["files"]
            else:
                manifest = json.loads(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())
                files = {f["path"]: f["sha256"] for f in manifest.get("files", [])}
                cache.manifests[o["Key"]] = {"etag": o["ETag"], "files": files}
            for path, sha256 in files.items():
                hashes["%s/%s" % (tag, path)] = sha256
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


def local_names(objects, flat):
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


class Cache:
    """OUT_DIR/.awsrun-fetch.json: the hashes of files this command wrote, keyed by their
    size and modification time, and the manifests it read, keyed by their ETag."""

    def __init__(self, out):
        self.out, self.path, self.lock = out, os.path.join(out, CACHE), threading.Lock()
        try:
            with open(self.path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            data = {}
        self.files, self.manifests = data.get("files", {}), data.get("manifests", {})
        self.complete = data.get("complete", {})  # the last complete fetch: bucket, markers, names

    def hash(self, path, algorithm):
        """The file's hash, from the cache if its size and mtime are those recorded."""
        st = os.stat(path)
        known = self.files.get(os.path.relpath(path, self.out))
        if known and known[:2] == [st.st_size, st.st_mtime_ns] and known[2] == algorithm:
            return known[3]
        digest = cs.file_hash(path, algorithm)
        self.remember(path, algorithm, digest, st)
        return digest

    def wrote(self, path, etag):
        """Whether this command wrote the file from the object with this ETag (an object with
        no hash to check) and it has not changed since: same size and modification time."""
        st = os.stat(path)
        known = self.files.get(os.path.relpath(path, self.out))
        return bool(known) and known == [st.st_size, st.st_mtime_ns, "etag", etag]

    def remember(self, path, algorithm, digest, st=None):
        st = st or os.stat(path)
        with self.lock:
            self.files[os.path.relpath(path, self.out)] = [st.st_size, st.st_mtime_ns, algorithm, digest]

    def untouched(self, bucket, markers, flat):
        """True if the last fetch of this bucket was complete, no node has finished since
        (the bucket's outcome markers are the same), and no file it wrote was changed here."""
        last = self.complete
        if not markers or last.get("bucket") != bucket or last.get("markers") != markers or last.get("flat") != flat:
            return False
        for name in last.get("names", []):
            try:
                st = os.stat(os.path.join(self.out, name))
            except OSError:
                return False
            if self.files.get(name, [None, None])[:2] != [st.st_size, st.st_mtime_ns]:
                return False
        return True

    def save(self, complete=None):
        if complete is not None:
            self.complete = complete
            for name in complete["names"]:  # objects with no hash to check still get a size and time
                if name not in self.files:
                    st = os.stat(os.path.join(self.out, name))
                    self.files[name] = [st.st_size, st.st_mtime_ns, None, None]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:  # one write: json.dump writes piece by piece, 0.3 s for 1,000 files
            f.write(json.dumps({"files": self.files, "manifests": self.manifests, "complete": self.complete}))
        os.replace(tmp, self.path)


def expected(obj, sha256):
    """(algorithm, digest) that a download of obj must match, or None if S3's own checksum
    must do: objects uploaded in parts have no MD5 ETag."""
    if sha256:
        return "sha256", sha256
    etag = obj.get("ETag", "").strip('"')
    return None if "-" in etag else ("md5", etag)


def unchanged(path, obj, want, cache):
    """True if the local file already holds this object: its hash matches, or, for an object
    with no hash to check, it is the file this command wrote from this object's ETag, untouched."""
    try:
        if os.path.getsize(path) != obj["Size"]:
            return False
    except OSError:
        return False
    if want is None:
        return cache.wrote(path, obj["ETag"])
    return cache.hash(path, want[0]) == want[1]


class KnownSize(BaseSubscriber):
    """Gives the transfer manager the size and ETag known from the listing, so that it makes
    no HeadObject call per file (and its download asks If-Match that ETag)."""

    def __init__(self, obj):
        self.obj = obj

    def on_queued(self, future, **kwargs):
        future.meta.provide_transfer_size(self.obj["Size"])
        future.meta.provide_object_etag(self.obj["ETag"])


class Progress(BaseSubscriber):
    """Files and bytes done and the rate, on one line of stderr that updates at most 5 times a
    second, when stderr is a terminal; nothing otherwise. (A few lines of the standard library:
    tqdm or rich would be a dependency of every user's install for this one line.)"""

    def __init__(self, files, size, stream=None):
        self.files, self.size, self.stream = files, size, stream or sys.stderr
        self.done = self.bytes = 0
        self.started = self.shown = time.monotonic()
        self.lock = threading.Lock()
        self.on = self.stream.isatty()

    def on_progress(self, future, bytes_transferred, **kwargs):
        with self.lock:
            self.bytes += bytes_transferred
            self.show()

    def on_done(self, future, **kwargs):
        with self.lock:
            self.done += 1
            self.show(last=self.done == self.files)

    def show(self, last=False):
        now = time.monotonic()
        if not self.on or (now - self.shown < 0.2 and not last):
            return
        self.shown = now
        rate = self.bytes / max(now - self.started, 1e-3)
        self.stream.write("\r%d/%d files, %s/%s, %s/s \033[K" % (
            self.done, self.files, human(self.bytes), human(self.size), human(rate)))
        if last:
            self.stream.write("\n")
        self.stream.flush()


def human(size):
    """1234567 -> '1.2 MB'."""
    if size < 1000:
        return "%d B" % size
    for unit in ("KB", "MB", "GB"):
        size /= 1000.0
        if size < 1000 or unit == "GB":
            return "%.1f %s" % (size, unit)


def verify(path, obj, want, cache):
    """Check a downloaded file against its expected hash; remove it and return its key if damaged."""
    digest = cs.file_hash(path, want[0])
    if digest != want[1]:
        os.remove(path)
        return obj["Key"]
    cache.remember(path, want[0], digest)
    return None


def owner_of(bucket):
    """The account every request names as the bucket's owner: yours (also when no one has the
    bucket: list_objects says so), or None for a bucket of another account that you may read
    (one you were given), which is said once."""
    whose = cs.whose_bucket(cs.client("s3"), bucket)
    if whose == "unreadable":
        raise UserError("bucket %s belongs to another AWS account, and your credentials may not read it: "
                        "ask its owner to grant you s3:ListBucket and s3:GetObject" % bucket)
    if whose == "theirs":
        log("bucket %s belongs to another AWS account: reading it as you were given it" % bucket)
        return None
    return cs.account()


def marker_etags(s3, bucket):
    """The bucket's outcome markers (one small listing): they change whenever a node finishes."""
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=job_state.MARKERS)
        return sorted([o["Key"], o["ETag"], o["LastModified"].isoformat()]
                      for page in pages for o in page.get("Contents", []))
    except s3.exceptions.NoSuchBucket:
        return []


def fetch(bucket, out, flat=False, full=False):
    """Download the bucket into `out`. Returns (downloaded, unchanged) counts.

    Every node ends its upload by writing an outcome marker, so when the markers are those of
    the last complete fetch and no file it wrote was changed here, nothing is listed or read
    again (`full` lists and checks everything all the same)."""
    # Every file with a SHA-256 or MD5 gets checked against it, end to end, so S3's response
    # checksums need not be computed as well: this client asks for them only where required;
    # the objects with neither hash are fetched with one that checks them (made only for those).
    owner = owner_of(bucket)
    s3 = cs.client_with("s3", response_checksum_validation="when_required",
                        max_pool_connections=max(TRANSFER.max_request_concurrency, SINGLE_CONCURRENCY))
    if owner:
        cs.name_owner(s3, owner)
    cache = Cache(out)
    markers = marker_etags(s3, bucket)
    if not full and cache.untouched(bucket, markers, flat):
        return 0, len(cache.complete["names"])
    objects = list_objects(s3, bucket)
    names = local_names(objects, flat)
    hashes = expected_hashes(s3, bucket, objects, cache)
    wants = {o["Key"]: expected(o, hashes.get(o["Key"])) for o in objects}
    todo = get_all(s3, lambda: cs.name_owner(cs.client_with("s3"), owner) if owner else cs.client_with("s3"),
                   bucket, out, objects, names, wants, cache)
    cache.save({"bucket": bucket, "markers": markers, "flat": flat, "names": sorted(names.values())})
    return len(todo), len(objects) - len(todo)


def get_all(s3, checking_client, bucket, out, objects, names, wants, cache):
    """Download the objects not in `out` already, each checked; returns those downloaded.
    `checking_client()` makes the client for objects with no hash of ours, which checks S3's."""
    todo = [o for o in objects if not unchanged(os.path.join(out, names[o["Key"]]), o, wants[o["Key"]], cache)]
    damaged = []
    if todo:
        progress = Progress(len(todo), sum(o["Size"] for o in todo))
        single = [o for o in todo if wants[o["Key"]] and o["Size"] < TRANSFER.multipart_threshold]
        large = [o for o in todo if wants[o["Key"]] and o["Size"] >= TRANSFER.multipart_threshold]
        unhashed = [o for o in todo if not wants[o["Key"]]]
        with ThreadPoolExecutor(2) as others:  # the transfer manager's objects at the same time
            started = [others.submit(download, s3, bucket, out, names, large, wants, cache, damaged, progress)]
            if unhashed:
                started.append(others.submit(download, checking_client(), bucket, out, names, unhashed, wants,
                                             cache, damaged, progress))
            fetch_each(s3, bucket, out, names, single, wants, cache, damaged, progress)
            for future in started:
                future.result()
    if damaged:
        cache.save()
        raise UserError("%s arrived damaged (their hashes differ from the manifest or ETag): fetch again"
                        % ", ".join(sorted(damaged)))
    return todo


# ---------------------------------------------------------------------------- a prefix (--inputs)

def parse_url(url):
    """s3://BUCKET/PREFIX -> (bucket, the prefix as a folder: "" or ending in /)."""
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not url.startswith("s3://") or not bucket:
        raise UserError("%r is not s3://BUCKET/PREFIX" % url, code=2)
    return bucket, prefix.strip("/") + "/" if prefix.strip("/") else ""


def bucket_region(bucket):
    """The region of a bucket (HeadBucket's x-amz-bucket-region, which S3 sends with a 403 and
    a wrong region's answer too); None if no one has it."""
    try:
        return cs.client_with("s3").head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPHeaders"][
            "x-amz-bucket-region"]
    except ClientError as e:
        if cs.error_code(e) in ("404", "NoSuchBucket"):
            return None
        region = e.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
        if not region:
            raise
        return region


def list_prefix(s3, bucket, prefix):
    """The objects under the prefix (not the empty "folder" objects consoles make)."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/")]


def check_prefix(url):
    """What create asks of an --inputs prefix before it launches: (bucket, prefix, region,
    objects, bytes); UserError in one line if it cannot be read or holds nothing."""
    bucket, prefix = parse_url(url)
    try:
        region = bucket_region(bucket)
        if region is None:
            raise UserError("--inputs %s: bucket %s does not exist" % (url, bucket), code=2)
        objects = list_prefix(cs.client_with("s3", region_name=region), bucket, prefix)
    except ClientError as e:
        raise UserError("--inputs %s: your credentials may not list it (%s): grant s3:ListBucket on the bucket"
                        % (url, cs.error_code(e)), code=2) from None
    if not objects:
        raise UserError("--inputs %s: no object under it: check the prefix" % url, code=2)
    return bucket, prefix, region, len(objects), sum(o["Size"] for o in objects)


def fetch_prefix(url, out, region=None):
    """Download every object under s3://BUCKET/PREFIX into `out`, named relative to the prefix,
    each checked against its MD5 ETag or S3's own checksum; files there already unchanged are
    kept. Reads nothing else of the bucket: a node's role may read only its --inputs prefixes.
    Returns (downloaded, unchanged) counts."""
    bucket, prefix = parse_url(url)
    s3 = cs.client_with("s3", region_name=region, max_pool_connections=max(TRANSFER.max_request_concurrency,
                                                                           SINGLE_CONCURRENCY))
    objects = list_prefix(s3, bucket, prefix)
    if not objects:
        raise UserError("%s: no object under it" % url)
    names = {o["Key"]: local_name(o["Key"][len(prefix):], False) for o in objects}
    cache = Cache(out)
    todo = get_all(s3, lambda: s3, bucket, out, objects, names, {o["Key"]: expected(o, None) for o in objects}, cache)
    cache.save()
    return len(todo), len(objects) - len(todo)


def fetch_each(s3, bucket, out, names, objects, wants, cache, damaged, progress):
    """Fetch objects with one GetObject each (If-Match the ETag listed), in parallel; each is
    hashed as it streams into a temporary file, which becomes the file only if it matches."""
    def one(o):
        path = os.path.join(out, names[o["Key"]])
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        algorithm, wanted = wants[o["Key"]]
        part = path + ".awsrun-part"
        for attempt in range(READ_TRIES):
            digest = hashlib.new(algorithm)
            try:
                body = s3.get_object(Bucket=bucket, Key=o["Key"], IfMatch=o["ETag"])["Body"]
                with open(part, "wb") as f:
                    for chunk in body.iter_chunks(CHUNK):
                        digest.update(chunk)
                        f.write(chunk)
                        progress.on_progress(None, len(chunk))
                break
            except S3_RETRYABLE_DOWNLOAD_ERRORS:
                if attempt == READ_TRIES - 1:
                    raise
        if digest.hexdigest() != wanted:
            os.remove(part)
            return o["Key"]
        os.replace(part, path)
        cache.remember(path, algorithm, digest.hexdigest())
        progress.on_done(None)
        return None
    if objects:
        with ThreadPoolExecutor(SINGLE_CONCURRENCY) as pool:
            damaged.extend(key for key in pool.map(one, objects) if key)


def download(s3, bucket, out, names, objects, wants, cache, damaged, progress):
    """Download objects with the transfer manager, in parallel; each file with a hash to check
    is hashed (in other threads: hashlib lets go of the GIL) as soon as it is complete."""
    if not objects:
        return
    with create_transfer_manager(s3, TRANSFER) as manager, ThreadPoolExecutor(4) as hashing:
        started = []
        for o in objects:
            path = os.path.join(out, names[o["Key"]])
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            started.append((o, path, manager.download(bucket, o["Key"], path, subscribers=[KnownSize(o), progress])))
        checks = []
        for o, path, future in started:
            future.result()
            if wants[o["Key"]]:
                checks.append(hashing.submit(verify, path, o, wants[o["Key"]], cache))
            else:  # checked by S3's own checksum, if it has one; known again by its ETag
                cache.remember(path, "etag", o["ETag"])
        damaged.extend(key for key in (c.result() for c in checks) if key)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bucket", help="a job's bucket, or s3://BUCKET/PREFIX: every object under a prefix")
    p.add_argument("out", help="folder to download into (created if missing)")
    p.add_argument("--flat", action="store_true", help="base names only, refusing collisions")
    p.add_argument("--full", action="store_true",
                   help="list and check every object even if no node has finished since the last fetch")
    p.add_argument("--region", help="with s3://BUCKET/PREFIX: the bucket's region (default: found with HeadBucket)")
    args = p.parse_args(argv)
    if args.bucket.startswith("s3://") and (args.flat or args.full):
        p.error("--flat and --full are for a job's bucket, not for s3://BUCKET/PREFIX")

    def run():
        os.makedirs(args.out, exist_ok=True)
        if args.bucket.startswith("s3://"):
            got, same = fetch_prefix(args.bucket, args.out, args.region or bucket_region(parse_url(args.bucket)[0]))
            log("fetched %d files from %s into %s (%d already there)" % (got, args.bucket, args.out, same))
            return 0
        got, same = fetch(args.bucket, args.out, args.flat, args.full)
        log("fetched %d files from s3://%s into %s (%d already there)" % (got, args.bucket, args.out, same))
        return 0
    return cs.run_cli(run)


if __name__ == "__main__":
    cs.leave(main())
