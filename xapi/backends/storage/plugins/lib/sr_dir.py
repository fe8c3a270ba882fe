"""What the project's directory-based plugins share: the SR lock, atomic JSON
files, ``scheme:///path`` URIs and the per-volume datapath state.

This directory is not a package (``xapi.backends.storage.plugins`` is the
contract module): the plugin scripts put it on ``sys.path`` themselves, and
the registry also passes it in ``PYTHONPATH``.

Per-volume files, next to the volume file ``<dir>/<name>``:

* ``<dir>/.sr.lock`` -- ``flock``-ed exclusively by every call that changes
  the directory's volumes or a datapath state (the GC takes it too);
* ``<dir>/.datapath/<name>.json`` -- the datapath state::

      {"persistent": true,                 # set by Datapath.open
       "attached": ["7", ...],              # domains given to Datapath.attach
       "active": {"7": "rw", "9": "ro"},    # Datapath.activate / activate_readonly
       "paused": false,                     # Datapath.pause / unpause
       "generation": 3}                     # bumped whenever the chain under
                                            # the volume changes (snapshot,
                                            # clone, resize, unpause)

  Keeping it beside the volume means every host that sees the directory
  sees the same state (an NFS-backed SR stays exclusive across hosts).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from typing import Any, Iterator
from urllib.parse import quote, unquote, urlsplit

from xapi.backends.storage.plugins import sm_error

LOCK_NAME = ".sr.lock"
STATE_DIR = ".datapath"


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_all(paths: list[str]) -> None:
    """``fsync`` files and directories concurrently: the filesystem commits
    them together (one journal commit instead of one each, on ext4)."""
    errors: list[OSError] = []

    def one(path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(path,)) for path in paths[1:]]
    for thread in threads:
        thread.start()
    if paths:
        one(paths[0])
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def write_json(path: str, value: Any, *, sync: bool = True) -> None:
    """Replace ``path`` atomically: a reader sees the old or the new file.
    ``sync=False`` leaves its durability (``fsync`` of the file and of its
    directory) to the caller, who has more to sync (:func:`sync_all`)."""
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(value, f, indent=1, sort_keys=True)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync:
        fsync_dir(directory)


def read_json(path: str, default: Any = None) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default
    except ValueError as exc:
        raise sm_error("EIO", f"{path} is not valid JSON: {exc}") from None


def remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def remove_tree(directory: str) -> None:
    """Remove a directory of plain files (the plugins' state directories)."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            remove(os.path.join(directory, name))
        os.rmdir(directory)


@contextlib.contextmanager
def locked(directory: str, name: str = LOCK_NAME) -> Iterator[None]:
    """Hold the directory's lock (blocking).  ``flock`` locks belong to the
    open file, so threads and processes exclude each other alike."""
    fd = os.open(os.path.join(directory, name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def path_uri(scheme: str, path: str) -> str:
    return f"{scheme}://{quote(os.path.abspath(path))}"


def uri_path(uri: str, schemes: tuple[str, ...]) -> tuple[str, str]:
    """(scheme, absolute path) of a ``scheme:///path`` URI."""
    if not isinstance(uri, str):
        raise sm_error("InvalidArg", f"not a URI: {uri!r}")
    parts = urlsplit(uri)
    path = unquote(parts.path)
    if parts.scheme not in schemes or parts.netloc not in ("", "localhost") or not path.startswith("/"):
        raise sm_error("InvalidArg", f"expected a {'/'.join(schemes)}:///absolute/path URI, not {uri!r}")
    return parts.scheme, os.path.normpath(path)


# -- datapath state ------------------------------------------------------------


def state_path(volume_path: str) -> str:
    directory, name = os.path.split(volume_path)
    return os.path.join(directory, STATE_DIR, name + ".json")


def load_state(volume_path: str) -> dict:
    return read_json(state_path(volume_path), {}) or {}


def save_state(volume_path: str, state: dict) -> None:
    """Write the state, or drop the file once nothing refers to the volume."""
    path = state_path(volume_path)
    if not (state.get("attached") or state.get("active") or state.get("paused")
            or "persistent" in state):
        remove(path)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(path, state)


def bump_generation(volume_path: str) -> None:
    """Tell whoever holds the volume open that its chain changed (call with
    the lock held)."""
    state = load_state(volume_path)
    if state:
        state["generation"] = state.get("generation", 0) + 1
        save_state(volume_path, state)


def in_use(volume_path: str) -> bool:
    state = load_state(volume_path)
    return bool(state.get("attached") or state.get("active"))
