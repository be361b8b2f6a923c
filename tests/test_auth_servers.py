"""Authenticated servers against real processes on 127.0.0.1 (free ports): `start_servers(auth=...)`
(flows/servers.py) runs MLflow's basic-auth app and Prefect with PREFECT_SERVER_API_AUTH_STRING.

Asserted: without credentials (or with wrong ones) each server answers 401 while its health
endpoint stays open; a crawl2model process given only the environment variables runs a Prefect
flow on the protected Prefect server that logs a stage run (params, metrics, an artifact) through
flows.tracking and registers a model version with an alias, and `prefect deploy` registers
deploy/prefect.yaml's deployments there; both servers hold the results;
a process without credentials gets a clear CredentialsError from each client; no secret lands in
a file of the data root; the embedded default (no variables) needs no credentials at all.

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_auth_servers.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs Flask-WTF: pip install -e '.[auth]'")

from flows.servers import (  # noqa: E402
    CREDENTIAL_VARS, Credentials, ServerError, basic_auth_header, resolve_auth, start_servers,
)
from tests.test_deploy import cli, free_port  # noqa: E402

pytestmark = pytest.mark.slow  # one pair of servers (~20-30 s to start here) and one client process

REPO = Path(__file__).resolve().parents[1]
# test-only credentials, made up here; real ones come from an env file (deploy/env.example)
CREDS = Credentials("c2m-test-admin", "test-only-password-7f3a", "c2m:test-only-auth-string-91c2")

# A crawl2model process configured by the environment alone, as a deployment's worker is.
CLIENT = r"""
import json, sys
from pathlib import Path
from crawl2model.runtime import prefect_api, prepare_environment
root = Path(sys.argv[1])
prepare_environment(root)
import mlflow
from prefect import flow
from prefect.context import get_run_context
from flows.register import quiet_pyfunc
from flows.tracking import Tracking

class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input

@flow(name="auth-check")
def auth_check() -> dict:
    flow_run_id = str(get_run_context().flow_run.id)
    tracking = Tracking(root, "auth-check")
    with tracking.run("stage", tags={"prefect.flow_run_id": flow_run_id}) as run_id:
        tracking.log_params(run_id, {"stage.workers": 1})
        tracking.log_metrics(run_id, {"stage/docs_out": 3})
        tracking.log_text(run_id, "three docs", "notes/summary.txt")
        with mlflow.start_run(run_id=run_id), quiet_pyfunc():
            info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=["mlflow"],
                                           registered_model_name="auth-check", await_registration_for=60)
        version = str(info.registered_model_version)
        tracking.client.set_registered_model_alias("auth-check", "candidate", version)
    return {"flow_run_id": flow_run_id, "run_id": run_id, "version": version}

with prefect_api():
    print("RESULT " + json.dumps(auth_check()))
"""


def request(url: str, user_pass: str | None = None, data: dict | None = None) -> tuple[int, dict]:
    """(status, JSON body or {"text": body}) of a GET, or a POST when `data` is given; errors are returned, not raised."""
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if user_pass is not None:
        headers["Authorization"] = basic_auth_header(user_pass)
    body = None if data is None else json.dumps(data).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=60) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw.startswith((b"{", b"[")) else {"text": raw.decode()}
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def no_credentials(monkeypatch) -> None:
    for name in (*CREDENTIAL_VARS, "PREFECT_SERVER_API_AUTH_STRING", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def servers(tmp_path_factory, request):
    """Both servers with CREDS over one data root. They start while the session's embedded Prefect
    server (tests/conftest.py, for the embedded test) starts too: the waits overlap, not add up."""
    root = tmp_path_factory.mktemp("auth") / "c2m-data"
    servers_cm = start_servers(root, free_port(), free_port(), auth=CREDS)
    with ThreadPoolExecutor(1) as pool:
        started = pool.submit(servers_cm.__enter__)  # on failure start_servers stops what it started
        try:
            request.getfixturevalue("prefect_server")
        except BaseException:
            if started.exception() is None:
                servers_cm.__exit__(None, None, None)
            raise
        prefect_url, mlflow_url = started.result()
    try:
        yield root, prefect_url, mlflow_url
    finally:
        servers_cm.__exit__(None, None, None)


def test_requests_without_credentials_are_refused(servers):
    _, prefect_url, mlflow_url = servers
    mlflow_user = f"{CREDS.mlflow_username}:{CREDS.mlflow_password}"
    protected = {
        "prefect": (prefect_url + "/api/flows/filter", {}, CREDS.prefect_auth_string),
        "mlflow": (mlflow_url + "/api/2.0/mlflow/experiments/search", {"max_results": 1}, mlflow_user),
    }
    for name, (url, data, good) in protected.items():
        assert request(url, data=data)[0] == 401, name
        assert request(url, "intruder:not-the-password", data)[0] == 401, name
        assert request(url, good, data)[0] == 200, name
    assert request(mlflow_url + "/")[0] == 401  # the UI too
    # probes stay open, so orchestrators can check health without the secret
    assert request(prefect_url + "/api/health")[0] == 200
    assert request(mlflow_url + "/health") == (200, {"text": "OK"})


def test_pipeline_process_with_credentials_logs_registers_and_runs_flows(servers, tmp_path):
    root, prefect_url, mlflow_url = servers
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_SERVER_API_AUTH_STRING",)}
    env.update({"PREFECT_API_URL": prefect_url + "/api", "PREFECT_API_AUTH_STRING": CREDS.prefect_auth_string,
                "MLFLOW_TRACKING_URI": mlflow_url, "MLFLOW_TRACKING_USERNAME": CREDS.mlflow_username,
                "MLFLOW_TRACKING_PASSWORD": CREDS.mlflow_password, "C2M_HOME": str(tmp_path / "client")})
    proc = subprocess.run([sys.executable, "-c", CLIENT, str(tmp_path / "client")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])

    mlflow_user = f"{CREDS.mlflow_username}:{CREDS.mlflow_password}"
    status, run = request(f"{mlflow_url}/api/2.0/mlflow/runs/get?run_id={result['run_id']}", mlflow_user)
    assert status == 200
    data = run["run"]["data"]
    assert {m["key"]: m["value"] for m in data["metrics"]} == {"stage/docs_out": 3.0}
    assert {p["key"]: p["value"] for p in data["params"]} == {"stage.workers": "1"}
    assert {t["key"]: t["value"] for t in data["tags"]}["prefect.flow_run_id"] == result["flow_run_id"]
    assert run["run"]["info"]["status"] == "FINISHED"
    status, listing = request(f"{mlflow_url}/api/2.0/mlflow/artifacts/list?run_id={result['run_id']}&path=notes",
                              mlflow_user)
    assert [f["path"] for f in listing["files"]] == ["notes/summary.txt"]
    status, alias = request(f"{mlflow_url}/api/2.0/mlflow/registered-models/alias?name=auth-check&alias=candidate",
                            mlflow_user)
    assert status == 200 and alias["model_version"]["version"] == result["version"]
    assert alias["model_version"]["run_id"] == result["run_id"]

    status, flow_run = request(f"{prefect_url}/api/flow_runs/{result['flow_run_id']}", CREDS.prefect_auth_string)
    assert status == 200 and flow_run["state"]["type"] == "COMPLETED"

    # deploys as before: deploy/prefect.yaml's deployments, registered with the same environment
    cli("work-pool", "create", "crawl2model", "--type", "process", env=env)
    cli("--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml", env=env)
    status, deployments = request(prefect_url + "/api/deployments/filter", CREDS.prefect_auth_string, {})
    assert status == 200
    assert {d["name"]: d["work_pool_name"] for d in deployments} == {"nightly-curate": "crawl2model",
                                                                      "weekly-train-and-promote": "crawl2model"}
    assert request(prefect_url + "/api/deployments/filter", data={})[0] == 401

    assert (root / "mlflow-auth.db").stat().st_mode & 0o777 == 0o600  # password hashes: the owner's only
    # the secrets live in the processes' environment only: not in any file of either data root
    # (the MLflow user store holds a salted hash, not the password)
    for folder in (root, tmp_path / "client"):
        for path in folder.rglob("*"):
            if path.is_file():
                blob = path.read_bytes()
                for secret in (CREDS.mlflow_password, CREDS.prefect_auth_string):
                    assert secret.encode() not in blob, f"{secret!r} found in {path}"


def test_clients_without_credentials_fail_clearly(servers, tmp_path, monkeypatch):
    from crawl2model.runtime import CredentialsError, prefect_api
    from flows.tracking import Tracking

    _, prefect_url, mlflow_url = servers
    no_credentials(monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_url)
    with pytest.raises(CredentialsError, match="refuses requests without credentials.*MLFLOW_TRACKING_USERNAME"):
        Tracking(tmp_path, "auth-check")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", CREDS.mlflow_username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "a-wrong-password-123")
    with pytest.raises(CredentialsError, match=f"refuses user '{CREDS.mlflow_username}'"):
        Tracking(tmp_path, "auth-check")

    monkeypatch.setenv("PREFECT_API_URL", prefect_url + "/api")
    with pytest.raises(CredentialsError, match="requires authentication.*PREFECT_API_AUTH_STRING"):
        with prefect_api():
            pass
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "c2m:wrong")
    with pytest.raises(CredentialsError, match="refuses PREFECT_API_AUTH_STRING"):
        with prefect_api():
            pass


@pytest.fixture
def prefect_free_env(monkeypatch):
    """The session's embedded Prefect server (tests/conftest.py) is the process default; keep it."""
    no_credentials(monkeypatch)


def test_embedded_default_needs_no_credentials(prefect_server, cfg, prefect_free_env):
    from prefect import flow
    from prefect.context import get_run_context

    from flows.tracking import Tracking

    assert not any(os.environ.get(name) for name in CREDENTIAL_VARS)
    # the embedded Prefect server answers a protected endpoint without any Authorization header
    assert request(prefect_server.rstrip("/") + "/flows/filter", data={})[0] == 200

    @flow(name="embedded-check")
    def embedded_check() -> tuple[str, str]:
        tracking = Tracking(cfg.data_root, "embedded-check")
        with tracking.run("stage") as run_id:
            tracking.log_metrics(run_id, {"stage/docs_out": 2})
        client = tracking.client
        client.create_registered_model("embedded-check")
        version = client.create_model_version("embedded-check", f"runs:/{run_id}/model", run_id).version
        return str(get_run_context().flow_run.id), str(version)

    flow_run_id, version = embedded_check()
    assert version == "1" and flow_run_id
    assert os.environ["MLFLOW_TRACKING_URI"].startswith("sqlite:///")
    assert (cfg.data_root / "mlflow.db").exists()


def test_auth_is_on_exactly_when_all_credentials_are_set():
    full = {"MLFLOW_TRACKING_USERNAME": "ops", "MLFLOW_TRACKING_PASSWORD": "twelve-chars-ok",
            "PREFECT_API_AUTH_STRING": "ops:secret"}
    assert resolve_auth(None, {}) is None  # the default: what the shell carries decides
    assert resolve_auth(None, full) == Credentials("ops", "twelve-chars-ok", "ops:secret")
    assert resolve_auth(False, full) is None  # --no-auth wins, even over a partial set
    assert resolve_auth(False, {"PREFECT_API_AUTH_STRING": "x"}) is None
    assert "twelve-chars-ok" not in repr(resolve_auth(True, full))
    with pytest.raises(ServerError, match="--auth takes the credentials from the environment"):
        resolve_auth(True, {})
    with pytest.raises(ServerError, match="not set: MLFLOW_TRACKING_PASSWORD"):
        resolve_auth(None, {**full, "MLFLOW_TRACKING_PASSWORD": ""})
    with pytest.raises(ServerError, match="at least 12"):
        resolve_auth(None, {**full, "MLFLOW_TRACKING_PASSWORD": "short"})
    with pytest.raises(ServerError, match="must not contain ':'"):
        resolve_auth(None, {**full, "MLFLOW_TRACKING_USERNAME": "a:b"})


def test_a_changed_password_is_named(servers):
    """The admin is created at the first start only: credentials that differ from the user store's
    fail start_servers' check (run right after the start) with a message that says so."""
    from flows.servers import _check_credentials

    root, prefect_url, mlflow_url = servers
    other = Credentials(CREDS.mlflow_username, "another-password-0b1e", CREDS.prefect_auth_string)
    with pytest.raises(ServerError, match="holds that user with another password"):
        _check_credentials(prefect_url, mlflow_url, other, root)
    with pytest.raises(ServerError, match="Prefect server refuses PREFECT_API_AUTH_STRING"):
        _check_credentials(prefect_url, mlflow_url, Credentials("x", "y" * 12, "c2m:wrong"), root)


# --- deploy/: the production compose file and scripts (parsed and run in parts; no Docker here) ---

DEPLOY = REPO / "deploy"


def compose() -> dict:
    import yaml

    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def env_example() -> dict[str, str]:
    lines = (DEPLOY / "env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def script(service: str) -> str:
    """A service's `sh -ec` script as the container runs it ($$ is compose's escape for $)."""
    command = compose()["services"][service]["command"]
    assert command[:2] == ["sh", "-ec"], command
    return command[2].replace("$$", "$")


def test_compose_takes_every_credential_from_the_env_file():
    import re

    services = compose()["services"]
    source = lambda value: re.fullmatch(r"\$\{(\w+)(:\?[^}]*)?\}", value).group(1)  # noqa: E731
    prefect, mlflow, worker = (services[name]["environment"] for name in ("prefect-server", "mlflow", "worker"))
    assert source(prefect["PREFECT_SERVER_API_AUTH_STRING"]) == source(worker["PREFECT_API_AUTH_STRING"]) \
        == "PREFECT_AUTH_STRING"
    assert source(mlflow["MLFLOW_AUTH_ADMIN_USERNAME"]) == source(worker["MLFLOW_TRACKING_USERNAME"])
    assert source(mlflow["MLFLOW_AUTH_ADMIN_PASSWORD"]) == source(worker["MLFLOW_TRACKING_PASSWORD"])
    assert source(mlflow["MLFLOW_FLASK_SERVER_SECRET_KEY"]) == "MLFLOW_FLASK_SECRET_KEY"
    assert "mlflow server --app-name basic-auth" in script("mlflow")
    assert "[auth]" in compose()["x-app"]["build"]["dockerfile_inline"]  # Flask-WTF in the image

    # every variable compose reads is documented in env.example, every secret there a placeholder
    text = (DEPLOY / "compose.yaml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", text))
    example = env_example()
    assert used <= set(example), used - set(example)
    secrets_ = [k for k in example if k.endswith(("PASSWORD", "SECRET_KEY", "AUTH_STRING"))]
    assert len(secrets_) >= 6 and all("change-me" in example[k] for k in secrets_), secrets_


def test_compose_servers_refuse_placeholders_and_write_a_valid_auth_config(tmp_path, monkeypatch):
    from mlflow.server.auth.config import read_auth_config

    for service in ("prefect-server", "mlflow"):
        assert subprocess.run(["sh", "-n", "-c", script(service)]).returncode == 0, service
    example = env_example()
    placeholder = {"PATH": os.environ["PATH"], "PREFECT_SERVER_API_AUTH_STRING": example["PREFECT_AUTH_STRING"],
                   "MLFLOW_AUTH_ADMIN_PASSWORD": example["MLFLOW_ADMIN_PASSWORD"],
                   "MLFLOW_FLASK_SERVER_SECRET_KEY": example["MLFLOW_FLASK_SECRET_KEY"]}
    for service in ("prefect-server", "mlflow"):
        proc = subprocess.run(["sh", "-ec", script(service)], env=placeholder, capture_output=True, text=True)
        assert proc.returncode == 2 and "change-me" in proc.stderr, (service, proc.stderr)
    short = {**placeholder, "MLFLOW_AUTH_ADMIN_PASSWORD": "short-pw", "MLFLOW_FLASK_SERVER_SECRET_KEY": "k" * 32}
    proc = subprocess.run(["sh", "-ec", script("mlflow")], env=short, capture_output=True, text=True)
    assert proc.returncode == 2 and "at least 12 characters" in proc.stderr

    # the config the script writes, read by MLflow's own parser
    body = script("mlflow").split("<<EOF\n", 1)[1].split("\nEOF\n", 1)[0]
    ini = tmp_path / "auth.ini"
    ini.write_text(body.replace("$MLFLOW_DB_PASSWORD", "db-pw"))
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(ini))
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_USERNAME", "c2m-admin")
    config = read_auth_config()
    assert config.database_uri == "postgresql+psycopg2://mlflow:db-pw@pg-mlflow:5432/mlflow_auth"
    assert (config.default_permission, config.auth_cache_ttl_seconds, config.admin_username) == ("READ", 300, "c2m-admin")


def test_servers_sh_reads_credentials_from_an_env_file(tmp_path):
    env_file = tmp_path / "servers.env"
    env_file.write_text("MLFLOW_TRACKING_USERNAME=ops\nPREFECT_API_AUTH_STRING=ops:only-this\n")
    env_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARS}
    proc = subprocess.run(["bash", str(DEPLOY / "servers.sh"), str(tmp_path / "root")], capture_output=True,
                          text=True, env={**env, "C2M_ENV_FILE": str(env_file)}, timeout=120)
    # the file was read (two of three variables): refused before any server starts, naming the third
    assert proc.returncode == 1 and "MLFLOW_TRACKING_PASSWORD" in " ".join(proc.stderr.split()), proc.stderr
    assert "readable by other users" not in proc.stderr
    proc = subprocess.run(["bash", str(DEPLOY / "servers.sh"), str(tmp_path / "root"), "--auth"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "--auth takes the credentials" in " ".join(proc.stderr.split()), proc.stderr
