"""The run lock: one training process writes a run directory at a time.

``dlm train --out OUT`` holds an OS file lock on ``OUT/.lock`` (``flock`` on Linux and macOS, through the filelock
package) for the whole run. The OS releases it when the process ends, however it ends (kill -9 included), so a
stale lock never needs clearing by hand. ``OUT/.lock.pid`` names the holder for the error a second writer gets.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from filelock import FileLock, Timeout

from dlm.errors import DlmError

LOCK, HOLDER = ".lock", ".lock.pid"


def make_run_dir(path: Path) -> None:
    """Create ``--out`` (and its parents); a one-line error when it cannot be a directory."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DlmError(f"--out {path} is a file or lies under one; give a directory") from None
    except OSError as e:
        raise DlmError(f"cannot create --out {path} ({e.strerror}); choose another directory") from None


class RunLock:
    """``with RunLock(out_dir):`` holds the run lock, or raises a one-line DlmError naming the process holding it."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.lock = FileLock(str(self.run_dir / LOCK), timeout=0)

    def __enter__(self) -> RunLock:
        make_run_dir(self.run_dir)
        try:
            self.lock.acquire()
        except Timeout:
            raise DlmError(
                f"{self.run_dir} is in use by another training run ({self._holder()}); wait for it to end or stop "
                "it, or choose another --out"
            ) from None
        except OSError as e:
            raise DlmError(f"cannot lock --out {self.run_dir} ({e.strerror}); choose another directory") from None
        (self.run_dir / HOLDER).write_text(f"{os.getpid()} {socket.gethostname()}\n")
        return self

    def __exit__(self, *exc) -> None:
        (self.run_dir / HOLDER).unlink(missing_ok=True)
        self.lock.release()

    def _holder(self) -> str:
        try:
            pid, host = (self.run_dir / HOLDER).read_text().split()
        except (OSError, ValueError):
            return "a process that has not written its pid yet"
        return f"pid {pid}" + ("" if host == socket.gethostname() else f" on {host}")
