"""What the pre-training decode scan found, remembered between runs: one SQLite file in the user's cache folder.

A file is known by its absolute path, size and modification time (ns); while those stay the same, its result
(:class:`~vitkit.data.images.ImageInfo`, or the reason it cannot be read) is taken from the cache, so a second scan
of an unchanged dataset costs one ``stat`` per file. A new or changed file is decoded again; remembered files that
are gone from a scanned folder are forgotten (:meth:`ScanCache.forget_missing`), so the cache does not keep them
forever. Results also carry the version of the check and of Pillow: an upgrade that reads formats differently
scans everything again.

SQLite (in WAL mode, with a busy timeout) lets several processes (DDP ranks, parallel runs) read and write the same
file safely. Where the cache folder cannot be written, scans run without it, with a warning.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import warnings
from collections.abc import Container, Iterable, Iterator
from pathlib import Path
from typing import Any

import PIL

#: Bump when the scan's check changes, so that older results are not trusted.
CHECK_VERSION = 1
_CHECKER = f"vitkit-scan-{CHECK_VERSION}/pillow-{PIL.__version__}"
_CHUNK = 500  # paths per SELECT (SQLite allows at least 999 parameters)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, checker TEXT, info TEXT, error TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS datasets (key TEXT PRIMARY KEY, checker TEXT, unreadable TEXT) WITHOUT ROWID;
"""


def cache_dir() -> Path:
    """vitkit's cache folder: ``$VITKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/vitkit``, else ``~/.cache/vitkit``."""
    if os.environ.get("VITKIT_CACHE_DIR"):
        return Path(os.environ["VITKIT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser()
    return Path(base) / "vitkit"


class ScanCache:
    """Scan results by file (path, size, mtime) and by whole dataset (a key such as an Arrow fingerprint).

    Args:
        path: the SQLite file; default ``cache_dir() / "scan.sqlite"``.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else cache_dir() / "scan.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=120, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    @classmethod
    def open(cls) -> ScanCache | None:
        """The user's cache, or None (with a warning) where it cannot be opened, e.g. a read-only home folder."""
        try:
            try:
                return cls()
            except sqlite3.OperationalError:  # e.g. locked while another process creates it: once more
                time.sleep(0.5)
                return cls()
        except (OSError, sqlite3.Error) as err:
            message = f"vitkit: scan cache off ({cache_dir()}: {err}); set VITKIT_CACHE_DIR to a writable folder."
            warnings.warn(message, stacklevel=2)
            return None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ScanCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lookup(self, stats: dict[str, tuple[int, int]]) -> dict[str, tuple[str | None, str | None]]:
        """Known results ``{path: (info as JSON or None, error or None)}`` for ``{path: (size, mtime_ns)}``, where
        the file's size and mtime match the remembered ones."""
        found: dict[str, tuple[str | None, str | None]] = {}
        paths = list(stats)
        for chunk in _chunks(paths, _CHUNK):
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT path, size, mtime_ns, info, error FROM files WHERE checker = ? AND path IN ({marks})",
                [_CHECKER, *chunk],
            )
            for path, size, mtime_ns, info, error in rows:
                if stats[path] == (size, mtime_ns):
                    found[path] = (info, error)
        return found

    def store(self, results: Iterable[tuple[str, int, int, dict[str, Any] | None, str | None]]) -> None:
        """Remember ``(path, size, mtime_ns, info fields or None, error or None)`` rows."""
        rows = [(p, s, m, _CHECKER, json.dumps(i) if i is not None else None, e) for p, s, m, i, e in results]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)", rows)

    def forget_missing(self, folders: Iterable[str], present: Container[str]) -> int:
        """Drop the remembered files under ``folders`` (absolute paths) that are not in ``present`` and no longer
        exist; return how many. A scan calls it with its files' folders: one range query per folder, and a ``stat``
        only for remembered files it did not see."""
        gone = []
        for folder in {f.rstrip(os.sep) for f in folders}:
            # the paths that start with "folder/": from "folder/" up to (excluded) "folder" + the next character
            rows = self._db.execute(
                "SELECT path FROM files WHERE path >= ? AND path < ?", (folder + os.sep, folder + chr(ord(os.sep) + 1))
            )
            gone += [(path,) for (path,) in rows if path not in present and not os.path.lexists(path)]
        if gone:
            with self._db:
                self._db.executemany("DELETE FROM files WHERE path = ?", gone)
        return len(gone)

    def dataset(self, key: str) -> dict[str, str] | None:
        """``{sample key: reason}`` of the unreadable samples of a fully scanned dataset, or None if not scanned."""
        row = self._db.execute("SELECT unreadable FROM datasets WHERE key = ? AND checker = ?", (key, _CHECKER))
        found = row.fetchone()
        return json.loads(found[0]) if found else None

    def store_dataset(self, key: str, unreadable: dict[str, str]) -> None:
        """Remember that a whole dataset was scanned, and which of its samples cannot be read."""
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO datasets VALUES (?, ?, ?)", (key, _CHECKER, json.dumps(unreadable))
            )


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
