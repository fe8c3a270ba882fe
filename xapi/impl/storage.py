"""SR.*, PBD.* and VDI.*: storage objects kept in step with the SMAPIv3 plugins."""

from __future__ import annotations

import threading
from typing import Any, Callable

from xapi import operations
from xapi.backends.storage.plugins import StorageError
from xapi.context import Context, now
from xapi.errors import ApiError
from xapi.idl.types import NULL_REF
from xapi.ops import policy_for
from xapi.refs import make_ref, make_uuid
from xapi.storage import copy as vdi_copy
from xapi.storage import shared as shared_srs
from xapi.storage.service import Storage, api_error

from . import implements

SR_FULL_CODE = "SR_BACKEND_FAILURE_44"


def _storage(ctx: Context) -> Storage:
    if ctx.rt.storage is None:
        raise ApiError("INTERNAL_ERROR", "no storage plugins are configured on this host")
    return ctx.rt.storage


def _row(ctx: Context, cls: str, ref: str) -> dict[str, Any]:
    row = ctx.rt.cache.get(cls, ref)
    if row is None:
        raise ApiError("HANDLE_INVALID", cls, ref)
    return row.values


def _sr_op(ctx: Context, sr: str, op: str, fn):
    return operations.run_operation(ctx, "SR", sr, op, fn)


def _vdi_op(ctx: Context, vdi: str, op: str, fn):
    return operations.run_operation(ctx, "VDI", vdi, op, fn)


def _full(ctx: Context, sr: str, requested: int) -> ApiError:
    values = _row(ctx, "SR", sr)
    return ApiError("SR_FULL", requested, values["physical_size"] - values["physical_utilisation"])


# -- SR ---------------------------------------------------------------------------------


@implements("SR.get_supported_types", mode="read")
def get_supported_types(ctx: Context):
    return _storage(ctx).registry.sr_types()


@implements("SR.create")
def sr_create(ctx: Context, host: str, device_config: dict, physical_size: int, name_label: str,
              name_description: str, type: str, content_type: str, shared: bool, sm_config: dict):
    storage = _storage(ctx)
    _row(ctx, "host", host)
    plugin = storage.volume_plugin(type)
    uuid = make_uuid()
    try:
        config = plugin.call("SR.create", uuid=uuid, configuration=device_config,
                             name=name_label, description=name_description)
    except StorageError as exc:
        raise api_error(exc) from None
    sr, pbd = make_ref(), make_ref()
    pbd_config = config if isinstance(config, dict) else device_config
    with ctx.rt.db.write() as tx:
        tx.insert("SR", sr, {
            "uuid": uuid, "name_label": name_label, "name_description": name_description,
            "type": type, "content_type": content_type, "shared": shared,
            "sm_config": sm_config, "other_config": {}, "physical_size": physical_size,
        })
        tx.insert("PBD", pbd, {"uuid": make_uuid(), "host": host, "SR": sr,
                               "device_config": pbd_config,
                               "currently_attached": False, "other_config": {}})
    operations.refresh_allowed(ctx.rt, "SR", sr)
    _plug(ctx, pbd)
    if shared:  # every host of the pool gets a plugged PBD, or the SR is not made
        try:
            shared_srs.plug_on_other_hosts(ctx, sr, pbd_config)
        except BaseException:
            storage.detach(sr)
            _forget_records(ctx, sr)
            raise
    return sr


@implements("SR.introduce")
def sr_introduce(ctx: Context, uuid: str, name_label: str, name_description: str, type: str,
                 content_type: str, shared: bool, sm_config: dict):
    if ctx.rt.cache.ref_by_uuid("SR", uuid) is not None:
        raise ApiError("SR_UUID_EXISTS", uuid)
    sr = make_ref()
    with ctx.rt.db.write() as tx:
        tx.insert("SR", sr, {"uuid": uuid, "name_label": name_label,
                             "name_description": name_description, "type": type,
                             "content_type": content_type, "shared": shared, "sm_config": sm_config,
                             "other_config": {}})
    operations.refresh_allowed(ctx.rt, "SR", sr)
    return sr


def _forget_records(ctx: Context, sr: str) -> None:
    with ctx.rt.db.write() as tx:
        for cls in ("VDI", "PBD"):
            for ref in tx.refs_where(cls, SR=sr):
                tx.delete(cls, ref)
        tx.delete("SR", sr)


@implements("SR.forget")
def sr_forget(ctx: Context, sr: str):
    _sr_op(ctx, sr, "forget", lambda: None)
    _forget_records(ctx, sr)
    return ""


@implements("SR.destroy")
def sr_destroy(ctx: Context, sr: str):
    storage = _storage(ctx)

    def destroy():
        pbd = storage.local_pbd(sr)
        uri = storage.attach(sr, pbd)  # the PBD is unplugged: attach just to destroy
        try:
            storage.volume_plugin(_row(ctx, "SR", sr)["type"]).call("SR.destroy", sr=uri)
        except StorageError as exc:
            raise api_error(exc) from None
        finally:
            storage._uris.pop(sr, None)

    _sr_op(ctx, sr, "destroy", destroy)
    _forget_records(ctx, sr)
    return ""


@implements("SR.scan")
def sr_scan(ctx: Context, sr: str):
    _sr_op(ctx, sr, "scan", lambda: _storage(ctx).scan(sr))
    return ""


@implements("SR.update")
def sr_update(ctx: Context, sr: str):
    _sr_op(ctx, sr, "update", lambda: _storage(ctx).refresh_sr(sr))
    return ""


@implements("SR.set_name_label")
def sr_set_name_label(ctx: Context, sr: str, value: str):
    _set_sr_text(ctx, sr, "name_label", "SR.set_name", "new_name", value)
    return ""


@implements("SR.set_name_description")
def sr_set_name_description(ctx: Context, sr: str, value: str):
    _set_sr_text(ctx, sr, "name_description", "SR.set_description", "new_description", value)
    return ""


def _set_sr_text(ctx: Context, sr: str, field: str, method: str, param: str, value: str) -> None:
    storage = _storage(ctx)
    if storage.local_pbd(sr) and _row(ctx, "PBD", storage.local_pbd(sr))["currently_attached"]:
        storage.call(sr, method, **{param: value})
    with ctx.rt.db.write() as tx:
        tx.update("SR", sr, {field: value})


# -- PBD --------------------------------------------------------------------------------


def _plug(ctx: Context, pbd: str) -> None:
    storage = _storage(ctx)
    values = _row(ctx, "PBD", pbd)
    if values["host"] != ctx.rt.host_ref:
        raise ApiError("NOT_IMPLEMENTED", "PBD.plug on another host")
    storage.attach(values["SR"], pbd)
    with ctx.rt.db.write() as tx:
        tx.update("PBD", pbd, {"currently_attached": True})
    operations.refresh_allowed(ctx.rt, "SR", values["SR"])
    storage.scan(values["SR"])


@implements("PBD.plug")
def pbd_plug(ctx: Context, pbd: str):
    sr = _row(ctx, "PBD", pbd)["SR"]
    if _row(ctx, "PBD", pbd)["currently_attached"]:
        return ""  # already plugged: xapi's plug is idempotent
    _sr_op(ctx, sr, "plug", lambda: _plug(ctx, pbd))
    return ""


@implements("PBD.unplug")
def pbd_unplug(ctx: Context, pbd: str):
    storage = _storage(ctx)
    values = _row(ctx, "PBD", pbd)
    sr = values["SR"]
    if not values["currently_attached"]:
        return ""
    for vdi in ctx.rt.cache.derived("SR", "VDIs", sr):
        for vbd in ctx.rt.cache.derived("VDI", "VBDs", vdi):
            if _row(ctx, "VBD", vbd)["currently_attached"]:
                raise ApiError("VDI_IN_USE", vdi, "unplug")

    def unplug():
        storage.detach(sr)
        with ctx.rt.db.write() as tx:
            tx.update("PBD", pbd, {"currently_attached": False})

    _sr_op(ctx, sr, "unplug", unplug)
    return ""


# -- VDI --------------------------------------------------------------------------------


def _new_vdi(ctx: Context, sr: str, volume: dict, extra: dict,
             source: tuple[str, dict] | None = None, figures: dict | None = None) -> str:
    """The VDI record of a new volume, written with the SR's new sizes (and
    ``source``'s refreshed volume: a snapshot's origin) in one transaction."""
    storage = _storage(ctx)
    ref = make_ref()
    volumes = [volume] + ([source[1]] if source else [])
    parents = storage.parents_for(sr, volumes)
    fields = storage.vdi_fields(volume, parents)
    uuid = volume.get("uuid") or make_uuid()
    if ctx.rt.cache.ref_by_uuid("VDI", uuid) is not None:
        uuid = make_uuid()
    if figures is None:
        figures = storage.sr_figures(sr)
    with ctx.rt.db.write() as tx:
        tx.insert("VDI", ref, {"type": "user", "other_config": {}, "xenstore_data": {},
                               **fields, **extra, "uuid": uuid, "SR": sr})
        _set_allowed(ctx, tx, "VDI", ref)
        if source is not None:
            _update_vdi(tx, source[0], storage.vdi_fields(source[1], parents))
        tx.update("SR", sr, figures)
    return ref


def _together(first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Any, Any]:
    """Both results, ``second`` run in a thread of its own meanwhile (two
    plugin processes instead of one after the other)."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append((True, second()))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            out.append((False, exc))

    thread = threading.Thread(target=run, name="storage-read")
    thread.start()
    try:
        a = first()
    finally:
        thread.join()
    ok, b = out[0]
    if not ok:
        raise b
    return a, b


def _set_allowed(ctx: Context, tx, cls: str, ref: str) -> None:
    """``operations.refresh_allowed`` within the caller's transaction."""
    policy = policy_for(ctx.rt.model, cls)
    values = policy.with_context(tx, tx.get(cls, ref))
    tx.update(cls, ref, {"allowed_operations": policy.allowed(ref, values)})


def _update_vdi(tx, vdi: str, fields: dict) -> None:
    """A VDI's fields from its volume, keeping what the volume does not say."""
    current = tx.get("VDI", vdi)
    if current is None:
        return
    keep = {k: v for k, v in current["sm_config"].items() if k != "vhd-parent"}
    fields["sm_config"] = {**keep, **fields["sm_config"]}
    fields.pop("read_only", None)  # XenAPI's flag; a snapshot stays read-only
    changes = {k: v for k, v in fields.items() if current.get(k) != v}
    if changes:
        tx.update("VDI", vdi, changes)


def _volume_call(ctx: Context, sr: str, method: str, requested: int = 0, **params) -> Any:
    """A volume call whose "SR full" failure reads as XenAPI's SR_FULL [requested, maximum]."""
    try:
        return _storage(ctx).call(sr, method, **params)
    except ApiError as exc:
        if exc.code == SR_FULL_CODE:
            raise _full(ctx, sr, requested) from None
        raise


def create_vdi(ctx: Context, values: dict) -> str:
    sr = values.get("SR", NULL_REF)
    _row(ctx, "SR", sr)
    if "VDI_CREATE" not in _storage(ctx).features(_row(ctx, "SR", sr)["type"]):
        raise ApiError("SR_OPERATION_NOT_SUPPORTED", sr)
    size = int(values.get("virtual_size", 0))
    volume = _volume_call(ctx, sr, "Volume.create", size, name=values.get("name_label", ""),
                          description=values.get("name_description", ""), size=size,
                          sharable=bool(values.get("sharable", False)))
    extra = {k: values[k] for k in ("type", "other_config", "xenstore_data", "tags", "read_only")
             if k in values}
    sm_config = values.get("sm_config") or {}
    vdi = _new_vdi(ctx, sr, volume, extra)
    if sm_config:
        with ctx.rt.db.write() as tx:
            current = tx.must_get("VDI", vdi, for_update=True)["sm_config"]
            tx.update("VDI", vdi, {"sm_config": {**sm_config, **current}})
    return vdi


@implements("VDI.create")
def vdi_create(ctx: Context, values: dict):
    return create_vdi(ctx, values)


def destroy_vdi(ctx: Context, vdi: str) -> None:
    sr, key = _storage(ctx).volume_of(vdi)
    for vbd in ctx.rt.cache.derived("VDI", "VBDs", vdi):
        if _row(ctx, "VBD", vbd)["currently_attached"]:
            raise ApiError("VDI_IN_USE", vdi, "destroy")

    def destroy():
        try:
            _storage(ctx).call(sr, "Volume.destroy", key=key)
        except ApiError as exc:
            if exc.code == "VDI_IN_USE":
                raise ApiError("VDI_IN_USE", vdi, "destroy") from None
            raise
        with ctx.rt.db.write() as tx:
            for vbd in tx.refs_where("VBD", VDI=vdi):
                tx.delete("VBD", vbd)
            tx.delete("VDI", vdi)

    _vdi_op(ctx, vdi, "destroy", destroy)
    _storage(ctx).refresh_sr(sr)


@implements("VDI.destroy")
def vdi_destroy(ctx: Context, vdi: str):
    destroy_vdi(ctx, vdi)
    return ""


def _child(ctx: Context, vdi: str, method: str, op: str, snapshot: bool) -> str:
    storage = _storage(ctx)
    sr, key = storage.volume_of(vdi)
    source = _row(ctx, "VDI", vdi)

    def make():
        volume = _volume_call(ctx, sr, method, source["virtual_size"], key=key)
        extra = {"type": source["type"], "other_config": dict(source["other_config"]),
                 "xenstore_data": dict(source["xenstore_data"])}
        if snapshot:
            extra.update(is_a_snapshot=True, snapshot_of=vdi, snapshot_time=now(), read_only=True)
        # the source's VHD parent and size changed too; both reads at once
        stat, figures = _together(lambda: storage.call(sr, "Volume.stat", key=key),
                                  lambda: storage.sr_figures(sr))
        return _new_vdi(ctx, sr, volume, extra, source=(vdi, stat), figures=figures)

    return _vdi_op(ctx, vdi, op, make)


def snapshot_vdi(ctx: Context, vdi: str) -> str:
    return _child(ctx, vdi, "Volume.snapshot", "snapshot", snapshot=True)


def clone_vdi(ctx: Context, vdi: str) -> str:
    return _child(ctx, vdi, "Volume.clone", "clone", snapshot=False)


@implements("VDI.snapshot")
def vdi_snapshot(ctx: Context, vdi: str, driver_params: dict):
    return snapshot_vdi(ctx, vdi)


@implements("VDI.clone")
def vdi_clone(ctx: Context, vdi: str, driver_params: dict):
    return clone_vdi(ctx, vdi)


def _refresh_vdi(ctx: Context, vdi: str) -> None:
    storage = _storage(ctx)
    sr, key = storage.volume_of(vdi)
    volume = storage.call(sr, "Volume.stat", key=key)
    fields = storage.vdi_fields(volume, storage.parents_for(sr, [volume]))
    with ctx.rt.db.write() as tx:
        _update_vdi(tx, vdi, fields)


@implements("VDI.update")
def vdi_update(ctx: Context, vdi: str):
    _vdi_op(ctx, vdi, "update", lambda: _refresh_vdi(ctx, vdi))
    return ""


def _resize(ctx: Context, vdi: str, size: int, op: str) -> None:
    storage = _storage(ctx)
    sr, key = storage.volume_of(vdi)
    if _row(ctx, "VDI", vdi)["read_only"]:
        raise ApiError("VDI_READONLY", vdi)

    def resize():
        _volume_call(ctx, sr, "Volume.resize", size, key=key, new_size=size)
        _refresh_vdi(ctx, vdi)
        storage.refresh_sr(sr)

    _vdi_op(ctx, vdi, op, resize)


@implements("VDI.resize")
def vdi_resize(ctx: Context, vdi: str, size: int):
    _resize(ctx, vdi, size, "resize")
    return ""


@implements("VDI.resize_online")
def vdi_resize_online(ctx: Context, vdi: str, size: int):
    _resize(ctx, vdi, size, "resize_online")
    return ""


@implements("VDI.copy")
def vdi_copy_(ctx: Context, vdi: str, sr: str, base_vdi: str, into_vdi: str):
    return _vdi_op(ctx, vdi, "copy", lambda: vdi_copy.copy(ctx, vdi, sr, into_vdi))


@implements("VDI.forget")
def vdi_forget(ctx: Context, vdi: str):
    def forget():
        with ctx.rt.db.write() as tx:
            tx.delete("VDI", vdi)

    _vdi_op(ctx, vdi, "forget", forget)
    return ""


@implements("VDI.introduce")
def vdi_introduce(ctx: Context, uuid: str, name_label: str, name_description: str, SR: str,
                  type: str, sharable: bool, read_only: bool, other_config: dict, location: str,
                  xenstore_data: dict, sm_config: dict, managed: bool, virtual_size: int,
                  physical_utilisation: int, metadata_of_pool: str, is_a_snapshot: bool,
                  snapshot_time, snapshot_of: str):
    storage = _storage(ctx)
    _row(ctx, "SR", SR)
    if ctx.rt.cache.ref_by_uuid("VDI", uuid) is not None:
        raise ApiError("INVALID_VALUE", "uuid", uuid)
    volume = storage.call(SR, "Volume.stat", key=location)
    return _new_vdi(ctx, SR, {**volume, "uuid": uuid}, {
        "name_label": name_label, "name_description": name_description, "type": type,
        "other_config": other_config, "xenstore_data": xenstore_data,
        "is_a_snapshot": is_a_snapshot, "snapshot_of": snapshot_of, "snapshot_time": snapshot_time,
    })


@implements("VDI.set_name_label")
def vdi_set_name_label(ctx: Context, vdi: str, value: str):
    _set_vdi_text(ctx, vdi, "name_label", "Volume.set_name", "new_name", value)
    return ""


@implements("VDI.set_name_description")
def vdi_set_name_description(ctx: Context, vdi: str, value: str):
    _set_vdi_text(ctx, vdi, "name_description", "Volume.set_description", "new_description", value)
    return ""


def _set_vdi_text(ctx: Context, vdi: str, field: str, method: str, param: str, value: str) -> None:
    storage = _storage(ctx)
    sr, key = storage.volume_of(vdi)
    storage.call(sr, method, key=key, **{param: value})
    with ctx.rt.db.write() as tx:
        tx.update("VDI", vdi, {field: value})
