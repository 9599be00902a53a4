#!/usr/bin/env bash
# The system tools for the aarch64 target: a cross C++ toolchain (to link aarch64 packages) and qemu user-mode
# emulation (to run them here through `onebyone emulate aarch64`). Debian/Ubuntu; needs root or sudo.
set -euo pipefail
need=()
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
[ ${#need[@]} -eq 0 ] && { echo "cross tools present"; exit 0; }
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing ${need[*]}"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
