"""The project's own VHD implementation (xapi/backends/storage/vhd.py).

Byte-level models are plain bytearrays; the VHD under test must always read
back exactly what the model says, through reopen, differencing chains,
resize, coalesce, and coalesces killed at any write.
"""

from __future__ import annotations

import os
import shutil
import struct
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xapi.backends.storage import vhd

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture
def d(tmp_path):
    return tmp_path


def full(disk: vhd.Vhd, **kw) -> bytes:
    return disk.read(0, disk.virtual_size, **kw)


def writes(size: int, max_len: int = 20 * KiB, max_count: int = 12):
    """Random (offset, data) pairs inside [0, size), unaligned, of any length."""
    @st.composite
    def one(draw):
        offset = draw(st.integers(0, size - 1))
        length = draw(st.integers(1, min(max_len, size - offset)))
        fill = draw(st.binary(min_size=1, max_size=16))
        data = (fill * (length // len(fill) + 1))[:length]
        return offset, data
    return st.lists(one(), min_size=0, max_size=max_count)


def apply(model: bytearray, ops) -> None:
    for offset, data in ops:
        model[offset:offset + len(data)] = data


def sectors_of(ops) -> set[int]:
    out = set()
    for offset, data in ops:
        out.update(range(offset // 512, -(-(offset + len(data)) // 512)))
    return out


# --------------------------------------------------------------------------
# creation and the on-disk format

def test_create_dynamic_format(d):
    before = time.time()
    with vhd.create_dynamic(str(d / "a.vhd"), 100 * MiB) as disk:
        assert disk.virtual_size == 100 * MiB
        assert disk.block_size == 2 * MiB
        assert not disk.is_differencing and disk.parent_path is None and disk.parent_uuid is None
        assert disk.allocated_blocks() == []
        assert uuid.UUID(disk.uuid).version == 4
        assert disk.read(0, 4096) == bytes(4096)
        assert disk.read(100 * MiB - 10, 10) == bytes(10)
    raw = (d / "a.vhd").read_bytes()
    # footer copy at 0 == footer at the end; header right after the copy
    assert raw[:512] == raw[-512:]
    assert raw[:8] == b"conectix" and raw[512:520] == b"cxsparse"
    features, version, data_offset, ts = struct.unpack_from(">IIQI", raw, 8)
    assert features == 2 and version == 0x00010000 and data_offset == 512
    # timestamps count from 2000-01-01 UTC
    assert abs(ts + 946684800 - before) < 5
    assert raw[28:32] == b"tap\0"
    orig, cur, cyl, heads, spt, dtype = struct.unpack_from(">QQHBBI", raw, 40)
    assert orig == cur == 100 * MiB and dtype == 3
    assert (cyl, heads, spt) == vhd.chs_geometry(100 * MiB)
    table_offset, _ver, entries, block_size = struct.unpack_from(">QIII", raw, 512 + 16)
    assert entries == 50 and block_size == 2 * MiB
    assert raw[table_offset:table_offset + 200] == b"\xff" * 200
    # checksums: one's complement of the byte sum without the field
    for start, size, at in ((0, 512, 64), (512, 1024, 36)):
        buf = bytearray(raw[start:start + size])
        stored = struct.unpack_from(">I", buf, at)[0]
        buf[at:at + 4] = bytes(4)
        assert stored == (~sum(buf)) & 0xFFFFFFFF


def test_chs_geometry_follows_the_spec():
    # values from the spec's algorithm; qemu-img rounds a 10 MiB request up to
    # 302/4/17 = 10514432 bytes
    assert vhd.chs_geometry(10514432) == (302, 4, 17)
    assert vhd.chs_geometry(127 * GiB)[1:] == (16, 255)
    assert vhd.chs_geometry(2040 * GiB) == (65535, 16, 255)
    for size in (1 * MiB, 100 * MiB, 10 * GiB, 500 * GiB):
        c, h, s = vhd.chs_geometry(size)
        assert c * h * s * 512 <= size


def test_timestamps():
    assert vhd.vhd_timestamp(946684800) == 0
    assert vhd.vhd_timestamp(946684800 + 86400) == 86400
    assert vhd.unix_timestamp(86400) == 946684800 + 86400
    assert vhd.vhd_timestamp(0) == 0


def test_virtual_size_rounded_to_sector_and_limits(d):
    with vhd.create_dynamic(str(d / "a.vhd"), 1000) as disk:
        assert disk.virtual_size == 1024
    with pytest.raises(vhd.VhdError):
        vhd.create_dynamic(str(d / "b.vhd"), 2041 * GiB)
    with pytest.raises(vhd.VhdError):
        vhd.create_dynamic(str(d / "c.vhd"), 10 * MiB, block_size=3 * MiB)
    with pytest.raises(vhd.VhdError, match="exists"):
        vhd.create_dynamic(str(d / "a.vhd"), 10 * MiB)


def test_large_sparse_disk_stays_sparse(d):
    path = str(d / "big.vhd")
    with vhd.create_dynamic(path, 10 * GiB) as disk:
        disk.write(0, b"first")
        disk.write(10 * GiB - 5, b"last!")
        disk.write(5 * GiB + 3, b"middle")
        assert disk.allocated_blocks() == [0, 2560, 5119]
    with vhd.open(path) as disk:
        assert disk.read(0, 5) == b"first"
        assert disk.read(10 * GiB - 5, 5) == b"last!"
        assert disk.read(5 * GiB, 16) == b"\0\0\0middle" + bytes(7)
        assert disk.read(7 * GiB, 1 * MiB) == bytes(MiB)
        # three 2 MiB blocks plus metadata, mostly holes
        assert disk.physical_size() < 7 * MiB
    assert os.stat(path).st_blocks * 512 < 1 * MiB


# --------------------------------------------------------------------------
# dynamic round trips

@SETTINGS
@given(data=st.data(), block_size=st.sampled_from([4 * KiB, 16 * KiB, 2 * MiB]),
       size=st.sampled_from([64 * KiB, 200 * KiB + 512, 4 * MiB + 1536]))
def test_dynamic_round_trip(tmp_path_factory, data, block_size, size):
    d = tmp_path_factory.mktemp("rt")
    ops = data.draw(writes(size))
    model = bytearray(size)
    path = str(d / "a.vhd")
    with vhd.create_dynamic(path, size, block_size=block_size) as disk:
        for offset, chunk in ops:
            disk.write(offset, chunk)
            model[offset:offset + len(chunk)] = chunk
        assert full(disk) == model
    with vhd.open(path) as disk:
        assert full(disk) == model
        assert not disk.needs_repair
        # unaligned reads anywhere
        for _ in range(5):
            offset = data.draw(st.integers(0, size - 1))
            length = data.draw(st.integers(0, size - offset))
            assert disk.read(offset, length) == model[offset:offset + length]
        touched = {o // block_size for s in sectors_of(ops) for o in [s * 512]}
        assert disk.allocated_blocks() == sorted(touched)
        # the invariant readers that ignore the bitmap rely on: clear bits
        # are zeros on disk, set bits cover every written sector
        written = sectors_of(ops)
        spb = block_size // 512
        for block in disk.allocated_blocks():
            bitmap = disk.sector_bitmap(block)
            for i in range(spb):
                bit = bool(bitmap[i >> 3] & (0x80 >> (i & 7)))
                assert bit == (block * spb + i in written)
    raw = open(path, "rb").read()
    assert raw[:512] == raw[-512:]


def test_write_crossing_many_blocks(d):
    size = 10 * MiB
    with vhd.create_dynamic(str(d / "a.vhd"), size, block_size=64 * KiB) as disk:
        payload = os.urandom(3 * MiB + 777)
        disk.write(123457, payload)
        assert disk.read(123457, len(payload)) == payload
        assert disk.read(123456, 1) == b"\0"
        assert disk.read(123457 + len(payload), 1) == b"\0"
        end = 123457 + len(payload)
        assert disk.allocated_blocks() == list(range(123457 // (64 * KiB), (end - 1) // (64 * KiB) + 1))


def test_read_only_and_range_errors(d):
    path = str(d / "a.vhd")
    vhd.create_dynamic(path, 1 * MiB).close()
    with vhd.open(path) as disk:
        with pytest.raises(vhd.VhdError, match="read-only"):
            disk.write(0, b"x")
        with pytest.raises(ValueError):
            disk.read(1 * MiB - 1, 2)
        with pytest.raises(ValueError):
            disk.read(-1, 1)
    with vhd.open(path, writable=True) as disk:
        with pytest.raises(ValueError):
            disk.write(1 * MiB, b"x")
    with pytest.raises(vhd.VhdError, match="no such file"):
        vhd.open(str(d / "missing.vhd"))


def test_hidden_flag(d):
    path = str(d / "a.vhd")
    with vhd.create_dynamic(path, 1 * MiB) as disk:
        assert not disk.hidden
        disk.set_hidden(True)
    with vhd.open(path) as disk:
        assert disk.hidden
    raw = open(path, "rb").read()
    assert raw[85] == 1 and raw[:512] == raw[-512:]


# --------------------------------------------------------------------------
# corruption

def _corrupt(path, offset, value=None):
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([value if value is not None else old ^ 0xFF]))


def test_checksum_verification(d):
    path = str(d / "a.vhd")
    with vhd.create_dynamic(path, 4 * MiB) as disk:
        disk.write(0, b"data")
    size = os.path.getsize(path)
    pristine = open(path, "rb").read()

    # header corrupted (a byte in the parent name area, not a checked field)
    _corrupt(path, 512 + 100)
    with pytest.raises(vhd.VhdError, match="header checksum mismatch"):
        vhd.open(path)

    # both footers corrupted
    open(path, "wb").write(pristine)
    _corrupt(path, 50)
    _corrupt(path, size - 512 + 50)
    with pytest.raises(vhd.VhdError, match="footer checksum mismatch"):
        vhd.open(path)

    # only the trailing footer: the copy at offset 0 is used, and a writable
    # open repairs the end of file
    open(path, "wb").write(pristine)
    _corrupt(path, size - 512 + 50)
    with vhd.open(path) as disk:
        assert disk.needs_repair and disk.read(0, 4) == b"data"
    with vhd.open(path, writable=True) as disk:
        assert not disk.needs_repair
    assert open(path, "rb").read() == pristine

    # only the copy at 0: the trailing footer is used, and repaired likewise
    _corrupt(path, 40)
    with vhd.open(path) as disk:
        assert disk.read(0, 4) == b"data"
    vhd.open(path, writable=True).close()
    assert open(path, "rb").read() == pristine

    # not a VHD at all / truncated
    open(path, "wb").write(os.urandom(8192))
    with pytest.raises(vhd.VhdError, match="footer"):
        vhd.open(path)
    open(path, "wb").write(pristine[:1024])
    with pytest.raises(vhd.VhdError, match="too small"):
        vhd.open(path)
    open(path, "wb").write(pristine[:4096])
    with pytest.raises(vhd.VhdError, match="truncated"):
        vhd.open(path)


# --------------------------------------------------------------------------
# differencing chains

def test_differencing_metadata(d):
    base_path, child_path = str(d / "base.vhd"), str(d / "sub" / "child.vhd")
    os.mkdir(d / "sub")
    base = vhd.create_dynamic(base_path, 8 * MiB, block_size=64 * KiB)
    base.close()
    os.utime(base_path, (1_700_000_000, 1_700_000_000))
    with vhd.create_differencing(child_path, base_path) as child:
        assert child.is_differencing
        assert child.parent_uuid == vhd.open(base_path).uuid
        assert child.parent_path == base_path
        assert child.virtual_size == 8 * MiB and child.block_size == 64 * KiB
        assert child.parent_timestamp == 1_700_000_000
        assert child.parent_name == "../base.vhd"
        locs = dict(child.parent_locators())
        assert locs == {"W2ru": "../base.vhd", "W2ku": base_path, "MacX": base_path}
    raw = open(child_path, "rb").read()
    assert struct.unpack_from(">I", raw, 60)[0] == 4                 # differencing
    assert raw[512 + 64:512 + 64 + 22] == "../base.vhd".encode("utf-16-be")
    code, space, length, _r, offset = struct.unpack_from(">IIIIQ", raw, 512 + 576)
    assert code == 0x57327275 and space == 2 and length == len("../base.vhd") * 2
    assert raw[offset:offset + length].decode("utf-16-le") == "../base.vhd"
    with pytest.raises(vhd.VhdError, match="unique id"):
        vhd.create_differencing(str(d / "x.vhd"), base_path, parent_uuid=str(uuid.uuid4()))


@SETTINGS
@given(data=st.data(), depth=st.integers(3, 5), block_size=st.sampled_from([4 * KiB, 32 * KiB]))
def test_chain_reads_through_to_the_base(tmp_path_factory, data, depth, block_size):
    d = tmp_path_factory.mktemp("chain")
    size = 256 * KiB + 512
    model = bytearray(size)
    paths = []
    own: list[set[int]] = []
    views: list[bytes] = []
    for level in range(depth):
        path = str(d / f"l{level}.vhd")
        disk = (vhd.create_dynamic(path, size, block_size=block_size) if level == 0
                else vhd.create_differencing(path, paths[-1]))
        ops = data.draw(writes(size, max_len=40 * KiB, max_count=6))
        with disk:
            for offset, chunk in ops:
                disk.write(offset, chunk)
        apply(model, ops)
        paths.append(path)
        own.append(sectors_of(ops))
        views.append(bytes(model))
    assert vhd.chain(paths[-1]) == list(reversed(paths))
    for level, path in enumerate(paths):
        with vhd.open(path) as disk:
            assert full(disk) == views[level]
            # this layer's own sectors only
            expect = bytearray(size)
            for s in own[level]:
                expect[s * 512:(s + 1) * 512] = views[level][s * 512:(s + 1) * 512]
            assert full(disk, layer_only=True) == expect
    # sectors nobody above the base wrote come from the base
    with vhd.open(paths[-1]) as leaf, vhd.open(paths[0]) as base:
        above = set().union(*own[1:])
        for s in range(0, size // 512, 7):
            if s not in above:
                assert leaf.read(s * 512, 512) == base.read(s * 512, 512)


def test_parent_resolution_and_errors(d):
    a = d / "a"
    a.mkdir()
    base = vhd.create_dynamic(str(a / "base.vhd"), 1 * MiB, block_size=4 * KiB)
    base.write(0, b"base")
    base.close()
    with vhd.create_differencing(str(a / "child.vhd"), str(a / "base.vhd")) as child:
        child.write(2, b"CH")
    # the directory moves: the absolute locators are stale, the relative one works
    moved = d / "moved"
    a.rename(moved)
    with vhd.open(str(moved / "child.vhd")) as child:
        assert child.parent_path == str(moved / "base.vhd")
        assert child.read(0, 4) == b"baCH"
    # parent missing
    os.rename(moved / "base.vhd", moved / "gone.vhd")
    with vhd.open(str(moved / "child.vhd")) as child:
        # sector 0 was copied up by the partial write; the rest needs the parent
        assert child.read(0, 4) == b"baCH"
        with pytest.raises(vhd.VhdError, match="parent not found"):
            child.read(512, 4)
        assert child.read(2, 2, layer_only=True) == b"CH"
    with pytest.raises(vhd.VhdError, match="parent not found"):
        vhd.chain(str(moved / "child.vhd"))
    # a different disk in the parent's place
    vhd.create_dynamic(str(moved / "base.vhd"), 1 * MiB).close()
    with vhd.open(str(moved / "child.vhd")) as child:
        with pytest.raises(vhd.VhdError, match="unique id"):
            child.read(512, 4)


def test_set_parent(d):
    deep = d / ("x" * 200) / ("y" * 200)
    deep.mkdir(parents=True)
    base = vhd.create_dynamic(str(deep / "base.vhd"), 1 * MiB, block_size=4 * KiB)
    base.write(0, b"B" * 100)
    base.close()
    shutil.copy(deep / "base.vhd", deep / "copy.vhd")          # same unique id
    child_path = str(deep / "c.vhd")
    with vhd.create_differencing(child_path, str(deep / "base.vhd")) as child:
        child.write(10, b"cc")
        table = child._header.table_offset
        # an absolute path longer than the locator room: that locator moves
        # to the end of the file
        far = deep / ("z" * 100)
        far.mkdir()
        shutil.copy(deep / "base.vhd", far / "base.vhd")
        child.set_parent(str(far / "base.vhd"))
        assert child.parent_path == str(far / "base.vhd")
        assert dict(child.parent_locators())["W2ku"] == str(far / "base.vhd")
        assert child.read(8, 6) == b"BBccBB"
        child.write(100 * KiB, b"after")                # blocks go after it
        child.set_parent(str(deep / "copy.vhd"), vhd.open(str(deep / "copy.vhd")).uuid)
        assert child.read(8, 6) == b"BBccBB"
        assert child._header.table_offset == table
        with pytest.raises(vhd.VhdError, match="unique id"):
            child.set_parent(str(deep / "copy.vhd"), str(uuid.uuid4()))
        # the header's parent name field holds 256 UTF-16 units at most
        elsewhere = d / ("q" * 200) / ("r" * 100)
        elsewhere.mkdir(parents=True)
        shutil.copy(deep / "base.vhd", elsewhere / "base.vhd")
        with pytest.raises(vhd.VhdError, match="too long"):
            child.set_parent(str(elsewhere / "base.vhd"))
    with vhd.open(child_path) as child:
        assert child.parent_path == str(deep / "copy.vhd")
        assert dict(child.parent_locators()) == {
            "W2ru": "./copy.vhd", "W2ku": str(deep / "copy.vhd"), "MacX": str(deep / "copy.vhd")}
        assert child.parent_name == "copy.vhd"
        assert vhd.chain(child.path) == [child.path, str(deep / "copy.vhd")]
        assert child.read(100 * KiB, 5) == b"after" and not child.needs_repair
    with vhd.open(str(deep / "base.vhd"), writable=True) as base:
        with pytest.raises(vhd.VhdError, match="differencing"):
            base.set_parent(str(deep / "copy.vhd"))


# --------------------------------------------------------------------------
# resize

def test_resize_grows_in_place_and_by_moving_the_bat(d):
    path = str(d / "a.vhd")
    with vhd.create_dynamic(path, 64 * KiB, block_size=4 * KiB) as disk:
        disk.write(100, b"hello")
        # 16 -> 100 entries still fits the BAT's sector: in place
        disk.resize(400 * KiB)
        table = disk._header.table_offset
        disk.write(399 * KiB, b"end")
        # blocks follow the BAT, so a much bigger BAT moves to the end
        disk.resize(8 * MiB + 1)
        assert disk.virtual_size == 8 * MiB + 512
        assert disk._header.table_offset > table
        disk.write(8 * MiB, b"tail")
        with pytest.raises(vhd.VhdError, match="shrink"):
            disk.resize(1 * MiB)
    with vhd.open(path) as disk:
        assert disk.virtual_size == 8 * MiB + 512
        assert disk.geometry == vhd.chs_geometry(8 * MiB + 512)
        assert disk.read(100, 5) == b"hello"
        assert disk.read(399 * KiB, 3) == b"end"
        assert disk.read(8 * MiB, 4) == b"tail"
        assert disk.read(1 * MiB, 64 * KiB) == bytes(64 * KiB)
        assert not disk.needs_repair
    # an empty disk's BAT is the last thing in the file: grows where it is
    with vhd.create_dynamic(str(d / "b.vhd"), 64 * KiB, block_size=4 * KiB) as disk:
        disk.resize(100 * MiB)
        assert disk._header.table_offset == 1536
        disk.write(99 * MiB, b"z")
    with vhd.open(str(d / "b.vhd")) as disk:
        assert disk.read(99 * MiB, 1) == b"z"


def test_resize_child_beyond_parent(d):
    base = vhd.create_dynamic(str(d / "base.vhd"), 64 * KiB, block_size=4 * KiB)
    base.write(0, b"\x01" * 64 * KiB)
    base.close()
    with vhd.create_differencing(str(d / "c.vhd"), str(d / "base.vhd")) as child:
        child.resize(1 * MiB)
        assert child.read(64 * KiB - 2, 4) == b"\x01\x01\0\0"
        child.write(64 * KiB - 1, b"\x02\x02")
        assert child.read(64 * KiB - 2, 4) == b"\x01\x02\x02\0"


# --------------------------------------------------------------------------
# coalesce

def _build_chain(d, data, size, block_size, depth=3):
    paths, views = [], []
    model = bytearray(size)
    for level in range(depth):
        path = str(d / f"l{level}.vhd")
        disk = (vhd.create_dynamic(path, size, block_size=block_size) if level == 0
                else vhd.create_differencing(path, paths[-1]))
        ops = data.draw(writes(size, max_len=30 * KiB, max_count=8))
        with disk:
            for offset, chunk in ops:
                disk.write(offset, chunk)
        apply(model, ops)
        paths.append(path)
        views.append(bytes(model))
    return paths, views


def _view(path) -> bytes:
    with vhd.open(path) as disk:
        return full(disk)


@SETTINGS
@given(data=st.data(), block_size=st.sampled_from([4 * KiB, 16 * KiB]))
def test_coalesce_keeps_every_view(tmp_path_factory, data, block_size):
    d = tmp_path_factory.mktemp("co")
    size = 192 * KiB
    (base, mid, leaf), views = _build_chain(d, data, size, block_size)
    blocks_in_mid = len(vhd.open(mid).allocated_blocks())
    assert vhd.coalesce_into_parent(mid) == blocks_in_mid
    # the base is now the union: it shows what mid showed
    assert _view(base) == views[1]
    assert _view(mid) == views[1] and _view(leaf) == views[2]
    # the GC's relink: the leaf skips the coalesced node
    with vhd.open(leaf, writable=True) as disk:
        disk.set_parent(base)
    os.unlink(mid)
    assert vhd.chain(leaf) == [leaf, base]
    assert _view(leaf) == views[2]
    # and a second level: the leaf into the base
    vhd.coalesce_into_parent(leaf)
    assert _view(base) == views[2]
    # idempotent: again changes nothing
    before = open(base, "rb").read()
    vhd.coalesce_into_parent(leaf)
    assert open(base, "rb").read() == before


def test_coalesce_into_differencing_parent_and_smaller_parent(d):
    base = vhd.create_dynamic(str(d / "base.vhd"), 64 * KiB, block_size=4 * KiB)
    base.write(0, b"b" * 64 * KiB)
    base.close()
    with vhd.create_differencing(str(d / "mid.vhd"), str(d / "base.vhd")) as mid:
        mid.write(10, b"mm")
    with vhd.create_differencing(str(d / "leaf.vhd"), str(d / "mid.vhd")) as leaf:
        leaf.resize(128 * KiB)
        leaf.write(20, b"ll")
        leaf.write(100 * KiB, b"beyond")
    expect = _view(str(d / "leaf.vhd"))
    vhd.coalesce_into_parent(str(d / "leaf.vhd"))
    with vhd.open(str(d / "mid.vhd")) as mid:
        assert mid.virtual_size == 128 * KiB
        assert full(mid) == expect
        # mid stays differencing: its bitmap covers only what it owns
        own = full(mid, layer_only=True)
        assert own[:512] == expect[:512]                 # sector 0: copied up, then merged
        assert own[512:100 * KiB] == bytes(100 * KiB - 512)  # still the base's
        assert own[100 * KiB:100 * KiB + 6] == b"beyond"
    with pytest.raises(vhd.VhdError, match="differencing"):
        vhd.coalesce_into_parent(str(d / "base.vhd"))


@SETTINGS
@given(data=st.data())
def test_coalesce_interrupted_after_n_blocks_then_rerun(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("ci")
    size = 160 * KiB
    (base, mid, leaf), views = _build_chain(d, data, size, 4 * KiB)
    ref_dir = d / "ref"
    ref_dir.mkdir()
    for p in (base, mid):
        shutil.copy(p, ref_dir)
    vhd.coalesce_into_parent(str(ref_dir / "l1.vhd"))
    reference = open(ref_dir / "l0.vhd", "rb").read()

    total = len(vhd.open(mid).allocated_blocks())
    stop_after = data.draw(st.integers(0, max(0, total - 1)))

    class Killed(Exception):
        pass

    def progress(done, total):
        if done > stop_after:
            raise Killed

    if total:
        with pytest.raises(Killed):
            vhd.coalesce_into_parent(mid, progress=progress)
        # half-way: the leaf's and mid's views are intact
        assert _view(leaf) == views[2] and _view(mid) == views[1]
    vhd.coalesce_into_parent(mid)
    assert _view(base) == views[1]
    assert _view(leaf) == views[2]
    # same bytes on disk as an uninterrupted coalesce (apart from footer
    # timestamps, which nothing rewrites, the files are identical)
    assert open(base, "rb").read() == reference


def test_coalesce_killed_at_every_write(d, monkeypatch):
    """Kill the coalesce at each single write/truncate it makes; every
    intermediate state must open cleanly, keep the child's view, and a re-run
    must converge to the uninterrupted result."""
    import random
    rng = random.Random(1234)
    size = 96 * KiB
    src = d / "src"
    src.mkdir()
    base = vhd.create_dynamic(str(src / "base.vhd"), size, block_size=4 * KiB)
    for _ in range(6):
        o = rng.randrange(size - 9000)
        base.write(o, os.urandom(rng.randrange(1, 9000)))
    base.close()
    with vhd.create_differencing(str(src / "mid.vhd"), str(src / "base.vhd")) as mid:
        for _ in range(8):
            o = rng.randrange(size - 9000)
            mid.write(o, os.urandom(rng.randrange(1, 9000)))
    mid_view = _view(str(src / "mid.vhd"))

    ref = d / "ref"
    shutil.copytree(src, ref)
    calls = {"n": 0}
    real_pwrite, real_truncate = vhd._pwrite, vhd._ftruncate

    def counting(fn):
        def wrapper(*args):
            calls["n"] += 1
            return fn(*args)
        return wrapper

    monkeypatch.setattr(vhd, "_pwrite", counting(real_pwrite))
    monkeypatch.setattr(vhd, "_ftruncate", counting(real_truncate))
    vhd.coalesce_into_parent(str(ref / "mid.vhd"))
    total_calls = calls["n"]
    assert total_calls > 20
    reference = _view(str(ref / "base.vhd"))
    assert reference == mid_view

    class Killed(Exception):
        pass

    for kill_at in range(total_calls):
        work = d / f"k{kill_at}"
        shutil.copytree(src, work)
        calls["n"] = 0

        def dying(fn):
            def wrapper(*args):
                calls["n"] += 1
                if calls["n"] > kill_at:
                    raise Killed
                return fn(*args)
            return wrapper

        monkeypatch.setattr(vhd, "_pwrite", dying(real_pwrite))
        monkeypatch.setattr(vhd, "_ftruncate", dying(real_truncate))
        with pytest.raises(Killed):
            vhd.coalesce_into_parent(str(work / "mid.vhd"))
        monkeypatch.setattr(vhd, "_pwrite", real_pwrite)
        monkeypatch.setattr(vhd, "_ftruncate", real_truncate)
        # the interrupted files open (read-only) and the child's view holds
        assert _view(str(work / "mid.vhd")) == mid_view, kill_at
        vhd.coalesce_into_parent(str(work / "mid.vhd"))
        assert _view(str(work / "base.vhd")) == reference, kill_at
        with vhd.open(str(work / "base.vhd")) as disk:
            assert not disk.needs_repair, kill_at
        raw = open(work / "base.vhd", "rb").read()
        assert raw[:512] == raw[-512:]
        shutil.rmtree(work)


def test_coalesce_killed_with_room_reserved(d, monkeypatch):
    """A coalesce preallocates the room for the blocks the parent lacks; a
    process dying in the middle leaves that room (and no trailing footer)
    behind: the parent still opens with its copy of the footer, the next
    writable open repairs it, and a re-run gives the uninterrupted result."""
    size = 64 * MiB
    base = d / "base.vhd"
    with vhd.create_dynamic(str(base), size) as disk:
        disk.write(3 * MiB, os.urandom(MiB))
    with vhd.create_differencing(str(d / "mid.vhd"), str(base)) as mid:
        for block in (0, 5, 9, 20, 31):
            mid.write(block * 2 * MiB + 512, os.urandom(2 * MiB - 1024))
    mid_view = full(vhd.open(str(d / "mid.vhd")))

    class Killed(Exception):
        pass

    def progress(done, total):
        if done == 3:
            raise Killed

    monkeypatch.setattr(vhd.Vhd, "end_reserve", lambda self: None)   # dies before it
    with pytest.raises(Killed):
        vhd.coalesce_into_parent(str(d / "mid.vhd"), progress=progress)
    monkeypatch.undo()
    with vhd.open(str(base)) as disk:
        assert os.path.getsize(base) > disk._end + 512      # the room is still there
        assert disk.needs_repair
    assert full(vhd.open(str(d / "mid.vhd"))) == mid_view
    with vhd.open(str(base), writable=True) as disk:
        assert not disk.needs_repair
    assert os.path.getsize(base) == vhd.open(str(base))._end + 512
    vhd.coalesce_into_parent(str(d / "mid.vhd"))
    assert full(vhd.open(str(base))) == mid_view
    raw = open(base, "rb").read()
    assert raw[:512] == raw[-512:]


def test_writes_killed_at_every_step_are_redone_cleanly(d, monkeypatch):
    """Same for plain writes and resize: after a crash at any write, the file
    opens, and redoing the operation gives the intended content."""
    real_pwrite, real_truncate = vhd._pwrite, vhd._ftruncate

    def script(disk):
        disk.write(5000, b"a" * 9000)
        disk.resize(4 * MiB)                        # the BAT moves to the end
        disk.write(3 * MiB - 3, b"b" * 5000)
        disk.set_hidden(True)

    src = str(d / "src.vhd")
    vhd.create_dynamic(src, 64 * KiB, block_size=4 * KiB).close()
    shutil.copy(src, d / "ref.vhd")
    with vhd.open(str(d / "ref.vhd"), writable=True) as disk:
        script(disk)
    expected = _view(str(d / "ref.vhd"))

    class Killed(Exception):
        pass

    for kill_at in range(80):
        path = str(d / f"k{kill_at}.vhd")
        shutil.copy(src, path)
        n = {"n": 0}

        def dying(fn):
            def wrapper(*args):
                n["n"] += 1
                if n["n"] > kill_at:
                    raise Killed
                return fn(*args)
            return wrapper

        monkeypatch.setattr(vhd, "_pwrite", dying(real_pwrite))
        monkeypatch.setattr(vhd, "_ftruncate", dying(real_truncate))
        finished = False
        try:
            with vhd.open(path, writable=True) as disk:
                script(disk)
            finished = True
        except Killed:
            pass
        monkeypatch.setattr(vhd, "_pwrite", real_pwrite)
        monkeypatch.setattr(vhd, "_ftruncate", real_truncate)
        vhd.open(path).close()                       # opens read-only
        with vhd.open(path, writable=True) as disk:  # repairs, then redo
            script(disk)
        assert _view(path) == expected, kill_at
        with vhd.open(path) as disk:
            assert disk.hidden and not disk.needs_repair
        if finished:
            break
    else:
        pytest.fail("the script needs more than 80 writes: raise the bound")
