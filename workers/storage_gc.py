"""Storage garbage collection: coalescing VHD snapshot trees, as sm's ``cleanup.py`` does.

Deleting a snapshot or clone leaves hidden VHDs behind: a base with nothing
visible below it, or a base with a single child, whose data could live in one
file instead of two.  Every ``storage_gc_interval`` seconds the server runs
:func:`run_pass`, which visits every SR plugged on this host whose volume
plugin answers ``SR.tree`` (the file SR; see ``plugins/lib/file_volume.py``
for the protocol) and repeats, taking a fresh tree before each step, until
the tree lists nothing to do:

1. **prune** (sm's ``garbageCollect``): every ``prunable`` node -- hidden,
   nothing visible below -- is deleted, deepest first, under the SR's lock;
2. **coalesce** an interior node ``C`` (``coalescable``: hidden, its parent
   ``P``'s only child, visible volumes below): ``vhd.coalesce_into_parent``
   copies ``C``'s sectors into ``P`` without the lock (nobody else writes
   hidden nodes, and ``C``'s sectors hide ``P``'s from every reader), then,
   under the lock, each child of ``C`` is re-parented onto ``P``
   (``Vhd.set_parent``); children in use by a datapath are paused around the
   relink so that their consumers reopen the chain.  ``C`` is deleted under
   the lock once a fresh tree shows it without children (a snapshot taken
   between the tree and the lock turns a visible child of ``C`` into a hidden
   one under a new name: it is relinked on the next round, never lost);
3. **leaf-coalesce** a visible leaf ``L`` into its hidden parent ``P``
   (``leaf_coalescable``: ``L`` is ``P``'s only child), live:
   ``Datapath.pause`` ``L`` (always, attached or not: the pause also holds
   off an activation that would race with the rename), take the lock,
   check ``L`` and ``P`` are still what the tree said, coalesce ``L`` into
   ``P``, commit (rename ``P`` to ``<L>.vhd.merged``, clear its hidden flag,
   rename it over ``<L>.vhd``: the volume keeps its key, metadata and
   datapath state), release the lock, ``Datapath.unpause`` -- which bumps the
   volume's datapath generation and hands back the new chain, so the holder
   (a running VM's disk) reopens it.  The old ``<L>.vhd`` is kept as
   ``<L>.vhd.old`` through the commit and deleted from a thread once the
   commit is made (the pass waits for it at its end): freeing its blocks
   holds up neither the VM nor the SR's lock.  A leaf whose datapath plugin
   cannot pause is left alone.

An SR where ``SR.tree`` reports an unreadable VHD is left alone (reported
as skipped): that file's parent is unknown, so any node may be under it.

Between steps the lock is released: the GC never calls a plugin while it
holds the SR's lock (the plugin would wait for it forever).  Only one
collector works on an SR at a time (a non-blocking ``flock`` of
``<state_dir>/storage-gc/<SR uuid>.lock``; a busy SR is skipped).

Data read through any volume is the same before, during and after: every
step only moves sectors to a file that is read *below* them, and every
rename or relink swaps in a file with the same contents.

Crash safety (a pass killed anywhere resumes safely on the next one)
-------------------------------------------------------------------
``vhd.coalesce_into_parent`` is idempotent: a half-done copy is simply
redone.  Multi-step changes are journalled in
``<state_dir>/storage-gc/<SR uuid>.json`` (written atomically *before* the
step it describes) and the next pass finishes the journalled operation
before anything else:

* ``{"op": "coalesce", "step": "copy"}``: redo the copy, then relink;
* ``{"op": "coalesce", "step": "relink"}``: the copy is complete, so ``C``
  and ``P`` read the same, and any child may point at either: relink
  whatever children ``C`` has now, delete ``C`` when it has none;
* ``{"op": "leaf"}``: ``SR.tree`` first (the plugin finishes a commit that
  had reached ``<L>.vhd.merged``: that file is renamed only after the copy
  completed, so it holds the whole volume); then, if the tree still lists
  ``L`` as leaf-coalescable under the same parent, the leaf-coalesce is run
  again, else it is done;
* ``"paused"``: the datapath URIs this GC paused, recorded before pausing;
  they are unpaused once the operation is over, so no volume stays paused
  after a crash.

Each intermediate state is valid: before the commit ``L`` still reads
through ``P`` (whose sectors under ``L``'s are hidden by them); after a
relink a child reads ``P``, equal to ``C``; ``<L>.vhd`` is visible and
complete at every instant of the commit.

Switches (sm's): SR ``other_config:coalesce=false`` stops coalescing (pruning
goes on); SR or VDI ``other_config:leaf-coalesce=false`` stops leaf-coalesce;
VDIs with ``on_boot=reset`` or ``allow_caching`` are not leaf-coalesced.

After a pass that changed an SR, its VDI records get their sizes and
``sm_config:vhd-parent`` from ``SR.ls`` and ``SR.tree`` again, and the SR its
sizes (``Storage.refresh_sr``).  This updates existing VDI records only: a
full ``Storage.scan`` also forgets VDIs missing from its ``SR.ls``, and a
background scan racing with a ``VDI.create``/``VDI.snapshot`` in another
thread could forget a VDI created between its ``SR.ls`` and its commit.  The
GC neither makes nor removes visible volumes, so there is nothing to add or
forget.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from xapi.backends.storage import vhd
from xapi.backends.storage.plugins import Plugin, PluginRegistry, StorageError
from xapi.context import Runtime
from xapi.errors import ApiError

log = logging.getLogger("xapi.storage_gc")

JOURNAL_DIR = "storage-gc"
MERGED = ".merged"          # the file SR protocol's staging name: <leaf path>.merged
OLD = ".old"                # and the replaced leaf's: <leaf path>.old
MAX_STEPS = 10_000          # actions on one SR in one pass (each removes a node)
MAX_RELINK_ROUNDS = 20

# progress(node key, blocks done, blocks in total) during a coalesce
Progress = Callable[[str, int, int], None]
# checkpoint(step name) between the steps of a change: a test hook
Checkpoint = Callable[[str], None]


class GcAborted(Exception):
    """The pass was asked to stop (server shutdown); it resumes next time."""


@dataclass
class SrReport:
    sr: str
    pruned: list[str] = field(default_factory=list)
    coalesced: list[str] = field(default_factory=list)        # interior nodes merged and deleted
    leaf_coalesced: list[str] = field(default_factory=list)   # volumes now one file shorter
    relinked: int = 0
    blocks: int = 0                                           # blocks copied by coalesces
    bytes: int = 0                                            # their size
    resumed: str | None = None                                # the journalled operation finished
    skipped: dict[str, str] = field(default_factory=dict)     # key -> why, this pass
    unpaused: dict[str, Any] = field(default_factory=dict)    # uri -> Datapath.unpause result
    unreadable: list[dict] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.pruned or self.coalesced or self.leaf_coalesced or self.relinked
                    or self.resumed)


@dataclass
class StorageGcReport:
    srs: list[SrReport] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.srs)

    @property
    def errors(self) -> list[str]:
        return [f"{r.sr}: {r.error}" for r in self.srs if r.error]


# ---------------------------------------------------------------------------
# small helpers


@contextlib.contextmanager
def _flock(path: str, *, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` of ``path``; with ``wait=False`` yields
    False (and holds nothing) when someone else has it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _same(a: str | None, b: str) -> bool:
    try:
        return a is not None and os.path.samefile(a, b)
    except OSError:
        return False


def _uri(node: dict) -> list[str]:
    uri = node.get("uri")
    return [uri] if isinstance(uri, str) else list(uri or [])


def _in_use(node: dict) -> bool:
    state = node.get("datapath") or {}
    return bool(state.get("attached") or state.get("active"))


class Journal:
    """One JSON record, replaced atomically; None when no change is in flight."""

    def __init__(self, path: str):
        self.path = path

    def load(self) -> dict | None:
        try:
            with open(self.path) as f:
                entry = json.load(f)
        except FileNotFoundError:
            return None
        except ValueError:
            log.error("storage GC journal %s is not JSON: ignoring it", self.path)
            return None
        return entry if isinstance(entry, dict) and entry.get("op") else None

    def save(self, entry: dict) -> None:
        directory = os.path.dirname(self.path)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(entry, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(directory)

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
            _fsync_dir(os.path.dirname(self.path))


# ---------------------------------------------------------------------------
# one SR


class SrCollector:
    """The GC of one SR, given its volume plugin and URI (no database needed).

    ``state_dir`` holds the journal and the collector lock, named ``name``
    (the SR's uuid for the server).  ``skip_leaves`` are keys never
    leaf-coalesced; ``coalesce=False`` limits the pass to pruning."""

    def __init__(self, registry: PluginRegistry, plugin: Plugin, uri: str, state_dir: str,
                 name: str, *, progress: Progress | None = None,
                 checkpoint: Checkpoint | None = None, stop: threading.Event | None = None,
                 coalesce: bool = True, leaf_coalesce: bool = True,
                 skip_leaves: set[str] | frozenset[str] = frozenset()):
        self.registry = registry
        self.plugin = plugin
        self.uri = uri
        self.state_dir = state_dir
        self.name = name
        self.journal = Journal(os.path.join(state_dir, name + ".json"))
        self.progress = progress
        self.checkpoint = checkpoint
        self.stop = stop or threading.Event()
        self.coalesce = coalesce
        self.leaf_coalesce = leaf_coalesce
        self.skip_leaves = set(skip_leaves)
        self.report = SrReport(sr=name)
        self._lock_path = ""
        self._freeing: list[threading.Thread] = []

    # -- plumbing ----------------------------------------------------------------

    def _tree(self) -> dict:
        tree = self.plugin.call("SR.tree", sr=self.uri)
        self._lock_path = tree["lock"]
        self.report.unreadable = tree.get("unreadable", [])
        return tree

    def _locked(self):
        """The SR's lock.  No plugin call may be made while it is held."""
        return _flock(self._lock_path)

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise GcAborted("storage GC stopped")

    def _mark(self, step: str) -> None:
        if self.checkpoint is not None:
            self.checkpoint(step)

    def _copy(self, key: str, child_path: str) -> None:
        """``coalesce_into_parent``, abortable through ``stop`` and reported."""
        def progress(done: int, total: int) -> None:
            self._check_stop()
            if self.progress is not None:
                self.progress(key, done, total)

        with vhd.open(child_path) as child:
            block_size = child.block_size
        # the child is deleted once merged: its cached pages are of no more use
        blocks = vhd.coalesce_into_parent(child_path, progress=progress, drop_child_cache=True)
        self.report.blocks += blocks
        self.report.bytes += blocks * block_size

    def _pause(self, entry: dict, node: dict) -> str:
        """Pause a volume's datapath, recording it in the journal first:
        "paused", "unsupported" (no pause for its URIs) or "gone" (the volume
        was destroyed since the tree was taken)."""
        try:
            dp, uri = self.registry.datapath_for(_uri(node))
        except StorageError:
            return "unsupported"
        if not dp.has("Datapath.pause") or not dp.has("Datapath.unpause"):
            return "unsupported"
        if uri not in entry.setdefault("paused", []):
            entry["paused"].append(uri)
            self.journal.save(entry)
        try:
            dp.call("Datapath.pause", uri=uri)
        except StorageError as exc:
            if exc.code != "SR_BACKEND_FAILURE_46":
                raise
            entry["paused"].remove(uri)      # missing or hidden: nothing was paused
            self.journal.save(entry)
            return "gone"
        return "paused"

    def _unpause_all(self, entry: dict) -> None:
        """Unpause what the journal says this GC paused (idempotent)."""
        for uri in list(entry.get("paused", [])):
            dp, _ = self.registry.datapath_for([uri])
            try:
                self.report.unpaused[uri] = dp.call("Datapath.unpause", uri=uri)
            except StorageError as exc:
                if exc.code != "SR_BACKEND_FAILURE_46":   # the volume is gone: nothing paused
                    raise
            entry["paused"].remove(uri)
            self.journal.save(entry)

    # -- the pass ----------------------------------------------------------------

    def run(self) -> SrReport:
        started = time.monotonic()
        os.makedirs(self.state_dir, exist_ok=True)
        try:
            with _flock(os.path.join(self.state_dir, self.name + ".lock"), wait=False) as mine:
                if not mine:
                    self.report.skipped["*"] = "another storage GC is working on this SR"
                    return self.report
                tree: dict | None = self._tree()
                entry = self.journal.load()
                if entry is not None:
                    self._resume(entry)
                    self.report.resumed = entry["op"]
                    tree = None
                for _ in range(MAX_STEPS):
                    self._check_stop()
                    if not self._step(tree or self._tree()):
                        break
                    tree = None
        finally:
            for thread in self._freeing:
                thread.join()
            self.report.seconds = time.monotonic() - started
        return self.report

    def _free_later(self, path: str) -> None:
        """Delete a replaced file from a thread (the pass waits for it at its
        end): freeing a big file's blocks takes a while, and neither the VM
        (unpaused meanwhile) nor the SR lock need wait for it.  A leftover is
        deleted by the plugin (``<leaf>.vhd.old``)."""
        def free() -> None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

        thread = threading.Thread(target=free, name="storage-gc-free")
        thread.start()
        self._freeing.append(thread)

    def _step(self, tree: dict) -> bool:
        """Do one thing the tree lists; False when there is nothing left."""
        nodes = {n["key"]: n for n in tree["nodes"]}
        skipped = self.report.skipped
        if tree.get("unreadable"):
            # whose parent is an unreadable file?  Any node may be: touch nothing
            skipped["*"] = "unreadable VHDs: " + ", ".join(u["file"] for u in tree["unreadable"])
            return False
        prunable = [k for k in tree.get("prunable", []) if k in nodes and k not in skipped]
        if prunable:
            self._prune(nodes, prunable)
            return True
        if self.coalesce:
            for key in tree.get("coalescable", []):
                if key in nodes and key not in skipped and nodes[key]["parent"] in nodes:
                    self._coalesce(nodes, key)
                    return True
        if self.coalesce and self.leaf_coalesce:
            for key in tree.get("leaf_coalescable", []):
                if key in self.skip_leaves:
                    skipped.setdefault(key, "leaf-coalesce disabled for this VDI")
                    continue
                if key in nodes and key not in skipped and nodes[key]["parent"] in nodes:
                    self._leaf(nodes, key)
                    return True
        return False

    # -- prune -------------------------------------------------------------------

    def _prune(self, nodes: dict[str, dict], keys: list[str]) -> None:
        def depth(key: str) -> int:
            n, seen = 0, set()
            while key in nodes and key not in seen:
                seen.add(key)
                key = nodes[key]["parent"]
                n += 1
            return n

        # hidden nodes with nothing visible below never gain a visible
        # descendant (snapshots start from visible leaves), so the tree's
        # word holds under the lock; deepest first keeps every chain whole
        with self._locked():
            for key in sorted(keys, key=depth, reverse=True):
                path = nodes[key]["path"]
                try:
                    with vhd.open(path) as image:
                        hidden = image.hidden
                except vhd.VhdError:
                    continue                    # gone already
                if not hidden:
                    self.report.skipped[key] = "not hidden any more"
                    continue
                os.unlink(path)
                self.report.pruned.append(key)
            _fsync_dir(os.path.dirname(nodes[keys[0]]["path"]))

    # -- interior coalesce ---------------------------------------------------------

    def _coalesce(self, nodes: dict[str, dict], key: str) -> None:
        node, parent = nodes[key], nodes[nodes[key]["parent"]]
        entry = {"op": "coalesce", "step": "copy", "node": key, "parent": parent["key"],
                 "node_path": node["path"], "parent_path": parent["path"], "paused": []}
        self.journal.save(entry)
        self._coalesce_from(entry)

    def _coalesce_from(self, entry: dict) -> None:
        key = entry["node"]
        if entry["step"] == "copy":
            if self._is_child_of(entry["node_path"], entry["parent_path"]):
                self._copy(key, entry["node_path"])
            self._mark("coalesce-copied")
            entry["step"] = "relink"
            self.journal.save(entry)
        if self._relink(entry):
            self.report.coalesced.append(key)
        self._unpause_all(entry)
        self.journal.clear()

    def _is_child_of(self, child_path: str, parent_path: str) -> bool:
        try:
            with vhd.open(child_path) as child:
                if not child.is_differencing or not _same(child.parent_path, parent_path):
                    return False
                with vhd.open(parent_path) as parent:
                    return parent.uuid == child.parent_uuid
        except vhd.VhdError:
            return False

    def _relink(self, entry: dict) -> bool:
        """Move the children of the (copied) node onto its parent, then
        delete it.  Returns whether the node is gone."""
        key, node_path, parent_path = entry["node"], entry["node_path"], entry["parent_path"]
        for _ in range(MAX_RELINK_ROUNDS):
            self._check_stop()
            nodes = {n["key"]: n for n in self._tree()["nodes"]}
            node = nodes.get(key)
            if node is None:
                return True
            if node["parent"] != entry["parent"] or not node["hidden"]:
                # not what was journalled (someone else's doing): leave it
                self.report.skipped[key] = f"changed under the GC (parent {node['parent']})"
                return False
            children = [nodes[c] for c in node["children"] if c in nodes]
            if not children:
                with self._locked():
                    # a node without children cannot gain one: only visible
                    # children are ever replaced (by snapshots)
                    with contextlib.suppress(FileNotFoundError):
                        with vhd.open(node_path) as image:
                            hidden = image.hidden
                        if hidden:
                            os.unlink(node_path)
                            _fsync_dir(os.path.dirname(node_path))
                self._mark("coalesce-deleted")
                return True
            try:
                for child in children:
                    if not child["hidden"] and _in_use(child):
                        self._pause(entry, child)
                with self._locked():
                    for child in children:
                        if self._relink_child(child["path"], node_path, parent_path):
                            self.report.relinked += 1
                self._mark("coalesce-relinked")
            finally:
                # relinked or not, each child reads the same: its holder may go on
                self._unpause_all(entry)
        self.report.skipped[key] = "children kept changing while relinking"
        return False

    def _relink_child(self, child_path: str, node_path: str, parent_path: str) -> bool:
        """Point ``child_path`` at ``parent_path`` if it is still a child of
        ``node_path`` (call with the SR lock held)."""
        if not self._is_child_of(child_path, node_path):
            return False
        with vhd.open(child_path, writable=True) as child:
            child.set_parent(parent_path)
        return True

    # -- leaf coalesce ---------------------------------------------------------------

    def _leaf(self, nodes: dict[str, dict], key: str) -> None:
        node, parent = nodes[key], nodes[nodes[key]["parent"]]
        entry = {"op": "leaf", "leaf": key, "parent": parent["key"], "leaf_path": node["path"],
                 "parent_path": parent["path"], "paused": []}
        self._leaf_from(entry, node)      # journalled by _pause, before it pauses anything

    def _leaf_from(self, entry: dict, node: dict) -> None:
        key = entry["leaf"]
        paused = self._pause(entry, node)
        if paused != "paused":
            self.report.skipped[key] = ("its datapath cannot be paused" if paused == "unsupported"
                                        else "destroyed meanwhile")
            self._unpause_all(entry)
            self.journal.clear()
            return
        try:
            with self._locked():
                done = self._leaf_commit(entry)
        except BaseException:
            # the plugin finishes a commit that reached <leaf>.vhd.merged when
            # it next takes the lock: only then may the holder reopen the chain
            with contextlib.suppress(Exception):
                self._tree()
                self._unpause_all(entry)
                self.journal.clear()
            raise
        self._mark("leaf-committed")
        self._unpause_all(entry)
        self.journal.clear()
        if done:
            self.report.leaf_coalesced.append(key)
        else:
            self.report.skipped[key] = "changed under the GC"

    def _leaf_commit(self, entry: dict) -> bool:
        """Coalesce the leaf into its parent and rename the parent over it
        (call with the SR lock held, the leaf paused)."""
        leaf_path, parent_path = entry["leaf_path"], entry["parent_path"]
        staged = leaf_path + MERGED
        if os.path.exists(staged) or not self._is_child_of(leaf_path, parent_path):
            return False
        with vhd.open(leaf_path) as leaf, vhd.open(parent_path) as parent:
            if leaf.hidden or not parent.hidden:
                return False
        self._copy(entry["leaf"], leaf_path)
        self._mark("leaf-copied")
        directory = os.path.dirname(leaf_path)
        os.rename(parent_path, staged)
        _fsync_dir(directory)
        self._mark("leaf-staged")
        with vhd.open(staged, writable=True) as image:
            image.set_hidden(False)
        self._mark("leaf-unhidden")
        replaced = leaf_path + OLD
        with contextlib.suppress(FileNotFoundError):
            os.unlink(replaced)             # a leftover; the plugin deletes those too
        # keeps the old leaf's blocks until after the unpause (_free_later)
        os.link(leaf_path, replaced)
        os.replace(staged, leaf_path)
        # even if this rename is lost in a crash, <leaf>.vhd keeps the old file
        self._free_later(replaced)
        _fsync_dir(directory)
        return True

    # -- resuming ----------------------------------------------------------------------

    def _resume(self, entry: dict) -> None:
        """Finish the journalled change of a pass that died."""
        log.info("storage GC %s: resuming %s", self.name, entry)
        entry.setdefault("paused", [])
        if entry["op"] == "coalesce":
            self._coalesce_from(entry)
        elif entry["op"] == "leaf":
            tree = self._tree()                 # finishes a commit that was staged
            nodes = {n["key"]: n for n in tree["nodes"]}
            node = nodes.get(entry["leaf"])
            if (node is not None and entry["leaf"] in tree.get("leaf_coalescable", [])
                    and node["parent"] == entry["parent"]):
                self._leaf_from(entry, node)
                return
            self._unpause_all(entry)
            self.journal.clear()
        else:
            log.error("storage GC %s: unknown journal entry %s dropped", self.name, entry)
            self.journal.clear()


# ---------------------------------------------------------------------------
# the server's pass over its SRs


def state_dir(rt: Runtime) -> str:
    return os.path.join(os.path.abspath(rt.config.state_dir), JOURNAL_DIR)


def _leaf_switches(rt: Runtime, sr_ref: str) -> set[str]:
    """Keys of the SR's VDIs that must not be leaf-coalesced (sm's rules)."""
    keys = set()
    for ref in rt.cache.derived("SR", "VDIs", sr_ref):
        row = rt.cache.get("VDI", ref)
        if row is None:
            continue
        v = row.values
        if ((v.get("other_config") or {}).get("leaf-coalesce") == "false"
                or v.get("on_boot") == "reset" or v.get("allow_caching")):
            keys.add(v["location"])
    return keys


def refresh_vdis(rt: Runtime, sr_ref: str) -> None:
    """Sizes and ``sm_config:vhd-parent`` of the SR's VDIs from the plugin,
    then the SR's sizes.  Existing records only (see the module docstring)."""
    storage = rt.storage
    volumes = {v["key"]: v for v in storage.call(sr_ref, "SR.ls")}
    parents = storage.parents_for(sr_ref, volumes.values())
    with rt.db.write() as tx:
        for ref in tx.refs_where("VDI", SR=sr_ref):
            current = tx.get("VDI", ref)
            volume = volumes.get(current["location"])
            if volume is None:
                continue
            fields = storage.vdi_fields(volume, parents)
            keep = {k: v for k, v in current["sm_config"].items() if k != "vhd-parent"}
            wanted = {"sm_config": {**keep, **fields["sm_config"]},
                      "virtual_size": fields["virtual_size"],
                      "physical_utilisation": fields["physical_utilisation"]}
            changes = {k: v for k, v in wanted.items() if current.get(k) != v}
            if changes:
                tx.update("VDI", ref, changes)
    storage.refresh_sr(sr_ref)


def run_pass(rt: Runtime, *, progress: Progress | None = None,
             checkpoint: Checkpoint | None = None,
             stop: threading.Event | None = None) -> StorageGcReport:
    """One pass over every SR plugged on this host whose plugin has ``SR.tree``."""
    report = StorageGcReport()
    storage = rt.storage
    if storage is None:
        return report
    for row in list(rt.cache.rows("SR")):
        sr_ref, sr = row.ref, row.values
        pbd = storage.local_pbd(sr_ref)
        pbd_row = rt.cache.get("PBD", pbd) if pbd else None
        if pbd_row is None or not pbd_row.values["currently_attached"]:
            continue
        try:
            plugin = storage.volume_plugin(sr["type"])
            if not plugin.has("SR.tree"):
                continue
            uri = storage.sr_uri(sr_ref)
        except ApiError:
            continue
        other = sr.get("other_config") or {}
        collector = SrCollector(
            storage.registry, plugin, uri, state_dir(rt), sr["uuid"], progress=progress,
            checkpoint=checkpoint, stop=stop, coalesce=other.get("coalesce") != "false",
            leaf_coalesce=other.get("leaf-coalesce") != "false",
            skip_leaves=_leaf_switches(rt, sr_ref))
        try:
            collector.run()
        except GcAborted:
            collector.report.error = "stopped"
            report.srs.append(collector.report)
            break
        except Exception as exc:  # noqa: BLE001 - one SR's failure must not stop the others
            log.exception("storage GC of SR %s failed", sr["uuid"])
            collector.report.error = f"{type(exc).__name__}: {exc}"
        sr_report = collector.report
        report.srs.append(sr_report)
        if sr_report.changed:
            log.info("storage GC of SR %s: pruned %d, coalesced %d, leaf-coalesced %d, "
                     "%d MiB merged in %.1f s", sr["uuid"], len(sr_report.pruned),
                     len(sr_report.coalesced), len(sr_report.leaf_coalesced),
                     sr_report.bytes >> 20, sr_report.seconds)
            try:
                refresh_vdis(rt, sr_ref)
            except Exception as exc:  # noqa: BLE001
                log.exception("refreshing the VDIs of SR %s after the GC failed", sr["uuid"])
                sr_report.error = sr_report.error or f"refresh: {exc}"
    return report


async def loop(rt: Runtime) -> None:
    """Run :func:`run_pass` every ``storage_gc_interval`` seconds (0 disables
    it), in a thread of its own so that a long coalesce holds no API worker.
    Cancelling the loop asks a running pass to stop at its next block."""
    interval = rt.config.storage_gc_interval
    if interval <= 0 or rt.storage is None:
        return
    stop = threading.Event()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="storage-gc")
    aloop = asyncio.get_running_loop()
    try:
        while True:
            await asyncio.sleep(interval)
            try:
                await aloop.run_in_executor(executor, functools.partial(run_pass, rt, stop=stop))
            except Exception:
                log.exception("storage GC pass failed")
    finally:
        stop.set()
        executor.shutdown(wait=False)
