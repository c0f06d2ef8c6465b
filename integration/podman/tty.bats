#!/usr/bin/env bats
# A real pty (tmux): `run -it` with an interactive shell, resizing, `exec -it`.

load helpers

teardown() {
  tmux_stop
  after_test
}
teardown_file() { remove_suite_containers; }

@test "run -it: an interactive shell through a pty" {
  tmux_start "podman --runtime $RUNTIME run -it --rm --network none --label $LABEL $IMAGE sh"
  tmux_type 'echo "answer: $((6 * 7))"'
  tmux_wait_line "$TIMEOUT" "answer: 42"
  tmux_type 'tty; [ -t 0 ] && echo stdin-is-a-tty'
  tmux_wait_line "$TIMEOUT" stdin-is-a-tty
  tmux_type 'exit 7'
  tmux_wait_line "$TIMEOUT" HUSK-EXIT=7
}

@test "run -it: stty size follows a resize of the terminal" {
  tmux_start "podman --runtime $RUNTIME run -it --rm --network none --label $LABEL $IMAGE sh"
  tmux_type 'stty size'
  tmux_wait_line "$TIMEOUT" "24 80"
  tmux -L "$TMUX_SOCKET" resize-window -t t -x 100 -y 30
  # The resize reaches the container as SIGWINCH + a new size on the pty: asked again until
  # it shows (podman forwards it asynchronously).
  resized() { tmux_type 'stty size'; sleep 1; tmux_has_line "30 100"; }
  wait_until "$TIMEOUT" resized || { tmux_screen >&2; fail "the size did not follow"; }
  tmux_type 'exit'
  tmux_wait_line "$TIMEOUT" HUSK-EXIT=0
}

@test "exec -it: a tty, stdin and the exit status" {
  name=$(ctr_name)
  pm_run -d --name "$name" "$IMAGE" sh -c "$IDLE" >/dev/null
  wait_until "$TIMEOUT" logs_contain "$name" ready
  tmux_start "podman --runtime $RUNTIME exec -it $name sh -c '[ -t 0 ] && [ -t 1 ] && echo on-a-tty; read l; echo got:\$l; exit 5'"
  tmux_wait_line "$TIMEOUT" on-a-tty
  tmux_type typed-in
  tmux_wait_line "$TIMEOUT" got:typed-in
  tmux_wait_line "$TIMEOUT" HUSK-EXIT=5
}
