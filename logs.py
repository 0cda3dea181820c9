"""A row's log, and its machine at hand: from the node over SSH while it runs, from the bucket
once it has finished. Runs on the user's machine.

    python logs.py JOBNAME TAG              # the command's screen_output.txt
    python logs.py JOBNAME TAG --install    # the install script's logs, every try
    python logs.py JOBNAME TAG --follow     # the log as it grows, until the row ends
    python logs.py JOBNAME TAG --ssh        # a shell on the row's machine, in its work directory
    python logs.py JOBNAME TAG --ssh -- ls output    # a command there

A node that failed its install and was terminated has its install output kept on this machine
(awsrun's state folder); that is printed when nothing else is left. --follow and --ssh use
OpenSSH's client with the job's key and the host key awsrun remembered for the instance.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
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


def machine_of(job, tag):
    """(the row's machine or None, the row's folder in its work directory, the job's nodes): its
    own machine, or in pool mode the one that runs it now."""
    nodes = job_state.newest_per_tag(job_state.find_nodes(job))
    node, folder = nodes.get(tag), ""
    if node is None:
        start = job_state.starts(job_state.list_markers(job_state.job_bucket(job, nodes.values()))).get(tag)
        machines = {n["id"]: n for n in nodes.values() if n["pool"]}
        if start and start["instance"] in machines:
            node, folder = machines[start["instance"]], ".awsrun/rows/" + tag
    return node, folder, nodes


def logs(job, tag, install=False):
    node, folder, nodes = machine_of(job, tag)
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


def openssh(job, node, folder, command, tty):
    """The OpenSSH command line that runs `command` (a shell line) in the row's work directory on
    its machine: the job's key, the user and address awsrun uses, and the host key it remembered
    for the instance (a machine it never reached is trusted on first use, as awsrun does)."""
    host, port, user = remote.ssh_target(node)
    where = remote.remote_dir(node["tag"]) + ("/" + shlex.quote(folder) if folder else "")
    return (["ssh"] + (["-t"] if tty else []) +
            ["-i", remote.key_path(job), "-p", str(port), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
             "-o", "HostKeyAlias=" + node["id"], "-o", "StrictHostKeyChecking=accept-new",
             "-o", "UserKnownHostsFile=" + os.path.join(cs.state_dir(job), "known_hosts"),
             "%s@%s" % (user, host), "cd %s || exit %d; %s" % (where, NO_FOLDER, command)])


NO_FOLDER = 3  # the row's folder is not on its machine (yet, or any more)


def at_machine(job, tag):
    """The row's running machine and folder, or UserError saying why there is none to reach."""
    node, folder, _ = machine_of(job, tag)
    if node is None:
        raise UserError("%s has no machine now: it has finished, or never started (`make status JOB=%s`; its "
                        "log: `make logs JOB=%s TAG=%s`)" % (tag, job, job, tag))
    if node["state"] == "pending":
        raise UserError("%s's machine %s is still booting: try again in a minute" % (tag, node["id"]))
    if node["state"] != "running":
        raise UserError("%s's machine %s is %s: there is nothing to log in to" % (tag, node["id"], node["state"]))
    if not shutil.which("ssh"):
        raise UserError("OpenSSH's client `ssh` is not installed: sudo apt-get install openssh-client")
    cs.refresh_ssh_rule(job)  # the caller may be on another network since create
    return node, folder


def shell(job, tag, command):
    """Run OpenSSH to the row's machine (a login shell, or `command` there); its exit status."""
    node, folder = at_machine(job, tag)
    line = " ".join(command) if command else "exec bash -l"
    code = subprocess.call(openssh(job, node, folder, line, tty=not command and sys.stdin.isatty()))
    if code == NO_FOLDER:
        raise UserError("%s's folder is not on machine %s (any more): `make logs JOB=%s TAG=%s`"
                        % (tag, node["id"], job, tag))
    return code


def follow(job, tag):
    """Print the row's log as it grows until the row ends (GNU tail, stopped with the row runner);
    a row that has ended already: its whole log, from wherever it is."""
    try:
        node, folder = at_machine(job, tag)
    except UserError:
        sys.stdout.write(logs(job, tag))
        return 0
    line = ('[ -f screen_output.txt ] || exit %d; pid=$(cat .awsrun/row.pid 2>/dev/null) '
            '|| exec cat screen_output.txt; exec tail -n +1 -s 0.2 -f --pid="$pid" screen_output.txt' % NO_FOLDER)
    ssh = subprocess.Popen(openssh(job, node, folder, line, tty=False), stdout=subprocess.PIPE)
    shown = 0
    for chunk in iter(lambda: ssh.stdout.read1(1 << 16), b""):
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        shown += len(chunk)
    code = ssh.wait()
    if code == NO_FOLDER:
        sys.stdout.write(logs(job, tag))  # not started yet, or done and gone: what there is
        return 0
    if code != 0:  # the connection ended with the machine, once it had uploaded: the rest is in the bucket
        whole = from_bucket(job_state.job_bucket(job, [node]), tag, False)
        if whole is not None:
            sys.stdout.buffer.write(whole.encode("utf-8")[shown:])
            return 0
    return code


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="%(prog)s JOBNAME TAG [--install | --follow | --ssh [-- COMMAND...]]")
    p.add_argument("job")
    p.add_argument("tag")
    p.add_argument("--install", action="store_true", help="the install script's logs instead")
    p.add_argument("--follow", action="store_true", help="print the log as it grows, until the row ends")
    p.add_argument("--ssh", action="store_true", help="a shell on the row's machine, or the command given after --")
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[argv.index("--") + 1:] if "--" in argv else []  # with --ssh: run in the row's folder
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if command and not args.ssh:
        p.error("a command goes with --ssh")
    if sum((args.install, args.follow, args.ssh)) > 1:
        p.error("give one of --install, --follow and --ssh")

    def run():
        cs.check_job_name(args.job)
        if args.ssh:
            return shell(args.job, args.tag, command)
        if args.follow:
            return follow(args.job, args.tag)
        sys.stdout.write(logs(args.job, args.tag, args.install))
        return 0
    return cs.run_cli(run)


if __name__ == "__main__":
    cs.leave(main())
