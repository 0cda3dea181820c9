#!/bin/sh
# The sandbox's login for every node session (its sshd's ForceCommand): the sandbox's PATH,
# given as $1, comes first whatever the login shell's startup files set, so that its stand-ins
# shadow the real commands. (bash reads ~/.bashrc when it sees SSH_CLIENT; the nodes' shells
# must not.)
PATH=$1; export PATH; unset SSH_CLIENT SSH2_CLIENT
[ -n "$SSH_ORIGINAL_COMMAND" ] || exec /bin/bash -i
exec /bin/bash -c "$SSH_ORIGINAL_COMMAND"
