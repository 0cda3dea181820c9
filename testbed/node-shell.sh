#!/bin/sh
# The sandbox's login for every node session (its sshd's ForceCommand): the sandbox's PATH,
# given as $1, comes first whatever the login shell's startup files set, so that its stand-ins
# shadow the real commands. (bash reads ~/.bashrc when it sees SSH_CLIENT; the nodes' shells
# must not.)
# The nodes' work runs at the lowest priority (nice 19): on EC2 each node has CPUs of its own,
# and AWS and a machine's metadata service answer whatever the nodes do; here a hundred nodes'
# uploaders starting at once took every core, and the metadata service, waiting its turn
# among them, answered their credential requests after botocore had given up.
PATH=$1; export PATH; unset SSH_CLIENT SSH2_CLIENT
[ -n "$SSH_ORIGINAL_COMMAND" ] || exec nice -n 19 /bin/bash -i
exec nice -n 19 /bin/bash -c "$SSH_ORIGINAL_COMMAND"
