"""The server's side of storage: SRs and VDIs as SMAPIv3 plugins see them.

``Storage`` holds the plugin registry, knows each plugged SR's URI on this
host (``SR.attach`` of the PBD's device_config), calls volume plugins with
plugin errors turned into XenAPI errors, keeps the ``SM`` records in step
with the installed plugins, and turns plugin volumes into VDI fields.

Volume keys are the VDIs' ``location``; the SR's URI is not stored: a plugged
PBD is re-attached after a restart, as xapi re-plugs PBDs at start.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Iterable

from xapi.backends.storage.plugins import Plugin, PluginRegistry, StorageError
from xapi.context import Runtime
from xapi.errors import ApiError
from xapi.refs import make_ref, make_uuid

log = logging.getLogger("xapi.storage")


def api_error(error: StorageError) -> ApiError:
    return ApiError(error.code, *error.params)


class Storage:
    def __init__(self, rt: Runtime, registry: PluginRegistry):
        self.rt = rt
        self.registry = registry
        self._uris: dict[str, str] = {}  # SR ref → URI, for SRs plugged on this host
        self._lock = threading.Lock()

    # -- plugins ---------------------------------------------------------------------

    def volume_plugin(self, sr_type: str) -> Plugin:
        try:
            return self.registry.volume(sr_type)
        except StorageError as exc:
            raise api_error(exc) from None

    def call(self, sr_ref: str, method: str, **params: Any) -> Any:
        """A volume plugin call on a plugged SR (its URI passed as ``sr``)."""
        sr = self._sr(sr_ref)
        uri = self.sr_uri(sr_ref)
        try:
            return self.volume_plugin(sr["type"]).call(method, sr=uri, **params)
        except StorageError as exc:
            raise api_error(exc) from None

    def features(self, sr_type: str) -> list[str]:
        try:
            return list(self.registry.query(sr_type).get("features", []))
        except StorageError:
            return []

    def _sr(self, sr_ref: str) -> dict[str, Any]:
        row = self.rt.cache.get("SR", sr_ref)
        if row is None:
            raise ApiError("HANDLE_INVALID", "SR", sr_ref)
        return row.values

    # -- SR attachment on this host ----------------------------------------------------

    def local_pbd(self, sr_ref: str) -> str | None:
        for ref in self.rt.cache.derived("SR", "PBDs", sr_ref):
            row = self.rt.cache.get("PBD", ref)
            if row is not None and row.values["host"] == self.rt.host_ref:
                return ref
        return None

    def sr_uri(self, sr_ref: str) -> str:
        uri = self._uris.get(sr_ref)
        if uri is not None:
            return uri
        pbd = self.local_pbd(sr_ref)
        if pbd is None or not self.rt.cache.get("PBD", pbd).values["currently_attached"]:
            raise ApiError("SR_HAS_NO_PBDS", sr_ref)
        return self.attach(sr_ref, pbd)

    def attach(self, sr_ref: str, pbd_ref: str) -> str:
        sr = self._sr(sr_ref)
        config = self.rt.cache.get("PBD", pbd_ref).values["device_config"]
        try:
            uri = self.volume_plugin(sr["type"]).call("SR.attach", configuration=config)
        except StorageError as exc:
            raise api_error(exc) from None
        with self._lock:
            self._uris[sr_ref] = uri
        return uri

    def detach(self, sr_ref: str) -> None:
        uri = self._uris.pop(sr_ref, None)
        if uri is None:
            return
        try:
            self.volume_plugin(self._sr(sr_ref)["type"]).call("SR.detach", sr=uri)
        except StorageError as exc:
            raise api_error(exc) from None

    # -- SM records --------------------------------------------------------------------

    def sync_sm_records(self) -> None:
        """One SM record per installed volume plugin, as xapi's dbsync does for sm drivers."""
        rt = self.rt
        existing = {row.values["type"]: row.ref for row in rt.cache.rows("SM")}
        with rt.db.write() as tx:
            for sr_type in self.registry.sr_types():
                try:
                    query = self.registry.query(sr_type)
                except StorageError as exc:
                    log.warning("storage plugin %s does not answer Plugin.Query: %s", sr_type, exc)
                    continue
                features = list(query.get("features", []))
                values = {
                    "name_label": query.get("name", sr_type),
                    "name_description": query.get("description", ""),
                    "type": sr_type,
                    "vendor": query.get("vendor", ""),
                    "copyright": query.get("copyright", ""),
                    "version": query.get("version", ""),
                    "required_api_version": query.get("required_api_version", ""),
                    "configuration": dict(query.get("configuration", {})),
                    "capabilities": features,
                    "features": {f: 1 for f in features},
                    "driver_filename": self.registry.volume(sr_type).script("Plugin.Query"),
                    "required_cluster_stack": list(query.get("required_cluster_stack", [])),
                }
                if sr_type in existing:
                    tx.update("SM", existing.pop(sr_type), values)
                else:
                    tx.insert("SM", make_ref(), {**values, "uuid": make_uuid()})
            for ref in existing.values():  # a plugin that was removed
                tx.delete("SM", ref)

    # -- volumes and VDIs ----------------------------------------------------------------

    def vdi_fields(self, volume: dict[str, Any], parents: dict[str, str] | None = None) -> dict[str, Any]:
        """VDI fields a volume determines; ``parents`` maps keys to their VHD parent key."""
        sm_config: dict[str, str] = {}
        keys = volume.get("keys") or {}
        if "vdi_type" in keys:
            sm_config["vdi_type"] = keys["vdi_type"]
        # the file plugin's volumes name their parent; others need SR.tree
        parent = volume["parent"] if "parent" in volume else (parents or {}).get(volume["key"])
        if parent:
            sm_config["vhd-parent"] = parent
        return {
            "name_label": volume.get("name", ""),
            "name_description": volume.get("description", ""),
            "location": volume["key"],
            "virtual_size": int(volume.get("virtual_size", 0)),
            "physical_utilisation": int(volume.get("physical_utilisation", 0)),
            "read_only": not volume.get("read_write", True),
            "sharable": bool(volume.get("sharable", False)),
            "managed": True,
            "missing": False,
            "sm_config": sm_config,
        }

    def vhd_parents(self, sr_ref: str) -> dict[str, str]:
        """Volume key → parent key, for SRs whose plugin exposes its tree (``SR.tree``)."""
        sr = self._sr(sr_ref)
        plugin = self.volume_plugin(sr["type"])
        if not plugin.has("SR.tree"):
            return {}
        try:
            tree = plugin.call("SR.tree", sr=self.sr_uri(sr_ref))
        except StorageError:
            return {}
        return {n["key"]: n["parent"] for n in tree.get("nodes", []) if n.get("parent")}

    def parents_for(self, sr_ref: str, volumes: Iterable[dict[str, Any]]) -> dict[str, str]:
        """``vhd_parents`` unless every volume record names its parent itself."""
        if all("parent" in v for v in volumes):
            return {}
        return self.vhd_parents(sr_ref)

    def refresh_sr(self, sr_ref: str) -> None:
        """SR sizes from ``SR.stat`` (xapi's SR.update)."""
        values = self.sr_figures(sr_ref)
        with self.rt.db.write() as tx:
            tx.update("SR", sr_ref, values)

    def sr_figures(self, sr_ref: str) -> dict[str, Any]:
        """The SR fields ``SR.stat`` determines (to write in the caller's transaction)."""
        stat = self.call(sr_ref, "SR.stat")
        total = int(stat.get("total_space", 0))
        free = int(stat.get("free_space", 0))
        values = {
            "physical_size": total,
            "physical_utilisation": int(stat.get("physical_utilisation", total - free)),
            "clustered": bool(stat.get("clustered", False)),
        }
        if "virtual_allocation" in stat:
            values["virtual_allocation"] = int(stat["virtual_allocation"])
        return values

    def scan(self, sr_ref: str) -> None:
        """SR.scan: VDI records made, updated and removed to match ``SR.ls``."""
        volumes = {v["key"]: v for v in self.call(sr_ref, "SR.ls")}
        parents = self.parents_for(sr_ref, volumes.values())
        cache = self.rt.cache
        with self.rt.db.write() as tx:
            known = {}
            for ref in tx.refs_where("VDI", SR=sr_ref):
                known[tx.get("VDI", ref)["location"]] = ref
            for key, volume in volumes.items():
                fields = self.vdi_fields(volume, parents)
                ref = known.pop(key, None)
                if ref is None:
                    uuid = volume.get("uuid") or make_uuid()
                    if cache.ref_by_uuid("VDI", uuid) is not None:
                        uuid = make_uuid()
                    tx.insert("VDI", make_ref(), {**fields, "uuid": uuid, "SR": sr_ref, "type": "user",
                                                  "other_config": {}, "xenstore_data": {}})
                else:
                    current = tx.get("VDI", ref, for_update=True)
                    keep_config = {k: v for k, v in current["sm_config"].items() if k != "vhd-parent"}
                    fields["sm_config"] = {**keep_config, **fields["sm_config"]}
                    tx.update("VDI", ref, {k: v for k, v in fields.items() if current.get(k) != v})
            for ref in known.values():
                tx.delete("VDI", ref)  # gone from the SR: xapi forgets it
        self.refresh_sr(sr_ref)

    def volume_of(self, vdi_ref: str) -> tuple[str, str]:
        row = self.rt.cache.get("VDI", vdi_ref)
        if row is None:
            raise ApiError("HANDLE_INVALID", "VDI", vdi_ref)
        return row.values["SR"], row.values["location"]

