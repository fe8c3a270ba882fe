"""Dynamic and differencing VHD images, written from Microsoft's published
"Virtual Hard Disk Image Format Specification" (pure Python, stdlib only).

On-disk layout of the files this module creates::

    0       footer copy (512 bytes)
    512     dynamic disk header (1024 bytes)
    1536    parent locator data (differencing disks only), sector aligned
    ...     block allocation table (BAT), one big-endian u32 per block,
            padded with 0xFFFFFFFF to a whole sector
    ...     data blocks: sector bitmap (rounded up to whole sectors), then
            block_size bytes of data; allocated on demand at the end of file
    end     footer (512 bytes), byte-identical to the copy at offset 0

Every later structure is found through a pointer (header -> BAT, header ->
locators, BAT -> blocks), so the BAT or the locators may be relocated to the
end of the file when they outgrow their room (``resize``, ``set_parent``).

Semantics
---------
* Sector bitmaps: bit 7 of byte 0 is the first sector of the block.  In a
  differencing disk a clear bit means "read this sector from the parent".  In
  a dynamic disk the bitmap is kept accurate but readers ignore it (as qemu
  and vhd-lib do); the invariant that makes both readings agree is that a
  sector whose bit is clear is zero on disk.  Blocks are allocated past the end
  of the data after truncating any stale tail, so unwritten parts of a new
  block are holes that read as zeros: large sparse disks stay sparse.
* Crash ordering.  A new block is written as: truncate the tail, bitmap and
  data, the footer after the new block, and only then the BAT entry.  In an
  existing block of a differencing disk the data is written before the bitmap
  bit that exposes it (of a dynamic disk, bitmap first).  A process killed
  anywhere leaves a file whose copy of the footer at offset 0 is valid and
  whose BAT references only complete blocks; opening it writable repairs the
  trailing footer.  Re-running the interrupted operation converges.  (A
  coalesce preallocates the room for all its new blocks and writes the
  trailing footer once at the end: ``Vhd.reserve``.)  Nothing here is
  durable before ``flush``/``close``, which ``fsync`` a file written to.
* Creator application ``"tap\\0"`` (the code XenServer's blktap writes).
  qemu's ``vpc`` driver derives the disk size from the CHS geometry unless the
  creator is one it knows to store the exact size in ``current_size``
  (``"win "``, ``"qem2"``, ``"d2v "``, ``"CTXS"``, ``"tap\\0"``).  Geometry is
  computed with the specification's algorithm, which rounds *down*, so with a
  creator such as ``"xapi"`` qemu would report e.g. 10 GiB - 40 KiB for a
  10 GiB disk.  With ``"tap\\0"`` it reports ``current_size`` exactly, like
  vhd-util's images, and the geometry stays the one the spec prescribes.
* Parents.  A differencing disk records the parent's unique id, its
  modification time, its path relative to the child in the header's parent
  name (UTF-16BE; this is what vhd-lib follows) and three parent locators:
  W2ru (relative path) and W2ku (absolute path), both UTF-16LE, and MacX
  (``file://`` URL, UTF-8).  Locator "data space" is written in sectors, as
  the spec says.  Resolution tries the relative locator first, so a chain
  survives its directory being moved or mounted elsewhere; the parent's
  unique id is checked when the parent is opened.  The parent timestamp is
  not checked (every write to a parent, e.g. a coalesce, changes it).
* Timestamps are seconds since 2000-01-01 00:00:00 UTC (the VHD epoch).
* Objects cache the BAT, recent sector bitmaps and the opened parent: a file
  must not be written through two handles (or two processes) at once.
* Limits: virtual sizes are rounded up to a whole sector and capped at
  2040 GiB (the spec's limit; qemu refuses larger).  Files cannot exceed
  2 TiB (BAT entries are 32-bit sector numbers).  Fixed VHDs are not
  supported.  A ``Vhd`` object is not thread-safe.
"""

from __future__ import annotations

import os
import struct
import time
import uuid as uuidlib
from array import array
from collections import OrderedDict
from typing import Callable, Iterator
from urllib.parse import quote, unquote

__all__ = [
    "VhdError",
    "Vhd",
    "create_dynamic",
    "create_differencing",
    "open",
    "chain",
    "coalesce_into_parent",
    "vhd_timestamp",
    "unix_timestamp",
    "chs_geometry",
    "DEFAULT_BLOCK_SIZE",
    "MAX_VIRTUAL_SIZE",
]

SECTOR = 512
FOOTER_SIZE = 512
HEADER_SIZE = 1024
HEADER_OFFSET = FOOTER_SIZE
DEFAULT_BLOCK_SIZE = 2 * 1024 * 1024
MAX_VIRTUAL_SIZE = 2040 * 1024 ** 3
BLOCK_UNUSED = 0xFFFFFFFF
MAX_FILE_SECTOR = 0xFFFFFFFE

FOOTER_COOKIE = b"conectix"
HEADER_COOKIE = b"cxsparse"
FEATURES_RESERVED = 0x00000002          # "must always be set"
FILE_FORMAT_VERSION = 0x00010000
HEADER_VERSION = 0x00010000
CREATOR_APP = b"tap\0"
CREATOR_VERSION = 0x00010003
CREATOR_HOST_OS = 0

DISK_FIXED = 2
DISK_DYNAMIC = 3
DISK_DIFFERENCING = 4

PLAT_NONE = 0
PLAT_WI2R = 0x57693272   # "Wi2r", deprecated, ANSI relative path
PLAT_WI2K = 0x5769326B   # "Wi2k", deprecated, ANSI absolute path
PLAT_W2RU = 0x57327275   # "W2ru", UTF-16LE relative path
PLAT_W2KU = 0x57326B75   # "W2ku", UTF-16LE absolute path
PLAT_MAC = 0x4D616320    # "Mac ", Mac OS alias blob (unsupported)
PLAT_MACX = 0x4D616358   # "MacX", UTF-8 file URL

VHD_EPOCH = 946684800    # 2000-01-01T00:00:00Z in Unix time

# Room reserved for each parent locator's data when a file is created, so
# that re-parenting to a path of similar length rewrites it in place.
LOCATOR_RESERVE = 1024

# footer: cookie, features, version, data offset, timestamp, creator app,
# creator version, creator host OS, original size, current size,
# cylinders, heads, sectors/track, disk type, checksum, unique id,
# saved state, hidden (blktap's use of the first reserved byte), reserved
_FOOTER = struct.Struct(">8sIIQI4sIIQQHBBII16sBB426s")
# header: cookie, data offset, table offset, version, max table entries,
# block size, checksum, parent unique id, parent timestamp, reserved,
# parent unicode name, 8 x locator (24 bytes), reserved
_HEADER = struct.Struct(">8sQQIIII16sII512s192s256s")
_LOCATOR = struct.Struct(">IIIIQ")
assert _FOOTER.size == FOOTER_SIZE and _HEADER.size == HEADER_SIZE
assert array("I").itemsize == 4
_LITTLE_ENDIAN_HOST = array("I", [1]).tobytes()[0] == 1
_FOOTER_CHECKSUM_AT = 64
_HEADER_CHECKSUM_AT = 36

_BITMAP_CACHE_BLOCKS = 256


class VhdError(Exception):
    """A VHD file is invalid, corrupt, or the operation is impossible."""

    def __init__(self, message: str, path: str | None = None):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


# --------------------------------------------------------------------------
# small helpers

def vhd_timestamp(unix_time: float | None = None) -> int:
    """Seconds since 2000-01-01 00:00:00 UTC, clamped to the u32 field."""
    if unix_time is None:
        unix_time = time.time()
    return max(0, min(0xFFFFFFFF, int(unix_time) - VHD_EPOCH))


def unix_timestamp(vhd_time: int) -> int:
    return int(vhd_time) + VHD_EPOCH


def _checksum(buf: bytes | bytearray, at: int) -> int:
    """One's complement of the byte sum, the checksum field counted as zero."""
    total = sum(buf) - sum(buf[at:at + 4])
    return (~total) & 0xFFFFFFFF


def chs_geometry(size: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) for ``size`` bytes, per the spec.

    The spec's algorithm rounds down: cylinders * heads * sectors may be less
    than the disk's sector count (see the module docstring for qemu)."""
    total = size // SECTOR
    if total > 65535 * 16 * 255:
        total = 65535 * 16 * 255
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = total // spt
    else:
        spt = 17
        cth = total // spt
        heads = max(4, (cth + 1023) // 1024)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = total // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = total // spt
    return cth // heads, heads, spt


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def _pread(fd: int, length: int, offset: int) -> bytes:
    """Read exactly ``length`` bytes; bytes past the end of file read as zeros."""
    data = os.pread(fd, length, offset)
    if len(data) < length:
        parts = [data]
        got = len(data)
        while got < length:
            more = os.pread(fd, length - got, offset + got)
            if not more:
                parts.append(bytes(length - got))
                break
            parts.append(more)
            got += len(more)
        data = b"".join(parts)
    return data


def _pread_into(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    total = len(view)
    while done < total:
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            view[done:] = bytes(total - done)
            return
        done += n


# Writes go through these two names so tests can inject a crash at any point.
def _pwrite(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _ftruncate(fd: int, length: int) -> None:
    os.ftruncate(fd, length)


def _bitmap_set(bitmap: bytearray, first: int, end: int) -> bool:
    """Set bits [first, end); returns whether anything changed."""
    changed = False
    i = first
    while i < end:
        byte, bit = divmod(i, 8)
        if bit == 0 and i + 8 <= end:
            # whole bytes at once
            last = byte + (end - i) // 8
            if bitmap.count(0xFF, byte, last) != last - byte:
                bitmap[byte:last] = b"\xff" * (last - byte)
                changed = True
            i += (last - byte) * 8
            continue
        mask = 0x80 >> bit
        if not bitmap[byte] & mask:
            bitmap[byte] |= mask
            changed = True
        i += 1
    return changed


def _bitmap_runs(bitmap: bytes | bytearray, first: int, end: int) -> Iterator[tuple[int, int, bool]]:
    """Maximal runs (start, stop, is_set) of sector bits in [first, end)."""
    i = first
    while i < end:
        state = bool(bitmap[i >> 3] & (0x80 >> (i & 7)))
        j = i + 1
        fill = b"\xff" if state else b"\x00"
        while j < end:
            if j & 7 == 0 and j + 8 <= end:
                # whole bytes of the same state, counted at C speed
                segment = bitmap[j >> 3:end >> 3]
                same = len(segment) - len(segment.lstrip(fill))
                if same:
                    j += 8 * same
                    continue
            if bool(bitmap[j >> 3] & (0x80 >> (j & 7))) != state:
                break
            j += 1
        yield i, j, state
        i = j


def _encode_utf16be_name(name: str) -> bytes:
    raw = name.encode("utf-16-be")
    if len(raw) > 512:
        raise VhdError(f"parent name too long for the header (max 256 UTF-16 units): {name!r}")
    return raw.ljust(512, b"\0")


def _decode_utf16(raw: bytes, encoding: str) -> str:
    text = raw.decode(encoding, errors="replace")
    return text.split("\0", 1)[0]


# --------------------------------------------------------------------------
# footer / header records

class _Footer:
    __slots__ = ("features", "version", "data_offset", "timestamp", "creator_app",
                 "creator_version", "creator_os", "original_size", "current_size",
                 "cylinders", "heads", "spt", "disk_type", "uuid", "saved_state", "hidden",
                 "reserved")

    @classmethod
    def parse(cls, buf: bytes) -> "_Footer":
        (cookie, features, version, data_offset, timestamp, creator_app, creator_version,
         creator_os, original_size, current_size, cylinders, heads, spt, disk_type, _checksum_,
         unique, saved, hidden, reserved) = _FOOTER.unpack(buf)
        f = cls()
        f.features, f.version, f.data_offset, f.timestamp = features, version, data_offset, timestamp
        f.creator_app, f.creator_version, f.creator_os = creator_app, creator_version, creator_os
        f.original_size, f.current_size = original_size, current_size
        f.cylinders, f.heads, f.spt, f.disk_type = cylinders, heads, spt, disk_type
        f.uuid, f.saved_state, f.hidden, f.reserved = unique, saved, hidden, reserved
        return f

    def pack(self) -> bytes:
        buf = bytearray(_FOOTER.pack(
            FOOTER_COOKIE, self.features, self.version, self.data_offset, self.timestamp,
            self.creator_app, self.creator_version, self.creator_os, self.original_size,
            self.current_size, self.cylinders, self.heads, self.spt, self.disk_type, 0,
            self.uuid, self.saved_state, self.hidden, self.reserved))
        struct.pack_into(">I", buf, _FOOTER_CHECKSUM_AT, _checksum(buf, _FOOTER_CHECKSUM_AT))
        return bytes(buf)


class _Locator:
    __slots__ = ("code", "space", "length", "offset")

    def __init__(self, code=PLAT_NONE, space=0, length=0, offset=0):
        self.code, self.space, self.length, self.offset = code, space, length, offset

    def space_bytes(self) -> int:
        # The spec says "number of 512-byte sectors"; some writers store bytes.
        # Callers bound this by the room actually available.
        return self.space * SECTOR


class _Header:
    __slots__ = ("data_offset", "table_offset", "version", "max_entries", "block_size",
                 "parent_uuid", "parent_timestamp", "reserved1", "parent_name_raw",
                 "locators", "reserved2")

    @classmethod
    def parse(cls, buf: bytes) -> "_Header":
        (cookie, data_offset, table_offset, version, max_entries, block_size, _checksum_,
         parent_uuid, parent_ts, reserved1, name, locs, reserved2) = _HEADER.unpack(buf)
        h = cls()
        h.data_offset, h.table_offset, h.version = data_offset, table_offset, version
        h.max_entries, h.block_size = max_entries, block_size
        h.parent_uuid, h.parent_timestamp, h.reserved1 = parent_uuid, parent_ts, reserved1
        h.parent_name_raw, h.reserved2 = name, reserved2
        h.locators = [_Locator(*_LOCATOR.unpack_from(locs, i * 24)[:3],
                               _LOCATOR.unpack_from(locs, i * 24)[4]) for i in range(8)]
        return h

    def pack(self) -> bytes:
        locs = b"".join(_LOCATOR.pack(l.code, l.space, l.length, 0, l.offset) for l in self.locators)
        buf = bytearray(_HEADER.pack(
            HEADER_COOKIE, self.data_offset, self.table_offset, self.version, self.max_entries,
            self.block_size, 0, self.parent_uuid, self.parent_timestamp, self.reserved1,
            self.parent_name_raw, locs, self.reserved2))
        struct.pack_into(">I", buf, _HEADER_CHECKSUM_AT, _checksum(buf, _HEADER_CHECKSUM_AT))
        return bytes(buf)

    @property
    def parent_name(self) -> str:
        return _decode_utf16(self.parent_name_raw, "utf-16-be")


def _locator_payloads(child_path: str, parent_path: str) -> tuple[str, list[tuple[int, bytes]]]:
    """Header parent name and (platform code, data) for the child's locators."""
    child_dir = os.path.dirname(os.path.abspath(child_path))
    parent_abs = os.path.abspath(parent_path)
    rel = os.path.relpath(parent_abs, child_dir)
    rel_dotted = rel if rel.startswith("..") else "./" + rel
    payloads = [
        (PLAT_W2RU, rel_dotted.encode("utf-16-le")),
        (PLAT_W2KU, parent_abs.encode("utf-16-le")),
        (PLAT_MACX, ("file://" + quote(parent_abs, safe="/-._~")).encode("utf-8")),
    ]
    return rel, payloads


# --------------------------------------------------------------------------

class Vhd:
    """An open dynamic or differencing VHD.  Use :func:`open` to get one."""

    def __init__(self, path: str, writable: bool = False):
        self.path = os.path.abspath(path)
        self.writable = writable
        self._fd = -1
        self._dirty = False          # written since opened or flushed: close() syncs
        self._reserved = 0           # end of the room reserve() preallocated
        self._parent: Vhd | None = None
        self._bitmaps: OrderedDict[int, bytearray] = OrderedDict()
        flags = (os.O_RDWR if writable else os.O_RDONLY) | getattr(os, "O_CLOEXEC", 0)
        try:
            self._fd = os.open(self.path, flags)
        except FileNotFoundError:
            raise VhdError("no such file", self.path) from None
        try:
            self._load()
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise

    # -- loading -----------------------------------------------------------

    def _err(self, message: str) -> VhdError:
        return VhdError(message, self.path)

    def _read_footer_at(self, offset: int) -> tuple[_Footer | None, str]:
        buf = _pread(self._fd, FOOTER_SIZE, offset)
        if buf[:8] != FOOTER_COOKIE:
            return None, f"no footer cookie at offset {offset}"
        stored = struct.unpack_from(">I", buf, _FOOTER_CHECKSUM_AT)[0]
        if stored != _checksum(buf, _FOOTER_CHECKSUM_AT):
            return None, (f"footer checksum mismatch at offset {offset} (stored {stored:#010x}, "
                          f"computed {_checksum(buf, _FOOTER_CHECKSUM_AT):#010x})")
        return _Footer.parse(buf), ""

    def _load(self) -> None:
        size = os.fstat(self._fd).st_size
        if size < FOOTER_SIZE + HEADER_SIZE + FOOTER_SIZE:
            raise self._err(f"file too small to be a dynamic VHD ({size} bytes)")
        copy, why_copy = self._read_footer_at(0)
        tail, why_tail = self._read_footer_at(size - FOOTER_SIZE)
        if copy is None and tail is None:
            raise self._err(f"corrupt VHD footer: {why_copy}; {why_tail}")
        # The copy at offset 0 is written first, so it is the newest when both
        # are valid and differ (interrupted footer update).
        footer = copy if copy is not None else tail
        assert footer is not None
        if footer.disk_type == DISK_FIXED:
            raise self._err("fixed VHDs are not supported")
        if footer.disk_type not in (DISK_DYNAMIC, DISK_DIFFERENCING):
            raise self._err(f"unknown disk type {footer.disk_type}")
        if footer.version >> 16 != 1:
            raise self._err(f"unsupported file format version {footer.version:#x}")
        if footer.data_offset != HEADER_OFFSET and not (
                FOOTER_SIZE <= footer.data_offset <= size - HEADER_SIZE - FOOTER_SIZE):
            raise self._err(f"bad dynamic header offset {footer.data_offset}")
        self._footer = footer

        hbuf = _pread(self._fd, HEADER_SIZE, footer.data_offset)
        if hbuf[:8] != HEADER_COOKIE:
            raise self._err("corrupt dynamic disk header: bad cookie")
        stored = struct.unpack_from(">I", hbuf, _HEADER_CHECKSUM_AT)[0]
        computed = _checksum(hbuf, _HEADER_CHECKSUM_AT)
        if stored != computed:
            raise self._err(f"dynamic disk header checksum mismatch (stored {stored:#010x}, "
                            f"computed {computed:#010x})")
        header = _Header.parse(hbuf)
        if header.version >> 16 != 1:
            raise self._err(f"unsupported dynamic header version {header.version:#x}")
        bs = header.block_size
        if bs < SECTOR or bs & (bs - 1):
            raise self._err(f"block size {bs} is not a power of two >= 512")
        if header.max_entries * bs < footer.current_size:
            raise self._err(f"BAT of {header.max_entries} entries cannot cover "
                            f"{footer.current_size} bytes")
        bat_bytes = _round_up(header.max_entries * 4, SECTOR)
        if header.table_offset + header.max_entries * 4 > size:
            raise self._err("BAT extends past the end of file (truncated?)")
        self._header = header
        self._spb = bs // SECTOR
        self._bitmap_bytes = _round_up(-(-self._spb // 8), SECTOR)

        bat = array("I")
        bat.frombytes(_pread(self._fd, header.max_entries * 4, header.table_offset))
        if _LITTLE_ENDIAN_HOST:
            bat.byteswap()
        self._bat = bat

        ends = [footer.data_offset + HEADER_SIZE, header.table_offset + bat_bytes]
        for loc in header.locators:
            if loc.code != PLAT_NONE:
                ends.append(loc.offset + self._locator_room(loc, size))
        block_span = self._bitmap_bytes + bs
        max_block = 0
        for entry in bat:
            if entry != BLOCK_UNUSED and entry > max_block:
                max_block = entry
        if max_block:
            ends.append(max_block * SECTOR + block_span)
        self._end = _round_up(max(ends), SECTOR)
        if self._end > size:
            raise self._err(f"data ends at {self._end} past the end of file ({size} bytes): truncated")

        raw_footer = footer.pack()
        self.needs_repair = not (tail is not None and copy is not None
                                 and _pread(self._fd, FOOTER_SIZE, 0) == raw_footer
                                 and _pread(self._fd, FOOTER_SIZE, size - FOOTER_SIZE) == raw_footer
                                 and size == self._end + FOOTER_SIZE)
        if self.needs_repair and self.writable:
            self._write_footer()

    def _locator_room(self, loc: _Locator, file_size: int | None = None) -> int:
        """Bytes that belong to a locator's data area."""
        used = _round_up(loc.length, SECTOR)
        if file_size is None:
            file_size = self._end + FOOTER_SIZE
        by_sectors = loc.space_bytes()
        room = by_sectors if loc.offset + by_sectors <= file_size else _round_up(loc.space, SECTOR)
        return max(used, room)

    # -- properties ----------------------------------------------------------

    @property
    def virtual_size(self) -> int:
        return self._footer.current_size

    @property
    def uuid(self) -> str:
        return str(uuidlib.UUID(bytes=self._footer.uuid))

    @property
    def block_size(self) -> int:
        return self._header.block_size

    @property
    def disk_type(self) -> int:
        return self._footer.disk_type

    @property
    def is_differencing(self) -> bool:
        return self._footer.disk_type == DISK_DIFFERENCING

    @property
    def hidden(self) -> bool:
        """blktap's "hidden" flag (footer byte 85), used by the storage GC."""
        return bool(self._footer.hidden)

    @property
    def timestamp(self) -> int:
        """Creation time as Unix seconds."""
        return unix_timestamp(self._footer.timestamp)

    @property
    def creator_app(self) -> bytes:
        return self._footer.creator_app

    @property
    def geometry(self) -> tuple[int, int, int]:
        return self._footer.cylinders, self._footer.heads, self._footer.spt

    @property
    def parent_uuid(self) -> str | None:
        if not self.is_differencing:
            return None
        return str(uuidlib.UUID(bytes=self._header.parent_uuid))

    @property
    def parent_timestamp(self) -> int | None:
        if not self.is_differencing:
            return None
        return unix_timestamp(self._header.parent_timestamp)

    @property
    def parent_name(self) -> str | None:
        """The header's parent name field (the parent's path relative to us)."""
        return self._header.parent_name if self.is_differencing else None

    def parent_locators(self) -> list[tuple[str, str]]:
        """[(platform code, decoded path)] of the parent locator entries."""
        out = []
        for loc in self._header.locators:
            if loc.code == PLAT_NONE:
                continue
            code = struct.pack(">I", loc.code).decode("latin-1")
            out.append((code, self._decode_locator(loc) or ""))
        return out

    def _decode_locator(self, loc: _Locator) -> str | None:
        if loc.length == 0 or loc.length > 64 * 1024:
            return None
        raw = _pread(self._fd, loc.length, loc.offset)
        if loc.code in (PLAT_W2RU, PLAT_W2KU):
            text = _decode_utf16(raw, "utf-16-le")
        elif loc.code == PLAT_MACX:
            text = raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")
            if text.startswith("file://"):
                text = text[len("file://"):]
                if text.startswith("localhost/"):
                    text = text[len("localhost"):]
            text = unquote(text)
        elif loc.code in (PLAT_WI2R, PLAT_WI2K):
            text = raw.split(b"\0", 1)[0].decode("latin-1")
        else:
            return None
        return text.replace("\\", "/") or None

    def _parent_candidates(self) -> list[str]:
        child_dir = os.path.dirname(self.path)
        found: list[str] = []
        order = {PLAT_W2RU: 0, PLAT_WI2R: 1, PLAT_MACX: 2, PLAT_W2KU: 3, PLAT_WI2K: 4}
        locs = sorted((l for l in self._header.locators if l.code in order), key=lambda l: order[l.code])
        names = [self._decode_locator(l) for l in locs]
        names.append(self._header.parent_name or None)
        for name in names:
            if not name:
                continue
            if len(name) >= 2 and name[1] == ":":      # Windows drive path
                continue
            found.append(os.path.normpath(os.path.join(child_dir, name)))
        for name in list(names):                        # last resort: same directory
            if name:
                found.append(os.path.join(child_dir, os.path.basename(name)))
        unique = []
        for path in found:
            if path not in unique:
                unique.append(path)
        return unique

    @property
    def parent_path(self) -> str | None:
        """Absolute path of the parent, resolved through the parent locators
        (relative first), then the header's parent name.  The first candidate
        that exists wins; if none exists, the first candidate is returned."""
        if not self.is_differencing:
            return None
        candidates = self._parent_candidates()
        for path in candidates:
            if os.path.exists(path):
                return path
        return candidates[0] if candidates else None

    def parent(self) -> "Vhd | None":
        """The parent, opened read-only (cached); checks its unique id."""
        if not self.is_differencing:
            return None
        if self._parent is None:
            path = self.parent_path
            if path is None or not os.path.exists(path):
                raise self._err(f"parent not found (candidates: {self._parent_candidates()})")
            parent = Vhd(path, writable=False)
            if parent._footer.uuid != self._header.parent_uuid:
                parent.close()
                raise self._err(f"parent {path} has unique id {parent.uuid}, "
                                f"expected {self.parent_uuid}")
            self._parent = parent
        return self._parent

    # -- BAT and bitmaps -----------------------------------------------------

    def allocated_blocks(self) -> list[int]:
        """Indices of the blocks present in this file (not its parents)."""
        return [i for i, entry in enumerate(self._bat) if entry != BLOCK_UNUSED]

    def allocation_bitmap(self) -> bytes:
        """One bit per BAT entry (MSB first), set where the block is allocated."""
        out = bytearray(-(-len(self._bat) // 8))
        for i, entry in enumerate(self._bat):
            if entry != BLOCK_UNUSED:
                out[i >> 3] |= 0x80 >> (i & 7)
        return bytes(out)

    def physical_size(self) -> int:
        """Size of the file in bytes (what vhd-util reports as physical size)."""
        return os.fstat(self._fd).st_size

    def _bitmap(self, block: int) -> bytearray:
        bm = self._bitmaps.get(block)
        if bm is not None:
            self._bitmaps.move_to_end(block)
            return bm
        bm = bytearray(_pread(self._fd, self._bitmap_bytes, self._bat[block] * SECTOR))
        self._bitmaps[block] = bm
        if len(self._bitmaps) > _BITMAP_CACHE_BLOCKS:
            self._bitmaps.popitem(last=False)
        return bm

    def sector_bitmap(self, block: int) -> bytes | None:
        """The sector bitmap of an allocated block (None if unallocated)."""
        if block >= len(self._bat) or self._bat[block] == BLOCK_UNUSED:
            return None
        return bytes(self._bitmap(block))

    # -- reading ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._fd < 0:
            raise VhdError("VHD is closed", self.path)

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.virtual_size:
            raise ValueError(f"range [{offset}, {offset + length}) outside the virtual size "
                             f"{self.virtual_size} of {self.path}")

    def read(self, offset: int, length: int, *, layer_only: bool = False) -> bytes:
        """Bytes of the virtual disk.  Through the chain by default; with
        ``layer_only`` this file's sectors only, zeros elsewhere."""
        self._check_open()
        self._check_range(offset, length)
        if length == 0:
            return b""
        first = offset // SECTOR
        end = -(-(offset + length) // SECTOR)
        buf = bytearray((end - first) * SECTOR)
        self._read_sectors(first, memoryview(buf), layer_only)
        skip = offset - first * SECTOR
        if skip == 0 and len(buf) == length:
            return bytes(buf)
        return bytes(memoryview(buf)[skip:skip + length])

    def _read_sectors(self, sector: int, out: memoryview, layer_only: bool = False) -> None:
        """Fill ``out`` (whole sectors, zero-initialised by the caller) from
        ``sector`` on; sectors past the virtual size stay zero."""
        count = len(out) // SECTOR
        limit = -(-self.virtual_size // SECTOR)
        spb = self._spb
        diff = self.is_differencing
        parent = None if layer_only else self.parent
        pos = 0
        while pos < count:
            s = sector + pos
            if s >= limit:
                break
            block, in_block = divmod(s, spb)
            n = min(spb - in_block, count - pos, limit - s)
            dst = out[pos * SECTOR:(pos + n) * SECTOR]
            entry = self._bat[block] if block < len(self._bat) else BLOCK_UNUSED
            if entry == BLOCK_UNUSED:
                if diff and parent is not None:
                    parent()._read_sectors(s, dst)
            else:
                data_at = entry * SECTOR + self._bitmap_bytes
                if not diff:
                    _pread_into(self._fd, dst, data_at + in_block * SECTOR)
                else:
                    bm = self._bitmap(block)
                    for a, b, present in _bitmap_runs(bm, in_block, in_block + n):
                        part = dst[(a - in_block) * SECTOR:(b - in_block) * SECTOR]
                        if present:
                            _pread_into(self._fd, part, data_at + a * SECTOR)
                        elif parent is not None:
                            parent()._read_sectors(block * spb + a, part)
            pos += n

    # -- writing ---------------------------------------------------------------

    def _check_writable(self) -> None:
        self._check_open()
        if not self.writable:
            raise VhdError("opened read-only", self.path)

    def write(self, offset: int, data) -> None:
        """Write bytes at a virtual offset, allocating blocks as needed.
        Partial sectors are merged with the current contents (through the chain)."""
        self._check_writable()
        data = memoryview(data).cast("B")
        length = len(data)
        self._check_range(offset, length)
        if length == 0:
            return
        head = offset % SECTOR
        end = offset + length
        first = offset // SECTOR
        last = -(-end // SECTOR)
        if head == 0 and end % SECTOR == 0:
            self._write_sectors(first, data)
            return
        buf = bytearray((last - first) * SECTOR)
        view = memoryview(buf)
        if head:
            self._read_sectors(first, view[:SECTOR])
        if end % SECTOR and (last - 1 != first or not head):
            self._read_sectors(last - 1, view[-SECTOR:])
        buf[head:head + length] = data
        self._write_sectors(first, view)

    def _write_sectors(self, sector: int, data: memoryview) -> None:
        self._dirty = True
        count = len(data) // SECTOR
        spb = self._spb
        pos = 0
        while pos < count:
            s = sector + pos
            block, in_block = divmod(s, spb)
            n = min(spb - in_block, count - pos)
            chunk = data[pos * SECTOR:(pos + n) * SECTOR]
            entry = self._bat[block]
            if entry == BLOCK_UNUSED:
                self._allocate_block(block, in_block, chunk)
            else:
                data_at = entry * SECTOR + self._bitmap_bytes + in_block * SECTOR
                bm = self._bitmap(block)
                new_bm = bytearray(bm)
                changed = _bitmap_set(new_bm, in_block, in_block + n)
                if self.is_differencing:
                    # data first: a clear bit keeps showing the parent until
                    # the data it exposes is complete
                    _pwrite(self._fd, chunk, data_at)
                    if changed:
                        _pwrite(self._fd, new_bm, entry * SECTOR)
                else:
                    if changed:
                        _pwrite(self._fd, new_bm, entry * SECTOR)
                    _pwrite(self._fd, chunk, data_at)
                bm[:] = new_bm
            pos += n

    def _take_space(self, nbytes: int) -> int:
        """Claim ``nbytes`` (sector multiple) at the end of the data; the
        caller writes there and then calls :meth:`_write_footer`."""
        at = self._end
        if (at + nbytes) // SECTOR > MAX_FILE_SECTOR:
            raise self._err("VHD file would exceed 2 TiB")
        self._dirty = True
        if at + nbytes <= self._reserved:
            self._end = at + nbytes      # preallocated: reads as zeros already
            return at
        # drop the old trailing footer and any stale tail so the new area
        # starts as a hole (reads as zeros)
        _ftruncate(self._fd, at)
        self._end = at + nbytes
        return at

    def _allocate_block(self, block: int, in_block: int, chunk: memoryview) -> None:
        n = len(chunk) // SECTOR
        at = self._take_space(self._bitmap_bytes + self.block_size)
        bm = bytearray(self._bitmap_bytes)
        _bitmap_set(bm, in_block, in_block + n)
        _pwrite(self._fd, bm, at)
        _pwrite(self._fd, chunk, at + self._bitmap_bytes + in_block * SECTOR)
        if not self._reserved:
            self._write_footer(copy=False)
        # only now does the BAT reference the block
        self._bat[block] = at // SECTOR
        _pwrite(self._fd, struct.pack(">I", at // SECTOR), self._header.table_offset + 4 * block)
        self._bitmaps[block] = bm
        if len(self._bitmaps) > _BITMAP_CACHE_BLOCKS:
            self._bitmaps.popitem(last=False)

    def _write_footer(self, copy: bool = True) -> None:
        self._dirty = True
        raw = self._footer.pack()
        if copy:
            _pwrite(self._fd, raw, 0)
        _pwrite(self._fd, raw, self._end)
        if os.fstat(self._fd).st_size != self._end + FOOTER_SIZE:
            _ftruncate(self._fd, self._end + FOOTER_SIZE)
        self.needs_repair = False

    def _write_header(self) -> None:
        self._dirty = True
        _pwrite(self._fd, self._header.pack(), self._footer.data_offset)

    def reserve(self, nbytes: int) -> bool:
        """Preallocate ``nbytes`` past the data for blocks about to be
        appended (a coalesce); False if the file system cannot.  Until
        :meth:`end_reserve`, new blocks take that room without truncating the
        file or rewriting the trailing footer each time: a process killed
        meanwhile leaves a file whose copy of the footer at offset 0 is valid
        and whose BAT references only blocks inside it (the bitmap and data
        are written before the BAT entry), repaired by the next writable
        open like any interrupted write."""
        self._check_writable()
        if nbytes <= 0 or self._reserved:
            return False
        end = self._end + nbytes
        if (end + FOOTER_SIZE) // SECTOR > MAX_FILE_SECTOR:
            return False
        from . import iohints

        # the old trailing footer is overwritten by the first block's bitmap
        if not iohints.preallocate(self._fd, self._end, nbytes + FOOTER_SIZE):
            return False
        self._dirty = True
        self._reserved = end
        return True

    def end_reserve(self) -> None:
        """Write the trailing footer after the data and give back the room
        not used."""
        if self._reserved:
            self._reserved = 0
            self._write_footer(copy=False)

    # -- metadata changes ------------------------------------------------------

    def set_hidden(self, hidden: bool) -> None:
        self._check_writable()
        self._footer.hidden = 1 if hidden else 0
        self._write_footer()

    def _next_metadata_after(self, offset: int) -> int:
        """Start of the first structure placed after ``offset``."""
        candidates = [self._end]
        for entry in self._bat:
            if entry != BLOCK_UNUSED and entry * SECTOR > offset:
                candidates.append(entry * SECTOR)
        for loc in self._header.locators:
            if loc.code != PLAT_NONE and loc.offset > offset:
                candidates.append(loc.offset)
        if self._header.table_offset > offset:
            candidates.append(self._header.table_offset)
        return min(candidates)

    def resize(self, new_virtual_size: int) -> None:
        """Grow the virtual size (shrinking is refused).  The BAT grows in
        place when there is room, else it moves to the end of the file."""
        self._check_writable()
        new_size = _round_up(int(new_virtual_size), SECTOR)
        if new_size < self.virtual_size:
            raise self._err(f"cannot shrink a VHD from {self.virtual_size} to {new_size} bytes")
        if new_size > MAX_VIRTUAL_SIZE:
            raise self._err(f"virtual size {new_size} exceeds the VHD maximum {MAX_VIRTUAL_SIZE}")
        if new_size == self.virtual_size:
            return
        header = self._header
        need = -(-new_size // self.block_size)
        if need > header.max_entries:
            old_entries = header.max_entries
            new_bat_bytes = _round_up(need * 4, SECTOR)
            bat_at = header.table_offset
            old_bat_end = bat_at + _round_up(old_entries * 4, SECTOR)
            next_thing = self._next_metadata_after(bat_at)
            bat_is_last = next_thing == self._end and old_bat_end >= self._end
            if bat_is_last or bat_at + new_bat_bytes <= next_thing:
                if bat_is_last and bat_at + new_bat_bytes > self._end:
                    self._take_space(bat_at + new_bat_bytes - self._end)
                pad = new_bat_bytes - old_entries * 4
                _pwrite(self._fd, b"\xff" * pad, bat_at + old_entries * 4)
            else:
                new_at = self._take_space(new_bat_bytes)
                table = array("I", self._bat)
                table.extend([BLOCK_UNUSED] * (need - old_entries))
                if _LITTLE_ENDIAN_HOST:
                    table.byteswap()
                raw = table.tobytes()
                _pwrite(self._fd, raw + b"\xff" * (new_bat_bytes - len(raw)), new_at)
                header.table_offset = new_at
            self._bat.extend([BLOCK_UNUSED] * (need - old_entries))
            header.max_entries = need
            self._write_footer(copy=False)
            self._write_header()
        self._footer.current_size = new_size
        self._footer.cylinders, self._footer.heads, self._footer.spt = chs_geometry(new_size)
        self._write_footer()

    def set_parent(self, parent_path: str, parent_uuid: str | None = None) -> None:
        """Point this differencing disk at another parent (after a coalesce).
        Writes the parent unique id, the parent's modification time, the parent
        name and the W2ru/W2ku/MacX locators.  Not atomic, but re-runnable."""
        self._check_writable()
        if not self.is_differencing:
            raise self._err("only a differencing VHD has a parent")
        with Vhd(parent_path) as parent:
            if parent_uuid is not None and uuidlib.UUID(parent_uuid) != uuidlib.UUID(parent.uuid):
                raise self._err(f"parent {parent.path} has unique id {parent.uuid}, "
                                f"not {parent_uuid}")
            real_uuid = parent._footer.uuid
            parent_abs = parent.path
        header = self._header
        name, payloads = _locator_payloads(self.path, parent_abs)
        name_raw = _encode_utf16be_name(name)      # validate before writing anything
        wanted = {code: data for code, data in payloads}
        slots: dict[int, _Locator] = {}
        for loc in header.locators:
            if loc.code in wanted and loc.code not in slots:
                slots[loc.code] = loc
        moved = False
        for code, data in payloads:
            loc = slots.get(code)
            room = 0
            if loc is not None:
                room = min(self._locator_room(loc), self._next_metadata_after(loc.offset) - loc.offset)
            if loc is None:
                free = [l for l in header.locators if l.code == PLAT_NONE and l not in slots.values()]
                if not free:
                    raise self._err("no free parent locator entry")
                loc = free[0]
                loc.code = code
                slots[code] = loc
            if len(data) <= room:
                _pwrite(self._fd, data + bytes(room - len(data)), loc.offset)
                loc.length = len(data)
            else:
                space = _round_up(max(len(data), LOCATOR_RESERVE), SECTOR)
                at = self._take_space(space)
                _pwrite(self._fd, data, at)
                loc.offset, loc.space, loc.length = at, space // SECTOR, len(data)
                moved = True
        # other locators (e.g. left by another tool) would point at the old parent
        for loc in header.locators:
            if loc.code != PLAT_NONE and slots.get(loc.code) is not loc:
                loc.code, loc.space, loc.length, loc.offset = PLAT_NONE, 0, 0, 0
        if moved:
            self._write_footer(copy=False)
        header.parent_uuid = real_uuid
        header.parent_timestamp = vhd_timestamp(os.stat(parent_abs).st_mtime)
        header.parent_name_raw = name_raw
        self._write_header()
        if self._parent is not None:
            self._parent.close()
            self._parent = None

    # -- lifecycle ---------------------------------------------------------------

    def flush(self) -> None:
        self._check_open()
        if self.writable:
            os.fsync(self._fd)
            self._dirty = False

    def close(self) -> None:
        if self._parent is not None:
            self._parent.close()
            self._parent = None
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                if self.writable and self._dirty:
                    os.fsync(fd)
            finally:
                os.close(fd)

    def __enter__(self) -> "Vhd":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        if getattr(self, "_fd", -1) >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass

    def __repr__(self) -> str:
        kind = "differencing" if self.is_differencing else "dynamic"
        return f"<Vhd {kind} {self.path} size={self.virtual_size} uuid={self.uuid}>"


# --------------------------------------------------------------------------
# creation

def _new_footer(disk_type: int, size: int, unique: bytes) -> _Footer:
    f = _Footer()
    f.features = FEATURES_RESERVED
    f.version = FILE_FORMAT_VERSION
    f.data_offset = HEADER_OFFSET
    f.timestamp = vhd_timestamp()
    f.creator_app = CREATOR_APP
    f.creator_version = CREATOR_VERSION
    f.creator_os = CREATOR_HOST_OS
    f.original_size = size
    f.current_size = size
    f.cylinders, f.heads, f.spt = chs_geometry(size)
    f.disk_type = disk_type
    f.uuid = unique
    f.saved_state = 0
    f.hidden = 0
    f.reserved = bytes(426)
    return f


def _write_new(path: str, footer: _Footer, block_size: int,
               parent: tuple[bytes, int, str, list[tuple[int, bytes]]] | None,
               sync: bool = True) -> None:
    entries = -(-footer.current_size // block_size)
    header = _Header()
    header.data_offset = 0xFFFFFFFFFFFFFFFF
    header.version = HEADER_VERSION
    header.max_entries = entries
    header.block_size = block_size
    header.parent_uuid = bytes(16)
    header.parent_timestamp = 0
    header.reserved1 = 0
    header.parent_name_raw = bytes(512)
    header.locators = [_Locator() for _ in range(8)]
    header.reserved2 = bytes(256)
    at = HEADER_OFFSET + HEADER_SIZE
    blobs: list[tuple[int, bytes]] = []
    if parent is not None:
        parent_uuid, parent_ts, name, payloads = parent
        header.parent_uuid = parent_uuid
        header.parent_timestamp = parent_ts
        header.parent_name_raw = _encode_utf16be_name(name)
        for i, (code, data) in enumerate(payloads):
            space = _round_up(max(len(data), LOCATOR_RESERVE), SECTOR)
            header.locators[i] = _Locator(code, space // SECTOR, len(data), at)
            blobs.append((at, data))
            at += space
    header.table_offset = at
    bat_bytes = _round_up(entries * 4, SECTOR)
    end = at + bat_bytes
    raw_footer = footer.pack()
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        _pwrite(fd, raw_footer, 0)
        _pwrite(fd, header.pack(), HEADER_OFFSET)
        for offset, data in blobs:
            _pwrite(fd, data, offset)
        # BAT in 1 MiB pieces so huge disks never need one giant buffer
        piece = 1024 * 1024
        for offset in range(0, bat_bytes, piece):
            _pwrite(fd, b"\xff" * min(piece, bat_bytes - offset), at + offset)
        _pwrite(fd, raw_footer, end)
        if sync:
            os.fsync(fd)
        os.rename(tmp, path)
    except BaseException:
        os.close(fd)
        fd = -1
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def _check_block_size(block_size: int) -> None:
    if block_size < SECTOR * 8 or block_size & (block_size - 1) or block_size > 1 << 31:
        raise VhdError(f"block size {block_size} must be a power of two between 4 KiB and 2 GiB")


def create_dynamic(path: str, virtual_size: int, block_size: int = DEFAULT_BLOCK_SIZE,
                   *, uuid: str | None = None) -> Vhd:
    """Create an empty dynamic VHD and return it opened writable.

    ``virtual_size`` is rounded up to a whole sector."""
    size = _round_up(int(virtual_size), SECTOR)
    if size <= 0:
        raise VhdError(f"virtual size must be positive, not {virtual_size}")
    if size > MAX_VIRTUAL_SIZE:
        raise VhdError(f"virtual size {size} exceeds the VHD maximum {MAX_VIRTUAL_SIZE}")
    _check_block_size(block_size)
    unique = uuidlib.UUID(uuid).bytes if uuid else uuidlib.uuid4().bytes
    if os.path.exists(path):
        raise VhdError("file already exists", os.path.abspath(path))
    _write_new(path, _new_footer(DISK_DYNAMIC, size, unique), block_size, None)
    return Vhd(path, writable=True)


def create_differencing(path: str, parent_path: str, parent_uuid: str | None = None,
                        *, uuid: str | None = None, sync: bool = True) -> Vhd:
    """Create an empty differencing VHD on top of ``parent_path`` (same
    virtual size and block size) and return it opened writable.

    ``parent_uuid``, if given, must be the parent's unique id.  With
    ``sync=False`` the file is not ``fsync``-ed: the caller does that."""
    if os.path.exists(path):
        raise VhdError("file already exists", os.path.abspath(path))
    with Vhd(parent_path) as parent:
        if parent_uuid is not None and uuidlib.UUID(parent_uuid) != uuidlib.UUID(parent.uuid):
            raise VhdError(f"parent has unique id {parent.uuid}, not {parent_uuid}", parent.path)
        size, block_size = parent.virtual_size, parent.block_size
        parent_unique = parent._footer.uuid
        parent_abs = parent.path
    name, payloads = _locator_payloads(path, parent_abs)
    unique = uuidlib.UUID(uuid).bytes if uuid else uuidlib.uuid4().bytes
    footer = _new_footer(DISK_DIFFERENCING, size, unique)
    parent_ts = vhd_timestamp(os.stat(parent_abs).st_mtime)
    _write_new(path, footer, block_size, (parent_unique, parent_ts, name, payloads), sync)
    return Vhd(path, writable=True)


def open(path: str, writable: bool = False) -> Vhd:  # noqa: A001 - the module's API
    """Open a VHD, verifying the footer and header checksums."""
    return Vhd(path, writable=writable)


# --------------------------------------------------------------------------
# chains and coalesce

def chain(path: str) -> list[str]:
    """Absolute paths from ``path`` (the leaf) down to the base."""
    out: list[str] = []
    current: str | None = os.path.abspath(path)
    while current is not None:
        if current in out:
            raise VhdError(f"parent loop: {' -> '.join(out + [current])}")
        out.append(current)
        with Vhd(current) as vhd:
            if not vhd.is_differencing:
                break
            parent = vhd.parent()       # resolves the locators, checks the unique id
            assert parent is not None
            current = parent.path
    return out


def coalesce_into_parent(child_path: str, *,
                         progress: Callable[[int, int], None] | None = None,
                         drop_child_cache: bool = False) -> int:
    """Copy every sector allocated in ``child_path`` into its parent, so the
    parent becomes the union of both; returns the number of blocks copied.

    Works block by block, in BAT order, and is idempotent: after being killed
    at any point it can simply be run again.  The parent is grown first if it
    is smaller than the child.  ``progress(done, total)`` is called after each
    block (an exception raised there aborts the coalesce).  The child is left
    untouched: re-parenting its children (:meth:`Vhd.set_parent`) and deleting
    it are the caller's business.

    Speed (see ``iohints``): the room for the blocks the parent lacks is
    reserved before the copy, and another thread starts the parent's
    writeback while the copy goes on (so the final ``fsync`` has little left
    to write) and, with ``drop_child_cache`` (for a caller that deletes the
    child next), drops the child's cached pages once copied."""
    from . import iohints

    with Vhd(child_path) as child:
        if not child.is_differencing:
            raise VhdError("not a differencing VHD: nothing to coalesce into", child.path)
        parent_path = child.parent_path
        if parent_path is None or not os.path.exists(parent_path):
            raise VhdError("parent not found", child.path)
        with Vhd(parent_path, writable=True) as parent:
            if parent._footer.uuid != child._header.parent_uuid:
                raise VhdError(f"parent {parent.path} has unique id {parent.uuid}, "
                               f"expected {child.parent_uuid}", child.path)
            if parent.virtual_size < child.virtual_size:
                parent.resize(child.virtual_size)
            blocks = child.allocated_blocks()
            total = len(blocks)
            # one buffer for every block: a fresh block-sized bytes object per
            # block page-faults its memory in again each time (measurably slower)
            buf = memoryview(bytearray(child.block_size))
            # blocks the parent lacks are appended: room for all of them at once
            missing = sum(1 for b in blocks if parent._bat[b] == BLOCK_UNUSED)
            parent.reserve(missing * (parent._bitmap_bytes + parent.block_size))
            flusher = iohints.Flusher(parent._fd, child._fd if drop_child_cache else -1)
            try:
                _copy_blocks(child, parent, blocks, buf, progress, flusher)
            finally:
                flusher.stop()
                parent.end_reserve()
            parent.flush()
            return total


def _copy_blocks(child: Vhd, parent: Vhd, blocks: list[int], buf: memoryview,
                 progress: Callable[[int, int], None] | None, flusher) -> None:
    """The copy itself: every present sector run of ``blocks``, in BAT order."""
    spb = child._spb
    limit = -(-child.virtual_size // SECTOR)
    total = len(blocks)
    for done, block in enumerate(blocks, 1):
        first = block * spb
        stop = min(spb, limit - first)
        if stop > 0:
            bitmap = child._bitmap(block)
            data_at = child._bat[block] * SECTOR + child._bitmap_bytes
            for a, b, present in _bitmap_runs(bitmap, 0, stop):
                if present:
                    data = buf[:(b - a) * SECTOR]
                    _pread_into(child._fd, data, data_at + a * SECTOR)
                    parent._write_sectors(first + a, data)
                    flusher.wrote(len(data))
            flusher.done_with(data_at - child._bitmap_bytes, child._bitmap_bytes + child.block_size)
        if progress is not None:
            progress(done, total)
