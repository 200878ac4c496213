#!/usr/bin/env bash
# Render a run's report.html to a PNG with headless Chromium (installs nothing).
#   benchmarks/screenshot_report.sh [RUN_DIR] [OUT.png] [WIDTHxHEIGHT]
# Defaults: runs/default, RUN_DIR/report.png, 1280x2600. Needs `chromium` (Debian/Ubuntu:
# apt-get install -y chromium) or set CHROMIUM=/path/to/chrome.
set -euo pipefail
run_dir=${1:-runs/default}
out=${2:-$run_dir/report.png}
size=${3:-1280x2600}
browser=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}
if [[ -z "$browser" ]]; then
    echo "error: chromium not found (apt-get install -y chromium, or set CHROMIUM=...)" >&2
    exit 3
fi
html=$(realpath "$run_dir/report.html")
[[ -f "$html" ]] || { echo "error: $run_dir/report.html: not found (run \`make check\` first)" >&2; exit 2; }
out_abs=$(realpath -m "$out")
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="${size/x/,}" \
    --screenshot="$out_abs" "file://$html" 2>/dev/null
echo "$out_abs"
