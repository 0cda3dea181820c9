"""The sandbox's instance metadata service, in a process of its own (standard library only).

An EC2 instance's metadata service answers in a millisecond whatever the other machines do.
In the sandbox's own process it shared the interpreter with the moto server; under a hundred
nodes' uploads its threads waited so long for the interpreter lock that nodes' credential
requests outwaited botocore's timeout. Here it has an interpreter of its own. It tells the
calling node apart as EC2 does by its network interface: by the process that holds the
connection (/proc), and the node folder that process works in, once per session token (a token
is its instance's, as on EC2); the power stand-ins name their node folder. What only the sandbox knows: a
node's role, keys and facts (type, zone, image) the sandbox writes at launch to DIR/imds/; the
faults on demand and the power button it asks the sandbox for, on a socket, one JSON line a
question and one an answer.

    python testbed/sandbox_imds.py FD DIR    # FD: the socket to the sandbox; DIR: the sandbox's folder

It prints its port on standard output, then serves until its standard input closes (the
sandbox stops or ends).
"""
from __future__ import annotations

import http.server
import json
import os
import secrets
import socket
import sys
import threading
import time

META = "/latest/meta-data/"
CREDENTIALS = META + "iam/security-credentials/"
FACTS = ("instance-type", "placement/availability-zone", "ami-id", "instance-life-cycle")  # sandbox_ec2.instance_facts


class Metadata:
    """The state of the service: session tokens, what the sandbox said of each instance."""

    def __init__(self, sandbox, folder):
        self.sandbox, self.dir = sandbox, folder
        self.reader = sandbox.makefile("r", encoding="utf-8")
        self.ask_lock, self.lock = threading.Lock(), threading.Lock()
        self.tokens = {}   # IMDSv2 session token -> (when it expires (monotonic), the instance it was made on)
        self.known = {}    # instance id -> {"role": ..., "credentials": ...}, once it has a role

    def ask(self, *question):
        """The sandbox's answer to one question (sandbox_server.Sandbox.answer_metadata)."""
        with self.ask_lock:
            self.sandbox.sendall((json.dumps(question) + "\n").encode())
            return json.loads(self.reader.readline())

    def instance(self, instance):
        """What the sandbox says of an instance: written at its launch (DIR/imds/ID.json), else
        asked."""
        with self.lock:
            known = self.known.get(instance)
        if known is None:
            try:
                with open(os.path.join(self.dir, "imds", instance + ".json")) as f:
                    known = json.load(f)
            except (OSError, ValueError):
                pass
            if not (known or {}).get("role"):  # not written, or its profile came later
                known = self.ask("instance", instance)
            if known["role"]:
                with self.lock:
                    self.known[instance] = known
        return known

    def fault(self, instance, action):
        """The fault rule {"status": ..., "delay": seconds} for the pseudo-action imds:GetToken or
        imds:GetCredentials of `instance` (None: a node not told apart), or None. The sandbox is
        asked only while there are fault rules at all."""
        try:
            with open(os.path.join(self.dir, "faults.json")) as f:
                if not json.load(f):
                    return None
        except (OSError, ValueError):
            return None
        return self.ask("fault", instance, action)

    def record(self, entry):
        with self.lock, open(os.path.join(self.dir, "iam.jsonl"), "a") as f:
            f.write(json.dumps(entry) + "\n")

    def interruptions(self):
        """DIR/interruptions.json: {instance id: time} of the spot instances that EC2 will
        interrupt then; their metadata shows the notice (the test ends them itself)."""
        try:
            with open(os.path.join(self.dir, "interruptions.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def token(self, ttl):
        token = secrets.token_urlsafe(32)
        with self.lock:
            self.tokens[token] = (time.monotonic() + ttl, None)
        return token

    def session(self, token):
        """(valid, instance) of a session token; the instance once a request with it was told apart."""
        with self.lock:
            expires, instance = self.tokens.get(token, (0, None))
        return expires > time.monotonic(), instance

    def bind(self, token, instance):
        """As on EC2 a token belongs to the instance it was made on (EC2 User Guide, "How
        Instance Metadata Service Version 2 works"): the later requests that carry it need no
        search for their caller. (The token request itself is answered at once, as EC2's is.)"""
        with self.lock:
            self.tokens[token] = (self.tokens[token][0], instance)

    def caller_instance(self, port, server_port, why):
        """The instance whose node folder holds the process that connected from `port`; else
        None, with the reason appended to `why`."""
        pid = socket_owner(port, server_port, why)
        if pid is None:  # the caller has gone already
            return None
        try:
            cwd = os.readlink("/proc/%d/cwd" % pid)
        except OSError:
            why.append("process %d ended" % pid)
            return None
        return self.instance_in(cwd, why, "process %d" % pid)

    def instance_in(self, cwd, why, who):
        """The instance whose node folder holds the folder `cwd`; else None, with the reason."""
        nodes = os.path.join(self.dir, "nodes")
        relative = os.path.relpath(cwd, nodes)
        if relative.startswith(".."):
            why.append("%s is not a node's: %s" % (who, cwd))
            return None
        try:
            with open(os.path.join(nodes, relative.split(os.sep)[0], ".awsrun", "instance")) as f:
                return f.read().strip() or None
        except OSError as e:
            why.append(str(e))
            return None


def handler(metadata):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def answer(self, code, text, kind="text/plain"):
            data = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def caller(self, why):
            return metadata.caller_instance(self.client_address[1], self.server.server_port, why)

        def do_PUT(self):  # IMDSv2: a session token first, for 1 to 21600 seconds
            if self.path != "/latest/api/token":
                return self.answer(404, "")
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return self.answer(400, "")
            rule = metadata.fault(None, "imds:GetToken")  # a busy service, slower than the SDK waits
            if rule:
                time.sleep(rule.get("delay") or 0)
                if rule.get("status"):
                    return self.answer(rule["status"], "")
            self.answer(200, metadata.token(int(ttl)))

        def do_GET(self):
            # IMDSv2 only, as on an image registered for v2.0 or an account whose default it
            # is (and as awsrun launches with HttpTokens=required): no valid token, no answer.
            token = self.headers.get("X-aws-ec2-metadata-token", "")
            valid, instance = metadata.session(token)
            if not valid:
                metadata.record({"metadata": self.path, "refused": "no valid IMDSv2 token"})
                return self.answer(401, "")
            why = []
            if instance is None:
                instance = self.caller(why)
                if instance:
                    metadata.bind(token, instance)
            if self.path == "/latest/meta-data/instance-id" and instance:
                return self.answer(200, instance)
            if self.path == "/latest/meta-data/spot/instance-action":
                notices = metadata.interruptions()
                if instance in notices:
                    return self.answer(200, json.dumps({"action": "terminate", "time": notices[instance]}),
                                       "application/json")
            known = instance and metadata.instance(instance)
            if known and self.path[len(META):] in FACTS:
                return self.answer(200, known[self.path[len(META):]])
            role = known and known["role"]
            if not role or not self.path.startswith(CREDENTIALS):
                metadata.record({"metadata": self.path, "caller": instance, "role": role, "why": why[-1:]})
                return self.answer(404, "")
            if self.path == CREDENTIALS:
                return self.answer(200, role)
            if self.path == CREDENTIALS + role:
                # A fault rule for the pseudo-action imds:GetCredentials answers with its
                # status instead, as a busy metadata service may answer a moment after boot.
                rule = metadata.fault(instance, "imds:GetCredentials")
                if rule:
                    return self.answer(rule.get("status") or 500, "")
                return self.answer(200, json.dumps(known["credentials"]), "application/json")
            self.answer(404, "")

        def do_POST(self):  # from the power stand-ins: now, +M (minutes) or cancel
            # The stand-in is the node's own OS: it names the folder it runs in, as a machine
            # knows itself, so the service need not search every process for it.
            instance = metadata.instance_in(self.headers.get("X-Sandbox-Cwd", ""), [], "the power button")
            when = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            if instance:
                metadata.ask("power", instance, when, time.time())
            self.answer(200 if instance else 404, "")
    return Handler


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's 5, and even 128, turned away connections of a hundred booting nodes (the
    # kernel's ListenOverflows counted them) and their retries outwaited botocore's timeout.
    request_queue_size = 1024

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a caller ended with its node
            super().handle_error(request, client_address)


def connection_inode(table, port, server_port):
    """The socket inode of the TCP connection from `port` to `server_port` in a /proc/net/tcp
    table, or None."""
    for line in table.splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1].split(":"), fields[2].split(":")
        # An earlier connection from the same (reused) port may linger in TIME_WAIT: inode 0.
        if int(local[1], 16) == port and int(remote[1], 16) == server_port and fields[9] != "0":
            return fields[9]
    return None


def read(path):
    with open(path) as f:
        return f.read()


SCAN_LOCK = threading.Lock()  # one look at every process at a time; the other callers wait for its map
OWNERS = {}                   # socket inode -> (process id, fd), as the last look saw them


def socket_owner(port, server_port, why):
    """The process id that holds the loopback TCP connection from `port` to `server_port`; else
    None, with the reason appended to `why`. Every process's sockets are mapped in one look, which
    the callers of a burst share: a look per caller, each of thousands of system calls, kept the
    service's threads from the interpreter until a hundred booting nodes' requests timed out."""
    inode = connection_inode(read("/proc/net/tcp"), port, server_port)
    if inode is None:
        why.append("no connection from port %d" % port)
        return None
    pid = held_by(inode)
    if pid is None:
        with SCAN_LOCK:
            pid = held_by(inode)  # a look made while this caller waited may have seen it
            if pid is None:
                OWNERS.clear()
                OWNERS.update(sockets())
                pid = held_by(inode)
    if pid is None:
        why.append("no process holds socket %s" % inode)
    return pid


def held_by(inode):
    """The process that holds the socket, if the last look saw it there and it still does."""
    pid, fd = OWNERS.get(inode, (None, None))
    try:
        return pid if pid is not None and os.readlink("/proc/%d/fd/%s" % (pid, fd)) == "socket:[%s]" % inode else None
    except OSError:
        return None


def sockets():
    """{socket inode: (process id, fd)} of every process."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fds = os.listdir("/proc/%s/fd" % name)
        except OSError:  # it ended
            continue
        for fd in fds:
            try:
                link = os.readlink("/proc/%s/fd/%s" % (name, fd))
            except OSError:  # that file was closed meanwhile: the process's others still count
                continue
            if link.startswith("socket:["):
                found[link[8:-1]] = (int(name), fd)
    return found


def main(fd, folder):
    metadata = Metadata(socket.socket(fileno=int(fd)), folder)
    server = Server(("127.0.0.1", 0), handler(metadata))
    print(server.server_port, flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()  # until the sandbox closes it, or ends


if __name__ == "__main__":
    main(*sys.argv[1:])
