#!/usr/bin/env bash
# Render an eqaudit HTML report (--html) to a PNG screenshot in headless Chromium, offline.
#   scripts/screenshot_html.sh report.html [out.png] [width] [height]
# Needs Debian's chromium package (apt-get install -y chromium).
set -euo pipefail
html=${1:?usage: scripts/screenshot_html.sh report.html [out.png] [width] [height]}
png=${2:-${html%.html}.png}
width=${3:-1280}
height=${4:-2400}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
  echo "screenshot_html.sh: no chromium found (apt-get install -y chromium)" >&2
  exit 2
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
  --window-size="${width},${height}" --screenshot="$(realpath -m "$png")" "file://$(realpath "$html")" \
  >/dev/null 2>&1
test -s "$png" && echo "$png"
