"""A real single-node Apache Kafka broker (KRaft) from Maven Central jars.

The release tarball cannot be fetched here, but the broker is published as Maven
artifacts: Maven copies them into a cache once, later starts need no network.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from services.local.ports import free_port, port_open, remembered_port, wait_for

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"

_POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>slotledger</groupId><artifactId>kafka-local</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{KAFKA_VERSION}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>1.7.36</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{LOG4J_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>{LOG4J_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>{LOG4J_VERSION}</version></dependency>
  </dependencies>
</project>
"""

# Everything to stderr, so StorageTool's stdout carries only what it prints.
_LOG4J2 = """status = error
appender.console.type = Console
appender.console.name = STDERR
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.console.ref = STDERR
logger.kafka.name = kafka
logger.kafka.level = warn
logger.org.name = org.apache
logger.org.level = warn
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = info
"""

MISSING_TOOLS = (
    "slotledger: a local Kafka broker needs Java 17+ and Maven ({missing} not found). "
    "Install them, or set SLOTLEDGER_KAFKA_BOOTSTRAP (and SLOTLEDGER_DATABASE_URL) to existing servers, "
    "or run `docker compose -f deploy/compose.yaml up`."
)


# Kafka's documented JVM settings (kafka.apache.org, "Java Version"; the heap of kafka-server-start.sh). The region
# size matters most here: our producers send batches of up to 1 MB, and with G1's default regions (1 MB at this
# heap) every buffer of half a region or more is humongous, goes straight to the old generation and starts a
# concurrent marking cycle. In the bench's Kafka phase that marking and the collections behind it took 54-94 µs
# of broker CPU per command, against 2 µs with 16 MB regions (its request handling: 30-37;
# bench/reports/ab-session16-broker-gc.txt).
_JVM_OPTIONS = ("-Xms1g", "-Xmx1g", "-XX:+UseG1GC", "-XX:G1HeapRegionSize=16M", "-XX:MaxGCPauseMillis=20",
                "-XX:InitiatingHeapOccupancyPercent=35")


class MissingToolError(RuntimeError):
    pass


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "slotledger" / f"kafka-{KAFKA_VERSION}"


def ensure_jars() -> Path:
    """Fetch the broker's jars into the cache once; return the lib folder."""
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    lib = cache_dir() / "lib"
    done = cache_dir() / ".complete"
    if done.exists():
        if "java" in missing:
            raise MissingToolError(MISSING_TOOLS.format(missing="java"))
        return lib
    if missing:
        raise MissingToolError(MISSING_TOOLS.format(missing=" and ".join(missing)))
    work = cache_dir()
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(_POM)
    staging = work / "lib.partial"
    shutil.rmtree(staging, ignore_errors=True)
    result = subprocess.run(
        ["mvn", "-B", "-q", "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies",
         f"-DoutputDirectory={staging}", "-DincludeScope=runtime"],
        cwd=work, capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"fetching Kafka {KAFKA_VERSION} jars with Maven failed:\n{result.stdout}{result.stderr}")
    shutil.rmtree(lib, ignore_errors=True)
    staging.rename(lib)
    done.touch()
    return lib


@dataclass
class LocalKafka:
    data_dir: Path
    port: int = 0
    controller_port: int = 0
    process: subprocess.Popen | None = None
    # How long a new consumer group waits for more members before its first assignment: Kafka's default, as
    # production brokers run. At 0, the first consumer of two starting workers could take every partition and
    # a batch before the others joined, and each later join then cost a rebalance that waited for the batches
    # in hand (bench/reports/ab-session26.txt §6). The tests' broker sets 0: each test's new group would
    # otherwise wait 3 s.
    initial_rebalance_delay_ms: int = 3000

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0, fresh: bool = True) -> "LocalKafka":
        """`fresh`: new, empty storage (a test's or a bench's own broker). Otherwise the storage in `data_dir` is
        kept (formatted the first time only): a crashed broker comes back on the same ports, and a new
        `slotledger up` finds every topic, every message not yet taken and every group's offsets where the last
        one left them, on the same ports if they are free (else on new ones: the static quorum names the controller
        by id, not by address)."""
        lib = ensure_jars()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        if fresh:
            self.port, self.controller_port = self.port or free_port(), free_port()
        else:  # the last start's ports where free: a local producer's bootstrap setting stays right
            self.port = self.port or remembered_port(self.data_dir / "port")
            self.controller_port = self.controller_port or remembered_port(self.data_dir / "controller.port")
        controller_port = self.controller_port
        log_dirs = self.data_dir / "logs"
        properties = self.data_dir / "server.properties"
        properties.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "inter.broker.listener.name=PLAINTEXT",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={log_dirs}",
            "num.partitions=4",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            f"group.initial.rebalance.delay.ms={self.initial_rebalance_delay_ms}",
            "auto.create.topics.enable=true",
            "",
        ]))
        log4j = self.data_dir / "log4j2.properties"
        log4j.write_text(_LOG4J2)
        java = ["java", *_JVM_OPTIONS, "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{lib}/*"]
        if fresh or not (log_dirs / "meta.properties").exists():
            shutil.rmtree(log_dirs, ignore_errors=True)
            cluster_id = subprocess.run([*java, "kafka.tools.StorageTool", "random-uuid"],
                                        check=True, capture_output=True, text=True).stdout.strip()
            subprocess.run([*java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(properties),
                            "--ignore-formatted"], check=True, capture_output=True, text=True)
        log_path = self.data_dir / "broker.log"
        started_at = log_path.stat().st_size if log_path.exists() and not fresh else 0
        log = open(log_path, "ab" if not fresh else "wb")
        self.process = subprocess.Popen([*java, "kafka.Kafka", str(properties)], stdout=log, stderr=log,
                                        start_new_session=True)
        (self.data_dir / "broker.pid").write_text(str(self.process.pid))
        wait_for(lambda: port_open(self.port) and b"Kafka Server started" in log_path.read_bytes()[started_at:],
                 timeout, what=f"Kafka broker on {self.bootstrap}", process=self.process, log=log_path)
        return self

    def _stop_leftover(self) -> None:
        pid_file = self.data_dir / "broker.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except (ValueError, ProcessLookupError, PermissionError):
                pass
            pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would (fault tests); start(fresh=False) brings it back."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        (self.data_dir / "broker.pid").unlink(missing_ok=True)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
