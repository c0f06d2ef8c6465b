#!/bin/sh
# The entrypoint of localhost/husk-entry: says where it runs, with what, then execs its
# arguments when the first one is "exec" (so a test can run a command through it).
echo "entrypoint: pwd=$(pwd) greeting=$HUSK_GREETING args=$*"
if [ "$1" = exec ]; then
  shift
  exec "$@"
fi
