"""A results store: every expensive item (trained model, stitch, evaluation, IRI set) lives on disk under
a key that hashes its full config, so a figure rebuilds without retraining and a finished item is never
recomputed.

Layout: <root>/<kind>/<key>.pt (the item) and <kind>/<key>.json (its config, for humans). Writes go to a
temp file in the same folder and are renamed into place: a kill at any moment leaves either the old state
or the new one, never a torn file. Long jobs save a resumable checkpoint <key>.partial.pt the same way.

Every file also records its own kind and key, and a load refuses a file whose record differs from its name:
two same-shaped files swapped or copied over each other would otherwise silently swap results.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import warnings
from typing import Any, Callable

import torch

# 2: each file records its kind and key (1 had only the payload)
STORE_VERSION = 2


@contextlib.contextmanager
def file_lock(path: pathlib.Path):
    """Hold an exclusive lock on <path>.lock: for read-modify-write of a file shared by parallel runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class CorruptCheckpointError(RuntimeError):
    """A cached file that cannot be read as a fula checkpoint."""


def _canonical(obj: Any) -> Any:
    """JSON-ready form of a config: dataclasses, tuples and paths made plain; floats kept exact."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        # a field marked key_omit_default (added after results were cached) enters the key only when it is set:
        # at its default the key is the one it had before the field existed
        return {f.name: _canonical(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("key_omit_default") and getattr(obj, f.name) == f.default)}
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, pathlib.Path):
        return str(obj)
    if isinstance(obj, float):
        return repr(obj)  # repr round-trips exactly; 0.1 and 0.1000000001 get different keys
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    raise TypeError(f"cannot hash a config value of type {type(obj).__name__}: {obj!r}")


def config_key(config: Any) -> str:
    """A short stable hash of a config (dict or dataclass)."""
    text = json.dumps(_canonical(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (os.umask can only set it)."""
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _out_of_space(err: BaseException, folder: pathlib.Path) -> bool:
    """Whether a failed write ran out of disk: an ENOSPC / EDQUOT OSError, or any error (torch.save reports
    a full disk as RuntimeError "file write failed") while the disk has less than 1 MiB free."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(err, Exception):
        return False
    try:
        return shutil.disk_usage(folder).free < 2**20
    except OSError:
        return False


def _atomic_write(path: pathlib.Path, write: Callable[[Any], None], mode: str) -> None:
    """write(file) into a temp file beside `path`, fsync, then rename over it: never a torn file.

    The file gets the permissions a plain open() would give it (0666 less the umask), not mkstemp's 0600:
    a cache shared by a group must stay readable to the group."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if _out_of_space(err, path.parent):
            raise OSError(errno.ENOSPC, f"no space left on the disk holding {path.parent} (writing {path.name}; "
                                     f"{type(err).__name__}: {err}): free space there, or move the output root "
                                     f"(--output-root / FULA_OUTPUT_DIR) or the cache (FULA_CACHE_DIR) to a "
                                     f"disk with room, then rerun to resume") from err
        raise


def atomic_save(obj: Any, path: pathlib.Path) -> None:
    """torch.save, atomically (see _atomic_write)."""
    _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def atomic_write_text(path: pathlib.Path, text: str) -> None:
    """Write a text file atomically (see _atomic_write)."""
    _atomic_write(path, lambda f: f.write(text), "w")


def update_json(path: pathlib.Path, key: str, value: Any, *, on_corrupt: str = "raise") -> None:
    """Set `key` of the JSON object in `path` (created if missing), locked and atomic: parallel runs share
    such files (the figure manifest, the notebook timings).

    A file that is not a JSON object raises an error naming it (on_corrupt="raise"), or is started afresh
    with a warning (on_corrupt="reset") where its content is only a convenience."""
    with file_lock(path):
        entries = read_json_object(path, on_corrupt=on_corrupt)
        entries[key] = value
        atomic_write_text(path, json.dumps(entries, indent=1, sort_keys=True))


class CorruptJSONError(ValueError):
    """A bookkeeping JSON file (manifest, timings) that cannot be read."""


def read_json_object(path: pathlib.Path, *, on_corrupt: str = "raise") -> dict:
    """The JSON object in `path` ({} if missing); see update_json for `on_corrupt`."""
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())
        if not isinstance(entries, dict):
            raise ValueError(f"a JSON {type(entries).__name__}, not an object")
        return entries
    except (ValueError, UnicodeDecodeError) as err:
        if on_corrupt == "reset":
            warnings.warn(f"ignoring {path}: it is not a JSON object ({err}); it will be rewritten", stacklevel=3)
            return {}
        raise CorruptJSONError(f"{path} is not a JSON object ({type(err).__name__}: {err}). It is bookkeeping "
                               f"only: delete it and rerun (it is rebuilt as the notebooks run).") from err


def safe_load(path: pathlib.Path, kind: str | None = None, key: str | None = None) -> Any:
    """Load a checkpoint with weights_only=True (no code execution); a clear error if it is corrupt, from
    another version of the store, or (when `kind` / `key` are given) another item than its name says."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle of foreign objects, not a torch file...
        raise CorruptCheckpointError(
            f"{path} is not a readable fula checkpoint ({type(err).__name__}: {err}). "
            f"Delete it and rerun: the item will be recomputed."
        ) from err
    version = obj.get("fula_store") if isinstance(obj, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version < STORE_VERSION:
        raise CorruptCheckpointError(
            f"{path} was written by an older version of fula (store format {version}; this version reads "
            f"{STORE_VERSION}, which records each item's kind and key). The cache is from an older version: "
            f"delete or move the cache folder {path.parent.parent} and rerun (or set FULA_CACHE_DIR to a new folder).")
    if version != STORE_VERSION:
        raise CorruptCheckpointError(
            f"{path} was not written by this version of fula's store (no 'fula_store' = {STORE_VERSION} marker). "
            f"Delete it and rerun, or point the cache somewhere else."
        )
    for what, wanted in (("kind", kind), ("key", key)):
        if wanted is not None and obj.get(what) != wanted:
            raise CorruptCheckpointError(
                f"{path} holds a {obj.get('kind')!r} item with key {obj.get('key')!r}, but its place in the cache "
                f"is that of a {kind!r} item with key {key!r}: the file was copied, renamed or swapped. Loading it "
                f"would silently give another item's results. Delete it and rerun: the item will be recomputed.")
    return obj["payload"]


def _record(kind: str, key: str, payload: Any) -> dict:
    """What a store file holds: the payload and what it is (checked by safe_load)."""
    return {"fula_store": STORE_VERSION, "kind": kind, "key": key, "payload": payload}


class ResultStore:
    """Config-hashed cache of results on disk.

    >>> store = ResultStore("cache")
    >>> model_state = store.get_or_compute("model", config, lambda ckpt: train(config, ckpt))
    """

    def __init__(self, root: str | os.PathLike):
        self.root = pathlib.Path(root)

    def path(self, kind: str, key: str, partial: bool = False) -> pathlib.Path:
        return self.root / kind / (f"{key}.partial.pt" if partial else f"{key}.pt")

    def has(self, kind: str, config: Any) -> bool:
        return self.path(kind, config_key(config)).exists()

    def load(self, kind: str, config: Any) -> Any:
        key = config_key(config)
        return safe_load(self.path(kind, key), kind=kind, key=key)

    def save(self, kind: str, config: Any, payload: Any) -> None:
        key = config_key(config)
        atomic_save(_record(kind, key, payload), self.path(kind, key))
        atomic_write_text(self.root / kind / f"{key}.json", json.dumps(_canonical(config), indent=1, sort_keys=True))
        partial = self.path(kind, key, partial=True)
        if partial.exists():
            partial.unlink()

    def checkpointer(self, kind: str, config: Any) -> "Checkpointer":
        """The resumable-progress slot of an item that is not finished yet."""
        key = config_key(config)
        return Checkpointer(self.path(kind, key, partial=True), kind=kind, key=key)

    def get_or_compute(self, kind: str, config: Any, compute: Callable[["Checkpointer"], Any]) -> Any:
        """Return the cached item, or compute it (passing a Checkpointer for resumable progress) and cache it."""
        if self.has(kind, config):
            return self.load(kind, config)
        payload = compute(self.checkpointer(kind, config))
        self.save(kind, config, payload)
        return payload


class Checkpointer:
    """Saves and restores the in-progress state of one long job (e.g. after every epoch)."""

    def __init__(self, path: pathlib.Path | None, kind: str = "partial", key: str | None = None):
        self.path, self.kind, self.key = path, kind, key

    def load(self) -> Any | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            return safe_load(self.path, kind=self.kind, key=self.key)
        except CorruptCheckpointError as err:  # a partial checkpoint is only a shortcut: start the job over
            warnings.warn(f"starting over instead of resuming: {err}", stacklevel=2)
            return None

    def save(self, state: Any) -> None:
        if self.path is not None:
            atomic_save(_record(self.kind, self.key, state), self.path)

    def clear(self) -> None:
        """Drop the partial state once the job's results are stored."""
        if self.path is not None and self.path.exists():
            self.path.unlink()


NO_CHECKPOINT = Checkpointer(None)
