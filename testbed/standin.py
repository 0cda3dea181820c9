#!/usr/bin/env -S python3 -IS
"""awsrun sandbox stand-in for shutdown, poweroff, reboot, halt, apt-get, apt and sudo on the
nodes' PATH (each a link to this file, in the sandbox's bin/): nothing in the sandbox may
change this machine. Every call is logged. The power commands (also through sudo) act on the
calling node's instance as on EC2: shutdown ends it (now, +M minutes, or -c to cancel).
Everything else is refused. Standard library only, no site packages: it starts in a few
milliseconds, as the real commands do. Its settings (the log, the sandbox's port, the power
commands: sandbox_server.py's POWER) are in standin.json beside the link."""
import json
import os
import socket
import sys

name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), "standin.json")) as f:
    settings = json.load(f)


def log(words):
    with open(settings["log"], "a") as f:
        f.write(" ".join(words) + "\n")


log([name] + args)
if name == "sudo":
    while args and args[0].startswith("-"):
        args = args[1:]
    if not args:
        sys.exit(1)
    name, args = os.path.basename(args[0]), args[1:]
    log([name] + args)
if name not in settings["power"]:
    print("sandbox: %s is not run in the sandbox" % name, file=sys.stderr)
    sys.exit(1)
if name == "reboot":
    sys.exit(0)
when = "now" if name != "shutdown" else "cancel" if "-c" in args else next(
    (a for a in args if a == "now" or a.startswith("+")), "+1")
try:  # tell the sandbox, which knows the instance by the node folder this runs in
    with socket.create_connection(("127.0.0.1", settings["port"]), timeout=10) as s:
        s.sendall(("POST /sandbox/power HTTP/1.0\r\nX-Sandbox-Cwd: %s\r\nContent-Length: %d\r\n\r\n%s" % (
            os.getcwd(), len(when), when)).encode())
        s.recv(64)
except OSError as e:
    print("sandbox: %s: %s" % (name, e), file=sys.stderr)
