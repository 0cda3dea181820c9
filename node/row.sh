#!/bin/bash
# Runs one row in the current directory (its work directory), for one machine per row (run.sh)
# and for a pool row (pool_worker.py) alike: .awsrun/command.sh with bash, TAG exported, its
# output in screen_output.txt, stopped at MAX_RUNTIME seconds when that is set and not 0 (exit
# TIMED_OUT; KILLED if it ignored the TERM for 60 s); its exit code and start and end times in
# .awsrun/, as TIME_FORMAT (both in names.sh beside this file) says. Under a budget
# (BUDGET_END, seconds since the epoch), the command is stopped UPLOAD_MARGIN seconds and a
# minute before it at the latest (the OS shutdown, armed in whole minutes, may come a minute
# early), so that its results are uploaded before the machine ends; a row stopped so has
# .awsrun/stopped_by saying "budget". Runs on the node.
#
#   TAG=JOB0 MAX_RUNTIME=86400 [BUDGET_END=1764600000 UPLOAD_MARGIN=300] bash .awsrun/row.sh
# shellcheck source=/dev/null
. "${0%/*}/names.sh" || exit 1
export TAG
[ -d output ] || mkdir output
limit=${MAX_RUNTIME:-0} by=
if [ -n "$BUDGET_END" ]; then
    left=$(( BUDGET_END - $(date +%s) - 60 - ${UPLOAD_MARGIN:-300} ))
    if [ "$limit" = 0 ] || [ "$left" -lt "$limit" ]; then limit=$(( left > 1 ? left : 1 )) by=budget; fi
fi
echo $$ > .awsrun/row.pid  # lives until the row has ended: make logs FOLLOW=1 follows the log while it does
TZ=UTC printf "%($TIME_FORMAT)T\n" -1 > .awsrun/started
if [ "$limit" -gt 0 ]; then
    timeout -k 60 "$limit" bash .awsrun/command.sh > screen_output.txt 2>&1 < /dev/null
else
    bash .awsrun/command.sh > screen_output.txt 2>&1 < /dev/null
fi
code=$?
echo "$code" > .awsrun/exit_code
if [ -n "$by" ] && { [ "$code" = "$TIMED_OUT" ] || [ "$code" = "$KILLED" ]; }; then echo "$by" > .awsrun/stopped_by; fi
TZ=UTC printf "%($TIME_FORMAT)T\n" -1 > .awsrun/ended
