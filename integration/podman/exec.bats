#!/usr/bin/env bats
# `podman exec` into a running container: exit status, stdin, the container's settings.

load helpers

setup_file() {
  export EXEC_CTR=hb-exec-$$
  pm_run -d --name "$EXEC_CTR" -e HUSK_TEST=from-run -w /tmp "$IMAGE" \
    sh -c "$IDLE" >/dev/null
  wait_until "$TIMEOUT" logs_contain "$EXEC_CTR" ready
}

teardown() { show_logs_on_failure; }
teardown_file() { remove_suite_containers; }

@test "exec: output and exit status" {
  run pm exec "$EXEC_CTR" echo hello from exec
  assert_status 0
  [ "$output" = "hello from exec" ] || fail "wrong output"
  run pm exec "$EXEC_CTR" sh -c 'exit 5'
  assert_status 5
}

@test "exec -i: stdin reaches the process" {
  run bash -c "printf 'line one\nline two\n' | podman --runtime $RUNTIME exec -i $EXEC_CTR sh -c 'cat; echo done'"
  assert_status 0
  [ "${lines[0]}" = "line one" ] && [ "${lines[1]}" = "line two" ] && [ "${lines[2]}" = done ] ||
    fail "stdin did not come through"
}

@test "exec: the container's env and workdir, -e and -w of its own" {
  run pm exec "$EXEC_CTR" sh -c 'echo "$HUSK_TEST $PWD"'
  assert_status 0
  [ "$output" = "from-run /tmp" ] || fail "the container's env or workdir is missing"
  run pm exec -e HUSK_TEST=from-exec -w / "$EXEC_CTR" sh -c 'echo "$HUSK_TEST $PWD"'
  assert_status 0
  [ "$output" = "from-exec /" ] || fail "exec's own -e/-w not applied"
}

@test "exec: a missing command exits 127, the cause in one line" {
  run -127 pm exec "$EXEC_CTR" no-such-command
  [ "${#lines[@]}" -eq 1 ] || fail "expected exactly one line"
  # runc and husk: "executable file not found in $PATH"; crun names the file in between.
  [[ $output =~ executable\ file\ .*not\ found\ in\ \$PATH ]] || fail "not the real cause"
}

@test "exec: runs in the container beside its process" {
  run pm exec "$EXEC_CTR" sh -c 'cat /proc/1/cmdline | tr "\0" " "'
  assert_status 0
  [[ $output == "sh -c echo ready;"* ]] || fail "PID 1 is not the container's process"
}
