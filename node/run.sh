#!/bin/bash
# Runs this node's row (row.sh: its command, in the work directory, with TAG set, stopped at
# MAX_RUNTIME seconds if set), then the uploader; then it ends the machine whatever the
# uploader did, unless the upload failed (UPLOAD_FAILED): then it holds it up for UPLOAD_HOLD
# seconds.
# A pool machine (POOL_IDLE set) runs the pool worker instead, which runs rows from the queue
# until it is empty, and ends the same way. Started by start.sh; runs on the node.
cd "${0%/*}/.." || exit 1
# shellcheck source=/dev/null
. .awsrun/node.env && . .awsrun/names.sh || exit 1
if [ -n "$POOL_IDLE" ]; then
    "$AWSRUN_PYTHON" .awsrun/pool_worker.py
    if [ $? = "$UPLOAD_FAILED" ]; then bash .awsrun/guard.sh hold "$UPLOAD_HOLD"; else bash .awsrun/guard.sh end; fi
    exit 0
fi
TAG="$TAG" MAX_RUNTIME="$MAX_RUNTIME" BUDGET_END="$BUDGET_END" UPLOAD_MARGIN="$UPLOAD_MARGIN" bash .awsrun/row.sh
"$AWSRUN_PYTHON" .awsrun/save_results.py
if [ $? = "$UPLOAD_FAILED" ]; then bash .awsrun/guard.sh hold "$UPLOAD_HOLD"; else bash .awsrun/guard.sh end; fi
