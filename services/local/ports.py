from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Callable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def remembered_port(record: Path) -> int:
    """The port the last start recorded in `record`, if nothing listens on it now; else a free one. Recorded for
    the next start, so that a local server's address (and what a developer configured with it) stays the same
    from one `slotledger up` to the next."""
    try:
        port = int(record.read_text())
    except (OSError, ValueError):
        port = 0
    if not port or not _bindable(port):
        port = free_port()
    record.write_text(str(port))
    return port


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers bind: a port whose last connections linger in TIME_WAIT is free to them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(check: Callable[[], bool], timeout: float, *, what: str,
             process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll `check` until it holds; fail early with the log tail if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}{_tail(log)}")
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s{_tail(log)}")


def _tail(log: Path | None, lines: int = 30) -> str:
    if log is None or not log.exists():
        return ""
    return "\n--- last lines of " + str(log) + " ---\n" + "\n".join(
        log.read_text(errors="replace").splitlines()[-lines:])
