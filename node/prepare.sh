#!/bin/bash
# Prepares a node at `create`: runs INSTALL.sh until it creates READY, each try limited in
# time and logged to .awsrun/install.N.log, with a growing pause between tries so that a
# boot-time lock can clear; then arms the idle guard. The install's start and end times go in
# .awsrun/install_started and install_ended, for the manifest and the report. Runs on the
# node, in its work directory, right after the bundle is unpacked there.
#
#   bash .awsrun/prepare.sh TRIES SECONDS IDLE
tries=$1 seconds=$2 idle=$3
cd "${0%/*}/.." || exit 2
# shellcheck source=/dev/null
. .awsrun/node.env && . .awsrun/names.sh || exit 2
echo "$INSTANCE_ID" > .awsrun/instance
stamp() { TZ=UTC printf "%($TIME_FORMAT)T\n" -1 > ".awsrun/$1"; }
# The --inputs prefixes (.awsrun/inputs.tsv: URL, region, DIR), once per machine and before
# INSTALL.sh: each into .awsrun/inputs/N, linked from DIR (a pool's rows share it), every object
# checked; a prefix already there is only compared. The metadata service is asked patiently.
n=0
while IFS=$'\t' read -r url region dir; do
    if ! AWS_METADATA_SERVICE_NUM_ATTEMPTS=5 AWS_METADATA_SERVICE_TIMEOUT=3 "$AWSRUN_PYTHON" \
            .awsrun/get_s3_files.py "$url" ".awsrun/inputs/$n" --region "$region" > ".awsrun/inputs.$n.log" 2>&1; then
        echo "--inputs $url: the download failed:"
        tail -n 5 ".awsrun/inputs.$n.log"
        exit "$INSTALL_FAILED"
    fi
    mkdir -p "$(dirname "$dir")" && ln -sfn "$PWD/.awsrun/inputs/$n" "$dir" || exit "$INSTALL_FAILED"
    n=$((n + 1))
done < .awsrun/inputs.tsv
if [ ! -f READY ]; then
    stamp install_started
    i=0
    while [ "$i" -lt "$tries" ]; do
        i=$((i + 1))
        AWSRUN_PYTHON=$AWSRUN_PYTHON TAG=$TAG timeout -k 10 "$seconds" bash INSTALL.sh \
            > ".awsrun/install.$i.log" 2>&1 < /dev/null
        code=$?
        [ -f READY ] && break
        echo "try $i: INSTALL.sh exited $code without creating READY"
        if [ "$i" -lt "$tries" ]; then sleep $((5 << i)); fi
    done
    stamp install_ended
fi
if [ ! -f READY ]; then
    echo "--- last lines of $PWD/.awsrun/install.$tries.log:"
    tail -n 20 ".awsrun/install.$tries.log"
    exit "$INSTALL_FAILED"
fi
[ -e .awsrun/dispatched ] || bash .awsrun/guard.sh idle "$idle"
