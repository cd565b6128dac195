#!/usr/bin/env bash
# Installs Debian packages for the project's scripts: apt-get install PACKAGE..., with sudo
# when not root, updating the package lists first only if the install fails without it.
set -euo pipefail
[ $# -gt 0 ] || exit 0
echo "apt-install: installing $* (apt)" >&2
sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
if ! $sudo_cmd apt-get install -y -qq "$@" >/dev/null; then
  $sudo_cmd apt-get update -qq || echo "apt-install: apt-get update failed; trying the install anyway" >&2
  $sudo_cmd apt-get install -y -qq "$@" >/dev/null
fi
