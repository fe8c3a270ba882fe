#!/usr/bin/env python3
"""Volume plugin ``org.xen.xapi.storage.iso``: an SR is a directory of ``.iso`` files.

Configuration: ``location`` -- an existing directory (required).
``SR.attach`` returns ``file://<location>``.  ``SR.ls`` scans the directory:
every regular ``*.iso`` file (any case, not hidden) is a read-only volume
whose key is its file name, whose uuid is derived from its path (stable
across scans) and whose URI is ``file://<location>/<name>`` (the ``file``
datapath: raw, read-only).  Sizes are the file's size.

Names, descriptions and ``Volume.set`` keys live in ``<location>/.xapi-iso.json``
(with the SR's uuid, name and description), written atomically under the
lock ``<location>/.xapi-iso.lock``; a read-only location can be scanned but
not annotated.  ``SR.destroy`` forgets the SR (removes those two files) and
keeps the ISOs, as sm's ISO SR does.

The library is managed outside the SR: ``Volume.create``, ``destroy``,
``snapshot``, ``clone`` and ``resize`` answer ``SR_OPERATION_NOT_SUPPORTED
[sr]``, and ``Plugin.Query`` does not list their features.
Other errors: missing ``location`` -> ``SR_BACKEND_FAILURE_220``; not a
directory -> 226; unknown key -> ``VDI_MISSING [sr, key]``; bad parameter -> 1.
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

import uuid as uuidlib  # noqa: E402

import sr_dir  # noqa: E402
from xapi.backends.storage.plugins import Params, StorageError, serve, sm_error  # noqa: E402

SR_SCHEME = "file"
VOLUME_SCHEME = "file"
INDEX = ".xapi-iso.json"
LOCK = ".xapi-iso.lock"

QUERY = {
    "plugin": "iso",
    "name": "ISO library",
    "description": "Read-only .iso images found in a directory",
    "vendor": "xapi-server",
    "copyright": "xapi-server contributors",
    "version": "1.0",
    "required_api_version": "5.0",
    "features": ["SR_ATTACH", "SR_DETACH", "SR_CREATE", "SR_DELETE", "SR_SCAN", "SR_UPDATE",
                 "SR_PROBE", "VDI_UPDATE", "VDI_ATTACH", "VDI_DETACH", "VDI_ACTIVATE",
                 "VDI_DEACTIVATE"],
    "configuration": {"location": "directory holding the .iso files"},
    "required_cluster_stack": [],
}


class IsoSR:
    def __init__(self, location: str):
        if not os.path.isdir(location):
            raise sm_error("ISOLocalPath", f"{location} is not a directory")
        self.path = os.path.abspath(location)
        self.uri = sr_dir.path_uri(SR_SCHEME, self.path)

    @classmethod
    def from_configuration(cls, configuration: dict[str, str]) -> "IsoSR":
        location = configuration.get("location", "")
        if not location:
            raise sm_error("ISODconfMissingLocation", "the configuration key 'location' is required")
        return cls(location)

    @classmethod
    def from_uri(cls, uri: str) -> "IsoSR":
        path = sr_dir.uri_path(uri, (SR_SCHEME,))[1]
        if not os.path.isdir(path):
            raise sm_error("SRUnavailable", f"no ISO library at {path}")
        return cls(path)

    def index(self) -> dict:
        return sr_dir.read_json(os.path.join(self.path, INDEX), {}) or {}

    def save_index(self, index: dict) -> None:
        sr_dir.write_json(os.path.join(self.path, INDEX), index)

    def lock(self):
        return sr_dir.locked(self.path, LOCK)

    def keys(self) -> list[str]:
        return sorted(entry.name for entry in os.scandir(self.path)
                      if entry.name.lower().endswith(".iso") and not entry.name.startswith(".")
                      and entry.is_file())

    def check_key(self, key: str) -> str:
        path = os.path.join(self.path, key)
        if "/" in key or key.startswith(".") or not key.lower().endswith(".iso") \
                or not os.path.isfile(path):
            raise StorageError("VDI_MISSING", [self.uri, key])
        return path

    def volume(self, key: str, index: dict | None = None) -> dict:
        path = self.check_key(key)
        meta = (index if index is not None else self.index()).get("volumes", {}).get(key, {})
        uri = sr_dir.path_uri(VOLUME_SCHEME, path)
        size = os.stat(path).st_size
        return {
            "key": key,
            "uuid": str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, uri)),
            "name": meta.get("name", key),
            "description": meta.get("description", ""),
            "read_write": False,
            "sharable": False,
            "virtual_size": size,
            "physical_utilisation": size,
            "uri": [uri],
            "keys": meta.get("keys", {}),
            "volume_type": "Data",
            "cbt_enabled": False,
        }

    def stat(self) -> dict:
        index = self.index()
        st = os.statvfs(self.path)
        used = sum(os.stat(os.path.join(self.path, key)).st_size for key in self.keys())
        return {
            "sr": self.uri,
            "name": index.get("name", os.path.basename(self.path)),
            "uuid": index.get("uuid", ""),
            "description": index.get("description", ""),
            "free_space": st.f_bavail * st.f_frsize,
            "total_space": st.f_blocks * st.f_frsize,
            "datasources": [],
            "clustered": False,
            "health": ["Healthy", ""],
            "physical_utilisation": used,
            "virtual_allocation": used,
        }


def plugin_query(p: Params) -> dict:
    return QUERY


def plugin_diagnostics(p: Params) -> str:
    return "ISO SR plugin: no diagnostics"


def sr_create(p: Params) -> dict:
    uuid, configuration = p.text("uuid"), p.mapping("configuration")
    name, description = p.text("name"), p.text("description")
    sr = IsoSR.from_configuration(configuration)
    with sr.lock():
        sr.save_index({"uuid": uuid, "name": name, "description": description, "volumes": {}})
    return {**configuration, "location": sr.path}


def sr_attach(p: Params) -> str:
    return IsoSR.from_configuration(p.mapping("configuration")).uri


def sr_detach(p: Params) -> None:
    IsoSR.from_uri(p.text("sr"))


def sr_destroy(p: Params) -> None:
    sr = IsoSR.from_uri(p.text("sr"))
    with sr.lock():
        sr_dir.remove(os.path.join(sr.path, INDEX))
    sr_dir.remove(os.path.join(sr.path, LOCK))


def sr_stat(p: Params) -> dict:
    return IsoSR.from_uri(p.text("sr")).stat()


def sr_ls(p: Params) -> list[dict]:
    sr = IsoSR.from_uri(p.text("sr"))
    index = sr.index()
    out = []
    for key in sr.keys():
        try:
            out.append(sr.volume(key, index))
        except StorageError:
            continue              # removed while scanning
    return out


def sr_probe(p: Params) -> list[dict]:
    configuration = p.mapping("configuration")
    sr = IsoSR.from_configuration(configuration)
    result = {"configuration": configuration, "complete": True, "extra_info": {}}
    if os.path.isfile(os.path.join(sr.path, INDEX)):
        result["sr"] = sr.stat()
    return [result]


def _sr_update(p: Params, field: str, param: str) -> None:
    sr, value = IsoSR.from_uri(p.text("sr")), p.text(param)
    with sr.lock():
        index = sr.index()
        index[field] = value
        sr.save_index(index)


def sr_set_name(p: Params) -> None:
    _sr_update(p, "name", "new_name")


def sr_set_description(p: Params) -> None:
    _sr_update(p, "description", "new_description")


def volume_stat(p: Params) -> dict:
    return IsoSR.from_uri(p.text("sr")).volume(p.text("key"))


def _update_volume(p: Params, change) -> None:
    sr, key = IsoSR.from_uri(p.text("sr")), p.text("key")
    sr.check_key(key)
    with sr.lock():
        index = sr.index()
        meta = index.setdefault("volumes", {}).setdefault(key, {})
        change(meta)
        sr.save_index(index)


def volume_set(p: Params) -> None:
    k, v = p.text("k"), p.text("v")
    _update_volume(p, lambda meta: meta.setdefault("keys", {}).__setitem__(k, v))


def volume_unset(p: Params) -> None:
    k = p.text("k")
    _update_volume(p, lambda meta: meta.setdefault("keys", {}).pop(k, None))


def volume_set_name(p: Params) -> None:
    name = p.text("new_name")
    _update_volume(p, lambda meta: meta.__setitem__("name", name))


def volume_set_description(p: Params) -> None:
    description = p.text("new_description")
    _update_volume(p, lambda meta: meta.__setitem__("description", description))


def refused(p: Params) -> None:
    raise StorageError("SR_OPERATION_NOT_SUPPORTED", [IsoSR.from_uri(p.text("sr")).uri])


HANDLERS = {
    "Plugin.Query": plugin_query,
    "Plugin.diagnostics": plugin_diagnostics,
    "SR.create": sr_create,
    "SR.attach": sr_attach,
    "SR.detach": sr_detach,
    "SR.destroy": sr_destroy,
    "SR.stat": sr_stat,
    "SR.ls": sr_ls,
    "SR.probe": sr_probe,
    "SR.set_name": sr_set_name,
    "SR.set_description": sr_set_description,
    "Volume.stat": volume_stat,
    "Volume.set": volume_set,
    "Volume.unset": volume_unset,
    "Volume.set_name": volume_set_name,
    "Volume.set_description": volume_set_description,
    "Volume.create": refused,
    "Volume.destroy": refused,
    "Volume.snapshot": refused,
    "Volume.clone": refused,
    "Volume.resize": refused,
}

if __name__ == "__main__":
    serve(HANDLERS)
