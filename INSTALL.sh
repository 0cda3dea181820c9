#!/bin/bash
# awsrun node setup. It runs in the node's work directory (your --code is already there)
# before any job starts, and is tried again if it fails. Create READY when the node is ready.
# Its output is kept in .awsrun/install.N.log on the node, N = the try.
set -euo pipefail

# save_results.py needs boto3. Ubuntu's image lacks it; the sandbox's nodes already have it.
# On a fresh EC2 machine cloud-init may still hold apt's lock: wait for it first.
if ! "${AWSRUN_PYTHON:-python3}" -c 'import boto3' 2>/dev/null; then
    if command -v cloud-init >/dev/null; then cloud-init status --wait >/dev/null || true; fi
    sudo apt-get -o DPkg::Lock::Timeout=300 update -q
    sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q python3-boto3
fi

# Add your own setup here, for example:
#   sudo apt-get install -y -q build-essential
#   python3 -m pip install --user -r requirements.txt

touch READY
