#!/usr/bin/env bash
# Install meshnode and what it needs on a Debian-like machine.
#
# The data plane is compiled by Cython at install time and links OpenSSL, so the
# OpenSSL headers and a C compiler must be present; on Debian they are libssl-dev
# and gcc (plus python3-dev when the Python in use has no headers). They are
# installed with apt-get only when missing, so this script is safe to run twice.
#
#   bash deploy/install.sh          # meshnode itself (pip install .)
#   bash deploy/install.sh --test   # editable, with the test tools
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

missing=()
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
include=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
[ -f "$include/Python.h" ] || missing+=(python3-dev)
# The tests check the node's /metrics page with Prometheus' own promtool, scrape a node
# with a real Prometheus server (both from Debian's prometheus package), and check its
# dashboard in a headless Chromium.
if [ "${1:-}" = "--test" ]; then
  { command -v promtool && command -v prometheus; } >/dev/null 2>&1 || missing+=(prometheus)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install.sh: missing system packages: ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ "${1:-}" = "--test" ]; then
  "$PYTHON" -m pip install -q -e '.[test]'
else
  "$PYTHON" -m pip install -q .
fi
