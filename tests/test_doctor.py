"""`crawl2model doctor` as a user runs it (a real process, a real data root, servers on 127.0.0.1),
and its pin check on requirement strings that an installed package does or does not satisfy.

A healthy environment exits 0 with every row; an unwritable data root, configured Prefect and
MLflow URLs where nothing listens, a stage configured for a CUDA device that is not there and a
violated pin each fail with a row that says what is wrong.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from flows.doctor import Check, check_packages, check_pin, check_python, check_torch, render

REPO = Path(__file__).resolve().parents[1]


def doctor(root: Path, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "C2M_HOME", "PREFECT_API_AUTH_STRING",
                        "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    env.update({"COLUMNS": "300", **(env_extra or {})})
    return subprocess.run([sys.executable, "-m", "flows.cli", "--data-root", str(root), "doctor", *args], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=240)


def row(printed: str, name: str) -> tuple[str, str, str]:
    """(needed, status, detail) of the table row whose first cell is `name`."""
    for line in printed.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if cells and cells[0] == name:
            return cells[1], cells[2], cells[3]
    raise AssertionError(f"no row {name!r} in:\n{printed}")


def free_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_healthy_environment_exits_0_with_every_row(tmp_path):
    done = doctor(tmp_path / "root")
    printed = done.stdout
    assert done.returncode == 0, printed + done.stderr
    assert row(printed, "python")[:2] == ("required", "ok")
    assert row(printed, "torch")[1] == "ok" and importlib.metadata.version("torch") in row(printed, "torch")[2]
    assert row(printed, "data root") == ("required", "ok", f"{tmp_path / 'root'} is writable")
    assert "GiB free" in row(printed, "free space")[2]
    assert row(printed, "Prefect API")[1] == "ok" and "embedded server" in row(printed, "Prefect API")[2]
    needed, status, detail = row(printed, "MLflow tracking")
    assert status == "ok" and f"sqlite:///{tmp_path / 'root' / 'mlflow.db'}" in detail
    assert "cpu (bf16" in row(printed, "torch device")[2]
    assert row(printed, "llama-cpp-python (extra gguf)")[0] == "optional"
    assert "ready for the configured run" in printed
    assert not list((tmp_path / "root").glob(".doctor-*"))  # the write probe is gone


def test_unwritable_data_root_fails_and_says_so(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    root = blocker / "root"  # under a regular file: cannot be made, even by root
    done = doctor(root)
    assert done.returncode == 1, done.stdout + done.stderr
    needed, status, detail = row(done.stdout, "data root")
    assert (needed, status) == ("required", "fail")
    assert f"{root} is not writable" in detail and "--data-root" in detail
    assert row(done.stdout, "Prefect API")[1] == "skip"  # its database would live in the data root
    assert "required check(s) failed: data root" in done.stdout


def test_unreachable_configured_servers_fail_with_their_urls(tmp_path):
    mlflow_url, prefect_url = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}/api"
    done = doctor(tmp_path / "root", env_extra={"MLFLOW_TRACKING_URI": mlflow_url, "PREFECT_API_URL": prefect_url})
    assert done.returncode == 1, done.stdout + done.stderr
    needed, status, detail = row(done.stdout, "MLflow tracking")
    assert (needed, status) == ("required", "fail")
    assert f"not reachable at {mlflow_url}" in detail and "MLFLOW_TRACKING_URI" in detail and "refused" in detail
    status, detail = row(done.stdout, "Prefect API")[1:]
    assert status == "fail" and f"not reachable at {prefect_url}" in detail and "PREFECT_API_URL" in detail
    assert row(done.stdout, "data root")[1] == "ok"  # the rest is still checked


def test_bad_override_is_a_usage_error(tmp_path):
    done = doctor(tmp_path / "root", "pretrain.device=tpu")
    assert done.returncode == 2 and "pretrain.device" in done.stderr


def test_pin_check_on_requirement_strings():
    pytest_version = importlib.metadata.version("pytest")
    assert check_pin("pytest>=1").status == "ok"
    violated = check_pin("pytest>=999")
    assert (violated.name, violated.status) == ("pytest", "fail")
    assert violated.detail.startswith(f"{pytest_version} installed, pinned >=999")
    assert check_pin("pytest>=999", required=False).status == "warn"  # an optional extra only warns
    assert check_pin(f"pytest!={pytest_version}").status == "fail"
    missing = check_pin("no-such-distribution-c2m>=1.0")
    assert missing.status == "fail" and "not installed" in missing.detail
    assert check_pin('pytest>=999; python_version < "3"').status == "skip"  # marker: not this interpreter
    assert check_pin("pytest >= = 1").status == "fail"                      # not a requirement at all
    assert check_pin("torch>=2.4", version_of=lambda name: "2.3.1").status == "fail"
    assert check_pin("torch>=2.4", version_of=lambda name: "2.5.0rc1").status == "ok"  # pre-releases count


def test_violated_pin_gets_its_own_row_first():
    rows = check_packages(["pytest>=1", "pluggy>=0.1", "pytest<1"])
    assert rows[0].name == "pytest" and rows[0].status == "fail"
    assert rows[-1].name == "other pins" and "2 more satisfied" in rows[-1].detail


def test_python_below_requires_python_fails():
    assert check_python(">=3.11", "3.10.4").status == "fail"
    assert check_python(">=3.11", "3.11.0").status == "ok"


def test_stage_configured_for_cuda_needs_a_cuda_device():
    import torch

    from crawl2model.config import load_config

    check = check_torch(load_config(overrides=["pretrain.device=cuda"]))
    assert check.required
    if torch.cuda.is_available():
        assert check.status == "ok" and "cuda (" in check.detail
    else:
        assert check.status == "fail" and "pretrain.device=cuda" in check.detail and "no CUDA device" in check.detail
    assert not check_torch(load_config()).required  # device=auto: falls back to the CPU


def test_table_escapes_markup_in_details():
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render([Check("x", False, "warn", "pip install 'crawl2model[gguf]'")]))
    assert "crawl2model[gguf]" in console.export_text()


@pytest.mark.slow
def test_configured_servers_with_authentication_need_the_right_credentials(tmp_path):
    """Real Prefect and MLflow servers with authentication on 127.0.0.1 (flows.servers): the right
    credentials pass, a wrong MLflow password and a missing Prefect auth string each fail by name."""
    from flows.servers import Credentials, start_servers

    creds = Credentials("doctor-admin", "a-long-password-1", "doctor:prefect-secret")
    with start_servers(tmp_path / "servers", free_port(), free_port(), auth=creds) as (prefect_url, mlflow_url):
        env = {"PREFECT_API_URL": prefect_url + "/api", "MLFLOW_TRACKING_URI": mlflow_url,
               "MLFLOW_TRACKING_USERNAME": creds.mlflow_username, "MLFLOW_TRACKING_PASSWORD": creds.mlflow_password,
               "PREFECT_API_AUTH_STRING": creds.prefect_auth_string}
        good = doctor(tmp_path / "root", env_extra=env)
        bad = doctor(tmp_path / "root", env_extra={**env, "MLFLOW_TRACKING_PASSWORD": "not-the-password",
                                                   "PREFECT_API_AUTH_STRING": ""})
    assert good.returncode == 0, good.stdout + good.stderr
    assert row(good.stdout, "MLflow tracking")[1:] == ("ok", f"server at {mlflow_url} (as doctor-admin)")
    assert row(good.stdout, "Prefect API")[2].endswith("(with PREFECT_API_AUTH_STRING)")
    assert bad.returncode == 1
    status, detail = row(bad.stdout, "MLflow tracking")[1:]
    assert status == "fail" and "refuses MLFLOW_TRACKING_USERNAME/_PASSWORD (HTTP 401)" in detail
    status, detail = row(bad.stdout, "Prefect API")[1:]
    assert status == "fail" and "requires authentication: set PREFECT_API_AUTH_STRING" in detail
