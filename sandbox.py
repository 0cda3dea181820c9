"""The local stand-in for AWS: a moto server and a real OpenSSH sshd, both on 127.0.0.1.

    python sandbox.py run -- make _demo     # start it, run a command inside it, stop it
    python sandbox.py run -- bash           # a shell whose awsrun commands all go to the sandbox
    python sandbox.py serve DIR             # run until stopped; DIR/env.json says how to reach it

boto3 talks to the moto server over HTTP (AWS_ENDPOINT_URL). One sshd stands in for every
node: each node gets its own work directory under DIR/nodes, and sshd gives each session what
an EC2 node gets from its instance profile (the moto endpoint and throwaway credentials), so
the dispatcher never forwards a credential. Like cloud-init on EC2, the sandbox authorizes a
key pair's public key when an instance is launched with it; and when an instance is
terminated, the processes of its node folder end, as they would with the machine.

Nothing here touches the machine outside DIR: job keys, known hosts and node folders all live
there, and `shutdown`, `apt-get` and `sudo` are harmless stand-ins on the nodes' PATH.
"""
from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import cloud_setup as cs

REGION = "us-east-1"
ACCOUNT = "123456789012"
UBUNTU_NAME = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-sandbox"
POWER = ("shutdown", "poweroff", "reboot", "halt")
STANDINS = POWER + ("apt-get", "apt", "sudo")
NODE_SHELL = """#!/bin/sh
# awsrun sandbox: every node session runs with the sandbox's PATH first, whatever the
# login shell's startup files set, so the stand-ins above shadow the real commands.
# (bash reads ~/.bashrc when it sees SSH_CLIENT; the nodes' shells must not.)
PATH={path}; export PATH; unset SSH_CLIENT SSH2_CLIENT
[ -n "$SSH_ORIGINAL_COMMAND" ] || exec /bin/bash -i
exec /bin/bash -c "$SSH_ORIGINAL_COMMAND"
"""
STANDIN = """#!/bin/sh
# awsrun sandbox stand-in: nothing in the sandbox may change this machine. The power
# commands (and sudo of them) are logged and succeed, so the cost guards can be tested;
# everything else is logged and refused.
name=${{0##*/}}
echo "$name $*" >> {log}
if [ "$name" = sudo ]; then
    while [ "${{1#-}}" != "$1" ]; do shift; done
    name=$1; echo "$*" >> {log}
fi
case "$name" in {power}) exit 0 ;; esac
echo "sandbox: $name is not run in the sandbox" >&2
exit 1
"""


class SandboxError(Exception):
    pass


def find_sshd():
    for path in (shutil.which("sshd"), "/usr/sbin/sshd"):
        if path and os.path.exists(path):
            return path
    raise SandboxError("sshd is missing: install it with `sudo apt-get install openssh-server` "
                       "(Debian/Ubuntu) or `sudo dnf install openssh-server`")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sandbox:
    """A moto server in a thread of this process and an sshd child process, under `folder`."""

    def __init__(self, folder):
        self.dir = os.path.abspath(folder)
        self.moto = self.sshd = None

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def start(self):
        sshd = find_sshd()
        if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
            raise SandboxError("sshd needs its privilege separation folder: run `sudo mkdir -p /run/sshd`")
        for sub in ("ssh", "bin", "nodes", "keys", "state", "aws"):
            os.makedirs(self.path(sub), mode=0o700, exist_ok=True)
        self.start_moto()
        self.start_sshd(sshd)
        return self

    # -- AWS

    def start_moto(self):
        from moto.server import ThreadedMotoServer
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.moto = ThreadedMotoServer("127.0.0.1", 0, verbose=False)
        self.moto.start()
        self.endpoint = "http://127.0.0.1:%d" % self.moto.get_host_and_port()[1]
        play_ec2(self.path("ssh", "authorized_keys"), self.path("nodes"))
        self.seed_ubuntu()

    def seed_ubuntu(self):
        """An Ubuntu image, and the public parameter that names it, as in a real region."""
        import boto3
        from moto.ssm.models import Parameter, ssm_backends
        ec2 = boto3.client("ec2", endpoint_url=self.endpoint, region_name=REGION,
                           aws_access_key_id="sandbox", aws_secret_access_key="sandbox")
        ami = ec2.register_image(Name=UBUNTU_NAME, Architecture="x86_64", RootDeviceName="/dev/sda1")["ImageId"]
        params = ssm_backends[ACCOUNT][REGION]._parameters
        params[cs.UBUNTU_PARAMETER].append(Parameter(
            account_id=ACCOUNT, name=cs.UBUNTU_PARAMETER, value=ami, parameter_type="String",
            description=None, allowed_pattern=None, keyid=None, last_modified_date=time.time(),
            version=1, data_type="aws:ec2:image"))
        self.ami = ami

    # -- the nodes' SSH server

    def start_sshd(self, sshd):
        ssh = self.path("ssh")
        host_key = os.path.join(ssh, "host_ed25519_key")
        if not os.path.exists(host_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", host_key], check=True)
        open(os.path.join(ssh, "authorized_keys"), "a").close()
        for name in STANDINS:
            with open(self.path("bin", name), "w") as f:
                f.write(STANDIN.format(log=self.path("standins.log"), power="|".join(POWER)))
            os.chmod(self.path("bin", name), 0o755)
        self.ssh_port = free_port()
        node_path = ":".join([self.path("bin"), os.path.dirname(sys.executable),
                              "/usr/local/bin", "/usr/bin", "/bin"])
        node_env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "sandbox-node",
                    "AWS_SECRET_ACCESS_KEY": "sandbox-node", "AWS_DEFAULT_REGION": REGION,
                    "AWS_CONFIG_FILE": self.path("aws", "config"),
                    "AWS_SHARED_CREDENTIALS_FILE": self.path("aws", "credentials"), "PATH": node_path}
        node_shell = os.path.join(ssh, "node-shell")
        with open(node_shell, "w") as f:
            f.write(NODE_SHELL.format(path=node_path))
        os.chmod(node_shell, 0o755)
        config = "\n".join([
            "Port %d" % self.ssh_port, "ListenAddress 127.0.0.1", "HostKey " + host_key,
            "PidFile none", "AuthorizedKeysFile " + os.path.join(ssh, "authorized_keys"),
            "StrictModes no", "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", "AllowUsers " + getpass.getuser(),
            "MaxStartups 1024:30:2048", "MaxSessions 64", "LoginGraceTime 60", "UseDNS no",
            "ForceCommand " + node_shell,
            "SetEnv " + " ".join('%s="%s"' % kv for kv in sorted(node_env.items())), ""])
        with open(os.path.join(ssh, "sshd_config"), "w") as f:
            f.write(config)
        self.sshd_log = open(self.path("sshd.log"), "ab")
        self.sshd = subprocess.Popen([sshd, "-D", "-e", "-f", os.path.join(ssh, "sshd_config")],
                                     stdin=subprocess.DEVNULL, stdout=self.sshd_log, stderr=self.sshd_log)
        self.wait_for_banner()

    def wait_for_banner(self, timeout=15):
        deadline = time.monotonic() + timeout
        for delay in cs.backoff(deadline, first=0.05, cap=0.5):
            if self.sshd.poll() is not None or delay is None:
                with open(self.path("sshd.log"), errors="replace") as f:
                    raise SandboxError("sshd did not start: " + f.read()[-500:].strip())
            try:
                with socket.create_connection(("127.0.0.1", self.ssh_port), timeout=2) as s:
                    if s.recv(8).startswith(b"SSH-"):
                        return
            except OSError:
                pass

    # -- what the caller's processes see

    def environment(self):
        """Variables that point awsrun (and boto3) at the sandbox, with throwaway credentials."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
                "AWS_ACCESS_KEY_ID": "sandbox", "AWS_SECRET_ACCESS_KEY": "sandbox",
                "AWS_CONFIG_FILE": self.path("aws", "config"),
                "AWS_SHARED_CREDENTIALS_FILE": self.path("aws", "credentials"),
                "AWSRUN_SSH_HOST": "127.0.0.1", "AWSRUN_SSH_PORT": str(self.ssh_port),
                "AWSRUN_SSH_USER": getpass.getuser(), "AWSRUN_REMOTE_ROOT": self.path("nodes"),
                "AWSRUN_NODE_PYTHON": sys.executable, "AWSRUN_SSH_CIDR": "127.0.0.1/32",
                "AWSRUN_KEY_DIR": self.path("keys"), "AWSRUN_STATE_DIR": self.path("state"),
                "AWSRUN_SANDBOX": self.dir}

    def child_environment(self):
        env = {k: v for k, v in os.environ.items()
               if k not in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")}
        env.update(self.environment())
        return env

    def stop(self):
        """Stop sshd, every job process still running in a node folder, and the moto server."""
        if self.sshd and self.sshd.poll() is None:
            self.sshd.terminate()
            try:
                self.sshd.wait(5)
            except subprocess.TimeoutExpired:
                self.sshd.kill()
                self.sshd.wait()
        for pid in processes_under(self.path("nodes")):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if self.moto:
            self.moto.stop()
            self.moto = None


def processes_under(folder):
    """Process ids whose working directory is inside `folder` (left-over node jobs)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                cwd = os.readlink("/proc/%s/cwd" % name)
            except OSError:
                continue
            if cwd == folder or cwd.startswith(folder + os.sep):
                found.append(int(name))
    return found


def play_ec2(authorized_keys, nodes_dir):
    """Make moto's instances act on this machine as EC2's do on theirs: like cloud-init, let
    an instance's key pair log in when it is launched; and when an instance is terminated,
    end every process of its node folder (the one whose .awsrun/instance names it)."""
    from moto.ec2.models.instances import InstanceBackend
    launch = getattr(InstanceBackend.run_instances, "awsrun_original", InstanceBackend.run_instances)
    end = getattr(InstanceBackend.terminate_instances, "awsrun_original", InstanceBackend.terminate_instances)
    lock = threading.Lock()

    def run_instances(self, *args, **kwargs):
        reservation = launch(self, *args, **kwargs)
        pair = self.key_pairs.get(kwargs.get("key_name") or "")
        if pair is not None:
            line = pair.public_key.strip()
            with lock:
                with open(authorized_keys) as f:
                    known = f.read().splitlines()
                if line not in known:
                    with open(authorized_keys, "a") as f:
                        f.write(line + "\n")
        return reservation

    def terminate_instances(self, instance_ids):
        result = end(self, instance_ids)
        for name in os.listdir(nodes_dir):
            folder = os.path.join(nodes_dir, name)
            try:
                with open(os.path.join(folder, ".awsrun", "instance")) as f:
                    owner = f.read().strip()
            except OSError:
                continue
            if owner in instance_ids:
                for pid in processes_under(folder):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
        return result

    run_instances.awsrun_original, terminate_instances.awsrun_original = launch, end
    InstanceBackend.run_instances, InstanceBackend.terminate_instances = run_instances, terminate_instances


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the sandbox, run COMMAND in it, stop it")
    run.add_argument("--keep", action="store_true", help="keep the sandbox folder afterwards")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    serve = sub.add_parser("serve", help="run until stopped; write DIR/env.json when ready")
    serve.add_argument("dir")
    args = p.parse_args(argv)

    if args.command == "serve":
        box = Sandbox(args.dir)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *a: stop.set())
        try:
            box.start()
            with open(os.path.join(box.dir, "env.json.tmp"), "w") as f:
                json.dump(box.environment(), f, indent=1)
            os.rename(os.path.join(box.dir, "env.json.tmp"), os.path.join(box.dir, "env.json"))
            stop.wait()
        except SandboxError as e:
            print("error: %s" % e, file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            pass
        finally:
            box.stop()
        return 0

    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        p.error("give a command after --")
    folder = tempfile.mkdtemp(prefix="awsrun-sandbox-")
    box = Sandbox(folder)
    try:
        box.start()
        cs.log("sandbox: AWS at %s, nodes' sshd at 127.0.0.1:%d, files in %s"
               % (box.endpoint, box.ssh_port, folder))
        return subprocess.call(command, env=box.child_environment())
    except SandboxError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        box.stop()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
