#!/bin/bash
# awsrun node setup. It runs in the node's work directory (your --code is already there)
# before any job starts, and is tried again if it fails. Create READY when the node is ready.
# Its output is kept in .awsrun/install.N.log on the node, N = the try.
set -euo pipefail

# Retry a command while it fails, pausing 5, 10, 20, 40, 60, 60... seconds, for up to
# $2 seconds in all: on a fresh machine, cloud-init and apt-daily hold apt's locks for a while.
retry_for() {
    local seconds=$1 pause=5 deadline=$((SECONDS + $1)); shift
    until "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then echo "gave up after ${seconds}s: $*"; return 1; fi
        echo "failed (a lock may be held), trying again in ${pause}s: $*"
        sleep "$pause"; pause=$((pause < 30 ? pause * 2 : 60))
    done
}

# save_results.py needs boto3 (1.34.46 or later). Ubuntu's image lacks it; the sandbox's nodes
# have Ubuntu 24.04's already. apt-get waits for dpkg's lock (DPkg::Lock::Timeout) but not
# for the package lists' lock, which the first boot's apt-daily holds: hence the retries.
if ! "${AWSRUN_PYTHON:-python3}" -c 'import boto3' 2>/dev/null; then
    if command -v cloud-init >/dev/null; then cloud-init status --wait >/dev/null || true; fi
    retry_for 600 sudo apt-get -o DPkg::Lock::Timeout=120 update -q
    retry_for 600 sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y -q python3-boto3
fi

# Add your own setup here, for example:
#   retry_for 600 sudo apt-get -o DPkg::Lock::Timeout=120 install -y -q build-essential
# Python packages for your rows: Ubuntu 24.04's image has no pip, and its Python refuses pip
# installs (PEP 668, externally-managed-environment). Make a venv in the work directory (the
# image lacks python3-venv too), and have your rows call .venv/bin/python:
#   retry_for 600 sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y -q python3-venv
#   python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt

touch READY
