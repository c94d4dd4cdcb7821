"""The output directory of a run: one writer at a time, and no debris left by a killed one."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Optional

from .checkpoint import BEST, LAST
from .config import ConfigError

LOCK = ".lock"
# temporary files of atomic writes (checkpoint.save, RunLog.write) that a kill can leave behind
TEMPORARY = (f".{LAST}.*.tmp", f".{BEST}.*.tmp", ".log.csv.tmp", ".config.yaml.tmp")


class RunDirectory:
    """Holds an exclusive ``flock`` on ``DIR/.lock`` while a run writes there.

    The kernel drops the lock when the process ends however it ends, so a lock file left by a
    killed run never blocks the next one; a second live run is refused before it writes anything.
    """

    def __init__(self, path: Path, resume: bool):
        self.path, self.resume = path, resume
        self._lock: Optional[int] = None

    def __enter__(self) -> "RunDirectory":
        out = self.path
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".write_test"
            probe.write_bytes(b"ok")
            probe.unlink()
            fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"output.directory: cannot write to {out}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise ConfigError(f"output.directory: {out} is in use by another nequip-fast train"
                              f"{f' (process {holder})' if holder else ''}; wait for it to finish or choose another "
                              "directory") from None
        self._lock = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            if not self.resume and (out / LAST).exists():
                raise ConfigError(f"output.directory: {out} already holds a run ({LAST}); continue it with --resume "
                                  "or choose another directory")
            for pattern in TEMPORARY:  # ours alone now: whatever is there was left by a killed run
                for debris in out.glob(pattern):
                    debris.unlink(missing_ok=True)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            os.close(self._lock)
            self._lock = None
