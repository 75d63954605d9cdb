#!/usr/bin/env bash
# A lent machine runs one command for at most 10 minutes and kills what it leaves behind, but keeps
# a process in its own session (setsid) until the machine goes back (30 minutes held). So a run
# that needs the whole lease starts detached, from its own copy of the working tree (later calls
# bring their own tree and carried folders, which would replace the run's under it), with
# OUT=/tmp/out; each later call waits on it and copies what it has packed so far into its $OUT.
# The machine goes back 30 s after a call ends, and the detached run with it: send each wait as soon as
# the last one returns, and read what came back afterwards.
#   bash scripts/device/detached.sh start bash scripts/device/experiment_learners_gpu.sh pool 1500 --folds numpy
#   bash scripts/device/detached.sh wait 570     # up to 570 s, or until the run ends; then its files
set -uo pipefail
RUN=/tmp/detached
case ${1:-} in
  start)
    shift
    [ -e $RUN/pid ] && kill -0 "$(cat $RUN/pid)" 2>/dev/null && { echo "a detached run is going already"; exit 1; }
    rm -rf $RUN /tmp/out /tmp/work && mkdir -p $RUN /tmp/out /tmp/work
    cp -a . /tmp/work/ || exit 1
    (cd /tmp/work && OUT=/tmp/out setsid bash -c '"$@"; echo $? > '$RUN'/rc' _ "$@" > $RUN/log 2>&1 < /dev/null &
     echo $! > $RUN/pid)
    echo "started: $*" ;;
  wait)
    limit=${2:-570} t0=$SECONDS
    while [ ! -e $RUN/rc ] && [ $((SECONDS - t0)) -lt "$limit" ]; do sleep 5; done
    grep -v "\] start " $RUN/log | tail -40
    [ -e $RUN/rc ] && echo "the run ended: exit $(cat $RUN/rc)" || echo "the run goes on"
    cp -a /tmp/out/. "$OUT"/ 2>/dev/null; ls -la "$OUT" ;;
  *) echo "usage: detached.sh start CMD... | wait SECONDS"; exit 2 ;;
esac
