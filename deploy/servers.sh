#!/usr/bin/env bash
# Start a real Prefect server and MLflow server on 127.0.0.1 over one data root, so the runs
# made in embedded mode show up in both UIs. Ctrl-C stops both.
#
#   bash deploy/servers.sh [DATA_ROOT]        # default: $C2M_HOME or ./c2m-data
#   PREFECT_PORT=4200 MLFLOW_PORT=5000 bash deploy/servers.sh
#
# Then point runs at them (otherwise crawl2model starts its own temporary Prefect server):
#   export PREFECT_API_URL=http://127.0.0.1:4200/api
set -euo pipefail
ROOT="$(realpath -m "${1:-${C2M_HOME:-./c2m-data}}")"
BIN="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin"
[ -x "$BIN/prefect" ] || { echo "no $BIN/prefect: run 'make install' first" >&2; exit 2; }
mkdir -p "$ROOT"
export PREFECT_HOME="$ROOT/prefect" PREFECT_SERVER_ANALYTICS_ENABLED=false
export MLFLOW_DISABLE_TELEMETRY=true MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
trap 'kill 0' INT TERM EXIT
"$BIN/prefect" server start --host 127.0.0.1 --port "${PREFECT_PORT:-4200}" &
"$BIN/mlflow" server --host 127.0.0.1 --port "${MLFLOW_PORT:-5000}" --workers 1 \
    --backend-store-uri "sqlite:///$ROOT/mlflow.db" --default-artifact-root "$ROOT/mlartifacts" &
echo "Prefect UI: http://127.0.0.1:${PREFECT_PORT:-4200}   MLflow UI: http://127.0.0.1:${MLFLOW_PORT:-5000}   (Ctrl-C stops both)"
wait
