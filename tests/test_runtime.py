"""The run-time set-up of a data root: a new one starts from an empty, migrated Prefect database
(made once per install) instead of migrating its own, and a real flow runs on it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from crawl2model.runtime import make_prefect_template, seed_prefect_database

REPO = Path(__file__).resolve().parents[1]
FLOW_ON_A_NEW_ROOT = textwrap.dedent("""
    import sys
    from pathlib import Path
    import crawl2model.runtime as runtime
    root, template = Path(sys.argv[1]), Path(sys.argv[2])
    runtime.prefect_template = lambda: template
    runtime.prepare_environment(root)
    print("SEEDED", (root / "prefect" / "prefect.db").read_bytes() == template.read_bytes())
    from prefect import flow

    @flow
    def answer() -> int:
        return 42

    with runtime.prefect_api():
        print("RESULT", answer())
""")


@pytest.mark.slow
def test_a_new_data_root_runs_a_flow_on_the_copied_template(tmp_path):
    template = make_prefect_template(tmp_path / "template.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "C2M_"))}
    done = subprocess.run([sys.executable, "-c", FLOW_ON_A_NEW_ROOT, str(tmp_path / "root"), str(template)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SEEDED True" in done.stdout and "RESULT 42" in done.stdout
    with sqlite3.connect(tmp_path / "root" / "prefect" / "prefect.db") as con:  # the run is recorded there
        runs = con.execute("select f.name, r.state_type from flow_run r join flow f on f.id = r.flow_id").fetchall()
    assert runs == [("answer", "COMPLETED")]


def test_the_template_is_only_copied_where_the_embedded_server_would_create_one(tmp_path, monkeypatch):
    template = tmp_path / "template.db"
    template.write_bytes(b"an empty database")
    home = tmp_path / "prefect"
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")  # a server of the user's: not ours to seed
    assert not seed_prefect_database(home, template) and not home.exists()
    monkeypatch.delenv("PREFECT_API_URL")
    assert not seed_prefect_database(home, tmp_path / "no-template.db")
    assert seed_prefect_database(home, template) and (home / "prefect.db").read_bytes() == b"an empty database"
    (home / "prefect.db").write_bytes(b"runs of the user's")
    assert not seed_prefect_database(home, template)  # an existing database is never replaced
    assert (home / "prefect.db").read_bytes() == b"runs of the user's"
