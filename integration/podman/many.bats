#!/usr/bin/env bats
# Ten detached containers at once, and `rm -f` of all of them leaving nothing behind. The
# suite runs this file last (integration/podman/run): in the test bed ten microVMs boot at
# once in a 2-CPU test host, and there they are best off once the VM suites that `make
# test` runs beside this suite have ended (podman gives up on a create after 240 s).

load helpers

teardown() { after_test; }
teardown_file() { remove_suite_containers; }

@test "10 containers with -d at once; rm -f leaves no process, mount, socket or state" {
  names=()
  for i in $(seq 10); do names+=("$(ctr_name "many$i")"); done
  pids=()
  for n in "${names[@]}"; do
    pm_run -d --name "$n" "$IMAGE" sh -c "$ON_TERM_EXIT $IDLE" >/dev/null &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || fail "a podman run -d failed"; done
  # One podman call per question (each costs seconds under emulation).
  all_running() {
    [ "$(pm ps --filter "label=$LABEL" --filter status=running --format '{{.Names}}' | grep -c -- '-many')" -eq 10 ]
  }
  wait_until "$TIMEOUT" all_running || fail "not all 10 are running: $(pm ps -a --format '{{.Names}} {{.Status}}')"
  # What each one holds on the host: its id, runtime pid, conmon, overlay mount.
  ids=() hostpids=() mounts=()
  while read -r id pid conmon merged; do
    ids+=("$id")
    hostpids+=("$pid" "$conmon")
    mounts+=("$merged")
  done < <(pm inspect -f '{{.Id}} {{.State.Pid}} {{.State.ConmonPid}} {{.GraphDriver.Data.MergedDir}}' "${names[@]}")
  [ "${#ids[@]}" -eq 10 ] || fail "inspect gave ${#ids[@]} containers"
  run pm rm -f "${names[@]}"
  assert_status 0

  left=$(pm ps -a --filter "label=$LABEL" --format '{{.Names}}' | grep -- '-many' || true)
  [ -z "$left" ] || fail "still listed: $left"
  for p in "${hostpids[@]}"; do
    ! process_runs "$p" || fail "process $p ($(tr '\0' ' ' </proc/"$p"/cmdline)) is still there"
  done
  for m in "${mounts[@]}"; do
    ! grep -qF " $m " /proc/mounts || fail "$m is still mounted"
  done
  root=$(runtime_root)
  for id in "${ids[@]}"; do
    [ ! -e "$root/$id" ] || fail "$root/$id is still there"
    ! grep -qF "$id" /proc/mounts || fail "a mount of $id is still there"
    ! grep -qF "$id" /proc/net/unix || fail "a socket of $id is still there"
  done
  if is_vm_runtime; then
    # No VMM process at all, no virtio-fs or husk mount, no file left under the runtime's
    # root (empty directories of its own layout may stay).
    ! pgrep -f "$HUSK_BIN" >/dev/null || fail "husk processes left: $(pgrep -af "$HUSK_BIN")"
    ! awk '$2 ~ "^/run/husk/" || $3 == "virtiofs" { f = 1 } END { exit !f }' /proc/mounts ||
      fail "mounts left: $(grep -E ' /run/husk/|virtiofs' /proc/mounts)"
    left=$(find "$root" -mindepth 1 ! -type d 2>/dev/null)
    [ -z "$left" ] || fail "left under $root: $left"
  fi
}
