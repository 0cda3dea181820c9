"""Merge every row's CSV results into one table. Runs on the user's machine.

    python collect.py JOBNAME                          # s3://BUCKET/TAG/output/*.csv -> results/JOB/collected.csv
    python collect.py JOBNAME --pattern 'output/runs/*.csv' --out all.csv
    python collect.py JOBNAME --from results/JOBNAME   # an already fetched folder (make fetch)
    python collect.py JOBNAME --with host              # and where each row ran: type, zone, CPU, ...

The table's first columns are tag, command, exit_code (from the row's manifest) and file (the
file's path inside its tag), with --with host the row's machine (HOST_COLUMNS, from its
manifest), then the union of the files' headers, in the order first seen;
a file that lacks a column leaves its cells empty. A UTF-8 byte-order mark (Excel's CSV) is
dropped; quoted fields may hold commas and line breaks. In a pattern, * and ? match within
one folder and ** across folders. Files are read one at a time as they
stream, so a large job does not fill memory: every header first (in parallel, the first 64 KB
of each file), then the rows. A file whose header cannot be read is named and left out.
"""
from __future__ import annotations

import argparse
import codecs
import csv
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor

import cloud_setup as cs
import get_s3_files
import job_state
from cloud_setup import UserError, log

FIRST_COLUMNS = ["tag", "command", "exit_code", "file"]
# --with host: where each row ran (its manifest's host, save_results.host), after the first columns
HOST_COLUMNS = ["instance_type", "instance_id", "zone", "lifecycle", "ami", "kernel", "cpu_model", "cpus",
                "memory_mb", "attempt", "awsrun"]
HEADER_BYTES = 1 << 16


class Bucket:
    """A job's results in its bucket."""

    def __init__(self, job):
        self.s3, self.bucket = cs.client("s3"), job_state.job_bucket(job)
        objects = get_s3_files.list_objects(self.s3, self.bucket)  # one clear line if it does not exist
        self.keys, self.sizes = [o["Key"] for o in objects], {o["Key"]: o["Size"] for o in objects}
        self.finished = set(job_state.read_markers(self.bucket))
        self.where = "s3://%s" % self.bucket

    def manifest(self, tag):
        return json.loads(self.s3.get_object(Bucket=self.bucket, Key=tag + "/manifest.json")["Body"].read())

    def head(self, key):
        if not self.sizes[key]:  # S3 refuses any range of an empty object (InvalidRange)
            return b""
        return self.s3.get_object(Bucket=self.bucket, Key=key, Range="bytes=0-%d" % (HEADER_BYTES - 1))["Body"].read()

    def lines(self, key):
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].iter_lines(keepends=True)


class Folder:
    """A job's results fetched into a folder (OUT/TAG/...)."""

    def __init__(self, folder):
        if not os.path.isdir(folder):
            raise UserError("--from %s is not a folder: fetch the job first (make fetch)" % folder, code=2)
        self.folder, self.keys = folder, []
        for root, dirs, names in os.walk(folder):
            dirs.sort()
            self.keys += sorted(os.path.relpath(os.path.join(root, n), folder).replace(os.sep, "/") for n in names)
        self.finished = set()  # a fetch holds no outcome markers
        self.where = folder

    def manifest(self, tag):
        with open(os.path.join(self.folder, tag, "manifest.json"), encoding="utf-8") as f:
            return json.load(f)

    def head(self, key):
        with open(os.path.join(self.folder, key), "rb") as f:
            return f.read(HEADER_BYTES)

    def lines(self, key):
        with open(os.path.join(self.folder, key), "rb") as f:
            yield from f


def read_header(data):
    """The column names in the first record of a CSV's first bytes, or raise ValueError."""
    cut = len(data) >= HEADER_BYTES  # a character cut at the end waits for more, and is dropped
    text = codecs.getincrementaldecoder("utf-8-sig")().decode(data, final=not cut)
    if cut and "\n" not in text:
        raise ValueError("no complete header in its first %d KB" % (HEADER_BYTES >> 10))
    header = next(csv.reader(io.StringIO(text, newline="")), [])
    if not any(h.strip() for h in header):
        raise ValueError("its first line is empty" if text.strip() else "the file is empty")
    return header


def host_cells(manifest):
    """The host columns of a row, from its manifest (one written before awsrun kept a host
    block still knows its instance)."""
    host = dict({k: manifest.get(k) for k in ("instance_type", "instance_id", "attempt")}, **manifest.get("host", {}))
    return ["" if host.get(c) is None else host[c] for c in HOST_COLUMNS]


def collect(source, job, pattern, out, with_host=False):
    """Write the merged table; returns (rows, files, tags) counts."""
    tags = sorted({k.split("/", 1)[0] for k in source.keys if "/" in k} | source.finished,
                  key=cs.tag_order)
    results = [t for t in tags if t + "/manifest.json" in source.keys]
    for tag in tags:
        if tag not in results and tag in source.finished:
            log("%s: its outcome marker is in the bucket but not its manifest (its upload did not finish): "
                "left out" % tag)
    if not results:
        raise UserError("job %s has no results in %s yet: see `make status JOB=%s`" % (job, source.where, job))
    files = [k for k in source.keys if "/" in k and k.split("/", 1)[0] in results
             and matches(pattern, k.split("/", 1)[1])]
    if not files:
        raise UserError("no file of the %d results of job %s matches %r: check PATTERN= (e.g. 'output/*.csv')"
                        % (len(results), job, pattern))
    with ThreadPoolExecutor(16) as pool:
        manifests = dict(zip(results, pool.map(source.manifest, results)))
        cut = sorted((t for t, m in manifests.items() if m.get("stopped_by") == "budget"), key=cs.tag_order)
        if cut:
            log("stopped by the budget, left out: %s" % " ".join(cut))
            files = [k for k in files if k.split("/", 1)[0] not in cut]
        heads = list(pool.map(lambda k: attempt(read_header, source.head, k), files))
    fixed = FIRST_COLUMNS + (HOST_COLUMNS if with_host else [])
    columns, readable = [], []
    for key, header in zip(files, heads):
        if isinstance(header, Exception):
            log("%s: its header could not be read (%s): left out" % (key, header))
            continue
        readable.append((key, header))
        columns += [h for h in header if h not in columns and h not in fixed]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    count = 0
    with open(out + ".part", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fixed + columns)
        for key, header in readable:
            tag, name = key.split("/", 1)
            manifest = manifests[tag]
            first = [tag, manifest.get("command", ""), manifest.get("exit_code", ""), name] + (
                host_cells(manifest) if with_host else [])
            rows = csv.reader(codecs.iterdecode(source.lines(key), "utf-8-sig"))
            next(rows, None)
            for row in rows:
                if row:
                    cells = dict(zip(header, row))
                    writer.writerow(first + [cells.get(c, "") for c in columns])
                    count += 1
    os.replace(out + ".part", out)
    missing = [t for t in results if not any(k.startswith(t + "/") for k, _ in readable)]
    if missing:
        log("%d rows had no file matching %r: %s" % (len(missing), pattern, " ".join(missing[:20])))
    return count, len(readable), len(results)


def matches(pattern, path):
    """A shell-style pattern, as glob reads it: * and ? stay inside one folder, ** crosses them."""
    regex = "".join(".*" if part == "**" else "[^/]*" if part == "*" else "[^/]" if part == "?" else re.escape(part)
                    for part in re.split(r"(\*\*|\*|\?)", pattern))
    return re.fullmatch(regex, path) is not None


def attempt(function, read, key):
    try:
        return function(read(key))
    except (ValueError, UnicodeDecodeError, csv.Error) as e:
        return e


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job")
    p.add_argument("--pattern", default="output/*.csv", help="the files to merge, in each tag (default output/*.csv)")
    p.add_argument("--from", dest="source", metavar="DIR", help="a folder fetched with make fetch, not the bucket")
    p.add_argument("--out", help="the table to write (default results/JOB/collected.csv)")
    p.add_argument("--with", dest="extra", action="append", choices=["host"], default=[],
                   help="host: add where each row ran (%s)" % ", ".join(HOST_COLUMNS))
    args = p.parse_args(argv)

    def run():
        cs.check_job_name(args.job)
        out = args.out or os.path.join("results", args.job, "collected.csv")
        source = Folder(args.source) if args.source else Bucket(args.job)
        rows, files, tags = collect(source, args.job, args.pattern, out, "host" in args.extra)
        log("collected %d rows from %d files of %d results into %s" % (rows, files, tags, out))
        return 0
    return cs.run_cli(run)


if __name__ == "__main__":
    cs.leave(main())
