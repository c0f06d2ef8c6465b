#!/usr/bin/env bash
# check-config.sh FRAGMENT CONFIG
# Exits non-zero, naming each option, when an option the fragment sets is not the same in
# the final .config. `CONFIG_X=value` (y, m, numbers, "strings") must appear verbatim;
# `# CONFIG_X is not set` and `CONFIG_X=n` hold when the final config says "is not set" or
# does not mention the option at all (Kconfig leaves out options whose dependencies are off).
# An option given twice in the fragment is an error too. One awk pass, no kernel tree needed.
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 FRAGMENT CONFIG" >&2
  exit 2
fi
frag=$1 config=$2
for f in "$frag" "$config"; do
  [ -r "$f" ] || { echo "check-config: cannot read $f" >&2; exit 2; }
done

LC_ALL=C awk '
  # Returns "NAME<TAB>VALUE" for a config line, "" for anything else; VALUE "n" = not set.
  function parse(line,   m) {
    sub(/\r$/, "", line)
    if (match(line, /^# CONFIG_[A-Za-z0-9_]+ is not set[ \t]*$/)) {
      m = line; sub(/^# /, "", m); sub(/ is not set.*$/, "", m)
      return m "\tn"
    }
    if (match(line, /^CONFIG_[A-Za-z0-9_]+=/)) {
      m = substr(line, 1, RLENGTH - 1)
      return m "\t" substr(line, RLENGTH + 1)
    }
    return ""
  }
  FNR == NR {
    p = parse($0)
    if (p == "") {
      if ($0 ~ /^[ \t]*CONFIG_/ || ($0 !~ /^[ \t]*(#|$)/)) {
        printf "check-config: %s:%d: not a config line: %s\n", FILENAME, FNR, $0 > "/dev/stderr"
        bad++
      }
      next
    }
    split(p, kv, "\t"); name = kv[1]; val = kv[2]
    if (name in want) {
      printf "check-config: %s set twice in the fragment (line %d)\n", name, FNR > "/dev/stderr"
      bad++
    } else {
      order[++n] = name
    }
    want[name] = val
    next
  }
  {
    p = parse($0)
    if (p == "") next
    split(p, kv, "\t"); have[kv[1]] = kv[2]
  }
  END {
    for (i = 1; i <= n; i++) {
      name = order[i]; w = want[name]
      h = (name in have) ? have[name] : "n"
      if (h != w) {
        printf "check-config: %s: fragment wants %s, final config has %s\n", name, \
          (w == "n" ? "not set" : w), \
          ((name in have) ? (h == "n" ? "not set" : h) : "nothing (dropped: a dependency is off)") > "/dev/stderr"
        bad++
      }
    }
    if (bad) {
      printf "check-config: %d problem(s) (%d options checked)\n", bad, n > "/dev/stderr"
      exit 1
    }
    printf "check-config: all %d options of %s hold\n", n, ARGV[1] > "/dev/stderr"
  }
' "$frag" "$config"
