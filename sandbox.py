"""The local stand-in for AWS: a moto server and a real OpenSSH sshd, both on 127.0.0.1, as
strict as a real account (docs/sandbox.md). Runs on the user's (or developer's) machine, Linux
only; make demo and the tests start it. Its modules are in testbed/ (testbed/sandbox_server.py
is the sandbox itself).

    python sandbox.py run -- make _demo     # start it, run a command inside it, stop it
    python sandbox.py run -- bash           # a shell whose awsrun commands all go to the sandbox
    python sandbox.py serve DIR             # run until stopped; DIR/env.json says how to reach it
"""
import sys

from testbed.sandbox_server import main

if __name__ == "__main__":
    sys.exit(main())
