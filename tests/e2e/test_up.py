"""`slotledger up` from scratch: its own PostgreSQL and Kafka, ready, discoverable, and gone after Ctrl-C."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent has not reaped it yet.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


@pytest.fixture
def checkout(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLOTLEDGER_")}
    env.update(SLOTLEDGER_HTTP_PORT="0", SLOTLEDGER_LOG_LEVEL="warning")
    return tmp_path, env


@pytest.mark.parametrize("runs", [2])
def test_up_runs_everything_locally_and_ctrl_c_stops_it_all(checkout, runs):
    """Twice in the same checkout: the second start reuses the first one's database and broker, at the same
    addresses (what a developer pointed a local tool or producer at stays right)."""
    cwd, env = checkout
    endpoints = [_up_once(cwd, env) for _ in range(runs)]
    assert all(e == endpoints[0] for e in endpoints), endpoints


CLI = [sys.executable, "-m", "services.cli"]


def _start(cwd, env) -> subprocess.Popen:
    # Logs to a file, not a pipe nobody reads while it runs: a full pipe would block the service.
    proc = subprocess.Popen([*CLI, "up", "--demo"], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(cwd / "up.log", "w"), text=True)
    deadline = time.monotonic() + 180
    while not (cwd / ".slotledger" / "stack.json").exists():
        assert proc.poll() is None, (cwd / "up.log").read_text()
        assert time.monotonic() < deadline, "slotledger up did not come up"
        time.sleep(0.5)
    return proc


def _ready_within(url: str, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        try:
            code, body = _get(url + "/readyz")
        except OSError:
            code, body = 0, {}
        if code == 200 or time.monotonic() > deadline:
            return body
        time.sleep(0.5)


def test_up_restarts_a_local_server_that_dies_and_says_so(checkout):
    cwd, env = checkout
    proc = _start(cwd, env)
    try:
        info = json.loads((cwd / ".slotledger" / "stack.json").read_text())
        assert _ready_within(info["http_url"], 60).get("status") == "ready"
        pg_pid = int((cwd / ".slotledger" / "postgres" / "postmaster.pid").read_text().split()[0])
        kafka_pid = int((cwd / ".slotledger" / "kafka" / "broker.pid").read_text())
        os.kill(pg_pid, signal.SIGKILL)
        os.kill(kafka_pid, signal.SIGKILL)
        time.sleep(2)
        body = _ready_within(info["http_url"], 120)
        assert body.get("status") == "ready", body
        assert int((cwd / ".slotledger" / "kafka" / "broker.pid").read_text()) != kafka_pid
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    err = (cwd / "up.log").read_text()
    assert proc.returncode == 0, err
    assert "local PostgreSQL exited; restarting it" in err and "local Kafka broker exited; restarting it" in err, err


def _up_once(cwd, env):
    cli = CLI
    proc = _start(cwd, env)
    stack = cwd / ".slotledger" / "stack.json"
    try:
        status = subprocess.run([*cli, "status", "--json"], cwd=cwd, env=env, capture_output=True, text=True)
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        assert info["database_url"].startswith("postgresql://postgres@127.0.0.1:")
        assert info["kafka_bootstrap"].startswith("127.0.0.1:")
        assert info["topics"]["commands"] == "slotledger.commands"
        assert info["topics"]["events"] == "slotledger.events"

        code, body = _get(info["http_url"] + "/healthz")
        assert code == 200
        code, body = _get(info["http_url"] + "/readyz")
        assert code == 200, body
        assert body["status"] == "ready"
        assert body["checks"]["postgres"]["ok"] and body["checks"]["kafka"]["ok"]

        demo = json.loads(stack.read_text())["demo"]
        request = urllib.request.Request(info["http_url"] + "/v1/services",
                                         headers={"Authorization": f"Bearer {demo['api_key']}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            services = json.loads(response.read())["data"]
        assert sorted(s["name"] for s in services) == ["Follow-up Visit", "General Checkup"]

        pg_pid = int((cwd / ".slotledger" / "postgres" / "postmaster.pid").read_text().split()[0])
        kafka_pid = int((cwd / ".slotledger" / "kafka" / "broker.pid").read_text())
        assert _alive(pg_pid) and _alive(kafka_pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, (cwd / "up.log").read_text()
    for pid in (pg_pid, kafka_pid):
        for _ in range(50):
            if not _alive(pid):
                break
            time.sleep(0.1)
        assert not _alive(pid), f"process {pid} outlived slotledger up"
    assert not stack.exists()
    status = subprocess.run([*cli, "status", "--json"], cwd=cwd, env=env, capture_output=True, text=True)
    assert status.returncode == 1
    return info["database_url"], info["kafka_bootstrap"]


def test_up_says_in_one_line_what_is_missing_without_java(checkout):
    cwd, env = checkout
    env["PATH"] = str(Path(sys.executable).parent)  # python only: no java, no mvn
    env["XDG_CACHE_HOME"] = str(cwd / "empty-cache")
    env["SLOTLEDGER_DATABASE_URL"] = "postgresql://unused@127.0.0.1:1/none"
    result = subprocess.run([sys.executable, "-m", "services.cli", "up"], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "java and mvn not found" in lines[0]
    assert "SLOTLEDGER_KAFKA_BOOTSTRAP" in lines[0] and "docker compose -f deploy/compose.yaml up" in lines[0]
