"""`crawl2model doctor`: is this machine ready for the configured run? One table, one exit code.

    crawl2model doctor                                # the default config over ./c2m-data (or --data-root)
    crawl2model --config prod.yaml doctor pretrain.device=cuda
    MLFLOW_TRACKING_URI=http://mlflow:5000 PREFECT_API_URL=http://prefect:4200/api crawl2model doctor

Checks, each a row saying whether the configured run needs it ("required") or not ("optional"):
  - Python and the packages pinned in pyproject.toml (importlib.metadata + packaging's specifiers;
    the key ones get a row each, the rest one row unless one is off);
  - the data root: can a file be written there, how much space is free;
  - Prefect: the server at PREFECT_API_URL answers (with PREFECT_API_AUTH_STRING if set), or,
    when none is configured, the embedded server starts over the data root's PREFECT_HOME;
  - MLflow: the server at MLFLOW_TRACKING_URI answers (with MLFLOW_TRACKING_USERNAME/_PASSWORD if
    set), or the embedded store (sqlite in the data root) opens;
  - torch: the devices it sees (cuda, mps, cpu) and bf16/fp16 support; required when a stage is
    configured with device=cuda;
  - optional extras: llama-cpp-python (k-quants and GGUF scoring; its server for `serve --gguf`),
    Flask-WTF (MLflow's basic-auth app for `crawl2model ui --auth`).
Exit status 0 when nothing required fails (warnings allowed), 1 when something does, 2 for a bad
config. Nothing is sent beyond the configured URLs; the embedded servers bind 127.0.0.1.
"""

from __future__ import annotations

import base64
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import typer
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version
from rich.markup import escape
from rich.table import Table

from crawl2model.config import ConfigError, load_config
from crawl2model.runtime import prepare_environment
from flows.chat_cli import LLAMA_SERVER_MODULES
from flows.cli_app import OPERATIONS, app, fail, out
from model.to_gguf import K_QUANTS

REPO = Path(__file__).resolve().parents[1]
# One row each; the other pins share a row unless one of them is off.
KEY_PACKAGES = ("prefect", "mlflow", "torch", "duckdb", "pyarrow", "transformers", "trafilatura", "typer")
MIN_FREE_BYTES = 1 << 30   # below this the data root fails: the sample run alone writes a few hundred MB
LOW_FREE_BYTES = 5 << 30   # below this, a warning
STAGES_WITH_DEVICE = ("pretrain", "sft", "dpo", "rl")


@dataclass
class Check:
    """One row: status is ok, warn, fail (counts against the exit code) or skip (not checked)."""

    name: str
    required: bool
    status: str
    detail: str


# --- pins -----------------------------------------------------------------------------------


def project_pins(pyproject: Path = REPO / "pyproject.toml") -> tuple[str, list[str], dict[str, list[str]]]:
    """(requires-python, dependencies, optional-dependencies) from pyproject.toml; from the
    installed package's metadata when there is no source tree (a wheel install)."""
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
        return project["requires-python"], project["dependencies"], project.get("optional-dependencies", {})
    meta = importlib.metadata.metadata("crawl2model")
    core, extras = [], {}
    for line in importlib.metadata.requires("crawl2model") or []:
        req = Requirement(line)
        extra = next((e for e in meta.get_all("Provides-Extra") or [] if req.marker and req.marker.evaluate({"extra": e})), None)
        (extras.setdefault(extra, []) if extra else core).append(line)
    return meta["Requires-Python"] or "", core, extras


def check_pin(requirement: str, required: bool = True,
              version_of: Callable[[str], str] = importlib.metadata.version) -> Check:
    """Whether the installed distribution satisfies one requirement string ("torch>=2.4")."""
    try:
        req = Requirement(requirement)
    except InvalidRequirement as exc:
        return Check(requirement, required, "fail", f"not a valid requirement: {exc}")
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        return Check(req.name, required, "skip", f"not needed here ({req.marker})")
    bad = "fail" if required else "warn"
    pin = str(req.specifier) or "any version"
    try:
        installed = version_of(req.name)
    except importlib.metadata.PackageNotFoundError:
        return Check(req.name, required, bad, f"not installed (pinned {pin}): pip install '{requirement}'")
    try:
        ok = req.specifier.contains(Version(installed), prereleases=True)
    except InvalidVersion:
        return Check(req.name, required, bad, f"installed version {installed!r} is not a version (pinned {pin})")
    if not ok:
        return Check(req.name, required, bad, f"{installed} installed, pinned {pin}: pip install '{requirement}'")
    return Check(req.name, required, "ok", f"{installed} (pinned {pin})")


def check_python(requires: str, version: str = platform.python_version()) -> Check:
    ok = not requires or SpecifierSet(requires).contains(version, prereleases=True)
    return Check("python", True, "ok" if ok else "fail",
                 f"{version} ({sys.executable}), {'requires' if ok else 'but crawl2model requires'} {requires}")


def check_packages(dependencies: list[str]) -> list[Check]:
    rows, others = [], []
    for line in dependencies:
        check = check_pin(line)
        (rows if check.name.lower() in KEY_PACKAGES or check.status != "ok" else others).append(check)
    rows.sort(key=lambda c: (c.status == "ok", c.name))
    if others:
        rows.append(Check("other pins", True, "ok", f"{len(others)} more satisfied: "
                                                    + ", ".join(f"{c.name} {c.detail.split()[0]}" for c in others)))
    return rows


# --- data root ------------------------------------------------------------------------------


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_data_root(root: Path) -> list[Check]:
    """The data root can be made and written (a file is written, synced and removed) and has space."""
    rows = []
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".doctor-") as probe:
            probe.write(b"crawl2model doctor\n")
            probe.flush()
            os.fsync(probe.fileno())
        rows.append(Check("data root", True, "ok", f"{root} is writable"))
    except OSError as exc:
        rows.append(Check("data root", True, "fail", f"{root} is not writable: {exc.strerror or exc} "
                                                     "(give another with --data-root or C2M_HOME)"))
    try:
        usage = shutil.disk_usage(_existing_ancestor(root))
    except OSError as exc:
        rows.append(Check("free space", True, "fail", f"cannot read the free space of {root}: {exc}"))
        return rows
    free = f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB"
    if usage.free < MIN_FREE_BYTES:
        rows.append(Check("free space", True, "fail", f"{free}; a run needs at least {MIN_FREE_BYTES / 2**30:.0f} GiB"))
    elif usage.free < LOW_FREE_BYTES:
        rows.append(Check("free space", True, "warn", f"{free}; large crawls and checkpoints need more"))
    else:
        rows.append(Check("free space", True, "ok", free))
    return rows


# --- servers --------------------------------------------------------------------------------


def _get(url: str, auth: str | None, timeout: float) -> tuple[int, bytes]:
    """(HTTP status, body) of a GET; an HTTP error status is returned, not raised."""
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def _unreachable(url: str, exc: Exception) -> str:
    reason = getattr(exc, "reason", exc)
    return f"not reachable at {url}: {reason}"


def check_prefect_url(api_url: str, timeout: float) -> Check:
    """A configured Prefect API: /health answers, and a protected endpoint accepts the credentials."""
    api_url = api_url.rstrip("/")
    auth = os.environ.get("PREFECT_API_AUTH_STRING") or None
    try:
        status, _ = _get(api_url + "/health", None, timeout)
        if status != 200:
            return Check("Prefect API", True, "fail", f"{api_url}/health answered HTTP {status}")
        status, body = _get(api_url + "/admin/version", auth, timeout)
    except (OSError, ValueError) as exc:
        return Check("Prefect API", True, "fail", _unreachable(api_url, exc) + " (PREFECT_API_URL)")
    if status == 401:
        what = "refuses PREFECT_API_AUTH_STRING" if auth else "requires authentication: set PREFECT_API_AUTH_STRING"
        return Check("Prefect API", True, "fail", f"{api_url} {what} (HTTP 401)")
    if status != 200:
        return Check("Prefect API", True, "fail", f"{api_url}/admin/version answered HTTP {status}")
    creds = "with PREFECT_API_AUTH_STRING" if auth else "no credentials"
    return Check("Prefect API", True, "ok", f"server {body.decode(errors='replace').strip(chr(34))} at {api_url} ({creds})")


def check_prefect_embedded(timeout: float) -> Check:
    """No PREFECT_API_URL: start the embedded server the way a run does (crawl2model.runtime.prefect_api)."""
    start = time.monotonic()
    try:
        # deferred here and below: importing Prefect, MLflow and torch is part of what is checked
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        server.start(timeout=int(timeout))
    except Exception as exc:  # noqa: BLE001 - whatever stops it is the finding
        return Check("Prefect API", True, "fail", f"the embedded server did not start: {type(exc).__name__}: {exc}")
    try:
        status, _ = _get(server.api_url + "/health", None, timeout)
    except (OSError, ValueError) as exc:
        status = str(exc)
    finally:
        server.stop()
    if status != 200:
        return Check("Prefect API", True, "fail", f"the embedded server started but /health answered {status}")
    import prefect

    return Check("Prefect API", True, "ok", f"embedded server {prefect.__version__} started in "
                                        f"{time.monotonic() - start:.1f}s (PREFECT_HOME={os.environ.get('PREFECT_HOME')})")


def check_mlflow(uri: str, timeout: float) -> Check:
    """A tracking server answers /health and accepts the credentials; any other URI (the embedded
    sqlite store) opens with MLflow's own client."""
    if uri.startswith(("http://", "https://")):
        base = uri.rstrip("/")
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        auth = f"{user}:{password}" if user and password else None
        try:
            status, _ = _get(base + "/health", None, timeout)
            if status != 200:
                return Check("MLflow tracking", True, "fail", f"{base}/health answered HTTP {status}")
            status, _ = _get(base + "/api/2.0/mlflow/experiments/search?max_results=1", auth, timeout)
        except (OSError, ValueError) as exc:
            return Check("MLflow tracking", True, "fail", _unreachable(base, exc) + " (MLFLOW_TRACKING_URI)")
        if status in (401, 403):
            what = ("refuses MLFLOW_TRACKING_USERNAME/_PASSWORD" if auth
                    else "requires authentication: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
            return Check("MLflow tracking", True, "fail", f"{base} {what} (HTTP {status})")
        if status != 200:
            return Check("MLflow tracking", True, "fail", f"{base} answered the experiments API with HTTP {status}")
        return Check("MLflow tracking", True, "ok", f"server at {base} ({'as ' + user if auth else 'no credentials'})")
    try:
        from mlflow import MlflowClient

        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - whatever stops it is the finding
        return Check("MLflow tracking", True, "fail", f"cannot open {uri}: {type(exc).__name__}: {str(exc)[:300]}")
    import mlflow

    return Check("MLflow tracking", True, "ok", f"embedded store {uri} opens (mlflow {mlflow.__version__})")


# --- torch and extras -----------------------------------------------------------------------


def _dtype_works(dtype, device: str) -> bool:
    import torch

    try:
        x = torch.ones(4, 4, dtype=dtype, device=device)
        return bool((x @ x).float().sum().item() == 64.0)
    except (RuntimeError, TypeError):
        return False


def check_torch(cfg) -> Check:
    import torch

    wants_cuda = [f"{s}.device=cuda" for s in STAGES_WITH_DEVICE if getattr(cfg, s).device == "cuda"]
    seen = []
    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        seen.append(f"cuda ({torch.cuda.device_count()}x {', '.join(names)}; bf16 "
                    f"{'yes' if torch.cuda.is_bf16_supported() else 'no'}, fp16 yes): training uses it, bf16 autocast")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        seen.append(f"mps (fp16 {'yes' if _dtype_works(torch.float16, 'mps') else 'no'}; training uses the cpu)")
    seen.append(f"cpu (bf16 {'yes' if _dtype_works(torch.bfloat16, 'cpu') else 'no'}, "
                f"fp16 {'yes' if _dtype_works(torch.float16, 'cpu') else 'no'}; training in fp32)")
    build = f"torch {torch.__version__}" + (f", CUDA {torch.version.cuda}" if torch.version.cuda else ", CPU build")
    detail = f"{build}: " + "; ".join(seen)
    if wants_cuda and not torch.cuda.is_available():
        return Check("torch device", True, "fail", f"{', '.join(wants_cuda)} but torch sees no CUDA device ({build})")
    return Check("torch device", bool(wants_cuda), "ok", detail)


def check_extras(cfg, extras: dict[str, list[str]]) -> list[Check]:
    rows = []
    k_quants = [q for q in cfg.export.gguf_quants if q in K_QUANTS] if "gguf" in cfg.export.formats else []
    llama = check_pin(next((r for r in extras.get("gguf", []) if "llama" in r), "llama-cpp-python"), required=False)
    llama.name = "llama-cpp-python (extra gguf)"
    if llama.status == "ok":
        missing = [m for m in LLAMA_SERVER_MODULES if importlib.util.find_spec(m) is None]
        llama.detail += ("; its server (serve --gguf) is missing " + ", ".join(missing)) if missing else \
            "; k-quants, GGUF scoring and `serve --gguf` available"
        llama.status = "warn" if missing else "ok"
    else:
        cost = f"export skips {', '.join(k_quants)} and " if k_quants else ""
        llama.detail += f"; without it {cost}GGUF variants are not scored, no `serve --gguf`"
    rows.append(llama)
    has_wtf = importlib.util.find_spec("flask_wtf") is not None
    creds = all(os.environ.get(v) for v in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"))
    rows.append(Check("Flask-WTF (extra auth)", False, "ok" if has_wtf else ("warn" if creds else "skip"),
                      "MLflow's basic-auth app for `crawl2model ui --auth`: " + (
                          "installed" if has_wtf else "not installed: pip install 'crawl2model[auth]'")))
    return rows


# --- all of it ------------------------------------------------------------------------------


def run_checks(cfg, timeout: float = 30.0) -> list[Check]:
    """Every check for this config, in table order."""
    requires_python, dependencies, extras = project_pins()
    rows = [check_python(requires_python), *check_packages(dependencies)]
    root_rows = check_data_root(cfg.data_root)
    rows += root_rows
    root_ok = root_rows[0].status == "ok"
    configured_prefect = os.environ.get("PREFECT_API_URL")
    configured_mlflow = os.environ.get("MLFLOW_TRACKING_URI")
    if root_ok:
        prepare_environment(cfg.data_root)  # PREFECT_HOME and the sqlite store inside the data root
    if configured_prefect:
        rows.append(check_prefect_url(configured_prefect, timeout))
    elif root_ok:
        rows.append(check_prefect_embedded(max(timeout, 60.0)))
    else:
        rows.append(Check("Prefect API", True, "skip", "embedded server not tried: its database lives in the data root"))
    if configured_mlflow or root_ok:
        rows.append(check_mlflow(configured_mlflow or os.environ["MLFLOW_TRACKING_URI"], timeout))
    else:
        rows.append(Check("MLflow tracking", True, "skip", "embedded store not tried: it lives in the data root"))
    rows.append(check_torch(cfg))
    rows += check_extras(cfg, extras)
    return rows


STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def render(rows: list[Check]):
    table = Table(title="crawl2model doctor", title_justify="left")
    for col in ("check", "needed", "status", "detail"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(escape(row.name), "required" if row.required else "optional",
                      f"[{STYLE[row.status]}]{row.status}[/]", escape(row.detail))
    return table


@app.command(rich_help_panel=OPERATIONS)
def doctor(
    ctx: typer.Context,
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]...",
                                                    help="Config overrides (what the run would get)."),
    timeout: float = typer.Option(10.0, help="Seconds to wait for each configured server."),
) -> None:
    """Check this machine for the configured run: versions against the pins, data root, Prefect and
    MLflow, torch devices, optional extras; exit 1 when something required is missing."""
    try:  # not cli_config: the checks prepare the environment only for a data root that can hold it
        cfg = load_config(ctx.obj["config"], overrides or [], ctx.obj["data_root"])
    except ConfigError as exc:
        fail(str(exc))
    rows = run_checks(cfg, timeout)
    out.print(render(rows), soft_wrap=False)
    failed = [r for r in rows if r.status == "fail"]
    if failed:
        out.print(f"[bold red]{len(failed)} required check(s) failed[/]: {', '.join(r.name for r in failed)}")
        raise typer.Exit(1)
    warned = [r.name for r in rows if r.status == "warn"]
    out.print("[bold green]ready[/] for the configured run" + (f" (warnings: {', '.join(warned)})" if warned else ""))
