#!/usr/bin/env bash
# Installs everything on Debian as root: GL libraries for headless rendering,
# ffmpeg for GIF summaries, then this package with its test extras.
set -euo pipefail
cd "$(dirname "$0")"
if command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  packages="libegl1 libegl-mesa0 libgl1 libosmesa6 ffmpeg"
  missing=""
  dpkg -s $packages >/dev/null 2>&1 || missing="$packages"
  python3 -m pip --version >/dev/null 2>&1 || missing="$missing python3-pip"
  if [ -n "$missing" ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
fi
# Debian's own Python marks itself externally managed; this is a root install.
export PIP_BREAK_SYSTEM_PACKAGES=1
python3 -m pip install -q --disable-pip-version-check -e ".[test]"
