"""Run a job file on EC2: one instance per row, or a pool of machines per instance type that
take the rows from a queue (--pool); prepared over SSH, each running its commands. Runs on
the user's machine; what it runs on the nodes is in node/.

    python dispatcher.py AMI JOBNAME JOBFILE -c        # create and prepare the machines
    python dispatcher.py AMI JOBNAME JOBFILE -d        # start every row's command
    python dispatcher.py auto alice-x awsjobs/x.csv -c -d --code ~/src/x

AMI `auto` means the current Ubuntu LTS image of the region. The job file is a CSV whose
header is `instance_type,command`; row N has the tag JOBNAME<N-1> and runs on the machine of
that tag (in pool mode, on the next pool machine with a free slot), in its own work directory,
with TAG set. Everything the command writes under output/ is uploaded to s3://BUCKET/TAG/ with
its log and a manifest; a machine terminates itself when its work is done.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shlex
import sys
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor


import cloud_setup as cs
import cost
import get_s3_files
import launch
import job_state
import pool
from cloud_setup import UserError, log
from ssh import (Connections, NodeError, SharedReader, close, ensure_key_pair, for_each_node, remote_dir, run_on,
                 say_results)

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = ["instance_type", "command"]
INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9-]*\.[a-z0-9-]+")


# ---------------------------------------------------------------------------- the job file

def read_jobs(path):
    """The rows of a job file as (line, instance_type, command). Raises UserError (exit 2)
    naming the file and line of the first mistake."""
    def bad(line, what):
        return UserError("%s, line %d: %s" % (path, line, what), code=2)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except FileNotFoundError:
        raise UserError("job file %s does not exist" % path, code=2) from None
    except UnicodeDecodeError:
        raise UserError("%s is not UTF-8 text: save it as UTF-8 CSV" % path, code=2) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header != HEADER:
        raise bad(1, "the header must be exactly `instance_type,command`, found %r"
                  % ",".join(header or []))
    rows = []
    for fields in reader:
        line = reader.line_num
        if not fields or (len(fields) == 1 and not fields[0].strip()) or fields[0].startswith("#"):
            continue
        if len(fields) != 2:
            raise bad(line, "expected 2 fields (instance_type,command), found %d: put a command "
                            "that contains commas in double quotes" % len(fields))
        itype, command = fields[0].strip(), fields[1]
        if not all(INSTANCE_TYPE.fullmatch(t) for t in cs.alternatives(itype)):
            raise bad(line, "instance type %r is not like t3.micro (or a list tried in turn, c5.xlarge|c5a.xlarge)"
                      % itype)
        if not command.strip():
            raise bad(line, "the command is empty")
        rows.append((line, itype, command))
    if not rows:
        raise bad(reader.line_num or 1, "no jobs: add one row `instance_type,command` per job")
    return rows


def check_relative(path, what):
    """A path on the node, relative to the work directory and staying inside it."""
    norm = os.path.normpath(path)
    if os.path.isabs(path) or norm == "." or norm.startswith(".."):
        raise UserError("%s %r must be a relative path inside the work directory" % (what, path), code=2)
    return norm


def parse_inputs(specs):
    """-i LOCAL=REMOTE pairs, checked: LOCAL exists, REMOTE stays in the work directory."""
    pairs = []
    for spec in specs:
        local, sep, remote = spec.partition("=")
        if not sep or not local or not remote:
            raise UserError("-i %r must be LOCAL=REMOTE, e.g. -i data/x.csv=data/x.csv" % spec, code=2)
        if not os.path.exists(local):
            raise UserError("-i: %s does not exist" % local, code=2)
        pairs.append((local, check_relative(remote, "-i target")))
    return pairs


def parse_prefixes(specs, code):
    """--inputs s3://BUCKET/PREFIX[=DIR] -> [(url, DIR)]; DIR (default inputs) stays in the work
    directory and is not a folder of CODE. The last = splits: a prefix with one needs =DIR."""
    found = []
    for spec in specs:
        url, sep, folder = spec.rpartition("=") if "=" in spec else (spec, "", "inputs")
        try:
            get_s3_files.parse_url(url)
        except UserError:
            raise UserError("--inputs %r must be s3://BUCKET/PREFIX[=DIR]" % spec, code=2) from None
        folder = check_relative(folder, "--inputs DIR")
        if code and os.path.lexists(os.path.join(code, folder)):
            raise UserError("--inputs %s: %s is in --code %s already: give another =DIR" % (spec, folder, code), code=2)
        found.append((url, folder))
    return found


def check_arguments(args, placement):
    """Every check that needs no AWS. Returns the job file's rows."""
    for name in filter(None, (args.job, args.bucket, getattr(args, "like", None))):
        cs.check_job_name(name)
    if args.tag_offset < 0:
        raise UserError("--tag_offset must be 0 or more", code=2)
    rows = read_jobs(args.jobfile)
    for line, itype, _ in rows:
        if placement.pooled and "|" in itype:
            raise UserError("%s, line %d: a type list (%s) is for one machine per row: in pool mode give each row "
                            "one type" % (args.jobfile, line, itype), code=2)
    args.max_runtime = placement.runtime_limit(args.max_runtime)
    if args.create:
        if args.code and not os.path.isdir(args.code):
            raise UserError("--code %s is not a folder" % args.code, code=2)
        if not os.path.isfile(args.install):
            raise UserError("install script %s does not exist: pass --install FILE" % args.install, code=2)
        args.inputs, args.prefixes = parse_inputs(args.input), parse_prefixes(args.s3_inputs, args.code)
    outputs = []
    for out in args.output:
        out = check_relative(out, "-o").replace(os.sep, "/")
        if out in ("manifest.json", "screen_output.txt") or out.startswith((".awsrun/", "output/")):
            raise UserError("-o %s: that name is uploaded already or kept by awsrun" % out, code=2)
        outputs.append(out)
    args.output = sorted(set(outputs))
    return rows


# ---------------------------------------------------------------------------- create

NODE_SCRIPTS = ("prepare.sh", "guard.sh", "start.sh", "run.sh", "row.sh")
# Copied to .awsrun/ on every node: the uploader, its imports, and the pool worker (from node/).
NODE_PYTHON = ("save_results.py", "cloud_setup.py", "job_state.py", "get_s3_files.py", "node/pool_worker.py")


def make_bundle(args):
    """One compressed archive of everything each node needs; sent in one stream per node."""
    bundle = tempfile.TemporaryFile()
    skip = {".git", "__pycache__", ".venv"}
    with tarfile.open(fileobj=bundle, mode="w:gz", compresslevel=1) as tar:
        if args.code:
            for name in sorted(os.listdir(args.code)):
                if name not in skip:
                    tar.add(os.path.join(args.code, name), arcname=name,
                            filter=lambda t: None if os.path.basename(t.name) in skip else t)
        for local, remote in args.inputs:
            tar.add(local, arcname=remote)
        tar.add(args.install, arcname="INSTALL.sh")
        output = tarfile.TarInfo("output")  # the row's results go there (row.sh makes it if it is missing)
        output.type, output.mode, output.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
        tar.addfile(output)
        tar.add(os.path.join(HERE, "node", "update_tags.py"), arcname="update_tags.py")
        for path in NODE_PYTHON:
            tar.add(os.path.join(HERE, path), arcname=".awsrun/" + os.path.basename(path))
        for name in NODE_SCRIPTS:  # the shell that runs on the node, as it is in node/
            tar.add(os.path.join(HERE, "node", name), arcname=".awsrun/" + name)
        add_text(tar, ".awsrun/inputs.tsv", "".join("%s\t%s\t%s\n" % p for p in getattr(args, "checked_prefixes", [])))
        add_text(tar, ".awsrun/names.sh", "".join("%s=%d\n" % kv for kv in sorted(cs.NODE_EXIT.items())) +
                 "TIME_FORMAT=%s\n" % shlex.quote(cs.TIME_FORMAT))  # what node/*.sh source
    bundle.flush()
    return bundle


def add_text(tar, name, text):
    raw = text.encode("utf-8")
    member = tarfile.TarInfo(name)
    member.size, member.mode, member.mtime = len(raw), 0o755, int(time.time())
    tar.addfile(member, io.BytesIO(raw))


def node_env(args, node):
    """The node scripts' settings, in .awsrun/node.env (sourced by node/*.sh)."""
    values = [("AWSRUN_PYTHON", cs.awsrun_env("NODE_PYTHON", "python3")), ("TAG", node["tag"]),
              ("INSTANCE_ID", node["id"]), ("MAX_RUNTIME", int(args.max_runtime or 0)),
              ("UPLOAD_HOLD", int(getattr(args, "upload_hold", 0) or 0)), ("BUDGET_END", node.get("budget_end") or ""),
              ("UPLOAD_MARGIN", cost.upload_margin())]
    if node.get("pool"):
        values.append(("POOL_IDLE", pool.idle()))
    return "".join("%s=%s\n" % (k, shlex.quote(str(v))) for k, v in values)


def node_info(args, node, itype, command=None):
    """What the node-side scripts know of their node, in .awsrun/node.json."""
    info = {"job": args.job, "tag": node["tag"], "instance_id": node["id"], "instance_type": itype,
            "bucket": node["bucket"], "account": cs.account(), "region": cs.region(), "command": command,
            "outputs": args.output, "max_runtime": args.max_runtime or None,
            "upload_hold": getattr(args, "upload_hold", None), "spot": node.get("spot", False),
            "launched": job_state.launch_time(node), "upload_margin": cost.upload_margin(), "awsrun": cs.version(),
            "budget_end": node.get("budget_end") and time.strftime(cs.TIME_FORMAT, time.gmtime(node["budget_end"]))}
    if node.get("pool"):  # what node/pool_worker.py reads
        info.update(queue_url=node.get("queue_url"), slots=0 if args.slots == "auto" else int(args.slots),
                    lease=pool.lease(), idle=pool.idle(),
                    row_expected=(getattr(args, "estimates", {}).get(itype) or {}).get("p90"))
    return info


def install_command(node, info, env, tries, seconds, idle):
    """The one line run on a node at create: unpack the bundle into its work directory (a fresh
    one if the folder there belongs to another instance: emptied, unless it is empty already, as
    on a new machine), write its settings, and run node/prepare.sh (INSTALL.sh until READY, then
    the idle guard)."""
    return ("mkdir -p {d} && cd {d} || exit {bad}; owner=; read -r owner < .awsrun/instance 2>/dev/null; "
            "shopt -s dotglob nullglob; set -- *; [ \"$owner\" = {id} ] || [ $# = 0 ] || find . -mindepth 1 -delete; "
            "tar -xzf - "
            "&& printf '%s' {info} > .awsrun/node.json && printf '%s' {env} > .awsrun/node.env || exit {bad}; "
            "exec bash .awsrun/prepare.sh {tries} {s} {idle}").format(
        d=remote_dir(node["tag"]), bad=cs.NODE_EXIT["BAD_BUNDLE"], id=shlex.quote(node["id"]),
        info=shlex.quote(json.dumps(info, ensure_ascii=False)), env=shlex.quote(env), tries=int(tries),
        s=int(seconds), idle=int(idle))


def prepare(node, args, bundle, connections, progress):
    """Connect to one node, copy its files and run the install script until READY."""
    budget = args.install_tries * (args.install_timeout + 15) + 120
    script = install_command(node, node_info(args, node, node["type"]), node_env(args, node), args.install_tries,
                             args.install_timeout, args.idle_timeout)
    ssh, code, output = run_on(connections, node, script, stdin=lambda: SharedReader(bundle), timeout=budget)
    if args.dispatch and code == 0:
        connections.keep(node, ssh)
    else:
        close(ssh)
    if args.verbose:
        log("%s: %s" % (node["tag"], output.strip() or "installed"))
    if code != 0:
        keep = os.path.join(cs.state_dir(args.job), "%s.install.log" % node["tag"])
        with open(keep, "w") as f:
            f.write(output)
        raise NodeError("install failed (kept in %s):\n%s" % (keep, output.rstrip()))
    progress()


def rows_wanted(args, rows):
    """tag -> (line, instance_type, command) for every row of the job file."""
    return {cs.tag_name(args.job, i + args.tag_offset): row for i, row in enumerate(rows)}


def create(args, placement, wanted):
    """Key pair, security group, instance profile, bucket (and what the placement needs: the
    pool's queues), instances; then prepare every node. `wanted` are the rows; the placement
    says which machines they need. Returns the job's SSH connections (ssh.Connections), kept open for
    a dispatch in the same run, {tag: why} for the machines that could not be launched (the
    others go on), and the job's instances as they stand now (each prepared one "ready"), so
    that a dispatch in the same run need not ask EC2 again."""
    types = {itype for _, itype, _ in wanted.values()}
    checked = launch.Preflight(args, placement, wanted).run(local=False)  # the first failure, before anything is made
    amis, vcpus, subnets = checked.amis, checked.vcpus, checked.subnets
    args.checked_prefixes = [(url, region, folder) for url, folder, region in checked.prefixes]  # for the bundle
    spot = getattr(args, "spot", False)
    machines = placement.machines(wanted, vcpus, spot)
    by_type, live_before = launch.to_launch(args.job, machines)
    launch.check_quotas(launch.quota_need({t: len(n) for t, n in by_type.items()}, vcpus), spot,
                        pooled=placement.pooled)
    bucket, cidr = args.bucket or args.job, cs.caller_cidr()
    budget, deadline, prices = cost.launch_budget(args, placement, wanted, bucket, by_type)
    with open(os.path.join(cs.state_dir(args.job), "bucket"), "w") as f:
        f.write(bucket)
    extra, extra_names = placement.resources(types)
    reads = [get_s3_files.parse_url(url) for url, _, _ in args.checked_prefixes]  # what the nodes may read
    with ThreadPoolExecutor(5) as making:  # independent resources, made at once
        made = [making.submit(cs.ensure_bucket, cs.client("s3"), bucket, cs.region()),
                making.submit(ensure_key_pair, args.job),
                making.submit(cs.ensure_security_group, args.job, cidr, subnets[0]["vpc"]),
                making.submit(cs.ensure_instance_profile, args.job, bucket, reads)] + [making.submit(m) for m in extra]
        _, key, group_id, profile = [m.result() for m in made][:4]
    connections = Connections(args.job, args.ssh_timeout)
    log("job %s: key %s, security group %s, instance profile %s, bucket %s%s"
        % (args.job, key, group_id, profile, bucket, extra_names))
    pause(args, "launch up to %d machines with %s" % (len(machines), ", ".join(
        "%s on %s" % kv for kv in sorted(amis.items()))))
    try:
        ids, missing = launch.launch_all(args, placement, by_type, amis, args.job, group_id, profile, bucket, subnets,
                                         budget=deadline and (deadline, prices))
        new, failed = launch.wait_running(ids, timeout=args.ssh_timeout)
        found = [n for n in live_before if n["id"] not in ids] + new  # the job's machines now: no other look
        if deadline:
            budget.add([n for n in found if n["id"] in ids], deadline)
        live = job_state.newest_per_tag([n for n in found if n["state"] in job_state.LIVE])
        nodes = [n for t, n in sorted(live.items()) if t in machines and n["status"] not in job_state.STARTED]
        for node in found:
            if node["id"] in failed:
                missing[node["tag"]] = "its instance %s %s" % (node["id"], failed[node["id"]])
        for tag, why in sorted(missing.items()):
            log("%s%s was not launched: %s" % (tag, " (line %d)" % machines[tag][0] if machines[tag][0] else "", why))
        log("%d machines running; copying files and installing" % len(nodes))
        pause(args, "prepare the machines over SSH")
        if nodes:
            prepare_all(args, nodes, connections)
        return connections, missing, found
    except KeyboardInterrupt:
        raise UserError("interrupted: every machine launched so far is tagged awsrun:job=%s; "
                        "`make status JOB=%s` shows them and `make down JOB=%s` removes them"
                        % (args.job, args.job, args.job), code=130) from None


def prepare_all(args, nodes, connections):
    """Prepare nodes in parallel, tagging them installing, then ready or install-failed."""
    done, lock = [0], threading.Lock()

    def progress():
        with lock:
            done[0] += 1
            log("Installation complete on %d / %d boxes" % (done[0], len(nodes)))

    job_state.set_status([n["id"] for n in nodes if n["status"] != "ready"], "installing")
    with make_bundle(args) as bundle:
        results = for_each_node(nodes, lambda n: prepare(n, args, bundle, connections, progress), args.parallel)
    job_state.set_status([n["id"] for n in nodes if not isinstance(results[n["tag"]], NodeError)], "ready")
    job_state.set_status([n["id"] for n in nodes if isinstance(results[n["tag"]], NodeError)], "install-failed")
    code = say_results(nodes, results, "ready", terminate_failed=not args.keep_failed)  # raises if any failed
    for n in nodes:
        n["status"] = "ready"
    return code


# ---------------------------------------------------------------------------- dispatch

def node_files(args, node, row):
    """The small archive that turns a prepared node into a running job: its row's settings
    and command (node/start.sh unpacks it)."""
    command = row[2]
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:  # the type the machine has (a row may list several)
        add_text(tar, ".awsrun/node.json", json.dumps(node_info(args, node, node["type"], command), indent=1,
                                                      ensure_ascii=False))
        add_text(tar, ".awsrun/node.env", node_env(args, node))
        if command is not None:
            add_text(tar, ".awsrun/command.sh", command + "\n")
    return data.getvalue()


def start(node, args, row, connections):
    ssh, code, output = run_on(connections, node, "cd %s || exit %d; exec bash .awsrun/start.sh %s" % (
        remote_dir(node["tag"]), cs.NODE_EXIT["NO_WORK_DIR"], shlex.quote(node["id"])),
        stdin=node_files(args, node, row))
    close(ssh)
    if code == cs.NODE_EXIT["STARTED_ALREADY"]:
        return "already started"
    if code != 0:
        raise NodeError(output.strip() or "exit %d" % code)
    words = output.split()
    node["install_times"] = words[words.index("started") + 1:][:2] if "started" in words else []
    return "started"


def dispatch(args, placement, wanted, connections=None, requeue=False, found=None):
    """Start the rows as the placement says: each on its prepared machine, or the pool's workers
    on theirs (the rows queued first); detached, in parallel. `found`: the job's instances as
    create left them a moment ago, in the same run (else they are asked of EC2)."""
    if connections is None:  # a later run: the caller may be on another network since create
        cs.refresh_ssh_rule(args.job)
    connections = connections or Connections(args.job, args.ssh_timeout)
    found = [n for n in found if n["state"] == "running"] if found is not None else \
        job_state.find_nodes(args.job, ("running",))
    bucket = job_state.job_bucket(args.job, found)
    nodes, rows, queued, tags, unstarted = placement.to_start(found, wanted, requeue)
    cost.cover(cost.Budget.of(args, bucket), nodes, args.prices)
    job_state.set_status([n["id"] for n in nodes], "running", tags)  # before they start, so their own later tags win
    results = for_each_node(nodes, lambda n: start(n, args, rows[n["tag"]], connections), args.parallel)
    job_state.set_status([n["id"] for n in nodes if isinstance(results[n["tag"]], NodeError)], "ready")
    started = {tag: row for tag, row in rows.items() if results[tag] == "started" and row[2] is not None}
    job_state.record_dispatch(bucket, {
        "job": args.job, "pool": placement.pooled, "idle": placement.idle or None,
        "max_runtime": args.max_runtime or None}, nodes, results, dict(queued, **started))
    code = say_results(nodes, results, placement.started)
    if unstarted:
        raise UserError("no running machine for %s: run create for them first" % " ".join(sorted(unstarted)))
    return code


class OnePerRow:
    """The original placement: row N runs alone on its own machine, JOBN. pool.Pool is the
    other; both have this shape, and main() chooses one from the arguments:

    runtime_limit(asked)          the --max-runtime that holds (None: the default)
    machines(wanted, vcpus, spot) tag -> (line, type, command) of the machines the rows need
    machine_tag(type, number)     the tag of machine `number` of a type
    slots(vcpus), idle            rows at once on a machine of that many vCPUs; the seconds a
                                  machine waits for work once it has none, before it ends
    resources(types)              what else create makes, at once with the rest, and its names
    checks(types)                 what else the preflight asks of AWS, as (what, check)
    to_start(found, wanted, requeue)  the machines to start now and each one's row, the rows
                                  queued, the tags they start with, the rows that lack a machine
    states(wanted)                tag -> state of the rows that retry asks about, and the queued
                                  rows whose machines are gone
    before_retry(rows)            what retry does before it runs these rows again
    launched(wanted, missing)     the rows to dispatch, once some machines could not be launched
    left_out(missing)             what to say of those machines once the rest has started
    """
    pooled, started = False, "started"

    def __init__(self, args):
        self.args = args

    # One machine per row: a row stops after a day unless --max-runtime says otherwise (0: never),
    # so that one hung command does not keep its machine billing until someone looks.
    def runtime_limit(self, asked):
        return 24 * 3600 if asked is None else asked

    def machines(self, wanted, vcpus, spot):
        return wanted

    def machine_tag(self, itype, number):
        return cs.tag_name(self.args.job, number)

    def slots(self, vcpus):
        return 1

    idle = 0

    def resources(self, types):
        return [], ""

    def checks(self, types):
        return []

    def to_start(self, found, wanted, requeue):
        live = job_state.newest_per_tag(found)
        if any(n["pool"] for n in live.values()):
            raise UserError("job %s runs in pool mode: give POOL= (--pool) to dispatch and retry too"
                            % self.args.job, code=2)
        missing = [t for t in wanted if t not in live]
        if len(missing) == len(wanted):
            raise UserError("job %s has no running machines: run create first" % self.args.job)
        nodes = [live[t] for t in sorted(wanted) if t in live and live[t]["status"] not in job_state.STARTED]
        skipped = sorted(t for t in wanted if t in live and live[t]["status"] in job_state.STARTED)
        if skipped:
            log("already started: " + " ".join(skipped))
        limit = self.args.max_runtime
        log("rows stop after %s: --max-runtime (0: no limit)" % job_state.elapsed(limit) if limit
            else "rows have no runtime limit (--max-runtime 0): a row that hangs bills until you end it")
        return (nodes, {n["tag"]: wanted[n["tag"]] for n in nodes}, {},
                {cs.DEADLINE_TAG: cs.now_text(limit)} if limit else None, missing)

    def states(self, wanted):
        nodes = job_state.newest_per_tag(job_state.find_nodes(self.args.job))
        markers = job_state.read_markers(job_state.job_bucket(self.args.job, nodes.values()))
        return {tag: job_state.node_state(nodes.get(tag), markers.get(tag))
                for tag in wanted if tag in nodes or tag in markers}, []

    def before_retry(self, rows):
        pass

    def launched(self, wanted, missing):
        return {t: r for t, r in wanted.items() if t not in missing}

    def left_out(self, missing):
        if missing:  # each was named with its reason as create found it
            raise UserError("%d rows could not be launched: %s; `make retry` launches them later"
                            % (len(missing), " ".join(sorted(missing, key=cs.tag_order))))


# ---------------------------------------------------------------------------- retry

def retry_plan(placement, wanted):
    """The rows to run again: those with no succeeded result that are not running now (in
    pool mode, nor queued: dead-lettered rows are run again); and the queued rows whose pool
    machines are gone."""
    states, stranded = placement.states(wanted)
    stranded = [t for t in stranded if t in wanted]
    again, skipped = {}, []
    for tag, row in wanted.items():
        state = states.get(tag, "new")
        if state in ("succeeded", "running", "uploading", "upload-failed", "installing", "queued"):
            skipped.append("%s %s" % (tag, state))
        else:
            again[tag] = row
    if skipped:
        log("not run again: " + ", ".join(skipped))
    if again:
        log("retrying %d rows: %s" % (len(again), " ".join(sorted(again))))
    if stranded:
        log("%d queued rows have no pool machine left: launching the pool for them" % len(stranded))
    if not again and not stranded:
        log("nothing to retry: every row has succeeded or is running")
    if again:
        placement.before_retry(again)
    return again, {t: wanted[t] for t in stranded}

# ---------------------------------------------------------------------------- main

def pause(args, what):
    """With -v at a terminal, wait for Enter between stages, as the original did."""
    if args.verbose and sys.stdin.isatty():
        input("next: %s. Press Enter to go on, Ctrl-C to stop. " % what)


def duration(text):
    """'90' (seconds), '45s', '30m', '2h', '1d', '1h30m' -> seconds."""
    parts = re.findall(r"(\d+)([smhd]?)", text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != text.strip().lower():
        raise argparse.ArgumentTypeError("%r is not a duration like 90s, 30m, 2h or 1h30m" % text)
    return sum(int(n) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[u] for n, u in parts)


def count_or_auto(what):
    """An argparse type: a number of `what`, 1 or more, or auto."""
    def check(text):
        if text == "auto" or (text.isdigit() and int(text) > 0):
            return text
        raise argparse.ArgumentTypeError("%r: give a number of %s (1 or more) or auto" % (text, what))
    return check


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ami", help="AMI id, or `auto` for the current Ubuntu LTS image of each type's architecture")
    p.add_argument("job", help="job name: names the machines, the key and the bucket")
    p.add_argument("jobfile", help="CSV with the header instance_type,command")
    p.add_argument("-c", "--create", action="store_true", help="create and prepare the machines")
    p.add_argument("-d", "--dispatch", action="store_true", help="start each row's command")
    p.add_argument("--dry-run", action="store_true",
                   help="check everything create needs, asking AWS, and make nothing (exit 0: create would start)")
    p.add_argument("--plan", action="store_true",
                   help="print what the run would cost (machines, machine-hours, dollars) and make nothing")
    p.add_argument("--budget", type=float, metavar="USD", help="the job's instances bill at most this, at the prices "
                   "it counts: every machine is shut down in time")
    p.add_argument("--hours", type=float, metavar="H", help="with --plan or --budget: the hours a row takes")
    p.add_argument("--like", metavar="OLDJOB", help="with --plan or --budget: the row times of an earlier job; "
                   "with --pool: queue the rows longest first by them")
    p.add_argument("--prices", metavar="CSV", help="USD per hour per instance type (columns instance_type,"
                   "price_per_hour), instead of the AWS Price List API and the spot price history")
    p.add_argument("--json", action="store_true", help="with --plan: print the plan as JSON")
    p.add_argument("--retry", action="store_true",
                   help="create and dispatch again every row with no succeeded result that is not running")
    p.add_argument("-v", "--verbose", action="store_true", help="more detail; pause between stages at a terminal")
    p.add_argument("--code", help="folder copied into each node's work directory")
    p.add_argument("-i", dest="input", action="append", default=[], metavar="LOCAL=REMOTE",
                   help="an extra file or folder to copy (repeatable)")
    p.add_argument("--inputs", dest="s3_inputs", action="append", default=[], metavar="s3://BUCKET/PREFIX[=DIR]",
                   help="put every object under the prefix in DIR (default inputs) on each machine (repeatable)")
    p.add_argument("-o", dest="output", action="append", default=[], metavar="FILE",
                   help="an extra output file to upload, relative to the work directory (repeatable)")
    p.add_argument("--install", default=os.path.join(HERE, "INSTALL.sh"), help="node setup script")
    p.add_argument("--tag_offset", type=int, default=0, help="number the machines from N")
    p.add_argument("--bucket", help="results bucket (default: the job name)")
    p.add_argument("--spot", action="store_true", help="launch spot instances")
    p.add_argument("--pool", type=count_or_auto("machines"), metavar="N|auto",
                   help="pool mode: at most N machines per instance type take the rows from an SQS queue "
                        "(auto: as many as the vCPU quota allows)")
    p.add_argument("--slots", type=count_or_auto("rows at once"), default="1", metavar="K|auto",
                   help="pool mode: rows run at once on each machine (auto: one per vCPU; default 1)")
    p.add_argument("--max-attempts", type=int, default=3, metavar="K",
                   help="pool mode: a row whose machine is lost K times is given up (default 3)")
    p.add_argument("--subnet", action="append", default=[], metavar="ID",
                   help="launch in this subnet (repeatable: the next is tried when a zone has no capacity); "
                        "default: the default VPC's subnets")
    p.add_argument("--max-runtime", type=duration, default=None, metavar="DURATION",
                   help="stop each command after this long (e.g. 6h); its results are still uploaded "
                        "(default 24h; in pool mode 11h; 0: no limit, one machine per row only)")
    p.add_argument("--upload-hold", type=duration, default=24 * 3600, metavar="DURATION",
                   help="a node whose upload failed stays up this long to keep its results (default 24h)")
    p.add_argument("--idle-timeout", type=duration, default=3600, metavar="DURATION",
                   help="a prepared node never dispatched terminates itself after this long (default 1h)")
    p.add_argument("--install-tries", type=int, default=3)
    p.add_argument("--install-timeout", type=int, default=1800, help="seconds per install try")
    p.add_argument("--ssh-timeout", type=int, default=600, help="seconds to wait for a node's SSH")
    p.add_argument("--parallel", type=int, default=32, help="nodes prepared at once")
    p.add_argument("--keep-failed", action="store_true", help="leave nodes whose install failed running")
    args = p.parse_args(argv)
    if not (args.create or args.dispatch or args.retry or args.dry_run or args.plan):
        p.error("nothing to do: give -c (create), -d (dispatch), both, --retry, --dry-run or --plan")
    for flag, given in (("--dry-run", args.dry_run), ("--plan", args.plan)):
        if given and (args.create or args.dispatch or args.retry):
            p.error("%s makes nothing: give it without -c, -d and --retry" % flag)
    if args.dry_run and args.plan:
        p.error("--dry-run and --plan each make nothing: give one")
    if args.hours is not None and args.like:
        p.error("--hours and --like both say how long a row takes: give one")
    if args.hours is not None and not (args.plan or args.budget):
        p.error("--hours goes with --plan or --budget")
    if args.like and not (args.plan or args.budget or args.pool):
        p.error("--like goes with --plan, --budget or --pool (which queues the rows longest first by its times)")
    if args.json and not args.plan:
        p.error("--json goes with --plan")
    if args.budget is not None and not args.budget > 0:
        p.error("--budget must be more than 0 (US dollars)")
    if args.hours is not None and not args.hours > 0:
        p.error("--hours must be more than 0")
    if not 1 <= args.max_attempts <= 1000:
        p.error("--max-attempts must be 1 to 1000 (SQS's maxReceiveCount)")
    args.inputs, args.prefixes = [], []
    return args


def main(argv=None):
    args = parse_args(argv)
    placement = pool.Pool(args) if args.pool else OnePerRow(args)  # chosen once, here

    def run_all():
        if args.retry:
            args.create = args.dispatch = True
        args.create = args.create or args.dry_run  # the dry run checks create's files too
        rows = check_arguments(args, placement)
        wanted = rows_wanted(args, rows)
        if args.dry_run:
            return launch.dry_run_command(args, placement, wanted)
        if args.plan:
            return cost.plan_command(args, placement, wanted)
        args.estimates = cost.row_estimates({t for _, t, _ in rows}, args.hours, args.like)[0] \
            if args.hours is not None or args.like else {}
        waiting = {}  # pool mode: queued rows that need machines, but are not queued again
        if args.retry:
            wanted, waiting = retry_plan(placement, wanted)
            if not wanted and not waiting:
                return 0
        connections, missing, found = create(args, placement, dict(waiting, **wanted)) if args.create \
            else (None, {}, None)
        rows = placement.launched(wanted, missing)
        try:  # dispatch reuses create's connections and its view of the machines; it starts what did launch
            if args.dispatch and (rows or waiting):
                dispatch(args, placement, rows, connections, requeue=args.retry, found=found)
        finally:
            if connections is not None:
                connections.close_all()
        placement.left_out(missing)
        return 0
    return cs.run_cli(run_all)


if __name__ == "__main__":
    cs.leave(main())
