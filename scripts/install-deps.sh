#!/usr/bin/env bash
# Installs, through apt and without asking, what building and testing husk needs on a
# Debian 12 machine. Idempotent: a second run with everything present only checks.
set -euo pipefail

log() { echo "husk deps: $*" >&2; }

# Packages for the guest kernel, the initramfs, the test bed (kmod: its module tree)
# and the benchmarks (linux-perf: VM exit counts).
pkgs_main=(linux-source-6.12 bc flex bison libelf-dev libssl-dev cpio xz-utils zstd
  busybox-static time build-essential kmod linux-perf strace)
# QEMU 10 comes from bookworm-backports (7.2 works but warns on every nested boot).
pkgs_bpo=(qemu-system-x86 qemu-system-data qemu-system-common seabios)

missing=()
for p in "${pkgs_main[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
qemu_ok=0
if command -v qemu-system-x86_64 >/dev/null && qemu-system-x86_64 --version | grep -q 'version 10\.'; then
  qemu_ok=1
fi
if [ ${#missing[@]} -eq 0 ] && [ $qemu_ok = 1 ]; then
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# bookworm-backports: same mirror as the machine's own bookworm entry.
bpo=/etc/apt/sources.list.d/husk-bookworm-backports.sources
if [ ! -f "$bpo" ]; then
  uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$uri" ] || uri=$(awk '$1=="deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$uri" ] || { echo "husk deps: cannot find the machine's Debian mirror in its apt sources" >&2; exit 1; }
  log "adding bookworm-backports ($uri)"
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" >"$bpo"
fi
log "apt-get update"
apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} (this takes a few minutes)"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ $qemu_ok = 0 ]; then
  log "installing QEMU 10 from bookworm-backports"
  apt-get install -y -qq --no-install-recommends -t bookworm-backports "${pkgs_bpo[@]}" >/dev/null
fi
