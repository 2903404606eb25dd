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
    """Twice in the same checkout: the second start reuses the first one's database."""
    cwd, env = checkout
    for _ in range(runs):
        _up_once(cwd, env)


def _up_once(cwd, env):
    cli = [sys.executable, "-m", "services.cli"]
    proc = subprocess.Popen([*cli, "up", "--demo"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        stack = cwd / ".slotledger" / "stack.json"
        while not stack.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "slotledger up did not come up"
            time.sleep(0.5)
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
    assert proc.returncode == 0, proc.stderr.read()
    for pid in (pg_pid, kafka_pid):
        for _ in range(50):
            if not _alive(pid):
                break
            time.sleep(0.1)
        assert not _alive(pid), f"process {pid} outlived slotledger up"
    assert not stack.exists()
    status = subprocess.run([*cli, "status", "--json"], cwd=cwd, env=env, capture_output=True, text=True)
    assert status.returncode == 1


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
