#!/usr/bin/env python3
"""Datapath plugins ``vhd+file`` and ``file`` (the scheme is the directory
this script is started from).

``vhd+file:///dir/<uuid>.vhd`` -- a VHD chain of the file SR, read-write.
``Datapath.attach`` returns ``{"implementations": [["File", {"path": leaf}]]}``:
the path is the VHD leaf, to be opened with ``vhd.open`` (which follows the
chain).  Calls keep the per-volume state described in ``sr_dir`` under the
SR's lock:

* ``open [uri, persistent]`` records ``persistent`` (non-persistent disks
  are xapi's business: the NONPERSISTENT feature is not offered);
* ``attach [uri, domain]`` records the domain; the volume must exist and
  be visible;
* ``activate [uri, domain]`` is exclusive: another domain active in any mode
  -> ``VDI_IN_USE [uri, "activate"]``; a read-only volume (a snapshot: the
  file SR's ``<uuid>.json`` says ``read_write: false``) -> ``VDI_READONLY [uri]``;
* ``activate_readonly`` may be shared with other readers, not with a writer;
* ``deactivate``, ``detach`` and ``close`` undo them and never fail on a
  missing volume; ``close`` drops the state once nothing is attached;
* extensions for the GC's live leaf-coalesce (and anything else that must
  rewrite a chain under a running consumer):
  ``Datapath.pause [dbg, uri]`` marks the volume paused: consumers stop I/O
  and close the chain, and ``activate`` fails with ``SR_BACKEND_FAILURE_46``
  until ``Datapath.unpause [dbg, uri]``, which clears it, bumps the state's
  ``generation`` and returns the attach result plus ``"chain"`` (leaf first)
  and ``"generation"``, so the consumer reopens what the chain now is.
  Both are idempotent.

``file:///path`` -- a raw image (an ISO), read-only: same calls without
state; ``activate`` (read-write) -> ``VDI_READONLY [uri]``; no pause.

Missing or hidden volume files -> ``SR_BACKEND_FAILURE_46``; a malformed URI
-> ``SR_BACKEND_FAILURE_1``.
"""

from __future__ import annotations

import os
import sys


def _bootstrap() -> None:
    """Make the project and the plugin library importable however this file
    was started (symlinked method, copy in an installed package, by hand)."""
    probe = os.path.dirname(os.path.realpath(__file__))
    while probe != os.path.dirname(probe):
        if os.path.isfile(os.path.join(probe, "xapi", "backends", "storage", "plugins.py")):
            if probe not in sys.path:
                sys.path.insert(0, probe)
            break
        probe = os.path.dirname(probe)
    from xapi.backends.storage.plugins import PLUGIN_LIB_DIR
    if PLUGIN_LIB_DIR not in sys.path:
        sys.path.insert(0, PLUGIN_LIB_DIR)


_bootstrap()

import sr_dir  # noqa: E402
from xapi.backends.storage import vhd  # noqa: E402
from xapi.backends.storage.plugins import Params, StorageError, serve, sm_error  # noqa: E402

VHD = "vhd+file"
RAW = "file"
SCHEMES = (VHD, RAW)


def _query(scheme: str) -> dict:
    vhd_chain = scheme == VHD
    return {
        "plugin": scheme,
        "name": "VHD chain datapath" if vhd_chain else "raw file datapath",
        "description": ("VHD chains of the file SR, handed over as the leaf's path" if vhd_chain
                        else "read-only raw images (ISO), handed over as their path"),
        "vendor": "xapi-server",
        "copyright": "xapi-server contributors",
        "version": "1.0",
        "required_api_version": "5.0",
        # VDI_PAUSE: this project's Datapath.pause / Datapath.unpause
        "features": ["VDI_ACTIVATE_READONLY", "VDI_PAUSE"] if vhd_chain else ["VDI_ACTIVATE_READONLY"],
        "configuration": {},
        "required_cluster_stack": [],
    }


def _target(p: Params, *, must_exist: bool = True) -> tuple[str, str]:
    """(scheme, path) of the call's URI, checking the file is usable."""
    scheme, path = sr_dir.uri_path(p.text("uri"), SCHEMES)
    if not must_exist:
        return scheme, path
    if not os.path.isfile(path):
        raise sm_error("VDIUnavailable", f"{path} does not exist")
    if scheme == VHD:
        with vhd.open(path) as image:
            if image.hidden:
                raise sm_error("VDIUnavailable", f"{path} is an interior node of a snapshot tree")
    return scheme, path


def _backend(path: str) -> dict:
    return {"implementations": [["File", {"path": path}]]}


def _read_write(path: str) -> bool:
    """What the file SR's metadata says (volumes without metadata are writable)."""
    stem = os.path.basename(path)[:-len(".vhd")] if path.endswith(".vhd") else None
    if stem is None:
        return True
    meta = sr_dir.read_json(os.path.join(os.path.dirname(path), stem + ".json"), {}) or {}
    return meta.get("read_write", True)


def _update(path: str, change) -> dict:
    with sr_dir.locked(os.path.dirname(path)):
        state = sr_dir.load_state(path)
        change(state)
        sr_dir.save_state(path, state)
        return state


# ---------------------------------------------------------------------------


def plugin_query(p: Params) -> dict:
    return _query(os.path.basename(os.path.dirname(os.path.abspath(sys.argv[0]))))


def plugin_diagnostics(p: Params) -> str:
    return "file datapath: state lives in <volume dir>/.datapath/"


def dp_open(p: Params) -> None:
    scheme, path = _target(p)
    persistent = p.flag("persistent")
    if scheme == VHD:
        _update(path, lambda state: state.__setitem__("persistent", persistent))


def dp_attach(p: Params) -> dict:
    scheme, path = _target(p)
    domain = p.text("domain")
    if scheme == VHD:
        def attach(state: dict) -> None:
            attached = state.setdefault("attached", [])
            if domain not in attached:
                attached.append(domain)
        _update(path, attach)
    return _backend(path)


def _activate(p: Params, mode: str) -> None:
    scheme, path = _target(p)
    domain, uri = p.text("domain"), p.text("uri")
    if mode == "rw" and (scheme == RAW or not _read_write(path)):
        raise StorageError("VDI_READONLY", [uri])
    if scheme == RAW:
        return

    def activate(state: dict) -> None:
        if state.get("paused"):
            raise sm_error("VDIUnavailable", f"{path} is paused")
        active = state.setdefault("active", {})
        others = {d: m for d, m in active.items() if d != domain}
        if others and (mode == "rw" or "rw" in others.values()):
            raise StorageError("VDI_IN_USE", [uri, "activate"])
        active[domain] = mode
        attached = state.setdefault("attached", [])
        if domain not in attached:
            attached.append(domain)
    _update(path, activate)


def dp_activate(p: Params) -> None:
    _activate(p, "rw")


def dp_activate_readonly(p: Params) -> None:
    _activate(p, "ro")


def dp_deactivate(p: Params) -> None:
    scheme, path = _target(p, must_exist=False)
    domain = p.text("domain")
    if scheme == VHD and os.path.isdir(os.path.dirname(path)):
        _update(path, lambda state: state.get("active", {}).pop(domain, None))


def dp_detach(p: Params) -> None:
    scheme, path = _target(p, must_exist=False)
    domain = p.text("domain")
    if scheme == VHD and os.path.isdir(os.path.dirname(path)):
        def detach(state: dict) -> None:
            state.get("active", {}).pop(domain, None)
            if domain in state.get("attached", []):
                state["attached"].remove(domain)
        _update(path, detach)


def dp_close(p: Params) -> None:
    scheme, path = _target(p, must_exist=False)
    if scheme == VHD and os.path.isdir(os.path.dirname(path)):
        _update(path, lambda state: state.pop("persistent", None))


def _vhd_only(p: Params) -> str:
    scheme, path = _target(p)
    if scheme != VHD:
        raise sm_error("Unimplemented", f"{scheme} volumes are never paused")
    return path


def dp_pause(p: Params) -> None:
    path = _vhd_only(p)
    _update(path, lambda state: state.__setitem__("paused", True))


def dp_unpause(p: Params) -> dict:
    scheme, path = sr_dir.uri_path(p.text("uri"), SCHEMES)
    if scheme != VHD:
        raise sm_error("Unimplemented", f"{scheme} volumes are never paused")

    def unpause(state: dict) -> None:
        state.pop("paused", None)
        state["generation"] = state.get("generation", 0) + 1
    state = _update(path, unpause)
    # checked after clearing the flag: a volume gone meanwhile must not stay paused
    path = _target(p)[1]
    return {**_backend(path), "chain": vhd.chain(path), "generation": state["generation"]}


HANDLERS = {
    "Plugin.Query": plugin_query,
    "Plugin.diagnostics": plugin_diagnostics,
    "Datapath.open": dp_open,
    "Datapath.attach": dp_attach,
    "Datapath.activate": dp_activate,
    "Datapath.activate_readonly": dp_activate_readonly,
    "Datapath.deactivate": dp_deactivate,
    "Datapath.detach": dp_detach,
    "Datapath.close": dp_close,
    "Datapath.pause": dp_pause,
    "Datapath.unpause": dp_unpause,
}

if __name__ == "__main__":
    serve(HANDLERS)
