#!/usr/bin/env bash
# Render an `alphavae eval` HTML report in headless Chromium and save a screenshot, to check the page
# by eye (layout, bars, data-URI images) without a display.
#
# Usage: benchmarks/eval_report_screenshot.sh REPORT.html OUT.png [WIDTH,HEIGHT]
# Needs a Chromium binary (Debian: `apt-get install -y chromium`). Nothing is fetched: the report is
# self-contained and network features are switched off.
set -euo pipefail
report=$(realpath "$1")
out=$(realpath -m "$2")
size=${3:-1280,2000}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome) || {
  echo "no chromium found (apt-get install -y chromium)" >&2; exit 2; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --disable-sync --no-first-run --hide-scrollbars --user-data-dir="$profile" \
  --screenshot="$out" --window-size="$size" "file://$report" 2>/dev/null
echo "wrote $out"
