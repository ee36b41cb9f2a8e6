#!/usr/bin/env bash
# Bundle the guide's hook and page (verbatim) against @upstash/realtime@0.3.0 into dist/.
# Uses the pinned npm packages of tests/browser (installs them if missing).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
modules="$here/../../tests/browser"
[ -d "$modules/node_modules" ] || (cd "$modules" && npm ci --no-audit --no-fund)
mkdir -p "$here/dist"
NODE_PATH="$modules/node_modules" "$modules/node_modules/.bin/esbuild" "$here/main.tsx" --bundle --format=esm \
  --jsx=automatic --alias:@upstash/realtime=upstash-realtime-03 \
  --alias:@/hooks/useWorkflowWithRealtime="$here/useWorkflowWithRealtime.ts" \
  --define:process.env.NODE_ENV='"production"' \
  --outfile="$here/dist/main.js" --log-level=warning
cp "$here/index.html" "$here/dist/index.html"
