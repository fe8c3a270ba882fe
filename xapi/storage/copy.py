"""VDI.copy: a disk's bytes into a new (or given) VDI, on any SR.

Both disks are attached through their datapaths for a domain of the copy's
own, the source read-only; data moves in blocks and all-zero blocks are
skipped, so thin destinations stay thin.
"""

from __future__ import annotations

import os

from xapi.backends.storage import vhd
from xapi.context import Context
from xapi.errors import ApiError
from xapi.idl.types import NULL_REF
from xapi.refs import make_uuid

from . import datapath

CHUNK = 2 * 1024 * 1024


class _Disk:
    """Read or write a datapath's local path, VHD or raw."""

    def __init__(self, path: str, writable: bool):
        self.vhd = vhd.open(path, writable=writable) if path.endswith(".vhd") else None
        self.raw = None if self.vhd else open(path, "r+b" if writable else "rb")
        self.size = self.vhd.virtual_size if self.vhd else os.fstat(self.raw.fileno()).st_size

    def read(self, offset: int, length: int) -> bytes:
        if self.vhd:
            return self.vhd.read(offset, length)
        self.raw.seek(offset)
        return self.raw.read(length).ljust(length, b"\0")

    def write(self, offset: int, data: bytes) -> None:
        if self.vhd:
            self.vhd.write(offset, data)
        else:
            self.raw.seek(offset)
            self.raw.write(data)

    def close(self) -> None:
        (self.vhd or self.raw).close()


def copy(ctx: Context, vdi: str, sr: str, into_vdi: str) -> str:
    from xapi.impl.storage import create_vdi

    rt = ctx.rt
    source = rt.cache.get("VDI", vdi)
    if source is None:
        raise ApiError("HANDLE_INVALID", "VDI", vdi)
    source = source.values
    if into_vdi != NULL_REF:
        target = into_vdi
        if rt.cache.get("VDI", target) is None:
            raise ApiError("HANDLE_INVALID", "VDI", target)
    else:
        target_sr = sr if sr != NULL_REF else source["SR"]
        target = create_vdi(ctx, {
            "SR": target_sr, "name_label": source["name_label"],
            "name_description": source["name_description"], "virtual_size": source["virtual_size"],
            "type": source["type"], "sharable": source["sharable"], "read_only": False,
            "other_config": dict(source["other_config"]),
        })
    domain = f"copy-{make_uuid()}"
    src_path = datapath.local_path(datapath.activate(rt, vdi, domain, read_write=False))
    try:
        dst_path = datapath.local_path(datapath.activate(rt, target, domain, read_write=True))
        try:
            _copy_bytes(ctx, src_path, dst_path)
        finally:
            datapath.release(rt, target, domain, quiet=True)
    finally:
        datapath.release(rt, vdi, domain, quiet=True)
    if rt.storage is not None:
        from xapi.impl.storage import _refresh_vdi

        _refresh_vdi(ctx, target)
    return target


def _copy_bytes(ctx: Context, src_path: str, dst_path: str) -> None:
    src, dst = _Disk(src_path, False), _Disk(dst_path, True)
    try:
        if dst.size < src.size:
            raise ApiError("VDI_TOO_SMALL", dst.size, src.size)
        zero = bytes(CHUNK)
        for offset in range(0, src.size, CHUNK):
            ctx.check_cancelled()
            length = min(CHUNK, src.size - offset)
            data = src.read(offset, length)
            if data != zero[:length]:
                dst.write(offset, data)
    finally:
        src.close()
        dst.close()
