#!/usr/bin/env bash
# Start a real Prefect server and MLflow server on 127.0.0.1 over one data root, so the runs
# made in embedded mode show up in both UIs. Ctrl-C stops both. (The same as `crawl2model ui`.)
#
#   bash deploy/servers.sh [DATA_ROOT]        # default: $C2M_HOME or ./c2m-data
#   PREFECT_PORT=4200 MLFLOW_PORT=5000 bash deploy/servers.sh
#
# Then point runs at them (otherwise crawl2model starts its own temporary Prefect server):
#   export PREFECT_API_URL=http://127.0.0.1:4200/api MLFLOW_TRACKING_URI=http://127.0.0.1:5000
set -euo pipefail
ROOT="$(realpath -m "${1:-${C2M_HOME:-./c2m-data}}")"
BIN="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin"
[ -x "$BIN/crawl2model" ] || { echo "no $BIN/crawl2model: run 'make install' first" >&2; exit 2; }
exec "$BIN/crawl2model" --data-root "$ROOT" ui --prefect-port "${PREFECT_PORT:-4200}" --mlflow-port "${MLFLOW_PORT:-5000}"
