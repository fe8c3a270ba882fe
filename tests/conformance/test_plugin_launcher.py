"""The plugin launcher's fork server runs a script as ``python <script>`` would:
exit statuses, signals, timeouts (the whole session killed), big inputs and
outputs, concurrent calls, and a launcher that dies."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from xapi.backends.storage.launcher import Launcher


@pytest.fixture
def launcher():
    launcher = Launcher(dict(os.environ))
    yield launcher
    launcher.close()


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / f"s{len(list(tmp_path.iterdir()))}"
    path.write_text("#!/usr/bin/env python3\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def test_runs_the_script_as_main(launcher, tmp_path):
    path = script(tmp_path, """
        import json, os, sys
        params = json.loads(sys.stdin.readline())
        print(json.dumps({"name": __name__, "file": __file__, "argv": sys.argv, "cwd": os.getcwd(),
                          "sid": os.getsid(0) == os.getpid(), "path0": sys.path[0],
                          "params": params}))
        """)
    code, out, err, timed_out = launcher.run(path, [path, "--json"], b'{"a": 1}\n', 10)
    assert (code, err, timed_out) == (0, b"", False)
    seen = json.loads(out)
    assert seen == {"name": "__main__", "file": path, "argv": [path, "--json"], "cwd": "/",
                    "sid": True, "path0": str(tmp_path), "params": {"a": 1}}


def test_exit_status_exceptions_and_signals(launcher, tmp_path):
    cases = [("import sys; print('x'); sys.exit(3)", 3),
             ("raise ValueError('boom')", 1),
             ("import sys; sys.exit('bye')", 1),
             ("import os; os.kill(os.getpid(), 9)", -9)]
    for body, expected in cases:
        path = script(tmp_path, body + "\n")
        code, out, err, timed_out = launcher.run(path, [path], b"", 10)
        assert (code, timed_out) == (expected, False), body
    assert b"ValueError: boom" in launcher.run(script(tmp_path, "raise ValueError('boom')\n"),
                                               ["x"], b"", 10)[2]


def test_a_script_that_does_not_compile(launcher, tmp_path):
    bad = script(tmp_path, "def broken(:\n")
    code, out, err, _ = launcher.run(bad, [bad], b"", 10)
    assert code == 1 and out == b"" and b"SyntaxError" in err
    good = script(tmp_path, "print('still here')\n")
    assert launcher.run(good, [good], b"", 10)[:2] == (0, b"still here\n")


def test_timeout_kills_the_session(launcher, tmp_path):
    marker = tmp_path / "grandchild-alive"
    path = script(tmp_path, f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c",
                          "import time; time.sleep(1.5); open({str(marker)!r}, 'w').close()"])
        time.sleep(30)
        """)
    started = time.monotonic()
    code, _, _, timed_out = launcher.run(path, [path], b"", 0.5)
    assert timed_out and code is None and time.monotonic() - started < 10
    time.sleep(2)
    assert not marker.exists()


def test_big_input_and_output(launcher, tmp_path):
    path = script(tmp_path, """
        import sys
        data = sys.stdin.buffer.read()
        sys.stdout.buffer.write(data * 2)
        sys.stderr.buffer.write(data)
        """)
    data = os.urandom(300_000)
    code, out, err, _ = launcher.run(path, [path], data, 20)
    assert code == 0 and out == data * 2 and err == data


def test_concurrent_calls(launcher, tmp_path):
    path = script(tmp_path, """
        import sys, time
        n = int(sys.stdin.read())
        time.sleep(0.05)
        print(n * n)
        """)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: launcher.run(path, [path], str(n).encode(), 20),
                                range(40)))
    assert [int(r[1]) for r in results] == [n * n for n in range(40)]


def test_changed_scripts_are_recompiled(launcher, tmp_path):
    path = script(tmp_path, "print(1)\n")
    assert launcher.run(path, [path], b"", 10)[1] == b"1\n"
    Path(path).write_text("print(22)\n")
    assert launcher.run(path, [path], b"", 10)[1] == b"22\n"


def test_a_dead_launcher_is_restarted(launcher, tmp_path):
    path = script(tmp_path, "print('ok')\n")
    assert launcher.run(path, [path], b"", 10)[1] == b"ok\n"
    launcher._proc.kill()
    launcher._proc.wait()
    assert launcher.run(path, [path], b"", 10)[1] == b"ok\n"


def test_the_launcher_exits_with_its_caller(tmp_path):
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from xapi.backends.storage.launcher import Launcher
        launcher = Launcher(dict(os.environ))
        launcher._ensure()
        print(launcher._proc.pid, flush=True)
        os._exit(0)
        """)
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    pid = int(out.stdout)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break               # exited, not yet reaped by its new parent
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the launcher outlived its caller")
