#!/bin/bash
# The cost guard of a node: awsrun's own shutdowns. Runs on the node, from its work directory's
# .awsrun/ (sent by `create`), with the node's settings in .awsrun/node.env.
#
#   guard.sh idle S      unless the job is dispatched first, terminate this node through the EC2
#                        API after S seconds, and schedule an OS shutdown (which terminates the
#                        instance) 5 minutes later in case the API cannot be reached
#   guard.sh runtime S   replace that with an OS shutdown S seconds + an hour for the upload
#                        from now (0: no shutdown at all)
#   guard.sh end         the row is done, or its uploader failed: shut down now
#   guard.sh hold S      the upload failed: shut down in S seconds, keeping the results till then
#
# Each call first ends an earlier call's watchdog. The OS shutdown it schedules replaces the one
# an earlier call, or the launch's boot-time guard, scheduled (systemd-logind keeps one pending
# shutdown, and a new schedule overwrites it); a call that schedules none cancels it. The first
# to schedule one waits until cloud-init has run the boot-time guard (`cloud-init status --wait`).
# Under a budget (BUDGET_END in node.env, seconds since the epoch), no shutdown is ever
# scheduled later than BUDGET_END: each is rounded down to the minute before it, counted from
# the moment shutdown itself reads the clock.
cd "${0%/*}/.." || exit 1
# shellcheck source=/dev/null
. .awsrun/node.env && . .awsrun/names.sh || exit 1
as_root() { if [ "$EUID" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

if [ -s .awsrun/watchdog.pid ]; then
    read -r pid < .awsrun/watchdog.pid
    kill -- -"$pid" 2>/dev/null
    : > .awsrun/watchdog.pid
fi
: > .awsrun/shutdown
hash shutdown 2>/dev/null
TZ=UTC printf "%($TIME_FORMAT)T guard %s (shutdown is %s)\n" -1 "$*" "${BASH_CMDS[shutdown]}" >> .awsrun/guard.log

by_budget() {  # true if a shutdown $1 minutes from now, read a second late, still comes by BUDGET_END
    local now
    printf -v now '%(%s)T' -1
    [ -z "$BUDGET_END" ] || [ $(( now + 1 + $1 * 60 )) -le "$BUDGET_END" ]
}
after_boot() {  # once the user data's boot-time guard has armed its shutdown, which this one replaces
    # cloud-init runs the user data in its final stage, after sshd has started: a shutdown armed
    # before that was replaced by the boot-time guard's (a row could end at its minutes).
    [ -e .awsrun/booted ] && return
    if command -v cloud-init > /dev/null; then timeout 600 cloud-init status --wait > /dev/null 2>&1; fi
    : > .awsrun/booted
}
later() {  # shut down in $1 seconds, rounded up to minutes; never after BUDGET_END
    local minutes=$(( ($1 + 59) / 60 )) now
    after_boot
    # shutdown counts its minutes from its own reading of the clock, after ours: so the minutes
    # are checked again once it has armed them, and fewer are armed if a second has turned since.
    while [ "$minutes" -gt 0 ]; do
        if by_budget "$minutes"; then
            as_root shutdown -h +"$minutes" >> .awsrun/guard.log 2>&1 || return
            by_budget "$minutes" && { echo "$1" > .awsrun/shutdown; return; }
        fi
        printf -v now '%(%s)T' -1  # past BUDGET_END (set, then): the whole minutes left before it
        minutes=$(( (BUDGET_END - now - 1) / 60 ))
    done
    as_root shutdown -h now >> .awsrun/guard.log 2>&1
}
case "$1" in
  idle)
    # shellcheck disable=SC2016  # expanded by the inner bash, from its arguments
    setsid bash -c 'sleep "$1" && exec "$2" .awsrun/save_results.py --expire idle-timeout' \
        guard "$2" "$AWSRUN_PYTHON" >> .awsrun/guard.log 2>&1 < /dev/null &
    echo $! > .awsrun/watchdog.pid
    later $(( $2 + 300 )) ;;
  runtime)
    if [ "$2" -gt 0 ]; then later $(( $2 + 3600 )); elif [ -n "$BUDGET_END" ]; then later "$BUDGET_END"
    else after_boot; as_root shutdown -c 2>/dev/null; fi ;;
  hold)
    later "$2" ;;
  end)
    as_root shutdown -h now >> .awsrun/guard.log 2>&1 ;;
esac
exit 0
