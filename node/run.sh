#!/bin/bash
# Runs this node's row: its command (bash, in the work directory, with TAG set, stopped at
# MAX_RUNTIME seconds if set), then the uploader; then it ends the machine whatever the
# uploader did, unless the upload failed (exit 75): then it holds it up for UPLOAD_HOLD seconds.
# A pool machine (POOL_IDLE set) runs the pool worker instead, which runs rows from the queue
# until it is empty, and ends the same way. Started by start.sh; runs on the node.
cd "${0%/*}/.." || exit 1
# shellcheck source=/dev/null
. .awsrun/node.env
if [ -n "$POOL_IDLE" ]; then
    "$AWSRUN_PYTHON" .awsrun/pool_worker.py
    if [ $? = 75 ]; then bash .awsrun/guard.sh hold "$UPLOAD_HOLD"; else bash .awsrun/guard.sh end; fi
    exit 0
fi
export TAG
[ -d output ] || mkdir output
TZ=UTC printf '%(%Y-%m-%dT%H:%M:%SZ)T\n' -1 > .awsrun/started
if [ "${MAX_RUNTIME:-0}" -gt 0 ]; then
    timeout -k 60 "$MAX_RUNTIME" bash .awsrun/command.sh > screen_output.txt 2>&1 < /dev/null
else
    bash .awsrun/command.sh > screen_output.txt 2>&1 < /dev/null
fi
echo $? > .awsrun/exit_code
TZ=UTC printf '%(%Y-%m-%dT%H:%M:%SZ)T\n' -1 > .awsrun/ended
"$AWSRUN_PYTHON" .awsrun/save_results.py
if [ $? = 75 ]; then bash .awsrun/guard.sh hold "$UPLOAD_HOLD"; else bash .awsrun/guard.sh end; fi
