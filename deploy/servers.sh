#!/usr/bin/env bash
# Start a real Prefect server and MLflow server on 127.0.0.1 over one data root, so the runs
# made in embedded mode show up in both UIs. Ctrl-C stops both. (The same as `crawl2model ui`.)
#
#   bash deploy/servers.sh [DATA_ROOT] [--auth | --no-auth]   # default root: $C2M_HOME or ./c2m-data
#   PREFECT_PORT=4200 MLFLOW_PORT=5000 bash deploy/servers.sh
#   C2M_ENV_FILE=~/.config/crawl2model/servers.env bash deploy/servers.sh   # variables from a file
#
# Authentication is on when MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD (12+ characters)
# and PREFECT_API_AUTH_STRING are set, in the environment or in C2M_ENV_FILE (KEY=value lines,
# chmod 600): MLflow's basic-auth app with that admin, Prefect with that auth string. Runs in an
# environment with the same three variables pass them (`crawl2model ui --help`).
#
# Then point runs at them (otherwise crawl2model starts its own temporary Prefect server):
#   export PREFECT_API_URL=http://127.0.0.1:4200/api MLFLOW_TRACKING_URI=http://127.0.0.1:5000
set -euo pipefail
ROOT_ARG=""
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then ROOT_ARG="$1"; shift; fi
ROOT="$(realpath -m "${ROOT_ARG:-${C2M_HOME:-./c2m-data}}")"
BIN="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin"
[ -x "$BIN/crawl2model" ] || { echo "no $BIN/crawl2model: run 'make install' first" >&2; exit 2; }
if [ -n "${C2M_ENV_FILE:-}" ]; then
  [ -f "$C2M_ENV_FILE" ] && [ -r "$C2M_ENV_FILE" ] || { echo "C2M_ENV_FILE=$C2M_ENV_FILE: no readable file" >&2; exit 2; }
  if [ -n "$(find "$C2M_ENV_FILE" -perm /077)" ]; then
    echo "warning: $C2M_ENV_FILE is readable by other users; chmod 600 it" >&2
  fi
  set -a; . "$C2M_ENV_FILE"; set +a   # KEY=value lines become exported variables
fi
exec "$BIN/crawl2model" --data-root "$ROOT" ui --prefect-port "${PREFECT_PORT:-4200}" --mlflow-port "${MLFLOW_PORT:-5000}" "$@"
