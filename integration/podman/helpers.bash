# Shared by integration/podman/*.bats. Run the suite through integration/podman/run, which
# sets up podman's environment (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF) first.
# shellcheck shell=bash
#
#   HUSK_PODMAN_RUNTIME  the runtime under test, a name registered in containers.conf:
#                        husk (default), crun or runc
#   HUSK_PODMAN_TIMEOUT  seconds any one podman command may take (default 300: inside the
#                        test bed everything is 10-50x slower than natively)

bats_require_minimum_version 1.5.0

RUNTIME=${HUSK_PODMAN_RUNTIME:-husk}
# shellcheck disable=SC2034 # used by the .bats files
IMAGE=localhost/busybox
# shellcheck disable=SC2034
ENTRY_IMAGE=localhost/husk-entry
TIMEOUT=${HUSK_PODMAN_TIMEOUT:-300}
REPO=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
# The husk binary registered in containers.conf (integration/podman/setup).
HUSK_BIN=${HUSK_PODMAN_HUSK:-$REPO/target/release/husk}
# Every container of the suite carries this label: teardown removes them all.
LABEL=io.husk.podman-suite=1

# A microVM runtime shows the VM's kernel, CPUs and memory to the container; a container
# runtime shows the host's (and enforces limits through cgroups).
is_vm_runtime() { [ "$RUNTIME" = husk ]; }

# The runtime's state directory (podman calls it without --root).
runtime_root() {
  case $RUNTIME in
  husk) echo /run/husk ;;
  crun) echo /run/crun ;;
  runc) echo /run/runc ;;
  *) echo "/run/$RUNTIME" ;;
  esac
}

# podman with the runtime under test, bounded in time.
pm() { timeout -k 10 "$TIMEOUT" podman --runtime "$RUNTIME" "$@"; }

# A container's command that logs "ready" and idles; the shell waits on a child, so a
# trapped signal runs its handler at once. The child sleeps long: in the test bed, a guest
# that forks a `sleep 1` every second costs ~0.06 of a CPU (5 such containers: 14% of the
# test host's 2 CPUs; with `sleep 3600`, 1%).
# shellcheck disable=SC2034 # used by the .bats files
IDLE='echo ready; while :; do sleep 3600 & wait; done'
# Put before $IDLE: SIGTERM ends it (a shell as PID 1 ignores SIGTERM without a trap, and
# each stop or rm -f would wait out podman's 10 s).
# shellcheck disable=SC2034
ON_TERM_EXIT='trap "exit 0" TERM;'

# A container of the suite: no network (the covered features need none; `--network none`
# is its own test) and the suite's label.
pm_run() { pm run --network none --label "$LABEL" "$@"; }

# A unique container name for this test.
ctr_name() { echo "hb-${BATS_TEST_NUMBER}-${1:-c}-$$"; }

# Removes every container the suite made (whatever a failed test left).
remove_suite_containers() {
  local ids
  ids=$(podman ps -aq --filter "label=$LABEL" 2>/dev/null || true)
  # shellcheck disable=SC2086 # one id per word
  [ -z "$ids" ] || timeout -k 10 "$TIMEOUT" podman rm -f -t 0 $ids >/dev/null 2>&1 || true
}

# After each test: a podman call costs seconds under emulation, so skip the sweep when the
# test passed and the runtime holds no container any more (its state directory is empty).
# A passed test may leave stopped containers, which hold nothing; teardown_file sweeps them.
after_test() {
  show_logs_on_failure
  if [ -z "${BATS_TEST_COMPLETED:-}" ] || [ -n "$(ls -A "$(runtime_root)" 2>/dev/null)" ]; then
    remove_suite_containers
  fi
}

# After a failed test: the last lines each container of the suite logged. A VM that ended
# early says why there (husk's monitor writes to the container's stderr).
show_logs_on_failure() {
  [ -z "${BATS_TEST_COMPLETED:-}" ] || return 0
  local id
  for id in $(podman ps -aq --filter "label=$LABEL" 2>/dev/null); do
    echo "--- the last lines container $id logged:" >&2
    timeout -k 10 "$TIMEOUT" podman logs --tail 10 "$id" >&2 2>&1 || true
  done
}

# fail MESSAGE: fails the test with MESSAGE (and $output, when set, for context).
fail() {
  echo "FAIL: $*" >&2
  [ -z "${output:-}" ] || printf 'output was:\n%s\n' "$output" >&2
  return 1
}

# wait_until SECONDS CMD...: polls CMD (every 0.5 s: a podman call is costly under
# emulation) until it succeeds.
wait_until() {
  local deadline=$(($(date +%s) + $1))
  shift
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out waiting for: $*" >&2; return 1; }
    sleep 0.5
  done
}

# process_runs PID: PID is a live process. A zombie is not: it holds nothing but its pid
# until whoever it was reparented to reaps it.
process_runs() {
  local state
  state=$(awk '/^State:/ { print $2 }' "/proc/$1/status" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

logs_contain() { pm logs "$1" 2>/dev/null | grep -qx -- "$2"; }
status_is() { [ "$(pm inspect -f '{{.State.Status}}' "$1" 2>/dev/null)" = "$2" ]; }
inspect() { pm inspect -f "$2" "$1"; }

# assert_line LINE: some line of $output is exactly LINE (bats's run sets lines, status).
# shellcheck disable=SC2154
assert_line() {
  local l
  for l in "${lines[@]}"; do [ "$l" = "$1" ] && return 0; done
  fail "no line '$1'"
}
# shellcheck disable=SC2154
assert_status() { [ "$status" -eq "$1" ] || fail "exit status $status, expected $1"; }

# --- a real pty: tmux, on a server of this test's own ---
# tmux_start CMD: runs CMD (a shell command line) in a detached 80x24 tmux session; when
# CMD ends the pane shows "HUSK-EXIT=<status>".
tmux_start() {
  TMUX_SOCKET=hb-$$-$BATS_TEST_NUMBER
  TERM=xterm tmux -L "$TMUX_SOCKET" -f /dev/null new-session -d -s t -x 80 -y 24 \
    "$1; echo HUSK-EXIT=\$?; sleep 100000"
}
tmux_stop() { [ -z "${TMUX_SOCKET:-}" ] || tmux -L "$TMUX_SOCKET" kill-server 2>/dev/null || true; }
tmux_screen() { tmux -L "$TMUX_SOCKET" capture-pane -p -J -S - -t t; }
tmux_type() { tmux -L "$TMUX_SOCKET" send-keys -t t -l "$1" && tmux -L "$TMUX_SOCKET" send-keys -t t Enter; }
# tmux_wait_line SECONDS LINE: until a line of the screen is exactly LINE (trailing blanks
# and carriage returns ignored).
tmux_has_line() { tmux_screen | sed 's/[[:space:]]*$//' | grep -qxF -- "$1"; }
# A command that ended before printing LINE fails at once (not after SECONDS).
tmux_line_or_exit() {
  local screen
  screen=$(tmux_screen | sed 's/[[:space:]]*$//')
  grep -qxF -- "$1" <<<"$screen" && return 0
  if [[ $1 != HUSK-EXIT=* ]] && grep -q '^HUSK-EXIT=' <<<"$screen"; then
    echo "the command ended before printing '$1'" >&2
    return 2
  fi
  return 1
}
tmux_wait_line() {
  local deadline=$(($(date +%s) + $1)) rc
  while :; do
    rc=0
    tmux_line_or_exit "$2" || rc=$?
    [ $rc -eq 0 ] && return 0
    if [ $rc -eq 2 ] || [ "$(date +%s)" -ge "$deadline" ]; then
      echo "waiting for '$2' failed; screen:" >&2
      tmux_screen >&2
      return 1
    fi
    sleep 0.5
  done
}

# The guest kernel husk boots (its "Linux version" string), for `uname -r` in a microVM.
guest_kernel_release() {
  grep -a -o -m1 'Linux version [^ ]*' "$(dirname "$HUSK_BIN")/vmlinux" | cut -d' ' -f3
}
