"""A results store: every expensive item (trained model, stitch, evaluation, IRI set) lives on disk under
a key that hashes its full config, so a figure rebuilds without retraining and a finished item is never
recomputed.

Layout: <root>/<kind>/<key>.pt (the item) and <kind>/<key>.json (its config, for humans). Writes go to a
temp file in the same folder and are renamed into place: a kill at any moment leaves either the old state
or the new one, never a torn file. Long jobs save a resumable checkpoint <key>.partial.pt the same way.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import tempfile
from typing import Any, Callable

import torch

STORE_VERSION = 1


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
        return {f.name: _canonical(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
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


def _atomic_write(path: pathlib.Path, write: Callable[[Any], None], mode: str) -> None:
    """write(file) into a temp file beside `path`, fsync, then rename over it: never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_save(obj: Any, path: pathlib.Path) -> None:
    """torch.save, atomically (see _atomic_write)."""
    _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def atomic_write_text(path: pathlib.Path, text: str) -> None:
    """Write a text file atomically (see _atomic_write)."""
    _atomic_write(path, lambda f: f.write(text), "w")


def update_json(path: pathlib.Path, key: str, value: Any) -> None:
    """Set `key` of the JSON object in `path` (created if missing), locked and atomic: parallel runs share
    such files (the figure manifest, the notebook timings)."""
    with file_lock(path):
        entries = json.loads(path.read_text()) if path.exists() else {}
        entries[key] = value
        atomic_write_text(path, json.dumps(entries, indent=1, sort_keys=True))


def safe_load(path: pathlib.Path) -> Any:
    """Load a checkpoint with weights_only=True (no code execution); a clear error if it is corrupt."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle of foreign objects, not a torch file...
        raise CorruptCheckpointError(
            f"{path} is not a readable fula checkpoint ({type(err).__name__}: {err}). "
            f"Delete it and rerun: the item will be recomputed."
        ) from err
    if not isinstance(obj, dict) or obj.get("fula_store") != STORE_VERSION:
        raise CorruptCheckpointError(
            f"{path} was not written by this version of fula's store (no 'fula_store' = {STORE_VERSION} marker). "
            f"Delete it and rerun, or point the cache somewhere else."
        )
    return obj["payload"]


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
        return safe_load(self.path(kind, config_key(config)))

    def save(self, kind: str, config: Any, payload: Any) -> None:
        key = config_key(config)
        atomic_save({"fula_store": STORE_VERSION, "payload": payload}, self.path(kind, key))
        meta = self.root / kind / f"{key}.json"
        meta.write_text(json.dumps(_canonical(config), indent=1, sort_keys=True))
        partial = self.path(kind, key, partial=True)
        if partial.exists():
            partial.unlink()

    def checkpointer(self, kind: str, config: Any) -> "Checkpointer":
        """The resumable-progress slot of an item that is not finished yet."""
        return Checkpointer(self.path(kind, config_key(config), partial=True))

    def get_or_compute(self, kind: str, config: Any, compute: Callable[["Checkpointer"], Any]) -> Any:
        """Return the cached item, or compute it (passing a Checkpointer for resumable progress) and cache it."""
        if self.has(kind, config):
            return self.load(kind, config)
        payload = compute(self.checkpointer(kind, config))
        self.save(kind, config, payload)
        return payload


class Checkpointer:
    """Saves and restores the in-progress state of one long job (e.g. after every epoch)."""

    def __init__(self, path: pathlib.Path | None):
        self.path = path

    def load(self) -> Any | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            return safe_load(self.path)
        except CorruptCheckpointError:
            return None  # a partial checkpoint is only a shortcut: start the job over

    def save(self, state: Any) -> None:
        if self.path is not None:
            atomic_save({"fula_store": STORE_VERSION, "payload": state}, self.path)

    def clear(self) -> None:
        """Drop the partial state once the job's results are stored."""
        if self.path is not None and self.path.exists():
            self.path.unlink()


NO_CHECKPOINT = Checkpointer(None)
