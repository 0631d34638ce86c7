"""Unit tests for streams.cli: help output and the settings flags."""

from __future__ import annotations

import argparse
import os
import re

import pytest

from streams import cli
from streams.cli import build_parser
from streams.settings import Settings

SETTINGS_GROUP = "settings (flag > environment > default)"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


SUBCOMMANDS = sorted(_subparsers(build_parser()))


def _settings_actions(sub: argparse.ArgumentParser) -> list[argparse.Action]:
    groups = [g for g in sub._action_groups if g.title == SETTINGS_GROUP]
    return [a for g in groups for a in g._group_actions]


def run_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as ei:
        build_parser().parse_args(argv)
    assert ei.value.code == 0, f"{argv} exited with {ei.value.code}"
    out, err = capsys.readouterr()
    assert err == ""
    return out


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("STREAMSCORE_"):
            monkeypatch.delenv(k)


def test_expected_subcommands() -> None:
    assert {"demo", "broker", "topics", "worker", "replay", "record", "convert", "train"} <= set(SUBCOMMANDS)


def test_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_help(["--help"], capsys)
    assert out.startswith("usage: streamscore")
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_subcommand_help(sub: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_help([sub, "--help"], capsys)
    assert out.startswith(f"usage: streamscore {sub}")


def test_no_subcommand_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        build_parser().parse_args([])
    assert ei.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_settings_flags_name_their_env_variable(sub: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = _subparsers(build_parser())[sub]
    out = " ".join(run_help([sub, "--help"], capsys).split())   # undo line wrapping
    for a in _settings_actions(parser):
        assert a.dest in Settings.model_fields, a.dest
        env = Settings.env_name(a.dest)
        assert f"[env: {env}]" in (a.help or ""), f"{sub} {a.option_strings}: help does not name {env}"
        assert f"[env: {env}]" in out, f"{sub} --help does not show {env}"
        assert a.option_strings == ["--" + a.dest.replace("_", "-")]
        assert a.default is argparse.SUPPRESS   # absent flag -> env/default decide


def test_worker_exposes_every_setting() -> None:
    worker = _subparsers(build_parser())["worker"]
    assert {a.dest for a in _settings_actions(worker)} == set(Settings.model_fields)


@pytest.mark.parametrize("sub", [s for s in SUBCOMMANDS
                                 if any(a.dest == "sasl_password"
                                        for a in _settings_actions(_subparsers(build_parser())[s]))])
def test_sasl_password_help_shows_no_default(sub: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = _subparsers(build_parser())[sub]
    (action,) = [a for a in _settings_actions(parser) if a.dest == "sasl_password"]
    assert "Default" not in (action.help or "") and "default" not in (action.help or "")
    out = run_help([sub, "--help"], capsys)
    m = re.search(r"\n  --sasl-password PASSWORD(.*?)(?=\n  --|\n\n|\Z)", out, re.S)
    assert m, out
    text = " ".join(m.group(1).split())
    assert "STREAMSCORE_SASL_PASSWORD" in text
    assert "Default" not in text and "default" not in text and "None" not in text


def test_sasl_password_flag_exists_on_kafka_commands() -> None:
    subs = _subparsers(build_parser())
    for name in ("topics", "worker", "replay", "record"):
        assert "sasl_password" in {a.dest for a in _settings_actions(subs[name])}, name


def test_other_settings_show_their_default(capsys: pytest.CaptureFixture[str]) -> None:
    out = " ".join(run_help(["worker", "--help"], capsys).split())
    assert "[env: STREAMSCORE_BATCH_MAX] Default: 10000." in out
    assert "[env: STREAMSCORE_TOPIC_PREFIX] Default: ''." in out


# -- flag > env > default, through the parser -------------------------------------------------
def test_flag_beats_env_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSCORE_BATCH_MAX", "11")
    monkeypatch.setenv("STREAMSCORE_BROKER", "env:1")
    args = build_parser().parse_args(["worker", "--batch-max", "7"])
    s = cli._settings(args)
    assert s.batch_max == 7           # flag
    assert s.broker == "env:1"        # env
    assert s.web_port == 6066         # default
    assert args.func is cli.cmd_worker


def test_absent_flags_do_not_reach_settings() -> None:
    args = build_parser().parse_args(["topics"])
    assert not any(k in Settings.model_fields for k in vars(args))


def test_password_flag_is_secret() -> None:
    args = build_parser().parse_args(["topics", "--sasl-password", "pw-123", "--sasl-username", "u"])
    s = cli._settings(args)
    assert s.sasl_password is not None and s.sasl_password.get_secret_value() == "pw-123"
    assert "pw-123" not in repr(s)
