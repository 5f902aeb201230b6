"""Small TOML files the deployment keeps current (the cell map, the static console map,
the settings): read bounded, and read again when they change. It imports only the domain,
so the driven adapters that share it still never import each other."""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from console_auth.domain import InvalidRequest

_T = TypeVar("_T")

DEFAULT_RELOAD_INTERVAL: Final = 1.0
"""Seconds between looks at a file: one ``stat`` per second at most, however many lookups."""


def read_small_file(path: Path, what: str, max_bytes: int) -> tuple[os.stat_result, bytes]:
    """A small regular file's ``stat`` and bytes, every failure an ``InvalidRequest``
    naming ``what`` and ``path``: a FIFO or device is refused without
    blocking on it, and at most ``max_bytes`` are read."""
    try:
        # O_NONBLOCK: opening a FIFO would otherwise wait for a writer
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(descriptor, "rb") as file:
            status = os.fstat(file.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise InvalidRequest(f"{what} {path} is not a regular file")
            raw = file.read(max_bytes + 1)
    except OSError as exc:
        raise InvalidRequest(f"{what} {path} cannot be read: {exc.strerror}") from None
    if len(raw) > max_bytes:
        raise InvalidRequest(f"{what} {path} is larger than {max_bytes} bytes")
    return status, raw


def read_toml(path: Path, what: str, max_bytes: int) -> tuple[os.stat_result, dict[str, Any]]:
    """``read_small_file``, parsed as TOML."""
    status, raw = read_small_file(path, what, max_bytes)
    try:
        return status, tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        problem = "it is not UTF-8 text"
    except tomllib.TOMLDecodeError as exc:
        problem = str(exc)
    except ValueError:  # an integer of more digits than int() converts
        problem = "a number is too long"
    except RecursionError:
        problem = "it is nested too deeply"
    raise InvalidRequest(f"{what} {path} is not valid TOML: {problem}")


class ReloadingTomlFile(Generic[_T]):
    """What ``parse`` makes of a TOML file, read again when its mtime, size or inode
    changes (looked at once per ``reload_interval`` at most). A bad first load fails; a
    bad reload is logged once and the previous value kept, so a bad export cannot take the
    service down. Thread-safe: a reload swaps a new value in whole."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        what: str,
        parse: Callable[[dict[str, Any]], _T],
        *,
        max_bytes: int,
        log: logging.Logger,
        describe: Callable[[_T], str] = lambda _: "",
        reload_interval: float = DEFAULT_RELOAD_INTERVAL,
    ) -> None:
        self._path = Path(path)
        self._what = what
        self._parse = parse
        self._max_bytes = max_bytes
        self._log = log
        self._describe = describe
        self._reload_interval = reload_interval
        self._stamp, self._value = self._read()  # the first load fails loudly
        self._checked = time.monotonic()
        self._reloading = threading.Lock()

    def current(self) -> _T:
        """The value, read again first if the file changed (one looks, the rest read on)."""
        due = time.monotonic() - self._checked >= self._reload_interval
        if due and self._reloading.acquire(blocking=False):
            try:
                self._reload_if_changed()
            finally:
                self._reloading.release()
        return self._value

    def reload(self) -> bool:
        """Read the file now if it changed; ``True`` if a new value is in use."""
        with self._reloading:
            return self._reload_if_changed()

    def _reload_if_changed(self) -> bool:
        self._checked = time.monotonic()
        try:
            stamp: tuple[int, int, int] | None = _stamp_of(self._path.stat())
        except OSError:  # the read below says why
            stamp = None
        if stamp == self._stamp:
            return False
        try:
            self._stamp, self._value = self._read()
        except InvalidRequest as exc:
            self._log.error("keeping the previous %s: %s", self._what, exc)
            if stamp is not None:  # this version is not read (nor logged) again
                self._stamp = stamp
            return False
        self._log.info("%s %s reloaded%s", self._what, self._path, self._describe(self._value))
        return True

    def _read(self) -> tuple[tuple[int, int, int], _T]:
        status, data = read_toml(self._path, self._what, self._max_bytes)
        try:
            return _stamp_of(status), self._parse(data)
        except InvalidRequest as exc:
            raise InvalidRequest(f"{self._what} {self._path}: {exc}") from None


def _stamp_of(status: os.stat_result) -> tuple[int, int, int]:
    return status.st_mtime_ns, status.st_size, status.st_ino
