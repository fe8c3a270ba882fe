from pathlib import Path

import pytest
from pydantic import ValidationError

from xapi import config

CONF = Path(__file__).resolve().parents[2] / "etc" / "xapi.conf"


def test_parse_key_value_format():
    values = config.parse_conf('# comment\nlisten = 0.0.0.0:80\n\nstate_dir = "/tmp/a b"\nmax_tasks=5 # note\n')
    assert values == {"listen": "0.0.0.0:80", "state_dir": "/tmp/a b", "max_tasks": "5"}


def test_defaults_and_environment_override(tmp_path):
    cfg = config.load(None, env={"XAPI_STATE_DIR": str(tmp_path), "XAPI_MAX_TASKS": "7"})
    assert cfg.listen == "127.0.0.1:8080" and cfg.max_tasks == 7
    assert cfg.database_url == f"sqlite:///{tmp_path}/xapi.db"
    assert cfg.pending_task_timeout == 86400 and cfg.redis_url is None


def test_unknown_and_bad_keys_are_refused(tmp_path):
    path = tmp_path / "x.conf"
    path.write_text("no_such_key = 1\n")
    with pytest.raises(ValidationError):
        config.load(path, env={})
    path.write_text("listen = nonsense\n")
    with pytest.raises(ValidationError):
        config.load(path, env={})


def test_shipped_config_documents_every_key():
    text = CONF.read_text()
    documented = {line.lstrip("# ").split("=")[0].strip() for line in text.splitlines()
                  if "=" in line and line.lstrip("# ").split("=")[0].strip().isidentifier()}
    assert set(config.Config.model_fields) <= documented, set(config.Config.model_fields) - documented
    config.load(CONF, env={})  # and it loads
