"""Unit tests for streams.settings.Settings: precedence, immutability, client configs."""

from __future__ import annotations

import os
from pathlib import Path

import pydantic
import pytest

from streams.settings import ENV_PREFIX, TOPICS, Settings

PASSWORD = "s3cr3t-Pa55-zq"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith(ENV_PREFIX):
            monkeypatch.delenv(k)


# -- precedence -------------------------------------------------------------------------
def test_defaults() -> None:
    s = Settings()
    assert s.broker == "127.0.0.1:9092"
    assert s.app_id == "streamscore" and s.topic_prefix == "" and s.partitions == 4
    assert s.batch_max == 10_000 and s.state_dir == Path("state")
    assert s.security_protocol == "PLAINTEXT" and s.sasl_password is None


def test_env_overrides_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSCORE_BROKER", "env-host:1")
    monkeypatch.setenv("STREAMSCORE_BATCH_MAX", "77")
    monkeypatch.setenv("STREAMSCORE_STATE_DIR", "/tmp/envstate")
    s = Settings()
    assert s.broker == "env-host:1"
    assert s.batch_max == 77 and isinstance(s.batch_max, int)
    assert s.state_dir == Path("/tmp/envstate")


def test_kwargs_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSCORE_BROKER", "env-host:1")
    monkeypatch.setenv("STREAMSCORE_BATCH_MAX", "77")
    s = Settings(broker="kw-host:2", batch_max=3)
    assert s.broker == "kw-host:2" and s.batch_max == 3


def test_none_kwarg_falls_back_to_env_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSCORE_BROKER", "env-host:1")
    s = Settings(broker=None, batch_max=None)
    assert s.broker == "env-host:1"       # flag not given -> env
    assert s.batch_max == 10_000            # flag not given, no env -> default


def test_env_prefix_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER", "stray:1")
    monkeypatch.setenv("BROKER_URL", "stray:2")
    monkeypatch.setenv("BATCH_MAX", "1")
    s = Settings()
    assert s.broker == "127.0.0.1:9092" and s.batch_max == 10_000


def test_stray_prefixed_env_for_faust_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    # faust reads STREAMSCORE_FAUST_*; those must not break Settings (extra="forbid")
    monkeypatch.setenv("STREAMSCORE_FAUST_BROKER_URL", "kafka://elsewhere:1")
    assert Settings().broker == "127.0.0.1:9092"


def test_invalid_env_value_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSCORE_PARTITIONS", "0")
    with pytest.raises(pydantic.ValidationError, match="partitions"):
        Settings()


@pytest.mark.parametrize(("field", "value"), [("partitions", 0), ("batch_max", 0), ("web_port", 70000),
                                               ("session_timeout_s", 0), ("metrics_port", -1)])
def test_bounds(field: str, value: int) -> None:
    with pytest.raises(pydantic.ValidationError, match=field):
        Settings(**{field: value})


# -- immutability and strictness --------------------------------------------------------
def test_frozen() -> None:
    s = Settings(broker="a:1")
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        s.broker = "b:2"  # type: ignore[misc]
    assert s.broker == "a:1"


def test_unknown_kwargs_rejected() -> None:
    with pytest.raises(pydantic.ValidationError, match="brokers"):
        Settings(brokers="a:1")


def test_env_name() -> None:
    assert Settings.env_name("batch_max") == "STREAMSCORE_BATCH_MAX"
    assert Settings.env_name("sasl_password") == "STREAMSCORE_SASL_PASSWORD"


# -- topics -----------------------------------------------------------------------------
def test_topic_and_logical_topic() -> None:
    s = Settings(topic_prefix="t1-")
    for t in TOPICS:
        assert s.topic(t) == "t1-" + t
        assert s.logical_topic(s.topic(t)) == t
    assert s.logical_topic("t1-other") == "t1-other"
    assert s.logical_topic("foreign") == "foreign"
    with pytest.raises(ValueError, match="unknown logical topic 'eventz'"):
        s.topic("eventz")
    plain = Settings()
    assert plain.topic("dlq") == "dlq" and plain.logical_topic("dlq") == "dlq"


# -- client configs and secrets ---------------------------------------------------------
def secure() -> Settings:
    return Settings(broker="b1:9093,b2:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                    sasl_username="alice", sasl_password=PASSWORD, ssl_cafile="/etc/ca.pem")


def test_kafka_client_config_passes_security() -> None:
    conf = secure().kafka_client_config()
    assert conf == {
        "bootstrap.servers": "b1:9093,b2:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": PASSWORD,
        "ssl.ca.location": "/etc/ca.pem",
    }


def test_kafka_client_config_plaintext_has_no_sasl_keys() -> None:
    conf = Settings(broker="h:1").kafka_client_config()
    assert conf == {"bootstrap.servers": "h:1", "security.protocol": "PLAINTEXT"}


def test_password_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSCORE_SASL_PASSWORD", PASSWORD)
    s = Settings()
    assert s.kafka_client_config()["sasl.password"] == PASSWORD
    assert PASSWORD not in repr(s)


def test_password_never_in_repr_or_str() -> None:
    s = secure()
    for text in (repr(s), str(s), f"{s}", s.model_dump_json(), str(s.model_dump()), repr(s.sasl_password)):
        assert PASSWORD not in text
    assert "alice" in repr(s)  # the check above is not vacuous: fields are rendered


def test_consumer_config() -> None:
    s = secure()
    c = s.consumer_config()
    assert c["fetch.queue.backoff.ms"] == 20
    assert c["group.id"] == "streamscore-reader"
    assert c["enable.auto.commit"] is False and c["auto.offset.reset"] == "earliest"
    assert c["session.timeout.ms"] == 10_000
    assert c["sasl.password"] == PASSWORD and c["security.protocol"] == "SASL_SSL"
    c2 = Settings(session_timeout_s=2.5, app_id="x").consumer_config(group="g", **{"enable.partition.eof": True})
    assert c2["group.id"] == "g" and c2["session.timeout.ms"] == 2500 and c2["enable.partition.eof"] is True
    assert Settings(app_id="x").consumer_config()["group.id"] == "x-reader"
    assert Settings().consumer_config(**{"fetch.queue.backoff.ms": 5})["fetch.queue.backoff.ms"] == 5


def test_producer_config() -> None:
    p = secure().producer_config(**{"client.id": "c"})
    assert p["acks"] == "all" and p["client.id"] == "c"
    assert p["bootstrap.servers"] == "b1:9093,b2:9093" and p["sasl.username"] == "alice"
