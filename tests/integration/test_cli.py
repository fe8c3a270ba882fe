"""The `xapi` admin command: db upgrade and passwd (password read from stdin, stored hashed)."""

from __future__ import annotations

import os
import subprocess
import sys

from db.migrate import current
from db.store import Database
from tests.support import REPO
from xapi.auth import verify_password


def run_cli(args, db_url, state_dir, stdin=""):
    env = {**os.environ, "XAPI_DB_URL": db_url, "XAPI_STATE_DIR": str(state_dir)}
    env.pop("XAPI_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "api.cli", *args], cwd=REPO, env=env,
                          input=stdin, capture_output=True, text=True, timeout=120)


def test_db_upgrade_and_passwd(fresh_db_url, tmp_path):
    out = run_cli(["db", "upgrade"], fresh_db_url, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "0003" in out.stdout
    out = run_cli(["passwd"], fresh_db_url, tmp_path, stdin="s3cret pass\n")
    assert out.returncode == 0, out.stderr
    db = Database(fresh_db_url)
    try:
        assert current(db.engine) == "0003"
        stored = db.get_password_hash("root")
        assert stored.startswith("scrypt$") and "s3cret" not in stored
        assert verify_password("s3cret pass", stored)
        assert not verify_password("s3cret", stored)
    finally:
        db.close()
    out = run_cli(["passwd"], fresh_db_url, tmp_path, stdin="\n")
    assert out.returncode == 1 and "empty" in out.stderr


def test_serve_takes_a_config_file(tmp_path, fresh_db_url):
    conf = tmp_path / "xapi.conf"
    conf.write_text(f"db_url = {fresh_db_url}\nstate_dir = {tmp_path}\nlisten = nonsense\n")
    out = subprocess.run([sys.executable, "-m", "api.cli", "serve", "-c", str(conf)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "listen must be host:port" in out.stderr
