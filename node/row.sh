#!/bin/bash
# Runs one row in the current directory (its work directory), for one machine per row (run.sh)
# and for a pool row (pool_worker.py) alike: .awsrun/command.sh with bash, TAG exported, its
# output in screen_output.txt, stopped at MAX_RUNTIME seconds when that is set and not 0 (exit
# TIMED_OUT; KILLED if it ignored the TERM for 60 s); its exit code and start and end times in
# .awsrun/, as TIME_FORMAT (both in names.sh beside this file) says. Runs on the node.
#
#   TAG=JOB0 MAX_RUNTIME=86400 bash .awsrun/row.sh
# shellcheck source=/dev/null
. "${0%/*}/names.sh" || exit 1
export TAG
[ -d output ] || mkdir output
TZ=UTC printf "%($TIME_FORMAT)T\n" -1 > .awsrun/started
if [ "${MAX_RUNTIME:-0}" -gt 0 ]; then
    timeout -k 60 "$MAX_RUNTIME" bash .awsrun/command.sh > screen_output.txt 2>&1 < /dev/null
else
    bash .awsrun/command.sh > screen_output.txt 2>&1 < /dev/null
fi
echo $? > .awsrun/exit_code
TZ=UTC printf "%($TIME_FORMAT)T\n" -1 > .awsrun/ended
