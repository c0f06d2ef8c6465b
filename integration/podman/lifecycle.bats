#!/usr/bin/env bats
# Detached containers: logs, stop, kill, pause, restart, rm, wait, inspect, top, stats
# (many at once: many.bats).

load helpers

teardown() { after_test; }
teardown_file() { remove_suite_containers; }

# start_idle NAME [TRAPS] [RUN OPTIONS...]: a detached idle container, up and logging.
start_idle() {
  local name=$1 traps=${2:-$ON_TERM_EXIT}
  shift 2 || shift $#
  pm_run -d --name "$name" "$@" "$IMAGE" sh -c "$traps $IDLE" >/dev/null
  wait_until "$TIMEOUT" logs_contain "$name" ready
}

@test "run -d + logs + stop: SIGTERM reaches the container's process" {
  name=$(ctr_name)
  start_idle "$name" 'trap "echo got-TERM; exit 0" TERM;'
  run pm stop -t 120 "$name"
  assert_status 0
  run pm logs "$name"
  assert_line ready
  assert_line got-TERM
  [ "$(inspect "$name" '{{.State.ExitCode}}')" = 0 ] || fail "the trap did not end it with 0"
}

@test "stop: after the timeout, SIGKILL (exit 137)" {
  name=$(ctr_name)
  start_idle "$name" 'trap "echo ignoring-TERM" TERM;'
  run pm stop -t 3 "$name"
  assert_status 0
  status_is "$name" exited || fail "not exited"
  [ "$(inspect "$name" '{{.State.ExitCode}}')" = 137 ] || fail "exit code not 137"
  run pm logs "$name"
  assert_line ignoring-TERM
}

@test "kill -s USR1 reaches a trap in the container" {
  name=$(ctr_name)
  start_idle "$name" 'trap "echo got-USR1" USR1;'
  pm kill -s USR1 "$name" >/dev/null
  wait_until "$TIMEOUT" logs_contain "$name" got-USR1
  status_is "$name" running || fail "USR1 ended the container"
}

@test "pause, unpause: the container stops and goes on" {
  name=$(ctr_name)
  dir=$BATS_TEST_TMPDIR/data
  mkdir "$dir"
  pm_run -d --name "$name" -v "$dir:/data" "$IMAGE" \
    sh -c 'i=0; while :; do i=$((i + 1)); echo $i >/data/n.tmp; mv /data/n.tmp /data/n; sleep 0.2; done' >/dev/null
  wait_until "$TIMEOUT" test -s "$dir/n"
  pm pause "$name" >/dev/null
  status_is "$name" paused || fail "not paused"
  a=$(cat "$dir/n")
  sleep 3
  b=$(cat "$dir/n")
  [ "$a" = "$b" ] || fail "the counter moved while paused ($a -> $b)"
  pm unpause "$name" >/dev/null
  status_is "$name" running || fail "not running after unpause"
  wait_until "$TIMEOUT" bash -c "[ \"\$(cat '$dir/n')\" -gt $b ]"
}

@test "restart: the container runs again" {
  name=$(ctr_name)
  start_idle "$name" 'trap "exit 0" TERM;'
  pid1=$(inspect "$name" '{{.State.Pid}}')
  run pm restart -t 60 "$name"
  assert_status 0
  status_is "$name" running || fail "not running after restart"
  wait_until "$TIMEOUT" bash -c "[ \$(podman --runtime $RUNTIME logs $name | grep -cx ready) -eq 2 ]"
  pid2=$(inspect "$name" '{{.State.Pid}}')
  [ "$pid1" != "$pid2" ] || fail "same pid after restart"
}

@test "rm -f: a running container is gone" {
  name=$(ctr_name)
  start_idle "$name"
  run pm rm -f "$name"
  assert_status 0
  run pm container exists "$name"
  [ "$status" -eq 1 ] || fail "the container still exists"
}

@test "wait: prints the exit code" {
  name=$(ctr_name)
  pm_run -d --name "$name" "$IMAGE" sh -c 'sleep 1; exit 4' >/dev/null
  run pm wait "$name"
  assert_status 0
  [ "$output" = 4 ] || fail "expected 4"
}

@test "inspect: state while running and after the exit, with the exit code" {
  name=$(ctr_name)
  start_idle "$name" 'trap "exit 3" TERM;'
  [ "$(inspect "$name" '{{.State.Status}} {{.State.Running}}')" = "running true" ] || fail "not running"
  [ "$(inspect "$name" '{{.State.Pid}}')" -gt 0 ] || fail "no pid"
  pm stop -t 120 "$name" >/dev/null
  run inspect "$name" '{{.State.Status}} {{.State.Running}} {{.State.ExitCode}}'
  [ "$output" = "exited false 3" ] || fail "expected: exited false 3"
}

@test "top does not break" {
  name=$(ctr_name)
  start_idle "$name"
  run pm top "$name"
  assert_status 0
  [[ ${lines[0]} == USER* ]] || fail "no header"
  [ "${#lines[@]}" -ge 2 ] || fail "no process listed"
}

@test "stats does not break" {
  name=$(ctr_name)
  start_idle "$name"
  run pm stats --no-stream --format '{{.Name}} {{.MemUsage}}' "$name"
  assert_status 0
  [[ $output == "$name "* ]] || fail "no line for the container"
}
