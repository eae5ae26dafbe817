"""The service's commands on the command line: keys list (never secrets), and a table whose label is not named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.test_cli import run

APPRAISE = str(Path(sys.executable).with_name("appraise"))


def test_keys_create_list_and_revoke(tmp_path):
    env = {**os.environ, "APPRAISE_DATABASE_URL": f"sqlite:///{tmp_path}/a.db"}
    subprocess.run([APPRAISE, "db", "upgrade"], env=env, check=True, capture_output=True)
    made = [json.loads(subprocess.run([APPRAISE, "keys", "create", "--org", org, "--role", role, "--json"], env=env,
                                      check=True, capture_output=True, text=True).stdout)
            for org, role in (("acme", "buyer"), ("shop", "seller"))]
    out = subprocess.run([APPRAISE, "keys", "list", "--json"], env=env, check=True, capture_output=True,
                         text=True).stdout
    listed = json.loads(out)["items"]
    assert sorted((k["org"], k["role"], k["prefix"]) for k in listed) == sorted(
        (m["org"], m["role"], m["prefix"]) for m in made)
    assert all(m["key"] not in out for m in made)  # prefixes only, never the secrets
    subprocess.run([APPRAISE, "keys", "revoke", made[0]["prefix"]], env=env, check=True, capture_output=True)
    one = json.loads(subprocess.run([APPRAISE, "keys", "list", "--org", "acme", "--json"], env=env, check=True,
                                    capture_output=True, text=True).stdout)["items"]
    assert len(one) == 1 and one[0]["revoked_at"] is not None
    table = subprocess.run([APPRAISE, "keys", "list"], env={**env, "COLUMNS": "160"}, check=True,
                           capture_output=True, text=True).stdout
    assert made[1]["prefix"] in table and "shop" in table


def test_an_unnamed_label_column_is_warned_about(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text("a,b,target\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(6)))
    code, out, err = run(["validate", str(path)], capsys)
    assert code == 0 and "6 rows × 3 features, label: none" in out
    assert "'target' holds two values and looks like a label" in err and "--label-column target" in err
    code, out, err = run(["validate", str(path), "--label-column", "target"], capsys)
    assert code == 0 and "label column 'target'" in out and "warning" not in err


def test_ctrl_c_exits_130_with_one_line(capfd):
    """Under ``standalone_mode=False`` typer answers a KeyboardInterrupt with a returned 130 (not raised): main()
    must still exit with it, without a traceback."""
    import pytest

    from app.cli import app, main

    @app.command("interrupt-me", hidden=True)
    def interrupt_me() -> None:
        raise KeyboardInterrupt

    try:
        with pytest.raises(SystemExit) as stopped:
            main(["interrupt-me"])
    finally:
        app.registered_commands.pop()
    assert stopped.value.code == 130
    err = capfd.readouterr().err
    assert "Traceback" not in err
