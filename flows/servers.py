"""A real Prefect server and MLflow server over one data root: the logic of `crawl2model ui`.

    from flows.servers import Credentials, serve_uis, start_servers
    serve_uis(Path("c2m-data"))                  # prints both URLs, blocks; Ctrl-C stops both
    with start_servers(root, 4200, 5000) as (prefect_url, mlflow_url):
        ...                                      # both answer HTTP here; stopped on leaving
    with start_servers(root, 4200, 5000, auth=Credentials.from_env()):
        ...                                      # both refuse requests without the credentials

Authentication (`crawl2model ui --auth`, and by default whenever the credentials are set): the
clients' variables MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD and PREFECT_API_AUTH_STRING
also configure the servers, so one set of variables serves the UIs and every run. MLflow runs its
basic-auth app (`--app-name basic-auth`, needs `pip install 'crawl2model[auth]'`): the username
and password become its admin user at the first start (MLFLOW_AUTH_ADMIN_USERNAME/_PASSWORD), the
user store is `<root>/mlflow-auth.db` (mode 600), the config `<root>/mlflow-auth.ini` holds no
secret. Prefect checks PREFECT_SERVER_API_AUTH_STRING (set to PREFECT_API_AUTH_STRING). The
health endpoints stay open. Secrets reach the servers through their environment only, never a
file. Why on by default when the variables are set: runs in that shell send them anyway, so a UI
started there should demand them, and 127.0.0.1 is open to every user of a shared machine;
`--no-auth` turns it off, `--auth` insists (an error when a variable is missing).

They open the stores that embedded runs write (crawl2model.runtime): Prefect's database under
`PREFECT_HOME=<root>/prefect` and MLflow's `sqlite:///<root>/mlflow.db` with artifacts in
`<root>/mlartifacts`, so every earlier run shows up. Both bind 127.0.0.1 only. Each server runs
in its own process group (its own session), which is terminated as a whole on the way out:
SIGTERM, then SIGKILL after a grace period, so no worker process of either is left behind.
Their output goes to `<root>/logs/prefect-server.log` and `<root>/logs/mlflow-server.log`.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

from crawl2model.layout import DataRoot

STOP_GRACE_S = 10.0

# What the clients read (MLflow's REST client, Prefect's settings); subprocesses inherit them.
CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING")
# What turns the servers' authentication on: set only from Credentials, never inherited, so a
# server started without auth has none even if the shell happens to carry these.
SERVER_AUTH_VARS = ("PREFECT_SERVER_API_AUTH_STRING", "MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_AUTH_ADMIN_USERNAME",
                    "MLFLOW_AUTH_ADMIN_PASSWORD")
MLFLOW_MIN_PASSWORD = 12  # mlflow.utils.validation._validate_password: the auth app refuses shorter ones


class ServerError(RuntimeError):
    """A server that cannot start (port taken, process exited, no answer in time, bad credentials)."""


@dataclass(frozen=True)
class Credentials:
    """One MLflow user (the auth app's admin) and Prefect's auth string; secrets kept out of repr."""

    mlflow_username: str
    mlflow_password: str = field(repr=False)
    prefect_auth_string: str = field(repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Credentials | None":
        """The credentials of CREDENTIAL_VARS, None when none is set; a partial or unusable set is an error."""
        env = os.environ if environ is None else environ
        values = {name: env.get(name, "") for name in CREDENTIAL_VARS}
        if not any(values.values()):
            return None
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise ServerError(f"authentication needs all of {', '.join(CREDENTIAL_VARS)}; not set: {', '.join(missing)}")
        user, password, auth_string = values.values()
        if len(password) < MLFLOW_MIN_PASSWORD:
            raise ServerError(f"MLFLOW_TRACKING_PASSWORD is {len(password)} characters; MLflow's auth app needs at "
                              f"least {MLFLOW_MIN_PASSWORD}")
        if ":" in user:
            raise ServerError("MLFLOW_TRACKING_USERNAME must not contain ':' (HTTP basic auth separates user and "
                              "password with it)")
        return cls(user, password, auth_string)


def resolve_auth(flag: bool | None, environ: Mapping[str, str] | None = None) -> Credentials | None:
    """`--auth` (True), `--no-auth` (False) or neither (None: on exactly when the credentials are set)."""
    if flag is False:
        return None
    creds = Credentials.from_env(environ)
    if flag and creds is None:
        raise ServerError(f"--auth takes the credentials from the environment: set {', '.join(CREDENTIAL_VARS)} "
                          "(e.g. from a chmod 600 env file; see deploy/env.example)")
    return creds


def basic_auth_header(user_pass: str) -> str:
    """The Authorization header value for 'user:password' (what both clients send)."""
    return "Basic " + base64.b64encode(user_pass.encode("utf-8")).decode("ascii")


def _bin(name: str) -> str:
    """The venv's executable next to this interpreter (the one whose prefect and mlflow we import)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise ServerError(f"no {path}: install crawl2model into this environment first (`make install`)")
    return str(path)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on the port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def write_mlflow_auth_config(root: Path) -> Path:
    """The basic-auth app's config for this data root: its user store and defaults, no secret
    (the admin's name and password come from the environment at the first start)."""
    store = DataRoot(root).mlflow_auth_db  # password hashes: for this user only (SQLite keeps the mode of a file it finds)
    os.close(os.open(store, os.O_CREAT | os.O_WRONLY, 0o600))
    store.chmod(0o600)
    path = DataRoot(root).mlflow_auth_config
    path.write_text(
        "# Written by crawl2model (flows/servers.py) for `mlflow server --app-name basic-auth`; no secrets here.\n"
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{store}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "# a password check is a PBKDF2 hash (about a second of CPU): cache a good one for 5 minutes\n"
        "# (one worker, so a password change through the API takes effect at once)\n"
        "auth_cache_ttl_seconds = 300\n",
        encoding="utf-8")
    return path


def _server_env(root: Path, prefect_url: str, name: str = "", auth: Credentials | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVER_AUTH_VARS}
    if auth is not None and name == "prefect":
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth.prefect_auth_string
    if auth is not None and name == "mlflow":
        env.update({"MLFLOW_AUTH_CONFIG_PATH": str(write_mlflow_auth_config(root)),
                    "MLFLOW_AUTH_ADMIN_USERNAME": auth.mlflow_username,
                    "MLFLOW_AUTH_ADMIN_PASSWORD": auth.mlflow_password})
        # the auth app's CSRF key (its sign-up form only): the user's if set, else one per start
        env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_urlsafe(32))
    env.update({
        "PREFECT_HOME": str(DataRoot(root).prefect_home),  # the embedded runs' database: <root>/prefect/prefect.db
        "PREFECT_API_URL": prefect_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": prefect_url,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "DO_NOT_TRACK": "1",
    })
    env.pop("MLFLOW_TRACKING_URI", None)  # the server is told its store; clients' settings do not apply
    return env


def _commands(root: Path, prefect_port: int, mlflow_port: int, auth: bool = False) -> dict[str, list[str]]:
    app = ["--app-name", "basic-auth"] if auth else []
    layout = DataRoot(root)
    return {
        "prefect": [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
        "mlflow": [_bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
                   "--backend-store-uri", f"sqlite:///{layout.mlflow_db}",
                   "--default-artifact-root", str(layout.mlflow_artifacts),
                   "--artifacts-destination", str(layout.mlflow_artifacts), *app],  # else ./mlartifacts of the cwd
    }


def _stop(proc: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """Terminate a server's whole process group: SIGTERM, then SIGKILL after `grace` seconds."""
    if proc.poll() is not None and not _group_alive(proc.pid):
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)  # start_new_session: the group id is the leader's pid
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(proc.pid):
                return
            time.sleep(0.1)
    proc.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    """Whether a process group has a live member (zombies, which an absent init may never reap, do not count)."""
    proc = Path("/proc")
    if proc.is_dir():
        for stat in proc.glob("[0-9]*/stat"):
            try:
                state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
            except (OSError, ValueError, IndexError):
                continue
            if int(pgrp) == pgid and state != "Z":
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _wait_healthy(procs: dict[str, subprocess.Popen], urls: dict[str, str], logs: dict[str, Path],
                  timeout: float) -> None:
    pending = dict(urls)
    deadline = time.monotonic() + timeout
    while pending:
        for name, url in list(pending.items()):
            if procs[name].poll() is not None:
                raise ServerError(f"the {name} server exited with status {procs[name].returncode} before answering "
                                  f"{url}; the end of {logs[name]}:\n{_tail(logs[name])}")
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    if resp.status == 200:
                        del pending[name]
            except (urllib.error.URLError, OSError):
                pass
        if pending and time.monotonic() > deadline:
            name = next(iter(pending))
            raise ServerError(f"the {name} server did not answer {pending[name]} within {timeout:.0f}s; "
                              f"the end of {logs[name]}:\n{_tail(logs[name])}")
        if pending:
            time.sleep(0.5)


def _check_credentials(prefect_url: str, mlflow_url: str, auth: Credentials, root: Path) -> None:
    """Both servers accept the credentials on a protected endpoint; else a ServerError that says why."""
    checks = {
        "Prefect": (prefect_url + "/api/admin/version", auth.prefect_auth_string, "PREFECT_API_AUTH_STRING"),
        "MLflow": (mlflow_url + "/api/2.0/mlflow/users/current", f"{auth.mlflow_username}:{auth.mlflow_password}",
                   "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD"),
    }
    for name, (url, user_pass, variables) in checks.items():
        req = urllib.request.Request(url, headers={"Authorization": basic_auth_header(user_pass)})
        try:
            with urllib.request.urlopen(req, timeout=60):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code != 401:
                raise ServerError(f"the {name} server answered {url} with HTTP {exc.code}") from None
            if name == "Prefect":
                raise ServerError(f"the Prefect server refuses {variables} (HTTP 401)") from None
            raise ServerError(
                f"the MLflow server refuses user {auth.mlflow_username!r} with MLFLOW_TRACKING_PASSWORD (HTTP 401): "
                f"its user store {root / 'mlflow-auth.db'} holds that user with another password (the admin is "
                "created at the first start with auth only). Use that password, change it in the MLflow UI or "
                "through its users/update-password API, or delete the file to start over (its users and "
                "permissions are lost; runs and models are not)") from None


@contextmanager
def start_servers(root: Path, prefect_port: int = 4200, mlflow_port: int = 5000, timeout: float = 180.0,
                  auth: Credentials | None = None) -> Iterator[tuple[str, str]]:
    """Start both servers over `root`, wait until both answer HTTP, yield (Prefect URL, MLflow URL);
    both process groups are stopped on leaving, whatever happened inside. With `auth`, both
    refuse requests without those credentials, and both are checked to accept them before the yield."""
    root = Path(root).expanduser().resolve()
    for name, port in (("Prefect", prefect_port), ("MLflow", mlflow_port)):
        if not port_free(port):
            raise ServerError(f"port {port} on 127.0.0.1 ({name}) is in use; choose another "
                              f"(crawl2model ui --prefect-port N --mlflow-port M)")
    if prefect_port == mlflow_port:
        raise ServerError(f"Prefect and MLflow need two ports, both were given {prefect_port}")
    if auth is not None and importlib.util.find_spec("flask_wtf") is None:  # else it says so only in its log
        raise ServerError("MLflow's basic-auth app needs Flask-WTF: pip install 'crawl2model[auth]'")
    layout = DataRoot(root)
    layout.prefect_home.mkdir(parents=True, exist_ok=True)
    layout.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    log_dir = layout.server_logs
    log_dir.mkdir(parents=True, exist_ok=True)

    prefect_url = f"http://127.0.0.1:{prefect_port}"
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    health = {"prefect": prefect_url + "/api/health", "mlflow": mlflow_url + "/health"}  # open with auth too
    logs = {name: log_dir / f"{name}-server.log" for name in health}
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name, cmd in _commands(root, prefect_port, mlflow_port, auth is not None).items():
            env = _server_env(root, prefect_url + "/api", name, auth)
            with logs[name].open("ab") as log:
                procs[name] = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True)
        _wait_healthy(procs, health, logs, timeout)
        if auth is not None:
            _check_credentials(prefect_url, mlflow_url, auth, root)
        yield prefect_url, mlflow_url
    finally:
        for proc in procs.values():
            _stop(proc)


@contextmanager
def interruptible() -> Iterator[None]:
    """Inside, Ctrl-C (SIGINT) and SIGTERM (kill, systemd, docker stop) raise KeyboardInterrupt,
    whatever the parent left: a shell script's `crawl2model serve &` starts with SIGINT ignored,
    and `kill -INT` (or a test's interrupt) would do nothing. The previous handlers come back after."""
    def _terminate(signum, frame):
        raise KeyboardInterrupt

    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
                signal.SIGTERM: signal.signal(signal.SIGTERM, _terminate)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def serve_uis(root: Path, prefect_port: int = 4200, mlflow_port: int = 5000, auth: Credentials | None = None) -> None:
    """Both UIs over the data root until Ctrl-C or SIGTERM; then both servers are stopped."""
    with interruptible():
        _serve_uis(root, prefect_port, mlflow_port, auth)


def _serve_uis(root: Path, prefect_port: int, mlflow_port: int, auth: Credentials | None) -> None:
    try:
        print(f"starting Prefect and MLflow over {Path(root).resolve()} ...", flush=True)
        with start_servers(root, prefect_port, mlflow_port, auth=auth) as (prefect_url, mlflow_url):
            if auth is None:
                access = ("authentication: off (set " + ", ".join(CREDENTIAL_VARS) + " or pass --auth to turn it on; "
                          "anyone on this machine can reach 127.0.0.1)")
            else:
                access = (f"authentication: on (MLflow user {auth.mlflow_username!r}, Prefect's auth string: "
                          "runs in this environment send both)")
            print(f"Prefect UI: {prefect_url}\nMLflow UI:  {mlflow_url}\n{access}\n"
                  f"runs: export PREFECT_API_URL={prefect_url}/api MLFLOW_TRACKING_URI={mlflow_url}\n"
                  "Ctrl-C stops both.", flush=True)
            ports = {"Prefect": prefect_port, "MLflow": mlflow_port}
            while True:  # a server that dies closes its port: say so and stop the other
                time.sleep(2)
                for name, port in ports.items():
                    if not port_open(port):
                        raise ServerError(f"the {name} server stopped answering on port {port}; see "
                                          f"{Path(root).resolve() / 'logs'}")
    except KeyboardInterrupt:  # start_servers has stopped both on the way out
        print("both servers stopped", flush=True)
