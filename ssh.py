"""SSH to the nodes, with paramiko: the job's key pair (made and deleted here, its private key
in ~/.ssh/JOB.pem), host keys trusted on first use and remembered per instance id, one job's
connections (its key, its known hosts, connections kept between steps), commands run with a
deadline, and work run on many nodes at once with each node's result or error collected (and
said, a line per node). Ctrl-C (STOP) makes every node's work give up at once. Runs on the
user's machine; dispatcher.py, logs.py and operate.py's clean use it.
"""
from __future__ import annotations

import io
import os
import shlex
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import paramiko
from botocore.exceptions import ClientError

import cloud_setup as cs
from cloud_setup import UserError, log


class NodeError(Exception):
    """One node could not be prepared or started; the others go on."""


class NotReady(NodeError):
    """The node took the login but cannot run a command yet (it is still booting)."""


STOP = threading.Event()      # set on Ctrl-C: every node's work gives up at once
OPEN, OPEN_LOCK = {}, threading.Lock()  # SSH client -> its socket, closed together on Ctrl-C


class HostKeyMemory:
    """Trust a node's host key the first time it is seen, remember it in the job's own
    known_hosts file under the node's instance id (AWS gives a public IP to another machine
    later), and refuse a key that changed. Shared by all threads of a run."""

    def __init__(self, path):
        self.path, self.lock, self.keys = path, threading.Lock(), paramiko.HostKeys()
        if os.path.exists(path):
            self.keys.load(path)

    def for_node(self, instance_id):
        """The paramiko policy for one node's connections."""
        memory = self

        class Policy(paramiko.MissingHostKeyPolicy):
            def missing_host_key(self, client, hostname, key):
                memory.check(instance_id, key)
        return Policy()

    def check(self, instance_id, key):
        with self.lock:
            known = self.keys.lookup(instance_id) or {}
            if key.get_name() in known:
                if known[key.get_name()] != key:
                    raise paramiko.BadHostKeyException(instance_id, key, known[key.get_name()])
                return
            self.keys.add(instance_id, key.get_name(), key)
            with open(self.path, "a") as f:  # one line (HostKeys.save writes every key again: 60 ms for 64 new nodes)
                f.write(paramiko.hostkeys.HostKeyEntry([instance_id], key).to_line())


# ---------------------------------------------------------------------------- the job's key pair

def key_path(job):
    """Where the job's private key lives: ~/.ssh/JOB.pem, as in the original."""
    return os.path.join(cs.awsrun_env("KEY_DIR", os.path.expanduser("~/.ssh")), job + ".pem")


def write_private_key(path, material):
    """Write a private key with mode 0600 from the first byte; never overwrite."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(material)


def ensure_key_pair(job):
    """The job's key pair, named JOB, with its private key in ~/.ssh/JOB.pem.

    An existing key file is reused (its public half is imported if AWS lacks it).
    If AWS has the key but the file is gone, the key cannot be recovered: UserError."""
    ec2, path = cs.client("ec2"), key_path(job)
    try:
        ec2.describe_key_pairs(KeyNames=[job])
        in_aws = True
    except ClientError as e:
        if cs.error_code(e) != "InvalidKeyPair.NotFound":
            raise
        in_aws = False
    if os.path.exists(path):
        if not in_aws:
            ec2.import_key_pair(KeyName=job, PublicKeyMaterial=public_key_of(path).encode(),
                                TagSpecifications=cs.job_tags("key-pair", job))
        return path
    if in_aws:
        raise UserError("key pair %r exists in AWS but its private key %s is gone: restore the file, "
                        "or delete the key pair with `aws ec2 delete-key-pair --key-name %s` and run "
                        "create again" % (job, path, job))
    material = ec2.create_key_pair(KeyName=job, KeyType="rsa",
                                   TagSpecifications=cs.job_tags("key-pair", job))["KeyMaterial"]
    write_private_key(path, material)
    return path


def delete_key_pair(job):
    """Delete the job's key pair and ~/.ssh/JOB.pem. Only a key pair that exists: IAM checks the
    job tag of the key pair named, so deleting one that is gone already is refused, not ignored."""
    ec2 = cs.client("ec2")
    for pair in ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [job]}])["KeyPairs"]:
        ec2.delete_key_pair(KeyName=pair["KeyName"])
    if os.path.exists(key_path(job)):
        os.remove(key_path(job))


def public_key_of(path):
    """The OpenSSH public line of a PEM private key file."""
    from cryptography.hazmat.primitives import serialization
    with open(path, "rb") as f:
        data = f.read()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError:
        key = serialization.load_ssh_private_key(data, password=None)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()


# ---------------------------------------------------------------------------- connections

class Connections:
    """What every SSH connection of one job shares: its key and its known host keys."""

    def __init__(self, job, timeout):
        key = key_path(job)
        if not os.path.exists(key):
            raise UserError("the key %s is missing: run create first (make create JOBS=...)" % key)
        self.pkey = paramiko.PKey.from_path(key)
        self.policy = HostKeyMemory(os.path.join(cs.state_dir(job), "known_hosts"))
        self.timeout = timeout
        self.cache = {}

    def connect(self, node):
        return connect(node, self.pkey, self.policy, time.monotonic() + self.timeout)

    def kept(self, node):
        """A connection kept from an earlier step of this run, if it is still up; else a new one."""
        ssh = self.cache.pop(node["id"], None)
        if ssh is not None and ssh.get_transport() is not None and ssh.get_transport().is_active():
            return ssh
        return self.connect(node)

    def keep(self, node, ssh):
        """Keep a connection open for the next step (create, then dispatch in one run)."""
        self.cache[node["id"]] = ssh

    def close_all(self):
        for ssh in self.cache.values():
            close(ssh)
        self.cache.clear()


def ssh_target(node):
    return (cs.awsrun_env("SSH_HOST", node["address"]), int(cs.awsrun_env("SSH_PORT", 22)),
            cs.awsrun_env("SSH_USER", "ubuntu"))


def connect(node, pkey, policy, deadline):
    """An SSH connection to a node that took our login, retried until the deadline: a booting
    node first refuses connections, then logins. Close it with close(). Whether it can run a
    command is learnt from the first real one (see run_on), not from an extra round trip."""
    host, port, user = ssh_target(node)
    if not host:
        raise NodeError("%s has no public address: launch it in a subnet that assigns one" % node["tag"])
    last = None
    for delay in cs.backoff(deadline, first=0.5):
        if STOP.is_set():
            raise NodeError("interrupted")
        if delay is None:
            raise NodeError("SSH to %s@%s:%d did not answer in time (%s)" % (user, host, port, last))
        ssh = paramiko.SSHClient()
        ssh.set_missing_host_key_policy(policy.for_node(node["id"]))
        try:
            # Our own socket, so that Ctrl-C can close a connection in any phase of its making:
            # SSHClient.close() reaches none before its transport exists, and paramiko's banner
            # and auth waits would hold the thread up to 30 s more.
            sock = socket.create_connection((host, port), timeout=10)
        except OSError as e:
            last = e
            continue
        with OPEN_LOCK:  # Ctrl-C sets STOP, then closes OPEN under this lock: never one made after
            if STOP.is_set():
                sock.close()
                raise NodeError("interrupted")
            OPEN[ssh] = sock
        try:
            ssh.connect(host, port, user, pkey=pkey, sock=sock, timeout=10, banner_timeout=15, auth_timeout=15,
                        allow_agent=False, look_for_keys=False)
            if STOP.is_set():
                close(ssh)
                raise NodeError("interrupted")
            return ssh
        except paramiko.BadHostKeyException:
            close(ssh)
            raise NodeError("the host key of %s (%s) changed: someone else may answer at its address; if you "
                            "reinstalled it yourself, remove its line from %s"
                            % (node["id"], host, policy.path)) from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            close(ssh)
            last = e


def close(ssh):
    with OPEN_LOCK:
        sock = OPEN.pop(ssh, None)
    ssh.close()
    if sock is not None:
        sock.close()


def run(ssh, command, stdin=None, timeout=60):
    """Run a command; send `stdin` (bytes or a binary file) to it. Returns (exit code, output
    with stderr merged). Raises NodeError past `timeout` seconds in all."""
    deadline = time.monotonic() + timeout
    try:
        chan = ssh.get_transport().open_session(timeout=30)
    except (paramiko.SSHException, AttributeError, EOFError, OSError) as e:  # AttributeError: closed by Ctrl-C
        raise NotReady("could not open a session: %s" % e) from e
    try:
        chan.set_combine_stderr(True)
        chan.settimeout(max(1.0, min(30.0, timeout)))
        chan.exec_command(command)
        if stdin is not None:
            source = io.BytesIO(stdin) if isinstance(stdin, bytes) else stdin
            for chunk in iter(lambda: source.read(1 << 17), b""):
                chan.sendall(chunk)
        chan.shutdown_write()
        chan.settimeout(1.0)  # reading: wake every second to see Ctrl-C (STOP), whatever was closed when
        output = bytearray()
        while True:
            try:
                data = chan.recv(1 << 16)
            except TimeoutError:
                data = None
            if data:
                output += data
            elif data == b"":
                break
            if time.monotonic() > deadline or STOP.is_set():
                raise NodeError("`%s` did not finish in %d s" % (command.split("\n")[0][:60], timeout))
        return chan.recv_exit_status(), output.decode("utf-8", "replace")
    except (OSError, paramiko.SSHException) as e:
        raise NodeError("SSH failed: %s" % e) from e
    finally:
        chan.close()


def run_on(connections, node, command, stdin=None, timeout=60):
    """Run a command on a node, over the connection kept from an earlier step or a new one.
    A node that takes the login but cannot open a session yet is retried until the SSH
    deadline. Returns (connection, exit code, output); close the connection or keep it."""
    deadline = time.monotonic() + connections.timeout
    for delay in cs.backoff(deadline, first=0.5):
        ssh = connections.kept(node)
        try:
            return (ssh,) + run(ssh, command, stdin() if callable(stdin) else stdin, timeout)
        except NotReady as e:
            close(ssh)
            if delay is None or STOP.is_set():
                raise NodeError("%s takes logins but runs no command (%s)" % (node["tag"], e)) from e
        except BaseException:
            close(ssh)
            raise


def remote_dir(tag):
    """The node's work directory, quoted for the remote shell: REMOTE_ROOT/TAG."""
    root = cs.awsrun_env("REMOTE_ROOT", "~/awsrun")
    if root == "~" or root.startswith("~/"):
        return '"$HOME"/' + shlex.quote((root[2:] + "/" + tag).lstrip("/"))
    return shlex.quote(os.path.join(root, tag))


def for_each_node(nodes, work, parallel):
    """Run work(node) for every node in parallel; one failure never hides the others.
    Returns {tag: result or NodeError}. On Ctrl-C, every connection is closed at once."""
    def guarded(node):
        try:
            return node["tag"], work(node)
        except NodeError as e:
            return node["tag"], e
        except (paramiko.SSHException, OSError, EOFError) as e:
            return node["tag"], NodeError("SSH failed: %s: %s" % (type(e).__name__, e))
    workers = ThreadPoolExecutor(max_workers=max(1, min(parallel, len(nodes))))
    try:
        return dict(workers.map(guarded, nodes))
    except KeyboardInterrupt:
        STOP.set()
        with OPEN_LOCK:
            for ssh, sock in list(OPEN.items()):
                sock.close()  # first: a connection still being made fails at once
                ssh.close()
        raise
    finally:
        workers.shutdown(wait=True, cancel_futures=True)


def say_results(nodes, results, word, terminate_failed=False):
    """Print one line per node on stdout; failures on stderr. UserError if any failed."""
    failed = []
    for node in nodes:
        result = results[node["tag"]]
        if isinstance(result, NodeError):
            failed.append(node)
            log("%s (%s) FAILED: %s" % (node["tag"], node["id"], result))
        else:
            print("%s\t%s\t%s" % (node["tag"], node["id"], result or word), flush=True)
    if failed and terminate_failed:
        cs.terminate([n["id"] for n in failed])
        log("terminated the %d failed machines (keep them with --keep-failed); "
            "run create again to retry them" % len(failed))
    if failed:
        raise UserError("%d of %d machines failed: %s" % (len(failed), len(nodes),
                                                          " ".join(n["tag"] for n in failed)))
    return 0


class SharedReader:
    """A reader of a shared file (the bundle) with its own offset, so that threads can stream it
    to many nodes at once."""

    def __init__(self, bundle):
        self.fd, self.offset = bundle.fileno(), 0

    def read(self, n):
        data = os.pread(self.fd, n, self.offset)
        self.offset += len(data)
        return data
