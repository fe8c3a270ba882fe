#!/usr/bin/env python3
"""Volume plugin ``org.xen.xapi.storage.file``: an SR is a directory of VHD files.

Configuration (``SR.create`` / ``SR.attach``):

* ``path`` -- the directory, created by ``SR.create`` if needed (required);
* ``quota`` -- optional cap in bytes on the SR's size: ``total_space`` is at
  most this and ``free_space`` is what is left of it after the files;
* ``enforce_virtual_allocation`` -- ``true`` refuses volumes, snapshots and
  resizes whose virtual sizes would exceed ``total_space`` (sm's
  ``ENFORCE_VIRT_ALLOC``); by default the SR is thin provisioned and only the
  bytes actually written must fit.

``SR.attach`` returns ``file://<path>``; volume URIs are
``vhd+file://<path>/<uuid>.vhd`` (served by the ``vhd+file`` datapath).

Directory layout::

    .sr.json            uuid, name, description, quota settings
    .sr.lock            flock: every change below holds it (see sr_dir)
    <uuid>.vhd          a volume: key = uuid = file name without .vhd
    <uuid>.json         its metadata: name, description, keys, sharable, read_write
    .journal/<uuid>.json  a snapshot/clone of <uuid> in progress
    <uuid>.vhd.merged   a leaf-coalesce of <uuid> being committed (see below)
    <uuid>.vhd.old      the file a leaf-coalesce of <uuid> replaced, to delete
    .datapath/<uuid>.vhd.json  datapath state (sr_dir)

New volumes are dynamic VHDs, sized up to whole 2 MiB blocks as sm does.
A VHD's hidden flag (footer) says whether it is a volume (visible, listed by
``SR.ls``) or an interior node of a snapshot tree; parents are read from the
VHD headers, never stored twice.  Volume records (``SR.ls``, ``Volume.stat``,
``Volume.create/snapshot/clone``) carry one field the IDL's volume has not:
``parent``, the key of the VHD parent (hidden or not) or null.

Snapshot and clone (sm's FileSR "double" snapshot) of leaf ``L``:

1. ``L.vhd`` is hard-linked as ``B.vhd`` (``B`` a new uuid), a differencing
   child of ``B`` is created as ``L.vhd.new`` and renamed over ``L.vhd``:
   ``L`` keeps its key, uuid, metadata and datapath state, and its contents
   now live in ``B``.  The rename is the commit point;
2. ``B`` is marked hidden (no metadata file: it is no volume);
3. ``S.vhd``, a second child of ``B``, is the result: a snapshot is read-only,
   a clone writable; both copy the name and description, not the keys.
   ``S`` and its metadata are written before the commit and discarded by a
   recovery, so that everything the commit depends on is synced at once.

A journal (``.journal/L.json``) names ``B`` and ``S`` while this runs; the
next call that takes the lock rolls an interrupted one back (before the
rename) or completes it without ``S`` (after).  Snapshots of a leaf in use are
taken with the lock held, which holds off every datapath call; the leaf's
datapath ``generation`` is bumped so a consumer that keeps files open knows to
reopen the chain (volume plugins cannot reach a consumer otherwise).

Volume.destroy removes only the leaf and its metadata.  What is left for the
garbage collector (sm's ``cleanup.py`` rules) is listed by the extension call
``SR.tree [dbg, sr]``, which first completes or rolls back interrupted
snapshots, then returns::

    {"sr": uri, "path": dir, "lock": "<dir>/.sr.lock",
     "nodes": [{"key", "path", "uri", "parent": key | null, "children": [keys],
                "hidden": bool, "virtual_size", "physical_utilisation",
                "datapath": {...state...} | null}, ...],
     "prunable": [keys],          # hidden, and no visible volume below
     "coalescable": [keys],       # hidden, its parent's only child, has visible
                                  # volumes below
     "leaf_coalescable": [keys],  # visible leaf, its (hidden) parent's only child
     "unreadable": [{"file", "error"}]}

The GC coalesces a node into its parent with ``vhd.coalesce_into_parent``
(no lock needed: the two files are not written by anyone else), then, holding
``lock`` (an exclusive ``flock`` of that file), re-parents the node's children
(``Vhd.set_parent``) and deletes the node's ``.vhd``.  A leaf-coalesce goes:
``Datapath.pause`` the leaf's URI (required if it has a datapath state; the
project's GC pauses every leaf, which also holds off an activation racing
with the commit), take the lock, coalesce the leaf into its parent, commit,
release the lock, ``Datapath.unpause``.  The commit keeps ``<leaf>.vhd`` a visible volume at
every instant (``SR.ls``, ``Volume.stat`` and the datapath read without the
lock) and is finished by this plugin if the GC dies half-way:

1. rename the parent to ``<leaf>.vhd.merged`` (a name no call lists);
2. clear the hidden flag of ``<leaf>.vhd.merged``;
3. rename ``<leaf>.vhd.merged`` over ``<leaf>.vhd``: the volume keeps its
   key, metadata and datapath state, its contents now need one file less.
   The GC may first link the old ``<leaf>.vhd`` as ``<leaf>.vhd.old`` and
   delete that from a thread of its own once the rename is made, so that
   freeing the old file's blocks holds up neither the unpause nor the lock.

Step 1 comes only after the coalesce completed, so a ``<leaf>.vhd.merged``
always holds the whole volume: the next call that takes the lock (``SR.tree``,
``SR.attach``, every change) does steps 2 and 3 for any it finds, and deletes
a ``<leaf>.vhd.old`` left behind.
The GC must not call the plugin while holding the lock.

Errors (see ``plugins.sm_error``): missing ``path`` -> 115; the directory
cannot be made -> 61; ``SR.create`` over an existing SR -> 42; no SR at that
place -> 47; bad parameter -> 1; bad size or shrinking -> 79; SR full -> 44;
chain of 30 or more -> 109; unknown or hidden key -> ``VDI_MISSING [sr, key]``;
destroying a volume a datapath holds -> ``VDI_IN_USE [key, operation]``;
destroying an SR with volumes in use -> ``SR_DEVICE_IN_USE``.
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

import glob  # noqa: E402
import re  # noqa: E402
import uuid as uuidlib  # noqa: E402

import sr_dir  # noqa: E402
from xapi.backends.storage import vhd  # noqa: E402
from xapi.backends.storage.plugins import Params, StorageError, serve, sm_error  # noqa: E402

SR_SCHEME = "file"
VOLUME_SCHEME = "vhd+file"
SR_META = ".sr.json"
JOURNALS = ".journal"
MERGED = ".merged"                    # <leaf>.vhd.merged: a leaf-coalesce being committed
OLD = ".old"                          # <leaf>.vhd.old: the file a leaf-coalesce replaced
MAX_CHAIN = 30                        # sm's vhdutil.MAX_CHAIN_SIZE
SIZE_UNIT = vhd.DEFAULT_BLOCK_SIZE
KEY = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

QUERY = {
    "plugin": "file",
    "name": "File SR",
    "description": "VHD volumes in a local directory, with snapshots and clones",
    "vendor": "xapi-server",
    "copyright": "xapi-server contributors",
    "version": "1.0",
    "required_api_version": "5.0",
    "features": ["SR_ATTACH", "SR_DETACH", "SR_CREATE", "SR_DELETE", "SR_SCAN", "SR_UPDATE",
                 "SR_PROBE", "VDI_CREATE", "VDI_DESTROY", "VDI_SNAPSHOT", "VDI_CLONE",
                 "VDI_RESIZE", "VDI_UPDATE", "VDI_ATTACH", "VDI_DETACH", "VDI_ACTIVATE",
                 "VDI_DEACTIVATE", "THIN_PROVISIONING"],
    "configuration": {
        "path": "directory holding the SR (created if missing)",
        "quota": "optional: maximum size of the SR in bytes",
        "enforce_virtual_allocation": "optional, true/false: refuse over-provisioning",
    },
    "required_cluster_stack": [],
}


def _key_of(vhd_path: str | None) -> str | None:
    """The key of a volume file (its name without ``.vhd``)."""
    if vhd_path is None:
        return None
    name = os.path.basename(vhd_path)
    return name[:-4] if name.endswith(".vhd") else name


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def _metadata_bytes(virtual_size: int) -> int:
    """Bytes a new VHD of this size takes before any data: footer copy,
    header, three parent locators, BAT, footer."""
    return 512 + 1024 + 3 * 1024 + _round_up(-(-virtual_size // SIZE_UNIT) * 4, 512) + 512


def _parse_config(configuration: dict[str, str]) -> dict:
    settings: dict = {}
    if "quota" in configuration:
        try:
            settings["quota"] = int(configuration["quota"])
        except ValueError:
            settings["quota"] = -1
        if settings["quota"] < 0:
            raise sm_error("InvalidArg", f"quota must be a byte count, not {configuration['quota']!r}")
    flag = configuration.get("enforce_virtual_allocation", "false").lower()
    if flag not in ("true", "false"):
        raise sm_error("InvalidArg", f"enforce_virtual_allocation must be true or false, not {flag!r}")
    settings["enforce_virtual_allocation"] = flag == "true"
    return settings


class FileSR:
    """One SR directory."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.uri = sr_dir.path_uri(SR_SCHEME, self.path)

    # -- finding it ------------------------------------------------------------

    @classmethod
    def configured_path(cls, configuration: dict[str, str]) -> str:
        path = configuration.get("path", "")
        if not path:
            raise sm_error("ConfigParamsMissing", "the configuration key 'path' is required")
        return os.path.abspath(path)

    @classmethod
    def existing(cls, path: str) -> "FileSR":
        sr = cls(path)
        if not os.path.isfile(os.path.join(sr.path, SR_META)):
            raise sm_error("SRUnavailable", f"no file SR at {sr.path}")
        return sr

    @classmethod
    def from_uri(cls, uri: str) -> "FileSR":
        return cls.existing(sr_dir.uri_path(uri, (SR_SCHEME,))[1])

    def meta(self) -> dict:
        return sr_dir.read_json(os.path.join(self.path, SR_META), {})

    def save_meta(self, meta: dict) -> None:
        sr_dir.write_json(os.path.join(self.path, SR_META), meta)

    def lock(self):
        return sr_dir.locked(self.path)

    # -- files -----------------------------------------------------------------

    def vhd_path(self, key: str) -> str:
        return os.path.join(self.path, key + ".vhd")

    def meta_path(self, key: str) -> str:
        return os.path.join(self.path, key + ".json")

    def volume_uri(self, key: str) -> str:
        return sr_dir.path_uri(VOLUME_SCHEME, self.vhd_path(key))

    def all_keys(self) -> list[str]:
        return sorted(name[:-4] for name in os.listdir(self.path)
                      if name.endswith(".vhd") and KEY.match(name[:-4]))

    def pending(self) -> list[dict]:
        directory = os.path.join(self.path, JOURNALS)
        if not os.path.isdir(directory):
            return []
        return [sr_dir.read_json(os.path.join(directory, name)) or {}
                for name in sorted(os.listdir(directory)) if name.endswith(".json")]

    def check_key(self, key: str) -> None:
        """``key`` names a visible volume of this SR."""
        if not KEY.match(key) or not os.path.isfile(self.vhd_path(key)) or \
                any(key in (j.get("base"), j.get("snap")) for j in self.pending()):
            raise StorageError("VDI_MISSING", [self.uri, key])
        with vhd.open(self.vhd_path(key)) as image:
            if image.hidden:
                raise StorageError("VDI_MISSING", [self.uri, key])

    # -- records -----------------------------------------------------------------

    def volume(self, key: str) -> dict:
        path = self.vhd_path(key)
        meta = sr_dir.read_json(self.meta_path(key), {}) or {}
        with vhd.open(path) as image:
            virtual_size = image.virtual_size
            parent = _key_of(image.parent_path)
        return {
            "key": key,
            "uuid": key,
            "name": meta.get("name", ""),
            "description": meta.get("description", ""),
            "read_write": meta.get("read_write", True),
            "sharable": meta.get("sharable", False),
            "virtual_size": virtual_size,
            "physical_utilisation": os.stat(path).st_size,
            "uri": [self.volume_uri(key)],
            "keys": meta.get("keys", {}),
            "volume_type": "Data",
            "cbt_enabled": False,
            # not in the IDL's volume: the VHD parent's key (xapi's
            # sm_config:vhd-parent), so that callers need no SR.tree for it
            "parent": parent,
        }

    def visible_keys(self) -> list[str]:
        busy = {k for j in self.pending() for k in (j.get("base"), j.get("snap"))}
        keys = []
        for key in self.all_keys():
            if key in busy:
                continue
            try:
                with vhd.open(self.vhd_path(key)) as image:
                    if not image.hidden:
                        keys.append(key)
            except (vhd.VhdError, FileNotFoundError):
                continue          # reported by SR.tree; a scan must not fail
        return keys

    def space(self, allocation: bool = True) -> dict:
        """total/free/used bytes and the virtual allocation of visible volumes
        (which opens every volume: 0 unless ``allocation``)."""
        st = os.statvfs(self.path)
        total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        used = 0
        for entry in os.scandir(self.path):
            if entry.is_file(follow_symlinks=False):
                used += entry.stat(follow_symlinks=False).st_size
        quota = self.meta().get("quota")
        if quota is not None:
            total, free = min(total, quota), max(0, min(free, quota - used))
        allocated = 0
        for key in self.visible_keys() if allocation else ():
            with vhd.open(self.vhd_path(key)) as image:
                allocated += image.virtual_size
        return {"total": total, "free": free, "used": used, "allocated": allocated}

    def need(self, physical: int, virtual: int = 0) -> None:
        """Refuse with SR full unless ``physical`` new bytes fit, and (when
        virtual allocation is enforced) ``virtual`` more promised bytes."""
        enforce = bool(virtual and self.meta().get("enforce_virtual_allocation"))
        space = self.space(allocation=enforce)
        if physical > space["free"]:
            raise sm_error("SRNoSpace", f"{physical} bytes needed, {space['free']} free")
        if enforce:
            room = space["total"] - space["allocated"]
            if virtual > room:
                raise sm_error("SRNoSpace", f"{virtual} bytes of virtual size requested, "
                                            f"{room} not yet allocated")

    def stat(self) -> dict:
        meta, space = self.meta(), self.space()
        return {
            "sr": self.uri,
            "name": meta.get("name", ""),
            "uuid": meta.get("uuid", ""),
            "description": meta.get("description", ""),
            "free_space": space["free"],
            "total_space": space["total"],
            "datasources": [],
            "clustered": False,
            "health": ["Healthy", ""],
            # not in the IDL's sr_stat: what xapi shows as physical_utilisation
            # and virtual_allocation
            "physical_utilisation": space["used"],
            "virtual_allocation": space["allocated"],
        }

    # -- snapshot journal --------------------------------------------------------

    def journal_path(self, key: str) -> str:
        return os.path.join(self.path, JOURNALS, key + ".json")

    def recover(self) -> None:
        """Finish interrupted leaf-coalesce commits, and finish or undo
        interrupted snapshots (call with the lock held)."""
        for merged in glob.glob(os.path.join(glob.escape(self.path), "*.vhd" + MERGED)):
            leaf = merged[:-len(MERGED)]
            if not KEY.match(os.path.basename(leaf)[:-4]):
                continue
            with vhd.open(merged, writable=True) as image:
                if image.hidden:
                    image.set_hidden(False)
            os.replace(merged, leaf)
            sr_dir.fsync_dir(self.path)
        for old in glob.glob(os.path.join(glob.escape(self.path), "*.vhd" + OLD)):
            if KEY.match(os.path.basename(old)[:-len(".vhd" + OLD)]):
                sr_dir.remove(old)
        for journal in self.pending():
            leaf, base = self.vhd_path(journal["leaf"]), self.vhd_path(journal["base"])
            committed = (os.path.exists(leaf) and os.path.exists(base)
                         and not os.path.samefile(leaf, base))
            self._discard(journal["snap"])
            for leftover in glob.glob(glob.escape(leaf + ".new") + "*"):
                sr_dir.remove(leftover)
            if committed:
                with vhd.open(base, writable=True) as image:
                    image.set_hidden(True)
            elif os.path.exists(base):
                if os.path.exists(leaf):
                    sr_dir.remove(base)            # only a second name of the leaf
                else:
                    os.rename(base, leaf)
            sr_dir.remove(self.journal_path(journal["leaf"]))

    def _discard(self, key: str) -> None:
        for leftover in glob.glob(glob.escape(self.vhd_path(key)) + "*"):
            sr_dir.remove(leftover)
        sr_dir.remove(self.meta_path(key))


# ---------------------------------------------------------------------------
# Plugin.*


def plugin_query(p: Params) -> dict:
    return QUERY


def plugin_diagnostics(p: Params) -> str:
    return "file SR plugin: no diagnostics beyond SR.tree"


# ---------------------------------------------------------------------------
# SR.*


def sr_create(p: Params) -> dict:
    uuid, configuration = p.text("uuid"), p.mapping("configuration")
    name, description = p.text("name"), p.text("description")
    path = FileSR.configured_path(configuration)
    settings = _parse_config(configuration)
    if os.path.exists(path) and not os.path.isdir(path):
        raise sm_error("FileSRCreate", f"{path} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise sm_error("FileSRCreate", f"{path}: {exc.strerror}") from None
    sr = FileSR(path)
    with sr.lock():
        if os.path.exists(os.path.join(path, SR_META)):
            raise sm_error("SRExists", f"{path} already holds an SR")
        sr.save_meta({"uuid": uuid, "name": name, "description": description, **settings})
    return {**configuration, "path": path}


def sr_attach(p: Params) -> str:
    sr = FileSR.existing(FileSR.configured_path(p.mapping("configuration")))
    with sr.lock():
        sr.recover()
    return sr.uri


def sr_detach(p: Params) -> None:
    FileSR.from_uri(p.text("sr"))


def sr_destroy(p: Params) -> None:
    sr = FileSR.from_uri(p.text("sr"))
    with sr.lock():
        keys = sr.all_keys()
        busy = [key for key in keys if sr_dir.in_use(sr.vhd_path(key))]
        if busy:
            raise StorageError("SR_DEVICE_IN_USE", [])
        for key in keys:
            sr._discard(key)
        for name in os.listdir(sr.path):
            stem = name.split(".", 1)[0]
            if name.startswith(".tmp-") or KEY.match(stem) and (name.endswith(".json") or ".vhd" in name):
                sr_dir.remove(os.path.join(sr.path, name))   # metadata and temporary files
        for directory in (JOURNALS, sr_dir.STATE_DIR):
            sr_dir.remove_tree(os.path.join(sr.path, directory))
        sr_dir.remove(os.path.join(sr.path, SR_META))
        sr_dir.remove(os.path.join(sr.path, sr_dir.LOCK_NAME))
    try:
        os.rmdir(sr.path)
    except OSError:
        pass                      # someone else's files are there: leave them


def sr_stat(p: Params) -> dict:
    return FileSR.from_uri(p.text("sr")).stat()


def sr_ls(p: Params) -> list[dict]:
    sr = FileSR.from_uri(p.text("sr"))
    out = []
    for key in sr.visible_keys():
        try:
            out.append(sr.volume(key))
        except (vhd.VhdError, FileNotFoundError):
            continue              # destroyed meanwhile
    return out


def sr_probe(p: Params) -> list[dict]:
    configuration = p.mapping("configuration")
    path = FileSR.configured_path(configuration)
    result = {"configuration": configuration, "complete": True, "extra_info": {}}
    if os.path.isfile(os.path.join(path, SR_META)):
        result["sr"] = FileSR(path).stat()
    elif os.path.exists(path) and not os.path.isdir(path):
        return []
    return [result]


def _sr_update(p: Params, field: str, param: str) -> None:
    sr = FileSR.from_uri(p.text("sr"))
    value = p.text(param)
    with sr.lock():
        meta = sr.meta()
        meta[field] = value
        sr.save_meta(meta)


def sr_set_name(p: Params) -> None:
    _sr_update(p, "name", "new_name")


def sr_set_description(p: Params) -> None:
    _sr_update(p, "description", "new_description")


def sr_tree(p: Params) -> dict:
    sr = FileSR.from_uri(p.text("sr"))
    with sr.lock():
        sr.recover()
        return _tree(sr)


def _tree(sr: FileSR) -> dict:
    nodes: dict[str, dict] = {}
    unreadable = []
    for key in sr.all_keys():
        path = sr.vhd_path(key)
        try:
            with vhd.open(path) as image:
                parent_path = image.parent_path
                node = {"key": key, "path": path, "uri": sr.volume_uri(key), "hidden": image.hidden,
                        "virtual_size": image.virtual_size,
                        "physical_utilisation": image.physical_size()}
        except vhd.VhdError as exc:
            unreadable.append({"file": path, "error": str(exc)})
            continue
        node.update(parent=_key_of(parent_path), children=[], datapath=sr_dir.load_state(path) or None)
        nodes[key] = node
    for node in nodes.values():
        if node["parent"] in nodes:
            nodes[node["parent"]]["children"].append(node["key"])

    def has_visible_below(key: str) -> bool:
        node = nodes[key]
        return not node["hidden"] or any(has_visible_below(c) for c in node["children"])

    def only_child(node: dict) -> bool:
        parent = nodes.get(node["parent"])
        return parent is not None and parent["children"] == [node["key"]]

    return {
        "sr": sr.uri,
        "path": sr.path,
        "lock": os.path.join(sr.path, sr_dir.LOCK_NAME),
        "nodes": [nodes[k] for k in sorted(nodes)],
        "prunable": sorted(k for k, n in nodes.items() if n["hidden"] and not has_visible_below(k)),
        "coalescable": sorted(k for k, n in nodes.items()
                              if n["hidden"] and n["children"] and only_child(n)
                              and has_visible_below(k)),
        "leaf_coalescable": sorted(k for k, n in nodes.items()
                                   if not n["hidden"] and not n["children"] and only_child(n)
                                   and nodes[n["parent"]]["hidden"]),
        "unreadable": unreadable,
    }


# ---------------------------------------------------------------------------
# Volume.*


def _size(p: Params, name: str) -> int:
    size = p.integer(name)
    if size <= 0 or size > vhd.MAX_VIRTUAL_SIZE:
        raise sm_error("VDISize", f"{size} is not between 1 and {vhd.MAX_VIRTUAL_SIZE} bytes")
    return min(_round_up(size, SIZE_UNIT), vhd.MAX_VIRTUAL_SIZE)


def volume_create(p: Params) -> dict:
    sr = FileSR.from_uri(p.text("sr"))
    name, description = p.text("name"), p.text("description")
    size, sharable = _size(p, "size"), p.flag("sharable")
    key = str(uuidlib.uuid4())
    with sr.lock():
        sr.recover()
        sr.need(_metadata_bytes(size), size)
        # metadata first: a crash leaves an unused .json, never a nameless volume
        sr_dir.write_json(sr.meta_path(key), {"name": name, "description": description, "keys": {},
                                              "sharable": sharable, "read_write": True})
        vhd.create_dynamic(sr.vhd_path(key), size, uuid=key).close()
        return sr.volume(key)


def volume_destroy(p: Params) -> None:
    sr, key = FileSR.from_uri(p.text("sr")), p.text("key")
    with sr.lock():
        sr.recover()
        sr.check_key(key)
        path = sr.vhd_path(key)
        if sr_dir.in_use(path):
            raise StorageError("VDI_IN_USE", [key, "destroy"])
        os.unlink(path)           # its parent, if any, is left to the GC
        sr_dir.remove(sr.meta_path(key))
        sr_dir.remove(sr_dir.state_path(path))


def _snapshot(p: Params, read_write: bool) -> dict:
    sr, key = FileSR.from_uri(p.text("sr")), p.text("key")
    with sr.lock():
        sr.recover()
        sr.check_key(key)
        leaf = sr.vhd_path(key)
        if len(vhd.chain(leaf)) >= MAX_CHAIN:
            raise sm_error("SnapshotChainTooLong", f"{key} is {MAX_CHAIN} or more VHDs deep")
        with vhd.open(leaf) as image:
            size = image.virtual_size
        sr.need(2 * _metadata_bytes(size), size)
        base, snap = str(uuidlib.uuid4()), str(uuidlib.uuid4())
        journals = os.path.join(sr.path, JOURNALS)
        os.makedirs(journals, exist_ok=True)
        journal = sr.journal_path(key)
        sr_dir.write_json(journal, {"leaf": key, "base": base, "snap": snap}, sync=False)
        base_path, snap_path = sr.vhd_path(base), sr.vhd_path(snap)
        os.link(leaf, base_path)
        # S is made before the commit too (a recovery discards it until the
        # journal is gone), so that everything the commit depends on is
        # synced at once
        meta = sr_dir.read_json(sr.meta_path(key), {}) or {}
        sr_dir.write_json(sr.meta_path(snap), {
            "name": meta.get("name", ""), "description": meta.get("description", ""),
            "keys": {}, "sharable": meta.get("sharable", False), "read_write": read_write},
            sync=False)
        vhd.create_differencing(snap_path, base_path, sync=False).close()
        vhd.create_differencing(leaf + ".new", base_path, sync=False).close()
        sr_dir.sync_all([journal, journals, sr.meta_path(snap), snap_path, leaf + ".new", sr.path])
        os.replace(leaf + ".new", leaf)                     # the commit point
        with vhd.open(base_path, writable=True) as image:
            image.set_hidden(True)
            image.flush()
        sr_dir.fsync_dir(sr.path)
        sr_dir.remove(journal)                              # after both are durable
        sr_dir.bump_generation(leaf)
        return sr.volume(snap)


def volume_snapshot(p: Params) -> dict:
    return _snapshot(p, read_write=False)


def volume_clone(p: Params) -> dict:
    return _snapshot(p, read_write=True)


def volume_resize(p: Params) -> None:
    sr, key = FileSR.from_uri(p.text("sr")), p.text("key")
    new_size = _size(p, "new_size")
    with sr.lock():
        sr.recover()
        sr.check_key(key)
        path = sr.vhd_path(key)
        with vhd.open(path) as image:
            old_size = image.virtual_size
        if p.integer("new_size") < old_size:
            raise sm_error("VDISize", f"shrinking {key} from {old_size} bytes is not supported")
        if new_size <= old_size:
            return
        # the BAT may have to move to the end of the file: count all of it
        sr.need(_metadata_bytes(new_size), new_size - old_size)
        with vhd.open(path, writable=True) as image:
            image.resize(new_size)
        sr_dir.bump_generation(path)


def _update_meta(p: Params, change) -> None:
    sr, key = FileSR.from_uri(p.text("sr")), p.text("key")
    with sr.lock():
        sr.recover()
        sr.check_key(key)
        meta = sr_dir.read_json(sr.meta_path(key), {}) or {}
        change(meta)
        sr_dir.write_json(sr.meta_path(key), meta)


def volume_set(p: Params) -> None:
    k, v = p.text("k"), p.text("v")
    _update_meta(p, lambda meta: meta.setdefault("keys", {}).__setitem__(k, v))


def volume_unset(p: Params) -> None:
    k = p.text("k")
    _update_meta(p, lambda meta: meta.setdefault("keys", {}).pop(k, None))


def volume_set_name(p: Params) -> None:
    name = p.text("new_name")
    _update_meta(p, lambda meta: meta.__setitem__("name", name))


def volume_set_description(p: Params) -> None:
    description = p.text("new_description")
    _update_meta(p, lambda meta: meta.__setitem__("description", description))


def volume_stat(p: Params) -> dict:
    sr, key = FileSR.from_uri(p.text("sr")), p.text("key")
    sr.check_key(key)
    return sr.volume(key)


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
    "SR.tree": sr_tree,
    "Volume.create": volume_create,
    "Volume.destroy": volume_destroy,
    "Volume.snapshot": volume_snapshot,
    "Volume.clone": volume_clone,
    "Volume.resize": volume_resize,
    "Volume.set": volume_set,
    "Volume.unset": volume_unset,
    "Volume.set_name": volume_set_name,
    "Volume.set_description": volume_set_description,
    "Volume.stat": volume_stat,
}

if __name__ == "__main__":
    serve(HANDLERS)
