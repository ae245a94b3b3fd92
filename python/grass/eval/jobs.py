"""Resumable experiment results: one small JSON file per finished job.

An experiment (a table, a removal study) is many independent jobs (one method at one k,
one retrained model). ``JobCache`` keeps each finished job's result under a key in a
directory tagged with the experiment's configuration hash: a rerun skips what is done,
an interrupted run loses only the job in flight, and a changed configuration is an error
instead of a silent mix of old and new numbers.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Callable, Dict, Optional

__all__ = ["JobCache", "atomic_write_json", "config_hash"]


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def atomic_write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True, default=float)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


_SAFE = re.compile(r"[^A-Za-z0-9_.=-]+")


class JobCache:
    """Results of one experiment configuration in ``directory``."""

    def __init__(self, directory: str, config: dict):
        self.directory = str(directory)
        self.config = config
        self.hash = config_hash(config)
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, "config.json")
        if os.path.exists(path):
            with open(path) as f:
                cached = json.load(f)
            if cached.get("hash") != self.hash:
                raise ValueError(
                    f"results in {self.directory} belong to another configuration "
                    f"(cached {cached.get('config')!r}, requested {config!r}); use another "
                    "directory or delete it")
        else:
            atomic_write_json(path, {"hash": self.hash, "config": config})

    def _path(self, key: str) -> str:
        safe = _SAFE.sub("_", key)
        if not safe:
            raise ValueError(f"job key {key!r} is empty after sanitising")
        return os.path.join(self.directory, f"{safe}.json")

    def has(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    def get(self, key: str) -> Optional[dict]:
        path = self._path(key)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def put(self, key: str, result: dict) -> dict:
        atomic_write_json(self._path(key), result)
        return result

    def run(self, key: str, fn: Callable[[], dict]) -> dict:
        """The cached result of ``key``, computing (and saving) it first if absent."""
        got = self.get(key)
        if got is not None:
            return got
        return self.put(key, fn())

    def all(self) -> Dict[str, dict]:
        out = {}
        for name in sorted(os.listdir(self.directory)):
            if name.endswith(".json") and name != "config.json":
                with open(os.path.join(self.directory, name)) as f:
                    out[name[:-5]] = json.load(f)
        return out
