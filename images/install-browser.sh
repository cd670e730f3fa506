#!/usr/bin/env bash
# Makes sure a headless browser is there for the `browser` tests (they open the evaluation report and take a
# screenshot): nothing to do when chromium answers; on Debian/Ubuntu as root (CI machines) installs Debian's
# chromium package (about a minute); elsewhere it says what to install, and those tests skip.
set -euo pipefail
for name in chromium chromium-browser google-chrome; do
  if command -v "$name" >/dev/null && "$name" --version >/dev/null 2>&1; then
    exit 0
  fi
done
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "install-browser.sh: installing chromium" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
else
  echo "install-browser.sh: the browser tests need chromium (e.g. apt-get install chromium); they skip without it" >&2
fi
