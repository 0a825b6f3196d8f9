#!/usr/bin/env bash
# A private Docker engine for the container test tier and `make image` on a machine with no
# running engine (CI, a build host): Debian's dockerd on its own socket, with settings that
# need no iptables setup and no bridge:  --iptables=false --bridge=none  (containers use
# --network host). Storage: overlay2 when the kernel has overlayfs and it works on the data
# root's file system (creating a container is then instant), else vfs, which works anywhere
# but copies the whole image for every container and every build step (seconds each).
# GRAIN_ENGINE_STORAGE=vfs|overlay2 forces one.
#
#   scripts/container-engine.sh start    start it unless already running; prints
#                                        "started PID" or "running", then DOCKER_HOST=...
#   scripts/container-engine.sh stop     stop the engine this script started (TERM, then KILL)
#   scripts/container-engine.sh status   exit 0 when it answers, 1 otherwise
#   scripts/container-engine.sh host     print its DOCKER_HOST
#
# Its image store (GRAIN_ENGINE_ROOT, default /var/lib/grain-test/docker) outlives the engine,
# so the stand-in base image and the project image built by an earlier run are reused.
# Needs root (dockerd does); scripts/system-deps.sh installs docker.io.
set -euo pipefail

ROOT=${GRAIN_ENGINE_ROOT:-/var/lib/grain-test/docker}
RUN=${GRAIN_ENGINE_RUN:-/run/grain-test}
SOCK="$RUN/docker.sock"
HOST="unix://$SOCK"
PIDFILE="$RUN/dockerd.pid"
LOG="$RUN/dockerd.log"
# The CLI shipped with the daemon (/usr/bin/docker from docker.io) speaks its API version;
# another docker CLI earlier on PATH may not.
DOCKER=${DOCKER:-$( [ -x /usr/bin/docker ] && echo /usr/bin/docker || command -v docker || echo docker )}
DOCKERD=$(command -v dockerd || echo /usr/sbin/dockerd)

answers() { "$DOCKER" -H "$HOST" version >/dev/null 2>&1; }

start() {
  if answers; then
    echo running
    echo "DOCKER_HOST=$HOST"
    return 0
  fi
  [ "$(id -u)" = 0 ] || { echo "container-engine: dockerd needs root" >&2; return 2; }
  [ -x "$DOCKERD" ] || { echo "container-engine: no dockerd (run scripts/system-deps.sh)" >&2; return 2; }
  mkdir -p "$ROOT" "$RUN/exec"
  # A stale pid file from a killed run would make dockerd refuse to start.
  if [ -f "$PIDFILE" ] && ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then rm -f "$PIDFILE"; fi
  local drivers
  if [ -n "${GRAIN_ENGINE_STORAGE:-}" ]; then
    drivers=$GRAIN_ENGINE_STORAGE
  elif grep -qw overlay /proc/filesystems 2>/dev/null; then
    drivers="overlay2 vfs"
  else
    drivers=vfs
  fi
  for driver in $drivers; do
    launch "$driver" && return 0
  done
  return 1
}

launch() {  # launch DRIVER: start dockerd with that storage driver and wait until it answers
  local driver=$1
  # setsid: the engine must not share the caller's process group (a Ctrl-C of the test run
  # would otherwise kill it half-way and leave containers behind without a daemon).
  setsid "$DOCKERD" --storage-driver="$driver" --iptables=false --ip-masq=false --bridge=none \
    --data-root "$ROOT" --exec-root "$RUN/exec" --pidfile "$PIDFILE" -H "$HOST" \
    >"$LOG" 2>&1 </dev/null &
  local pid=$!
  for _ in $(seq 1 600); do  # up to 60 s: the first start creates the data root
    if answers; then
      echo "started $pid"
      echo "DOCKER_HOST=$HOST"
      echo "STORAGE=$driver"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "container-engine: dockerd with storage $driver did not start; last lines of $LOG:" >&2
  tail -5 "$LOG" >&2 || true
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  return 1
}

stop() {
  [ -f "$PIDFILE" ] || { echo "container-engine: not running (no $PIDFILE)"; return 0; }
  local pid
  pid=$(cat "$PIDFILE")
  kill -TERM "$pid" 2>/dev/null || { rm -f "$PIDFILE"; return 0; }
  for _ in $(seq 1 300); do  # dockerd stops its containers (10 s grace each) and containerd
    kill -0 "$pid" 2>/dev/null || { echo stopped; return 0; }
    sleep 0.1
  done
  echo "container-engine: dockerd $pid did not stop in 30 s; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) answers ;;
  host) echo "$HOST" ;;
  *) echo "usage: $0 start|stop|status|host" >&2; exit 2 ;;
esac
