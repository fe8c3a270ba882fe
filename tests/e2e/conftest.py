"""Fixtures the end-to-end modules share: Xen Orchestra's ``xen-api`` client in Node."""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

JS_DIR = Path(__file__).resolve().parent / "js"


def _pinned_version() -> str:
    return json.loads((JS_DIR / "package.json").read_text())["dependencies"]["xen-api"]


def _installed_version() -> str | None:
    installed = JS_DIR / "node_modules" / "xen-api" / "package.json"
    try:
        return json.loads(installed.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="session")
def node_client():
    """Path of ``node`` once the pinned ``xen-api`` is installed in tests/e2e/js."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip(
            "LOUD SKIP: Xen Orchestra client e2e tests need node and npm on PATH "
            f"(node={node!r}, npm={npm!r})"
        )
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if not match or int(match.group(1)) < 18:
        pytest.skip(f"LOUD SKIP: xen-api needs Node >= 18, found {version or 'unknown'}")

    # several pytest processes may share the checkout: install only once
    lock_path = Path(tempfile.gettempdir()) / "xapi-e2e-js-npm.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_version() != _pinned_version():
            has_lock = (JS_DIR / "package-lock.json").exists()
            command = [npm, "ci" if has_lock else "install", "--ignore-scripts", "--no-audit", "--no-fund"]
            try:
                done = subprocess.run(command, cwd=JS_DIR, capture_output=True, text=True, timeout=600)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{' '.join(command)} timed out in {JS_DIR}")
            if done.returncode != 0:
                pytest.fail(
                    f"{' '.join(command)} failed in {JS_DIR} (exit {done.returncode}):\n"
                    f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
                )
            if _installed_version() != _pinned_version():
                pytest.fail(f"xen-api {_pinned_version()} is still not installed after {' '.join(command)}")
    return node
