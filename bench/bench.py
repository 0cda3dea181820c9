"""Benchmarks of awsrun's hot paths against what a user would use instead, in the sandbox.
Runs on the developer's machine.

    make bench                      # all of it, sized to run in under 10 minutes on 2 cores
    make bench FULL=1               # the full sizes (--full): not timed yet (the last full run: 19 min)
    python bench/bench.py --only fetch    # one part: fetch, upload, setup or pool
    python bench/bench.py --quick         # 2 repetitions and the default sizes, for a quick look

Each comparison runs both sides in the same run, alternating, several times, and reports the
median wall time, the median CPU time (user + system) of the measured process and the
processes it waited for, the ratios and the peak memory (max RSS) of the measured process. Needs the
AWS CLI (installed by `make bench` in .venv-bench from bench/requirements.txt) and rclone
(`sudo apt-get install rclone`). Not run by `make test`: timings are not assertions.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # awsrun's own folder, above bench/
sys.path.insert(0, HERE)
PY = sys.executable
AWS_CLI = os.path.join(HERE, ".venv-bench", "bin", "aws")
TAGS, BIG_SIZE = 20, 64 << 20
KEPT = "## How these are measured, and earlier runs"  # BENCHMARKS.md from this heading on is kept
SIZES = {"default": {"small": 1000, "big": 2, "setup": (16, 64), "pool": 2000},
         "full": {"small": 2000, "big": 4, "setup": (16, 64, 256), "pool": 2000}}


# ---------------------------------------------------------------------------- measuring

# A process's peak memory (ru_maxrss) includes the memory of the process it was forked from,
# and this one holds the moto server's data; so each command is started by a small launcher
# that reports its child's peak. The launcher's own ~10 MB is the floor of the measure.
LAUNCHER = """import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
os.write(int(os.environ["BENCH_FD"]), ("%f %d %f" % (time.perf_counter() - start, usage.ru_maxrss,
         usage.ru_utime + usage.ru_stime)).encode())
sys.exit(os.waitstatus_to_exitcode(status))
"""


# The sandbox's own key (sandbox.ADMIN_KEY), which its IAM does not check: the benchmarks write
# their data sets, and time uploads, as a node would but without a node's role.
ADMIN = "sandbox-admin"


def measure(argv, env, cwd=None):
    """Run a command; return (seconds, peak RSS in MB, CPU seconds: user + system, its own and
    its waited-for children's). Fails loudly if it fails."""
    read, write = os.pipe()
    proc = subprocess.run([PY, "-c", LAUNCHER] + argv, env=dict(env, BENCH_FD=str(write)), cwd=cwd,
                          pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(write)
    with os.fdopen(read) as f:
        report = f.read().split()
    if proc.returncode != 0:
        raise SystemExit("benchmark command failed (%d): %s\n%s" % (
            proc.returncode, " ".join(argv), proc.stderr.decode(errors="replace")[-2000:]))
    return float(report[0]), int(report[1]) / 1024, float(report[2])


def compare(label, sides, reps, prepare=None):
    """Run each side `reps` times, alternating; returns {side: (median s, max MB, median CPU s)}."""
    times = {name: [] for name in sides}
    cpu = {name: [] for name in sides}
    memory = {name: 0.0 for name in sides}
    for rep in range(reps):
        order = list(sides) if rep % 2 == 0 else list(reversed(sides))
        for name in order:
            if prepare:
                prepare(name)
            seconds, mb, used = sides[name]()
            times[name].append(seconds)
            cpu[name].append(used)
            memory[name] = max(memory[name], mb)
        log("%s: rep %d/%d: %s" % (label, rep + 1, reps, ", ".join(
            "%s %.2fs (CPU %.2fs)" % (n, times[n][-1], cpu[n][-1]) for n in sides)))
    return {name: (statistics.median(times[name]), memory[name], statistics.median(cpu[name])) for name in sides}


def log(message):
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- data

def make_output_tree(folder, small, big, seed=7):
    """output/ of the benchmark's shape: `small` files of 1-100 KB in 20 folders, `big` x 64 MB."""
    rng = random.Random(seed)
    for i in range(small):
        path = os.path.join(folder, "output", "part%02d" % (i % TAGS), "f%04d.dat" % i)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(rng.randbytes(rng.randint(1 << 10, 100 << 10)))
    block = rng.randbytes(1 << 20)
    for i in range(big):
        with open(os.path.join(folder, "output", "big%d.bin" % i), "wb") as f:
            for j in range(BIG_SIZE >> 20):
                f.write(hashlib.sha256(block + bytes([i, j])).digest() + block[32:])
    return folder


def tree_files(source):
    return sorted((os.path.join(root, n), os.path.relpath(os.path.join(root, n), source))
                  for root, _, names in os.walk(os.path.join(source, "output")) for n in names)


def fetch_dataset(s3, bucket, source):
    """A bucket as a job's nodes leave it: the files spread over 20 tag folders, each with a
    manifest and an outcome marker, uploaded with save_results's own code."""
    import cloud_setup as cs
    import save_results
    cs.ensure_bucket(s3, bucket, "us-east-1")
    files = tree_files(source)
    for t in range(TAGS):
        mine = [(p, k) for i, (p, k) in enumerate(files) if i % TAGS == t]
        manifest = {"tag": "bench%d" % t, "exit_code": 0, "started": "", "ended": "",
                    "files": save_results.upload(s3, bucket, "bench%d" % t, mine)}
        save_results.finish(s3, bucket, "bench%d" % t, manifest)


def foreign_dataset(s3, bucket, source):
    """A bucket not written by awsrun: the same files uploaded with plain boto3 (its default
    8 MB multipart threshold, so the big files have multipart ETags), no manifests, no markers."""
    from boto3.s3.transfer import TransferConfig
    s3.create_bucket(Bucket=bucket)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda f: s3.upload_file(f[0], bucket, "data/" + f[1], Config=TransferConfig()),
                      tree_files(source)))


# ---------------------------------------------------------------------------- the parts

def rclone_environment(box, work):
    env = dict(box.child_environment(), RCLONE_CONFIG_MOTO_TYPE="s3", RCLONE_CONFIG_MOTO_PROVIDER="Other",
               RCLONE_CONFIG_MOTO_ENDPOINT=box.endpoint, RCLONE_CONFIG_MOTO_ACCESS_KEY_ID="sandbox",
               RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY="sandbox", RCLONE_CONFIG_MOTO_REGION="us-east-1",
               RCLONE_CONFIG=os.path.join(work, "rclone.conf"))
    env.pop("AWS_CA_BUNDLE", None)  # rclone cannot use a CA bundle over plain HTTP
    return env


def bench_fetch(box, work, reps, small, big):
    """Cold and warm fetches by the three tools of: a bucket of small files only (the client's
    CPU per object), a bucket as awsrun's nodes write it, and a foreign bucket of the same files."""
    s3 = box_client(box, "s3")
    mixed = os.path.join(work, "source")
    if not os.path.exists(os.path.join(mixed, "output")):
        make_output_tree(mixed, small, big)
    only_small = make_output_tree(os.path.join(work, "source-small"), small, 0)
    fetch_dataset(s3, "bench-small", only_small)
    fetch_dataset(s3, "bench-fetch", mixed)
    foreign_dataset(s3, "bench-foreign", mixed)
    env, rclone_env = box.child_environment(), rclone_environment(box, work)
    results = {}
    for bucket, label, warm_too in (("bench-small", "small files", False), ("bench-fetch", "awsrun's bucket", True),
                                    ("bench-foreign", "foreign bucket", True)):
        dest = {name: os.path.join(work, "fetch-%s-%s" % (bucket, name.split()[0]))
                for name in ("awsrun", "aws s3 sync", "rclone")}
        sides = {
            "awsrun": lambda dest=dest, bucket=bucket: measure(
                [PY, os.path.join(HERE, "get_s3_files.py"), bucket, dest["awsrun"]], env),
            "aws s3 sync": lambda dest=dest, bucket=bucket: measure(
                [AWS_CLI, "s3", "sync", "--only-show-errors", "s3://" + bucket, dest["aws s3 sync"]], env),
            "rclone": lambda dest=dest, bucket=bucket: measure(
                ["rclone", "copy", "moto:" + bucket, dest["rclone"], "--transfers", "16"], rclone_env),
        }
        empty = lambda name, dest=dest: shutil.rmtree(dest[name], ignore_errors=True)  # noqa: E731
        # Each fetch against the tool its goal names: cold against rclone, warm against
        # `aws s3 sync` (until 12-02 both against both: a third of make bench's time).
        cold = {name: sides[name] for name in ("awsrun", "rclone")}
        results[(label, "cold")] = compare("fetch %s, cold" % label, cold, reps, prepare=empty)
        check_same_files({name: dest[name] for name in cold})
        if warm_too:
            sides["aws s3 sync"]()  # the warm fetches start from a complete copy, as awsrun's does
            warm = {name: sides[name] for name in ("awsrun", "aws s3 sync")}
            results[(label, "warm")] = compare("fetch %s, warm" % label, warm, reps)
            check_same_files({name: dest[name] for name in warm})
    return results, small


def check_same_files(dest):
    """Every tool fetched the same files, byte for byte (a fast wrong answer is no answer)."""
    listings = {}
    for name, folder in dest.items():
        listings[name] = sorted((os.path.relpath(os.path.join(r, n), folder), os.path.getsize(os.path.join(r, n)))
                                for r, _, names in os.walk(folder) for n in names
                                if n != ".awsrun-fetch.json" and "_awsrun" not in r)  # awsrun's own
    first = next(iter(listings.values()))
    for name, listing in listings.items():
        if listing != first:
            raise SystemExit("fetch benchmark: %s fetched other files than %s" % (name, next(iter(listings))))


def bench_upload(box, work, reps, small, big):
    import boto3
    env = box.child_environment()
    node_env = dict(env, AWS_ACCESS_KEY_ID=ADMIN, AWS_SECRET_ACCESS_KEY=ADMIN)  # both sides alike
    ec2 = boto3.client("ec2", endpoint_url=box.endpoint, region_name="us-east-1",
                       aws_access_key_id=ADMIN, aws_secret_access_key=ADMIN)
    source = os.path.join(work, "source")
    if not os.path.exists(os.path.join(source, "output")):
        make_output_tree(source, small, big)
    node = os.path.join(work, "node")
    os.makedirs(os.path.join(node, ".awsrun"), exist_ok=True)
    if not os.path.exists(os.path.join(node, "output")):
        os.symlink(os.path.join(source, "output"), os.path.join(node, "output"))
    import dispatcher
    for path in dispatcher.NODE_PYTHON:
        shutil.copy(os.path.join(HERE, path), os.path.join(node, ".awsrun", os.path.basename(path)))
    for name, text in (("exit_code", "0"), ("started", "2026-01-01T00:00:00Z"), ("ended", "2026-01-01T00:01:00Z")):
        with open(os.path.join(node, ".awsrun", name), "w") as f:
            f.write(text)
    counter = Counter()

    def awsrun():
        counter["awsrun"] += 1
        instance = ec2.run_instances(ImageId=box.ami, InstanceType="t3.micro", MinCount=1, MaxCount=1)
        info = {"job": "bench", "tag": "awsrun%d" % counter["awsrun"],
                "instance_id": instance["Instances"][0]["InstanceId"],
                "instance_type": "t3.micro", "bucket": "bench-upload", "account": "123456789012",
                "region": "us-east-1", "command": "bench", "outputs": []}
        with open(os.path.join(node, ".awsrun", "node.json"), "w") as f:
            json.dump(info, f)
        return measure([PY, os.path.join(node, ".awsrun", "save_results.py")], node_env)

    def aws_cli():
        counter["aws"] += 1
        return measure([AWS_CLI, "s3", "cp", "--recursive", "--only-show-errors", os.path.join(source, "output"),
                        "s3://bench-upload/aws%d/output/" % counter["aws"]], node_env)
    import cloud_setup as cs
    cs.ensure_bucket(boto3.client("s3", endpoint_url=box.endpoint, region_name="us-east-1",
                                  aws_access_key_id=ADMIN, aws_secret_access_key=ADMIN),
                     "bench-upload", "us-east-1")
    return compare("upload", {"awsrun": awsrun, "aws s3 cp": aws_cli}, reps)


# The baseline: what any launcher must do, through the same sandbox and the same policy (the
# user's keys): a key pair, a security group open to this machine, a node role (within the
# permissions boundary) in an instance profile, one RunInstances per instance type, waiting
# until they run (botocore's waiter, polled each second); then the same SSH work, `parallel` nodes
# at a time: per node one connection, one session that unpacks the same bundle as it arrives and
# runs its install script (the same trivial one), and one that starts the row's command
# detached. It makes no bucket and checks nothing first (images, quotas, the bucket's owner), it
# arms no cost guard and it keeps no state: the ratio is awsrun's own overhead beyond that.
MINIMAL = '''
import io, json, os, sys, boto3, paramiko
from concurrent.futures import ThreadPoolExecutor
name, group_name, role, host, port, user, root, n, parallel, payload = sys.argv[1:11]
n = int(n)
ec2, iam = boto3.client("ec2"), boto3.client("iam")
account = boto3.client("sts").get_caller_identity()["Account"]
tags = [{"Key": "awsrun:job", "Value": name}]
key = ec2.create_key_pair(KeyName=name, TagSpecifications=[{"ResourceType": "key-pair", "Tags": tags}])
pkey = paramiko.RSAKey.from_private_key(io.StringIO(key["KeyMaterial"]))
group = ec2.create_security_group(GroupName=group_name, Description=name, TagSpecifications=[
    {"ResourceType": "security-group", "Tags": tags}])["GroupId"]
ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "127.0.0.1/32"}]}])
trust = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust),
                PermissionsBoundary="arn:aws:iam::%s:policy/awsrun-node-boundary" % account)
iam.put_role_policy(RoleName=role, PolicyName="node", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::%s/*" % name}]}))
iam.create_instance_profile(InstanceProfileName=role)
iam.add_role_to_instance_profile(InstanceProfileName=role, RoleName=role)
image = boto3.client("ssm").get_parameter(
    Name="/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id")["Parameter"]["Value"]
ids = []
for itype, count in (("t3.micro", n // 2), ("t3.small", n - n // 2)):
    ids += [i["InstanceId"] for i in ec2.run_instances(
        ImageId=image, InstanceType=itype, MinCount=count, MaxCount=count, KeyName=name, SecurityGroupIds=[group],
        IamInstanceProfile={"Name": role}, TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])["Instances"]]
ec2.get_waiter("instance_running").wait(InstanceIds=ids, WaiterConfig={"Delay": 1})
data = open(payload, "rb").read()

def node(i):
    ssh = paramiko.SSHClient()
    ssh.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    ssh.connect(host, int(port), user, pkey=pkey, allow_agent=False, look_for_keys=False)
    d = "%s/minimal%d" % (root, i)
    chan = ssh.get_transport().open_session()            # the code, unpacked, and its install script
    chan.exec_command("mkdir -p %s && cd %s && tar -xzf - && bash INSTALL.sh" % (d, d))
    chan.sendall(data); chan.shutdown_write()
    assert chan.recv_exit_status() == 0
    chan = ssh.get_transport().open_session()            # the row's command, detached
    chan.exec_command("cd %s && (nohup sleep 600 > /dev/null 2>&1 < /dev/null &)" % d)
    assert chan.recv_exit_status() == 0
    ssh.close()

with ThreadPoolExecutor(int(parallel)) as pool:
    list(pool.map(node, range(n)))
'''

# dispatcher.py, counting every request it sends: each client awsrun makes comes from its one
# session, so a handler there sees them all (RunInstances' own client and the waits too).
COUNTED = '''
import json, os, sys
from collections import Counter
sys.path.insert(0, os.environ["AWSRUN_HOME"])
import cloud_setup as cs, dispatcher
calls = Counter()
cs.session().events.register("before-call", lambda model, **kw: calls.update(
    ["%s:%s" % (model.service_model.service_name, model.name)]))
code = dispatcher.main(sys.argv[1:])
with open(os.environ["BENCH_CALLS"], "w") as f:
    json.dump(calls, f)
cs.leave(code)  # as dispatcher.py ends
'''


def bench_setup(box, work, sizes, reps, parallel=32):
    import cloud_setup as cs
    from testbed.sandbox_ec2 import kill_processes_under
    env = box.child_environment()
    install = os.path.join(work, "trivial-install.sh")
    with open(install, "w") as f:
        f.write("touch READY\n")
    counted = os.path.join(work, "counted.py")
    with open(counted, "w") as f:
        f.write(COUNTED)
    minimal = os.path.join(work, "minimal.py")
    with open(minimal, "w") as f:
        f.write(MINIMAL)
    payload = os.path.join(work, "payload.tgz")
    # The minimal side's "nodes" have a folder of their own: each run's sleeps are ended, as a
    # terminated machine's would be, and never left to slow down the parts that come after.
    minimal_root = os.path.join(work, "minimal-nodes")

    def end_minimal():
        for n in sizes:  # its machines, key pair, group and role, as awsrun's clean ends a job's
            subprocess.run([PY, os.path.join(HERE, "cloud_setup.py"), "clean", "bench-minimal-%d" % n], env=env,
                           check=True, capture_output=True)
        kill_processes_under(minimal_root)
        shutil.rmtree(minimal_root, ignore_errors=True)
    results, calls = {}, {}
    for n in sizes:
        job = "bench-setup-%d" % n
        jobs = os.path.join(work, "%s.csv" % job)
        with open(jobs, "w") as f:
            f.write("instance_type,command\n")
            f.writelines("%s,sleep 600\n" % ("t3.micro" if i % 2 else "t3.small") for i in range(n))
        calls_file = os.path.join(work, "calls-%d.json" % n)

        def ours(job=job, jobs=jobs, calls_file=calls_file):
            return measure([PY, counted, "auto", job, jobs, "-c", "-d", "--install", install,
                            "--parallel", str(parallel)], dict(env, AWSRUN_HOME=HERE, BENCH_CALLS=calls_file))

        def reset(name, job=job, calls_file=calls_file):
            if name == "awsrun" and os.path.exists(calls_file):  # a fresh job each time: end the last one
                subprocess.run([PY, os.path.join(HERE, "cloud_setup.py"), "clean", job], env=env,
                               check=True, capture_output=True)
            if name == "minimal":
                if not os.path.exists(payload):
                    make_payload(payload, install)
                end_minimal()
                os.makedirs(minimal_root)

        def minimal_side(n=n):
            name = "bench-minimal-%d" % n
            return measure([PY, minimal, name, cs.group_name(name), cs.role_name(name), "127.0.0.1",
                            str(box.ssh_port), env["AWSRUN_SSH_USER"], minimal_root, str(n), str(parallel), payload],
                           env)
        if not os.listdir(box.path("keys")):
            reset("awsrun")
            ours()
        results[n] = compare("create+dispatch N=%d" % n, {"awsrun": ours, "minimal": minimal_side},
                             min(reps, 2) if n >= 256 else reps, prepare=reset)
        with open(calls_file) as f:
            calls[n] = json.load(f)
        reset("awsrun")
    end_minimal()
    return results, calls


def results_in(s3, bucket, job, count, deadline):
    """Wait until `count` rows of the job have their outcome marker in the bucket."""
    while time.monotonic() < deadline:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="_awsrun/" + job)
        if sum("/exit=" in o["Key"] for p in pages for o in p.get("Contents", [])) >= count:
            return True
        time.sleep(1.0)
    raise SystemExit("the pool benchmark: not every row of %s finished in time" % job)


STAGE = re.compile(r"attempt \d+: (.*) \(ms\)")
SUMMARY = re.compile(r"^(\d+) rows on (\d+) slots, their commands from ([\d.]+) to ([\d.]+) .*\((\d+) ms\); "
                     r".* without a row (\d+) ms and took the next one (\d+) ms")


def pool_log_files(nodes_dir, job):
    """The runner.log of every pool machine of the job."""
    return glob.glob(os.path.join(nodes_dir, job + "-pool-*", ".awsrun", "runner.log"))


def pool_logs(nodes_dir, job):
    """The worker's own timing of each row's stages, in ms ({stage: [ms, ...]}), its machine's
    summary ({rows, slots, first command's start, last one's end; ms: per command, and a
    slot's medians free without a row and taking the next}), from the runner.log of every pool
    machine of the job."""
    stages, machines = {}, []
    for log_file in pool_log_files(nodes_dir, job):
        with open(log_file) as f:
            for line in f:
                found, summary = STAGE.search(line), SUMMARY.match(line.strip())
                for part in found.group(1).split(", ") if found else []:
                    name, ms = part.rsplit(" ", 1)
                    stages.setdefault(name, []).append(float(ms))
                if summary:
                    machines.append(dict(zip(("rows", "slots", "first", "last", "command", "free", "take"),
                                             map(float, summary.groups()))))
    return stages, machines


def rows_logged(nodes_dir, job):
    """How many rows the job's pool workers have logged so far: a count of bytes, for the wait.
    (Parsing every line of every log twice a second ran in this process, the sandbox's, and took
    a twentieth of its server's time.)"""
    count = 0
    for log_file in pool_log_files(nodes_dir, job):
        with open(log_file, "rb") as f:
            count += f.read().count(b" (ms)\n")
    return count


def bench_pool(box, work, rows=2000, machines=4, slots=4, uneven=True):
    """Pool mode at scale: `rows` trivial rows on machines x slots. Their rate from dispatch to
    every result in the bucket; the slots' time per row beyond its command and the worker's
    stages (the workers' own clocks); the makespan against its lower bound (the commands' time
    over every slot); and (uneven) the makespan of rows of uneven length."""
    env = dict(box.child_environment(), AWSRUN_POOL_IDLE="5")  # the summaries come when the machines end
    s3 = box_client(box, "s3")
    install = os.path.join(work, "trivial-install.sh")
    with open(install, "w") as f:
        f.write("touch READY\n")
    job, jobs = "bench-pool-%dx%d" % (machines, slots), os.path.join(work, "pool.csv")
    with open(jobs, "w") as f:
        f.write("instance_type,command\n" + "t3.micro,echo $TAG > output/tag.txt\n" * rows)
    base = [PY, os.path.join(HERE, "dispatcher.py"), "auto", job, jobs, "--install", install,
            "--pool", str(machines), "--slots", str(slots)]
    subprocess.run(base + ["-c"], env=env, check=True, capture_output=True)
    started, cpu, server = time.perf_counter(), machine_cpu(), sum(os.times()[:2])
    subprocess.run(base + ["-d"], env=env, check=True, capture_output=True)
    deadline = time.monotonic() + 900
    while rows_logged(box.path("nodes"), job) < rows:  # the logs, not the bucket: no request to the sandbox
        if time.monotonic() > deadline:
            raise SystemExit("the pool benchmark: not every row of %s finished in time" % job)
        time.sleep(0.5)
    wall = time.perf_counter() - started
    cpu, server = machine_cpu() - cpu, sum(os.times()[:2]) - server
    results_in(s3, job, job, rows, time.monotonic() + 60)  # a worker logs a row once its marker is in
    subprocess.run([PY, os.path.join(HERE, "cloud_setup.py"), "wait", job, "--timeout", "120"], env=env, check=True,
                   capture_output=True)
    stages, summaries = pool_logs(box.path("nodes"), job)
    subprocess.run([PY, os.path.join(HERE, "cloud_setup.py"), "clean", job], env=env, check=True, capture_output=True)
    done = sum(m["rows"] for m in summaries)
    if done < rows:
        raise SystemExit("the pool benchmark: the workers' logs account for %d of %d rows" % (done, rows))
    command_s = sum(m["rows"] * m["command"] / 1000 for m in summaries)
    result = {"rows": rows, "machines": machines, "slots": slots, "wall": wall,
              "stages": {k: statistics.median(v) for k, v in stages.items()},
              "overhead": (sum(m["slots"] * (m["last"] - m["first"]) for m in summaries) - command_s) / done * 1000,
              "free": statistics.median(m["free"] for m in summaries),
              "take": statistics.median(m["take"] for m in summaries),
              "makespan": max(m["last"] for m in summaries) - min(m["first"] for m in summaries),
              "bound": command_s / (machines * slots), "cpu": cpu / rows * 1000, "server": server / rows * 1000,
              "busy": cpu / wall / os.cpu_count()}
    log("pool: %d rows in %.2f s (%.1f rows/s), %.0f ms of slot time per row beyond its command, a slot free "
        "without a row %.0f ms and taking one %.0f ms; stages %s" % (
            rows, wall, rows / wall, result["overhead"], result["free"], result["take"], result["stages"]))
    if uneven:
        result["uneven"] = pool_makespan(box, work, env, install, s3)
    return result


SLOT_ROWS = 200  # trivial rows on one machine with one slot: what a slot costs a row when the CPU is not the limit
UNEVEN = [6, 6, 5, 4, 3, 3, 2, 2, 2, 1, 1, 1]  # seconds: 12 rows of uneven length


def machine_cpu():
    """Seconds of CPU this machine has spent so far, every process's (user, nice and system: the
    nodes run at nice 19), from /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system = f.readline().split()[1:4]
    return (int(user) + int(nice) + int(system)) / os.sysconf("SC_CLK_TCK")


def pool_makespan(box, work, env, install, s3):
    """12 rows of uneven length on 2 machines x 2 slots: the makespan by the rows' own clocks,
    against the best possible (their total over 4 slots, or the longest row): (makespan, best)."""
    job, jobs = "bench-uneven", os.path.join(work, "uneven.csv")
    with open(jobs, "w") as f:
        f.write("instance_type,command\n" + "".join(
            't3.micro,"a=$(date +%%s.%%N); sleep %d; echo $a $(date +%%s.%%N) > output/t.txt"\n' % s for s in UNEVEN))
    base = [PY, os.path.join(HERE, "dispatcher.py"), "auto", job, jobs, "--install", install, "--pool", "2",
            "--slots", "2"]
    subprocess.run(base + ["-c", "-d"], env=env, check=True, capture_output=True)
    results_in(s3, job, job, len(UNEVEN), time.monotonic() + 300)
    spans = [tuple(map(float, s3.get_object(Bucket=job, Key="%s%d/output/t.txt" % (job, i))["Body"].read().split()))
             for i in range(len(UNEVEN))]
    subprocess.run([PY, os.path.join(HERE, "cloud_setup.py"), "clean", job], env=env, check=True, capture_output=True)
    makespan = max(e for _, e in spans) - min(s for s, _ in spans)
    best = max(sum(e - s for s, e in spans) / 4, max(e - s for s, e in spans))
    log("pool makespan of 12 uneven rows: %.2f s, best %.2f s" % (makespan, best))
    return makespan, best


def box_client(box, service):
    import boto3
    return boto3.client(service, endpoint_url=box.endpoint, region_name="us-east-1", aws_access_key_id=ADMIN,
                        aws_secret_access_key=ADMIN)


def make_payload(path, install):
    """The same bundle a node gets (INSTALL.sh, save_results.py, ...), for the minimal script's copy."""
    args = argparse.Namespace(code=None, inputs=[], install=install)
    import dispatcher
    with dispatcher.make_bundle(args) as bundle, open(path, "wb") as f:
        bundle.seek(0)
        shutil.copyfileobj(bundle, f)


# ---------------------------------------------------------------------------- report

def table(fetched, upload, setup, calls, pooled=None):
    lines = ["| comparison | awsrun | other | ratio | goal | awsrun CPU | other CPU | CPU ratio | awsrun peak MB "
             "| other peak MB |", "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]

    def row(what, ours, other, name, goal):
        lines.append("| %s vs %s | %.2f s | %.2f s | %.2fx | %s | %.2f s | %.2f s | %.2fx | %.0f | %.0f |" % (
            what, name, ours[0], other[0], ours[0] / other[0], goal, ours[2], other[2], ours[2] / other[2],
            ours[1], other[1]))
    if fetched:
        found, small = fetched
        for (label, state), r in found.items():
            if state == "cold":
                row("fetch %s, cold" % label, r["awsrun"], r["rclone"], "rclone --transfers 16",
                    "CPU <= 1.2x" if label == "small files" else "<= 1.0x")
            else:
                row("fetch %s, warm" % label, r["awsrun"], r["aws s3 sync"], "aws s3 sync", "<= 0.5x")
        per = {name: found[("small files", "cold")][name][2] / small * 1000 for name in ("awsrun", "rclone")}
        after = ["", "Client CPU per small object (cold fetch of %d files of 1-100 KB, user + system): %s." % (
            small, ", ".join("%s %.2f ms" % kv for kv in per.items()))]
    else:
        after = []
    if upload:
        row("node upload", upload["awsrun"], upload["aws s3 cp"], "aws s3 cp --recursive", "<= 1.0x")
    for n, r in sorted((setup or {}).items()):
        row("create+dispatch, N=%d" % n, r["awsrun"], r["minimal"], "a minimal launcher (its AWS calls, then paramiko)",
            "<= 1.2x")
    if pooled:
        lines += ["", "Pool mode: %d trivial rows on %d machines x %d slots: %.1f s from dispatch to every result in "
                  "the bucket, %.1f rows/s. Between two commands a slot was free without a row %.0f ms and took "
                  "the next one %.0f ms (medians; goal: under 100 ms together); in all, %.0f ms of a slot's time per "
                  "row beyond its command. The worker's stages (median ms): %s. Makespan by the rows' own clocks "
                  "%.1f s, against its lower bound %.1f s (the commands' time over every slot). The machine's %d "
                  "cores were %.0f%% busy, %.0f ms of CPU per row in all (the sandbox's server %.0f ms of it), and "
                  "%d slots share them." % (
                      pooled["rows"], pooled["machines"], pooled["slots"], pooled["wall"],
                      pooled["rows"] / pooled["wall"], pooled["free"], pooled["take"], pooled["overhead"],
                      ", ".join("%s %.0f" % kv for kv in pooled["stages"].items()), pooled["makespan"],
                      pooled["bound"], os.cpu_count(), pooled["busy"] * 100, pooled["cpu"], pooled["server"],
                      pooled["machines"] * pooled["slots"]),
                  "", "The same rows, %d of them, on 1 machine x 1 slot (the sandbox's CPU then has room for the "
                  "slot's work): between two commands the slot was free without a row %.0f ms and took the next one "
                  "%.0f ms (goal: under 100 ms together); %.1f rows/s; stages %s." % (
                      pooled["alone"]["rows"], pooled["alone"]["free"], pooled["alone"]["take"],
                      pooled["alone"]["rows"] / pooled["alone"]["wall"],
                      ", ".join("%s %.0f" % kv for kv in pooled["alone"]["stages"].items())),
                  "", "12 rows of 1-6 s on 2 machines x 2 slots: makespan %.2f s, best possible %.2f s (%.2fx; "
                  "goal <= 1.2x)." % (pooled["uneven"] + (pooled["uneven"][0] / pooled["uneven"][1],))]
    if calls:
        sizes = sorted(calls)
        lines += ["", "AWS requests made by `dispatcher.py -c -d`, by operation:", "",
                  "| operation | " + " | ".join("N=%d" % n for n in sizes) + " |",
                  "|---|" + "---:|" * len(sizes)]
        for op in sorted(set().union(*calls.values())):
            lines.append("| %s | %s |" % (op, " | ".join(str(calls[n].get(op, 0)) for n in sizes)))
        totals = [sum(v for k, v in calls[n].items() if k.startswith("ec2:")) for n in sizes]
        lines.append("| **all EC2** | %s |" % " | ".join("**%d**" % t for t in totals))
    return "\n".join(lines + after)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("fetch", "upload", "setup", "pool"), action="append")
    p.add_argument("--full", action="store_true", help="the full sizes: %s" % SIZES["full"])
    p.add_argument("--quick", action="store_true", help="2 repetitions")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=os.path.join(HERE, "BENCHMARKS.md"))
    args = p.parse_args(argv)
    parts = args.only or ["fetch", "upload", "setup", "pool"]
    reps = 2 if args.quick else args.reps
    size = SIZES["full" if args.full else "default"]
    if "fetch" in parts and not shutil.which("rclone"):
        raise SystemExit("the fetch benchmark needs rclone: sudo apt-get install rclone")
    if set(parts) & {"fetch", "upload"} and not os.path.exists(AWS_CLI):
        raise SystemExit("the benchmark needs the AWS CLI in .venv-bench: run `make bench`")
    from testbed import sandbox_server as sandbox
    work = tempfile.mkdtemp(prefix="awsrun-bench-")
    box = sandbox.Sandbox(os.path.join(work, "sandbox")).start()
    started = time.perf_counter()
    try:
        fetched = upload = setup = calls = pooled = None
        if "fetch" in parts:
            fetched = bench_fetch(box, work, reps, size["small"], size["big"])
        if "upload" in parts:
            upload = bench_upload(box, work, reps, size["small"], size["big"])
        if "setup" in parts:
            setup, calls = bench_setup(box, work, size["setup"], reps)
        if "pool" in parts:
            pooled = bench_pool(box, work, rows=size["pool"])
            pooled["alone"] = bench_pool(box, work, rows=SLOT_ROWS, machines=1, slots=1, uneven=False)
    finally:
        box.stop()
        shutil.rmtree(work, ignore_errors=True)
    took = time.perf_counter() - started
    result = table(fetched, upload, setup, calls, pooled)
    print(result)
    kept = ""
    if os.path.exists(args.out):  # the methods and earlier runs stay below the new table
        with open(args.out, encoding="utf-8") as f:
            text = f.read()
        kept = text[text.index(KEPT):] if KEPT in text else ""
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("# awsrun benchmarks\n\n`make bench%s` on %s (%d cores), %s, %d repetitions each, "
                "median wall and CPU time, %d small files and %d x 64 MB; the whole run took %.0f s.\n\n%s\n" % (
                    " FULL=1" if args.full else "", os.uname().machine, os.cpu_count(), time.strftime("%Y-%m-%d"),
                    reps, size["small"], size["big"], took, result) + ("\n" + kept if kept else ""))
    log("written to %s; the benchmark took %dm%02ds" % (args.out, took // 60, took % 60))


if __name__ == "__main__":
    main()
