"""A real Prefect server and MLflow server over one data root: the logic of `crawl2model ui`.

    from flows.servers import serve_uis, start_servers
    serve_uis(Path("c2m-data"))                  # prints both URLs, blocks; Ctrl-C stops both
    with start_servers(root, 4200, 5000) as (prefect_url, mlflow_url):
        ...                                      # both answer HTTP here; stopped on leaving

They open the stores that embedded runs write (crawl2model.runtime): Prefect's database under
`PREFECT_HOME=<root>/prefect` and MLflow's `sqlite:///<root>/mlflow.db` with artifacts in
`<root>/mlartifacts`, so every earlier run shows up. Both bind 127.0.0.1 only. Each server runs
in its own process group (its own session), which is terminated as a whole on the way out:
SIGTERM, then SIGKILL after a grace period, so no worker process of either is left behind.
Their output goes to `<root>/logs/prefect-server.log` and `<root>/logs/mlflow-server.log`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

STOP_GRACE_S = 10.0


class ServerError(RuntimeError):
    """A server that cannot start (port taken, process exited, no answer in time)."""


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


def _server_env(root: Path, prefect_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PREFECT_HOME": str(root / "prefect"),  # the embedded runs' database: <root>/prefect/prefect.db
        "PREFECT_API_URL": prefect_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": prefect_url,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "DO_NOT_TRACK": "1",
    })
    env.pop("MLFLOW_TRACKING_URI", None)  # the server is told its store; clients' settings do not apply
    return env


def _commands(root: Path, prefect_port: int, mlflow_port: int) -> dict[str, list[str]]:
    return {
        "prefect": [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
        "mlflow": [_bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
                   "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                   "--default-artifact-root", str(root / "mlartifacts"),
                   "--artifacts-destination", str(root / "mlartifacts")],  # else ./mlartifacts of the cwd
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


@contextmanager
def start_servers(root: Path, prefect_port: int = 4200, mlflow_port: int = 5000,
                  timeout: float = 180.0) -> Iterator[tuple[str, str]]:
    """Start both servers over `root`, wait until both answer HTTP, yield (Prefect URL, MLflow URL);
    both process groups are stopped on leaving, whatever happened inside."""
    root = Path(root).expanduser().resolve()
    for name, port in (("Prefect", prefect_port), ("MLflow", mlflow_port)):
        if not port_free(port):
            raise ServerError(f"port {port} on 127.0.0.1 ({name}) is in use; choose another "
                              f"(crawl2model ui --prefect-port N --mlflow-port M)")
    if prefect_port == mlflow_port:
        raise ServerError(f"Prefect and MLflow need two ports, both were given {prefect_port}")
    (root / "prefect").mkdir(parents=True, exist_ok=True)
    (root / "mlartifacts").mkdir(parents=True, exist_ok=True)
    log_dir = root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    prefect_url = f"http://127.0.0.1:{prefect_port}"
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    env = _server_env(root, prefect_url + "/api")
    health = {"prefect": prefect_url + "/api/health", "mlflow": mlflow_url + "/health"}
    logs = {name: log_dir / f"{name}-server.log" for name in health}
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name, cmd in _commands(root, prefect_port, mlflow_port).items():
            with logs[name].open("ab") as log:
                procs[name] = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True)
        _wait_healthy(procs, health, logs, timeout)
        yield prefect_url, mlflow_url
    finally:
        for proc in procs.values():
            _stop(proc)


def serve_uis(root: Path, prefect_port: int = 4200, mlflow_port: int = 5000) -> None:
    """Both UIs over the data root until Ctrl-C or SIGTERM; then both servers are stopped."""
    def _terminate(signum, frame):  # SIGTERM (kill, systemd, docker stop) ends like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        print(f"starting Prefect and MLflow over {Path(root).resolve()} ...", flush=True)
        with start_servers(root, prefect_port, mlflow_port) as (prefect_url, mlflow_url):
            print(f"Prefect UI: {prefect_url}\nMLflow UI:  {mlflow_url}\n"
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
    finally:
        signal.signal(signal.SIGTERM, previous)
