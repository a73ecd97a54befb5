"""``accelwatch`` command line. Heavy modules (DuckDB, Textual, OpenTelemetry) load lazily."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import NoReturn

from agent import __version__
from agent.errors import AccelwatchError, StoreError, UsageError

#: Headless with stderr not a terminal (a batch job's log), the live line's default period:
#: a line a second is 600 k lines in a week's log.
LIVE_EVERY_IN_LOGS_S = 60.0

DEFAULT_DB = "accelwatch.duckdb"
EXIT_CODES = """exit codes:
  0 ok (for `run`: the command's own exit code)   1 error   2 bad usage
  3 target process problem   4 database problem   5 collector unavailable"""


def default_db() -> str:
    return os.environ.get("ACCELWATCH_DB") or DEFAULT_DB


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value != value or value > 86400:
        raise argparse.ArgumentTypeError(f"must be > 0 and at most 86400 seconds, got {text!r}")
    return value


def interval_seconds(text: str) -> float:
    value = positive_seconds(text)
    if value < 0.05:
        raise argparse.ArgumentTypeError(f"interval must be at least 0.05 s, got {text!r}")
    return value


def tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"tag must be KEY=VALUE, got {text!r}")
    return key.strip(), value


def root_dir(text: str) -> str:
    """An injected sysfs/procfs root: an existing directory, checked before the job starts."""
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"not a directory: {text!r}")
    return os.path.abspath(text)


def tpu_runtime(text: str) -> str:
    """``HOST:PORT[,PORT...]`` of libtpu's metrics service, checked before the job starts."""
    from collectors.tpu.targets import TargetSpecError, parse_targets

    try:
        parse_targets(text, {})
    except TargetSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def pid_arg(text: str) -> int:
    try:
        pid = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a pid: {text!r}") from None
    if pid <= 0:
        raise argparse.ArgumentTypeError(f"not a pid: {text!r}")
    return pid


def host_port(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected [HOST:]PORT, got {text!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return f"{host or '127.0.0.1'}:{number}"


#: A DNS name, an IPv4 address, or a bracketed IPv6 address.
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)$")


def otlp_endpoint(text: str) -> str:
    """``http(s)://HOST[:PORT][/PATH]`` or ``HOST:PORT``, checked before anything starts."""
    from urllib.parse import urlsplit

    bad = argparse.ArgumentTypeError(
        f"expected http(s)://HOST[:PORT][/PATH] or HOST:PORT, got {text!r}"
    )
    if "://" in text:
        try:
            url = urlsplit(text)
            host = url.netloc.rpartition("@")[2]
            if url.port is not None:  # .port raises ValueError on a bad port
                host = host.rpartition(":")[0]
        except ValueError:
            raise bad from None
        if url.scheme not in ("http", "https") or not _HOST.match(host):
            raise bad
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not _HOST.match(host) or not port.isdigit() or not 0 < int(port) <= 65535:
        raise bad
    return text


def stop_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"must be between 0 and 86400 seconds, got {text!r}")
    return value


class OneLineParser(argparse.ArgumentParser):
    """Usage errors are one line on stderr and exit 2, as the README promises."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"accelwatch: error: {message} (see: {self.prog} --help)\n")


def _add_stop_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--stop-timeout",
        type=stop_timeout,
        default=30.0,
        metavar="SECONDS",
        help="after the first stop signal, how long before another Ctrl-C / stop may SIGKILL "
        "the job (default 30; accelwatch never kills it by itself)",
    )


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        default=None,
        metavar="PATH",
        help=f"DuckDB file (default: $ACCELWATCH_DB or ./{DEFAULT_DB})",
    )


def _add_recording(p: argparse.ArgumentParser) -> None:
    _add_db(p)
    p.add_argument(
        "--interval",
        type=interval_seconds,
        default=1.0,
        metavar="SECONDS",
        help="sampling interval (default 1)",
    )
    p.add_argument("--name", help="run name (default: the script's name)")
    p.add_argument(
        "--tag",
        type=tag,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="attach a tag to the run (repeatable)",
    )
    p.add_argument(
        "--headless",
        action="store_true",
        help="no terminal UI: print a live line on stderr (see --live-every) and a report at "
        "the end",
    )
    p.add_argument(
        "--live-every",
        type=positive_seconds,
        default=None,
        metavar="SECONDS",
        help="headless: print the live line at most every SECONDS (default: every interval "
        f"when stderr is a terminal, else {LIVE_EVERY_IN_LOGS_S:g}: a batch job's log); a fault, "
        "and any change in what is wrong, prints at once",
    )
    p.add_argument(
        "--simulate",
        metavar="SCENARIO",
        help="use simulated GPUs from a named scenario or a scenario .toml file",
    )
    p.add_argument(
        "--otlp",
        nargs="?",
        const="",
        type=otlp_endpoint,
        default=None,
        metavar="ENDPOINT",
        help="export via OTLP (endpoint and protocol from OTEL_* variables if omitted)",
    )
    p.add_argument(
        "--prometheus",
        type=host_port,
        default=None,
        metavar="[HOST:]PORT",
        help="serve a Prometheus scrape endpoint (host defaults to 127.0.0.1)",
    )
    p.add_argument(
        "--sys-root",
        type=root_dir,
        default=os.environ.get("ACCELWATCH_SYS_ROOT") or "/sys",
        metavar="DIR",
        help="read sysfs from DIR, e.g. a captured tree (default: $ACCELWATCH_SYS_ROOT or /sys)",
    )
    p.add_argument(
        "--proc-root",
        type=root_dir,
        default=os.environ.get("ACCELWATCH_PROC_ROOT") or "/proc",
        metavar="DIR",
        help="read procfs from DIR for the sources that read files, e.g. a captured tree; the "
        "watched process tree itself is always read live (default: $ACCELWATCH_PROC_ROOT or /proc)",
    )
    p.add_argument(
        "--tpu-runtime",
        type=tpu_runtime,
        default=None,
        metavar="HOST:PORT[,PORT...]",
        help="libtpu metrics service(s) to read (default: $TPU_RUNTIME_METRICS_PORTS on "
        "localhost, else localhost:8431)",
    )
    p.add_argument(
        "--metric-names",
        choices=("otel", "dcgm"),
        default="otel",
        help="exported metric names: OpenTelemetry conventions, or also dcgm-exporter's",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="accelwatch",
        description="Watch a training job and tell what it is waiting on.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"accelwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="start a command and record it until it exits")
    _add_recording(p)
    _add_stop_timeout(p)
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...")

    p = sub.add_parser("attach", help="record a running process until it exits")
    p.add_argument("pid", type=pid_arg)
    _add_recording(p)
    p.add_argument(
        "--duration",
        type=positive_seconds,
        metavar="SECONDS",
        help="stop recording after this long",
    )

    p = sub.add_parser("demo", help="run the example training job on simulated GPUs")
    p.add_argument("scenario", nargs="?", default="healthy")
    _add_recording(p)
    _add_stop_timeout(p)
    p.add_argument("--steps", type=int, default=None, help="training steps of the example job")
    p.add_argument(
        "--seconds",
        type=positive_seconds,
        default=90.0,
        help="how long the example job trains when --steps is not given (default 90)",
    )

    _add_experiment_commands(sub)

    p = sub.add_parser("metrics", help="list the metric catalog")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("scenarios", help="list the simulated-hardware scenarios")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("report", help="report on a run: summary and findings")
    p.add_argument("run", nargs="?", help="run id or name (default: the latest)")
    add_read_dbs(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--format", choices=("text", "md", "html"), default="text")
    p.add_argument("--out", metavar="FILE")

    p = sub.add_parser(
        "sql", help="run one read-only SQL statement (also while a run is being recorded)"
    )
    p.add_argument("query", metavar="SQL", help='one read statement, e.g. "SELECT ..."')
    add_read_dbs(p)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="rows as a JSON array of objects")
    fmt.add_argument("--csv", action="store_true", help="rows as CSV with a header line")

    p = sub.add_parser("view", help="open the terminal UI over a recorded run")
    p.add_argument("run", nargs="?", help="run id or name (default: the latest)")
    add_read_dbs(p)

    # -- accelwatch import (agent/app/import_command.py) -----------------------------------
    p = sub.add_parser(
        "import",
        help="import per-rank step times or an op trace (CSV, Parquet, JSON lines) as a run",
        description="Import per-rank step (mini-batch) times, or a per-operation trace of a "
        "pipeline/data-parallel job, written by another tool. Columns are recognised by "
        "their usual names (rank/worker/dp_rank, step/iteration, time/start_ts/timestamp, "
        "duration/step_time/batch_time...); the flags name the others. The run keeps the "
        "trace's own time axis (t = seconds from its start) and is analysed at once.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help=".csv, .parquet or .jsonl")
    p.add_argument(
        "--run",
        required=True,
        metavar="NAME",
        help="name of the new run (or of a recorded run to add the step times to)",
    )
    _add_db(p)
    for role, what in (
        ("rank", "the rank / worker"),
        ("time", "the time (seconds from the start, or timestamps)"),
        ("duration", "the step or op duration"),
        ("step", "the step / iteration number"),
    ):
        p.add_argument(f"--{role}-col", metavar="COLUMN", help=f"column holding {what}")
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        metavar="FACTOR",
        help="multiply durations by FACTOR to get seconds (default 1; a unit suffix such "
        "as _ms in the column name is applied as well)",
    )
    p.add_argument(
        "--time-unit",
        choices=("s", "ms", "us", "ns"),
        default=None,
        help="unit of a numeric time column (default: from its name, else seconds; epoch "
        "timestamps are recognised by their size)",
    )
    p.add_argument("--json", action="store_true", help="print what was imported as JSON")
    # -- end accelwatch import ---------------------------------------------------------------

    # -- capture (t4): the fabric and storage sources' files, for replay with --sys-root/--proc-root
    p = sub.add_parser(
        "capture", help="write the files the fabric and storage sources read, for replay"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="new or empty directory")
    p.add_argument(
        "--pid", type=pid_arg, help="also the mounts and open files of this process tree"
    )
    p.add_argument(
        "--sys-root", type=root_dir, default="/sys", metavar="DIR", help=argparse.SUPPRESS
    )
    p.add_argument(
        "--proc-root", type=root_dir, default="/proc", metavar="DIR", help=argparse.SUPPRESS
    )
    # -- end capture

    p = sub.add_parser("sim", help="run a scenario's simulated devices for other tools")
    sim = p.add_subparsers(dest="sim_command", metavar="SIM_COMMAND", required=True)
    p = sim.add_parser("serve", help="serve a scenario's simulated TPU runtime until stopped")
    p.add_argument("scenario", help="named scenario or scenario .toml file")
    p.add_argument("--port", type=int, default=8431, help="TCP port on 127.0.0.1 (0: any free)")
    p.add_argument("--sys-root", metavar="DIR", help="write the fake sys/dev tree under DIR")
    p.add_argument("--duration", type=positive_seconds, metavar="SECONDS", help="stop after")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "db", "unset") is None:
        args.db = default_db()
    try:
        return _handler(args.command)(args)
    except AccelwatchError as exc:
        print(f"accelwatch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("accelwatch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # DuckDB failing mid-read: a damaged block, one line, exit 4
        if type(exc).__module__.split(".")[0] not in ("duckdb", "_duckdb"):
            raise
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"accelwatch: error: database {getattr(args, 'db', '')}: {detail}", file=sys.stderr)
        return StoreError.exit_code


# -- experiments: runs, compare, export, merge; several databases for every read command ----


def add_read_dbs(p: argparse.ArgumentParser) -> None:
    """``--db`` of a read command: repeatable, each a path or a quoted glob."""
    p.add_argument(
        "--db",
        action="append",
        default=None,
        metavar="PATH|GLOB",
        help=f"DuckDB file, or a quoted glob such as 'nodes/*.duckdb'; repeatable: the runs "
        f"of every file are read as one (default: $ACCELWATCH_DB or ./{DEFAULT_DB})",
    )


def _add_experiment_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list recorded runs with their steps, speed and energy")
    add_read_dbs(p)
    p.add_argument(
        "--tag", type=tag, action="append", default=[], metavar="KEY=VALUE",
        help="only runs with this tag (repeatable: all must match)",
    )  # fmt: skip
    p.add_argument(
        "--name", metavar="PATTERN", help="only runs whose name matches (shell pattern, or a part)"
    )
    p.add_argument("--json", action="store_true", help="typed values: numbers, ISO timestamps")

    p = sub.add_parser("compare", help="compare two runs side by side, differences in words")
    p.add_argument("run_a", metavar="RUN_A", help="run id or name (the baseline)")
    p.add_argument("run_b", metavar="RUN_B", help="run id or name (the candidate)")
    add_read_dbs(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("export", help="export runs as Parquet or CSV, hive-partitioned by run")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run ids or names")
    add_read_dbs(p)
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    p.add_argument("--out", required=True, metavar="DIR", help="directory (created 0700)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace these runs' earlier exports in DIR"
    )

    p = sub.add_parser("merge", help="merge the per-rank/per-node databases of one job")
    p.add_argument("inputs", nargs="+", metavar="DB", help="input databases or quoted globs")
    p.add_argument("--into", required=True, metavar="DB", help="output database")
    p.add_argument("--json", action="store_true", help="the merged runs as JSON on stdout")


#: Commands handled in agent/app/experiment_commands.py.
EXPERIMENT_COMMANDS = frozenset({"runs", "compare", "export", "merge"})


#: Commands that record (they import the session machinery); the rest only read.
RECORDING_COMMANDS = frozenset({"run", "attach", "demo"})


def _handler(command: str) -> Callable[[argparse.Namespace], int]:
    """The ``cmd_<command>`` function, imported only when that command runs."""
    module: ModuleType
    if command in RECORDING_COMMANDS:
        from agent.app import commands as module
    elif command == "sim":
        from agent.app import sim_commands as module
    elif command in EXPERIMENT_COMMANDS:
        from agent.app import experiment_commands as module
    elif command == "import":
        from agent.app import import_command as module
    elif command == "capture":
        from agent.app import capture_command as module
    else:
        from agent.app import read_commands as module
    handler: Callable[[argparse.Namespace], int] = getattr(
        module, f"cmd_{command.replace('-', '_')}"
    )
    return handler


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def require(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


if __name__ == "__main__":
    sys.exit(main())
