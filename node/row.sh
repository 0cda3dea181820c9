#!/bin/bash
# Runs one row in the current directory (its work directory), for one machine per row (run.sh)
# and for a pool row (pool_worker.py) alike: .awsrun/command.sh with bash, TAG exported, its
# output in screen_output.txt, stopped at MAX_RUNTIME seconds when that is set and not 0 (exit
# 124; 137 if it ignored the TERM for 60 s); its exit code and start and end times (UTC) in
# .awsrun/. Runs on the node.
#
#   TAG=JOB0 MAX_RUNTIME=86400 bash .awsrun/row.sh
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
