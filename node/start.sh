#!/bin/bash
# Starts this node's row at `dispatch`: unpacks the row's files (node.json, node.env and
# command.sh, from standard input), arms the runtime guard and starts run.sh detached. A pool
# machine (POOL_IDLE set) gets no command: its guard starts as the worker's idle one. Runs on
# the node, in its work directory. Prints "started" and the install's start and end times.
# Its exit codes are named in .awsrun/names.sh (cloud_setup.NODE_EXIT).
#
#   bash .awsrun/start.sh INSTANCE_ID < files.tar
owner=
read -r owner < .awsrun/instance 2>/dev/null
# shellcheck source=/dev/null
. .awsrun/names.sh 2>/dev/null || { echo "not prepared: run create again"; exit 1; }
if [ "$owner" != "$1" ] || [ ! -f READY ]; then echo "not ready: run create again"; exit "$NOT_READY"; fi
if [ -e .awsrun/dispatched ]; then echo "already started"; exit "$STARTED_ALREADY"; fi
tar -xf - || exit "$BAD_FILES"
: > .awsrun/dispatched
# shellcheck source=/dev/null
. .awsrun/node.env
if [ -n "$POOL_IDLE" ]; then
    bash .awsrun/guard.sh hold $((POOL_IDLE + 600))
else
    bash .awsrun/guard.sh runtime "$MAX_RUNTIME"
fi
setsid -f bash .awsrun/run.sh > .awsrun/runner.log 2>&1 < /dev/null
started='' ended=''
read -r started 2> /dev/null < .awsrun/install_started
read -r ended 2> /dev/null < .awsrun/install_ended
echo "started $started $ended"
