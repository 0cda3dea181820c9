#!/bin/bash
# Starts this node's row at `dispatch`: unpacks the row's files (node.json, node.env and
# command.sh, from standard input), arms the runtime guard and starts run.sh detached. A pool
# machine (POOL_IDLE set) gets no command: its guard starts as the worker's idle one. Runs on
# the node, in its work directory. Prints "started" and the install's start and end times.
# Exit 11: not prepared for this instance; 12: started already.
#
#   bash .awsrun/start.sh INSTANCE_ID < files.tar
owner=
read -r owner < .awsrun/instance 2>/dev/null
if [ "$owner" != "$1" ] || [ ! -f READY ]; then echo "not ready: run create again"; exit 11; fi
if [ -e .awsrun/dispatched ]; then echo "already started"; exit 12; fi
tar -xf - || exit 13
: > .awsrun/dispatched
# shellcheck source=/dev/null
. .awsrun/node.env
if [ -n "$POOL_IDLE" ]; then
    bash .awsrun/guard.sh hold $((POOL_IDLE + 600))
else
    bash .awsrun/guard.sh runtime "$MAX_RUNTIME"
fi
setsid -f bash .awsrun/run.sh > .awsrun/runner.log 2>&1 < /dev/null
echo "started $(cat .awsrun/install_started .awsrun/install_ended 2>/dev/null | tr '\n' ' ')"
