"""VHDs written by xapi/backends/storage/vhd.py, checked with other tools.

* qemu-img / qemu-io (Debian package ``qemu-utils``; installed here with
  apt-get when missing and running as root).  qemu's ``vpc`` driver reads
  dynamic VHDs fully, but it does **not** follow differencing parents: it
  opens a differencing VHD as a standalone image and returns each allocated
  block's data without looking at the sector bitmap (zeros for unallocated
  blocks).  So the chain is checked layer by layer (qemu's view of a
  differencing layer == our ``read(..., layer_only=True)``), and end to end
  by flattening the chain with our coalesce and letting qemu read the base.
  ``qemu-img check`` has no checker for vpc (exit 63, "This image format does
  not support checks"); the structural checks are ``qemu-img info`` (size,
  no checksum warning), ``qemu-img map`` (data offsets == our BAT) and
  ``qemu-img compare``.
* Xen Orchestra's vhd-lib (npm, pinned in tests/integration/js_vhd; 0.7.2,
  the newest release whose dependencies all install from the npm registry
  here) follows our chain through the header's parent name, checks every
  checksum and footer copy, flattens it, and must produce our bytes; its
  mergeVhd must produce files we read back.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from xapi.backends.storage import vhd

KiB = 1024
MiB = 1024 * KiB

JS_DIR = Path(__file__).resolve().parent / "js_vhd"
PROBE = JS_DIR / "vhd_probe.cjs"


# --------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="session")
def qemu_img() -> str:
    path = shutil.which("qemu-img")
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "-q", "qemu-utils"]
        done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
        if done.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=600)
            subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
        path = shutil.which("qemu-img")
    if path is None:
        pytest.skip("LOUD SKIP: qemu-img is missing (Debian package qemu-utils) and could not "
                    "be installed (needs root and apt-get): VHD interoperability with qemu untested")
    return path


@pytest.fixture(scope="session")
def qemu_io(qemu_img) -> str:
    path = shutil.which("qemu-io")
    if path is None:
        pytest.skip("LOUD SKIP: qemu-io is missing although qemu-img is there")
    return path


def _vhd_lib_installed() -> str | None:
    try:
        return json.loads((JS_DIR / "node_modules" / "vhd-lib" / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="session")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip(f"LOUD SKIP: vhd-lib checks need node and npm on PATH (node={node!r}, npm={npm!r})")
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if not match or int(match.group(1)) < 16:
        pytest.skip(f"LOUD SKIP: vhd-lib needs Node >= 16, found {version or 'unknown'}")
    pinned = json.loads((JS_DIR / "package.json").read_text())["dependencies"]["vhd-lib"]
    lock_path = Path(tempfile.gettempdir()) / "xapi-js-vhd-npm.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _vhd_lib_installed() != pinned:
            command = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"]
            try:
                done = subprocess.run(command, cwd=JS_DIR, capture_output=True, text=True, timeout=600)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{' '.join(command)} timed out in {JS_DIR}")
            if done.returncode != 0:
                pytest.fail(f"{' '.join(command)} failed in {JS_DIR} (exit {done.returncode}):\n"
                            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            if _vhd_lib_installed() != pinned:
                pytest.fail(f"vhd-lib {pinned} is still not installed after {' '.join(command)}")
    return node


def run(*args, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def probe(node: str, **args) -> dict:
    done = subprocess.run([node, str(PROBE), json.dumps(args)], cwd=JS_DIR,
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    try:
        report = json.loads(lines[-1])
    except (IndexError, ValueError):
        pytest.fail(f"vhd_probe {args} printed no report (exit {done.returncode}):\n"
                    f"{done.stdout}\n{done.stderr}")
    if not report["ok"]:
        pytest.fail(f"vhd_probe {args} failed: {report['error']}\n{done.stderr}")
    return report["result"]


# --------------------------------------------------------------------------
# helpers

def view(path, **kw) -> bytes:
    with vhd.open(str(path)) as disk:
        return disk.read(0, disk.virtual_size, **kw)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def scribble(disk: vhd.Vhd, rng: random.Random, count: int, max_len: int = 300 * KiB) -> None:
    """Random unaligned writes, some crossing block boundaries."""
    size = disk.virtual_size
    for _ in range(count):
        length = rng.randrange(1, max_len)
        offset = rng.randrange(0, size - length)
        disk.write(offset, rng.randbytes(length))
    # one write straddling a block boundary, one touching the last byte
    bs = disk.block_size
    boundary = (rng.randrange(1, size // bs)) * bs
    disk.write(boundary - 777, rng.randbytes(1500))
    disk.write(size - 3, b"end")


def make_chain(d: Path, rng: random.Random, size: int, block_size: int = vhd.DEFAULT_BLOCK_SIZE):
    paths = [d / "base.vhd", d / "mid.vhd", d / "leaf.vhd"]
    with vhd.create_dynamic(str(paths[0]), size, block_size=block_size) as base:
        scribble(base, rng, 12)
    with vhd.create_differencing(str(paths[1]), str(paths[0])) as mid:
        scribble(mid, rng, 8)
    with vhd.create_differencing(str(paths[2]), str(paths[1])) as leaf:
        scribble(leaf, rng, 8)
    return paths


def qemu_raw(qemu_img: str, path: Path) -> bytes:
    out = path.with_suffix(".qemu.raw")
    run(qemu_img, "convert", "-f", "vpc", "-O", "raw", path, out)
    data = out.read_bytes()
    out.unlink()
    return data


def qemu_info(qemu_img: str, path: Path) -> dict:
    done = run(qemu_img, "info", "--output=json", "-f", "vpc", path)
    assert "checksum" not in done.stderr, done.stderr      # qemu warns on a bad footer checksum
    return json.loads(done.stdout)


def assert_qemu_check_clean(qemu_img: str, path: Path) -> None:
    done = run(qemu_img, "check", "-f", "vpc", path, check=False)
    # vpc has no consistency checker in qemu: 63 means "not supported", which
    # still proves qemu opened the image; any other failure is a real error
    if done.returncode == 63:
        assert "does not support checks" in done.stderr, done.stderr
    else:
        assert done.returncode == 0, done.stdout + done.stderr


def assert_qemu_map_matches_bat(qemu_img: str, path: Path) -> None:
    """qemu-img map's data extents are exactly our allocated blocks, at the
    file offsets our BAT gives."""
    extents = json.loads(run(qemu_img, "map", "--output=json", "-f", "vpc", path).stdout)
    with vhd.open(str(path)) as disk:
        bs = disk.block_size
        expected = {}
        for block in disk.allocated_blocks():
            expected[block * bs] = disk._bat[block] * 512 + disk._bitmap_bytes
        seen = {}
        for ext in extents:
            if not ext["data"]:
                continue
            for start in range(ext["start"], ext["start"] + ext["length"], bs):
                seen[start] = ext["offset"] + (start - ext["start"])
        assert seen == expected


# --------------------------------------------------------------------------
# qemu

def test_qemu_reads_a_dynamic_disk(qemu_img, tmp_path):
    rng = random.Random(1)
    # not a multiple of any CHS geometry: qemu must use current_size
    size = 100 * MiB + 3 * 512
    c, h, s = vhd.chs_geometry(size)
    assert c * h * s * 512 != size
    path = tmp_path / "dyn.vhd"
    with vhd.create_dynamic(str(path), size) as disk:
        scribble(disk, rng, 20)
    info = qemu_info(qemu_img, path)
    assert info["format"] == "vpc"
    assert info["virtual-size"] == size
    assert info["cluster-size"] == vhd.DEFAULT_BLOCK_SIZE
    assert_qemu_check_clean(qemu_img, path)
    assert_qemu_map_matches_bat(qemu_img, path)
    ours = view(path)
    assert qemu_raw(qemu_img, path) == ours
    raw = tmp_path / "ours.raw"
    raw.write_bytes(ours)
    assert "identical" in run(qemu_img, "compare", "-f", "vpc", "-F", "raw", path, raw).stdout


def test_qemu_reads_after_resize_moves_the_bat(qemu_img, tmp_path):
    rng = random.Random(2)
    path = tmp_path / "grown.vhd"
    with vhd.create_dynamic(str(path), 8 * MiB, block_size=64 * KiB) as disk:
        scribble(disk, rng, 6, max_len=100 * KiB)
        table = disk._header.table_offset
        disk.resize(300 * MiB + 512)
        assert disk._header.table_offset != table
        disk.write(299 * MiB + 17, b"after the resize" * 100)
    info = qemu_info(qemu_img, path)
    assert info["virtual-size"] == 300 * MiB + 512
    assert_qemu_map_matches_bat(qemu_img, path)
    assert qemu_raw(qemu_img, path) == view(path)


def test_qemu_reads_each_layer_and_the_coalesced_chain(qemu_img, tmp_path):
    rng = random.Random(3)
    size = 24 * MiB
    base, mid, leaf = make_chain(tmp_path, rng, size)
    leaf_view = view(leaf)
    for path in (base, mid, leaf):
        info = qemu_info(qemu_img, path)
        assert info["format"] == "vpc" and info["virtual-size"] == size
        assert_qemu_check_clean(qemu_img, path)
        assert_qemu_map_matches_bat(qemu_img, path)
    # qemu ignores the parent: the base is read whole, a differencing layer
    # as its own blocks (which our layout keeps zero where the bitmap is clear)
    assert qemu_raw(qemu_img, base) == view(base)
    assert qemu_raw(qemu_img, mid) == view(mid, layer_only=True)
    assert qemu_raw(qemu_img, leaf) == view(leaf, layer_only=True)
    assert view(leaf, layer_only=True) != leaf_view          # qemu alone cannot see the chain

    # flatten the chain the way the GC does, then qemu sees the leaf's data
    vhd.coalesce_into_parent(str(mid))
    with vhd.open(str(leaf), writable=True) as disk:
        disk.set_parent(str(base))
    vhd.coalesce_into_parent(str(leaf))
    assert qemu_raw(qemu_img, base) == leaf_view
    assert_qemu_map_matches_bat(qemu_img, base)


def test_we_read_what_qemu_writes(qemu_img, qemu_io, tmp_path):
    rng = random.Random(4)
    # a VHD made by qemu from raw data (creator "qemu", CHS-rounded size)
    raw = tmp_path / "src.raw"
    data = bytearray(9 * MiB)
    for _ in range(10):
        o = rng.randrange(len(data) - 70000)
        data[o:o + 70000] = rng.randbytes(70000)
    raw.write_bytes(bytes(data))
    made = tmp_path / "qemu.vhd"
    run(qemu_img, "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic", raw, made)
    with vhd.open(str(made)) as disk:
        assert disk.creator_app in (b"qemu", b"qem2")
        assert disk.read(0, len(data)) == data
        assert disk.read(len(data), disk.virtual_size - len(data)) == bytes(disk.virtual_size - len(data))
        assert disk.virtual_size == qemu_info(qemu_img, made)["virtual-size"]
        assert disk.geometry == vhd.chs_geometry(disk.virtual_size)

    # qemu-io writing into one of ours: new blocks, a rewritten footer
    ours = tmp_path / "ours.vhd"
    with vhd.create_dynamic(str(ours), 16 * MiB) as disk:
        disk.write(100, b"ours")
    run(qemu_io, "-f", "vpc", "-c", "write -P 0xab 3M 2500k", "-c", "write -P 0xcd 50 10", ours)
    with vhd.open(str(ours), writable=True) as disk:
        assert disk.read(3 * MiB, 2500 * KiB) == b"\xab" * 2500 * KiB
        assert disk.read(40, 80) == bytes(10) + b"\xcd" * 10 + bytes(40) + b"ours" + bytes(16)
        disk.write(3 * MiB - 1, b"xy")                     # and we keep writing after qemu
    assert qemu_raw(qemu_img, ours) == view(ours)


# --------------------------------------------------------------------------
# vhd-lib

def test_vhd_lib_reads_our_chain(node, tmp_path):
    rng = random.Random(5)
    size = 20 * MiB + 512
    base, mid, leaf = make_chain(tmp_path, rng, size)
    leaf_view = view(leaf)
    result = probe(node, op="chain", path=str(leaf))
    # vhd-lib found the same chain through the header's parent name...
    assert [layer["path"] for layer in result["layers"]] == [str(leaf), str(mid), str(base)]
    for layer, path in zip(result["layers"], (leaf, mid, base)):
        with vhd.open(str(path)) as disk:
            assert layer["uuid"] == disk.uuid
            assert layer["currentSize"] == disk.virtual_size == size
            assert layer["allocatedBlocks"] == len(disk.allocated_blocks())
            assert layer["diskType"] == (4 if disk.is_differencing else 3)
            if disk.is_differencing:
                assert layer["parentUuid"] == disk.parent_uuid
    # ...and its flattened copy holds our bytes
    assert result["size"] == size
    assert result["sha256"] == sha(leaf_view)
    # one layer alone, as vhd-lib sees it
    for path in (base, mid):
        single = probe(node, op="layer", path=str(path))
        assert single["sha256"] == sha(view(path, layer_only=True))


def test_vhd_lib_reads_our_coalesced_and_relinked_chain(node, tmp_path):
    rng = random.Random(6)
    base, mid, leaf = make_chain(tmp_path, rng, 12 * MiB)
    leaf_view = view(leaf)
    vhd.coalesce_into_parent(str(mid))
    with vhd.open(str(leaf), writable=True) as disk:
        disk.set_parent(str(base))
    os.unlink(mid)
    result = probe(node, op="chain", path=str(leaf))
    assert [layer["path"] for layer in result["layers"]] == [str(leaf), str(base)]
    assert result["sha256"] == sha(leaf_view)


def test_we_read_vhd_lib_merges_and_writes(node, tmp_path):
    rng = random.Random(7)
    base, mid, leaf = make_chain(tmp_path, rng, 12 * MiB)
    # vhd-lib 0.7's mergeVhd reads the parent's bitmap for every partially
    # covered child block without checking that the parent has the block
    # ("no such block"): give the base every block first
    with vhd.open(str(base), writable=True) as disk:
        for block in range(disk.virtual_size // disk.block_size):
            if disk.sector_bitmap(block) is None:
                disk.write(block * disk.block_size + 4096, b"base block %d" % block)
    mid_view, leaf_view = view(mid), view(leaf)
    # vhd-lib coalesces mid into our base
    mid_uuid = vhd.open(str(mid)).uuid
    probe(node, op="merge", parent=str(base), child=str(mid))
    with vhd.open(str(base)) as disk:                      # checksums verified on open
        assert disk.read(0, disk.virtual_size) == mid_view
        # vhd-lib gives the merged parent the child's identity; Xen
        # Orchestra then moves it into the child's place
        assert disk.uuid == mid_uuid and not disk.is_differencing
    os.replace(base, mid)
    assert vhd.chain(str(leaf)) == [str(leaf), str(mid)]
    assert view(leaf) == leaf_view
    # vhd-lib writes into our leaf (a differencing disk)
    payload = rng.randbytes(3 * MiB)
    (tmp_path / "payload").write_bytes(payload)
    probe(node, op="write", path=str(leaf), sector=4095, dataFile=str(tmp_path / "payload"))
    expected = bytearray(leaf_view)
    expected[4095 * 512:4095 * 512 + len(payload)] = payload
    assert view(leaf) == expected
    with vhd.open(str(leaf), writable=True) as disk:
        disk.write(0, b"still writable")
        expected[0:14] = b"still writable"
    assert view(leaf) == expected
    assert probe(node, op="chain", path=str(leaf))["sha256"] == sha(bytes(expected))
