#!/bin/bash
# awsrun sandbox stand-in for shutdown, poweroff, reboot, halt, apt-get, apt, sudo and
# cloud-init on the nodes' PATH (each a link to this file, in the sandbox's bin/): nothing in
# the sandbox may change this machine. Every call is logged. The power commands (also through
# sudo) act on the calling node's instance as on EC2: shutdown ends it (now, +M minutes, or -c
# to cancel). `cloud-init status [--wait]` answers for the node's instance, whose user data the
# sandbox runs in ../.boot-ID (testbed/sandbox_ec2.py). Everything else is refused. A shell
# script, not Python: it costs a millisecond, as the real commands do (a Python stand-in's start
# was 40 ms of CPU, five times for each node). Its settings (the log, the sandbox's port, the
# power commands: sandbox_server.py's POWER) are in standin.env beside the link.
# shellcheck source=/dev/null
. "${0%/*}/standin.env" || exit 1
name=${0##*/}
echo "$name${*:+ $*}" >> "$LOG"
if [ "$name" = sudo ]; then
    while [ "${1#-}" != "$1" ]; do shift; done
    [ $# -gt 0 ] || exit 1
    name=${1##*/}
    shift
    echo "$name${*:+ $*}" >> "$LOG"
fi
if [ "$name" = cloud-init ] && [ "$1" = status ]; then
    id=
    [ -r .awsrun/instance ] && read -r id < .awsrun/instance
    boot=../.boot-$id
    if [ -n "$id" ] && [ -d "$boot" ]; then
        case " $* " in *" --wait "*)
            until [ -e "$boot/boot-finished" ] || [ "$SECONDS" -ge 600 ]; do sleep 0.1; done ;;
        esac
        [ -e "$boot/boot-finished" ] || { echo "status: running"; exit 0; }
    fi
    echo "status: done"  # or an instance launched without user data: nothing to run
    exit 0
fi
case " $POWER " in
    *" $name "*) ;;
    *) echo "sandbox: $name is not run in the sandbox" >&2; exit 1 ;;
esac
[ "$name" = reboot ] && exit 0
when=now
if [ "$name" = shutdown ]; then
    when=+1
    for a; do case $a in now | +*) when=$a; break ;; esac; done
    for a; do [ "$a" = -c ] && when=cancel; done
fi
# Tell the sandbox, which knows the instance by the node folder this runs in.
cd -P . || exit 1
if ! { exec 3<> "/dev/tcp/127.0.0.1/$PORT"; } 2> /dev/null; then
    echo "sandbox: $name: cannot reach the sandbox on port $PORT" >&2
    exit 0
fi
printf 'POST /sandbox/power HTTP/1.0\r\nX-Sandbox-Cwd: %s\r\nContent-Length: %d\r\n\r\n%s' "$PWD" "${#when}" "$when" >&3
read -r -t 10 _ <&3
exit 0
