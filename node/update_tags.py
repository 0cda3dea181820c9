"""Set a tag on this job's own instance, from inside the job; `make status JOB=...` shows
the latest value in its PROGRESS column. Runs on the node.

    python3 update_tags.py percent_complete 40        # in a job's command, from its work directory

As in the original aws-runner. It is copied into every node's work directory, and finds the
instance, region and job in .awsrun/node.json there. Needs only the standard library and boto3.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".awsrun"))

from botocore.exceptions import BotoCoreError, ClientError  # noqa: E402

import cloud_setup as cs  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("key", help="tag key, e.g. percent_complete")
    p.add_argument("value", help="tag value, e.g. 40")
    args = p.parse_args(argv)
    if args.key.lower().startswith(("aws:", "awsrun:")) or not 0 < len(args.key) <= 100:
        p.error("tag key %r: 1 to 100 characters, not starting with aws: or awsrun:" % args.key)
    if len(args.value) > 200:
        p.error("tag value: at most 200 characters")
    try:
        with open(os.path.join(HERE, ".awsrun", "node.json"), encoding="utf-8") as f:
            node = json.load(f)
    except OSError:
        print("error: no .awsrun/node.json beside update_tags.py: run it in a job started by awsrun",
              file=sys.stderr)
        return 2
    ec2 = cs.node_session(node["region"]).client("ec2")
    try:
        ec2.create_tags(Resources=[node["instance_id"]], Tags=[
            {"Key": args.key, "Value": args.value},
            {"Key": cs.PROGRESS_TAG, "Value": ("%s=%s" % (args.key, args.value))[:256]}])
    except (BotoCoreError, ClientError) as e:
        print("error: could not tag %s: %s" % (node["instance_id"], e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
