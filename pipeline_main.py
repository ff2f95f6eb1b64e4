"""Postgres -> Databricks change data capture on dlt.

Parses options and runs a job from pg_replication.jobs. Every failure becomes one line on stderr
with its own exit code (pg_replication.failures); --debug adds the traceback.
"""

import contextlib
import functools
import json
import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import click

DEFAULT_DESTINATION = "databricks"
DEFAULT_DATASET = "bronze_postgres_raw"
DEFAULT_PIPELINE = "postgres_prod_to_databricks"


class CliError(click.ClickException):
    """One line on stderr and an exit code of its own (a pg_replication.exceptions.ExitCode)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


def _prepare_environment(env_file: Optional[str]) -> None:
    from dotenv import load_dotenv

    if env_file:
        if not Path(env_file).is_file():
            from pg_replication.exceptions import ExitCode

            raise CliError(f"env file not found: {env_file}", ExitCode.CONFIG)
        load_dotenv(env_file, override=False)
    elif Path(".env").is_file():
        load_dotenv(".env", override=False)
    # Cron starts jobs elsewhere: read .dlt/ next to this file unless told otherwise.
    os.environ.setdefault("DLT_PROJECT_DIR", str(Path(__file__).resolve().parent))


def handle_errors(command: Callable) -> Callable:
    """Runs a command; expected failures become CliError, --debug adds the traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        try:
            return command(*args, **kwargs)
        except (click.ClickException, click.Abort, click.exceptions.Exit):
            raise
        except Exception as e:  # noqa: BLE001 - the CLI's edge: every failure becomes one line
            if ctx.obj.get("debug"):
                traceback.print_exc()
            from pg_replication.failures import describe_failure

            message, exit_code = describe_failure(e)
            raise CliError(message, exit_code) from None

    return wrapper


def _job_settings(tables: Optional[str] = None, deletes: Optional[str] = None,
                  max_wait: Optional[float] = None, chunk_rows: Optional[int] = None,
                  workers: Optional[int] = None, reader: Optional[str] = None):
    """`[sources.pg_replication]`, the options given taking precedence."""
    from pg_replication.settings import resolve_settings

    return resolve_settings(table_names=tables, deletes=deletes, snapshot_max_wait=max_wait,
                            online_chunk_rows=chunk_rows, snapshot_workers=workers,
                            snapshot_reader=reader)


def _pipeline(ctx: click.Context):
    from pg_replication.destinations import make_pipeline

    progress = "log" if sys.stderr.isatty() else None
    return make_pipeline(ctx.obj["pipeline_name"], ctx.obj["destination"], ctx.obj["dataset"],
                         progress)


@contextlib.contextmanager
def _usage_errors_in_one_line() -> Iterator[None]:
    """A mistyped option becomes one `Error:` line (exit 2) like every other failure, rather
    than click's usage block."""
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise  # no command at all: the help, as click shows it
    except click.UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        raise CliError(e.format_message() + hint, e.exit_code) from None


class _CliGroup(click.Group):
    """The command group, whose `--help` ends with the exit codes."""

    def parse_args(self, ctx: click.Context, args: List[str]) -> List[str]:
        with _usage_errors_in_one_line():
            return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        with _usage_errors_in_one_line():
            return super().invoke(ctx)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Imported only when the help is shown, like every import of pg_replication in this
        # file: the package loads dlt, which a command should load only once
        # _prepare_environment has set dlt's variables (and a command's --help does without).
        from pg_replication.exceptions import exit_codes_help

        self.epilog = exit_codes_help()
        super().format_epilog(ctx, formatter)


@click.group(cls=_CliGroup)
@click.option("--destination", envvar="PIPELINE_DESTINATION", default=DEFAULT_DESTINATION,
              show_default=True, help="dlt destination name (duckdb for a local run).")
@click.option("--dataset", default=DEFAULT_DATASET, show_default=True,
              help="Destination dataset (the Unity Catalog schema on Databricks).")
@click.option("--pipeline-name", default=DEFAULT_PIPELINE, show_default=True)
@click.option("--env-file", type=click.Path(dir_okay=False), default=None,
              help="A .env file to load (default: .env in the working directory, if any).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, destination: str, dataset: str, pipeline_name: str,
        env_file: Optional[str], debug: bool) -> None:
    """Replicates PostgreSQL tables into Databricks (or any dlt destination) with dlt."""
    ctx.obj = {"destination": destination, "dataset": dataset, "pipeline_name": pipeline_name,
               "debug": debug}
    _prepare_environment(env_file)
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    # Failures are reported once, as one line; dlt's own log would repeat them with tracebacks.
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "INFO" if debug else "CRITICAL")
    if not debug:  # client libraries log their retries to stderr: the failure line says enough
        for name in ("databricks", "urllib3", "thrift"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    # SIGTERM must let a load finish (cdc --follow), not abort it inside dlt.
    os.environ.setdefault("RUNTIME__INTERCEPT_SIGNALS", "false")


@cli.command()
@click.option("--tables", default=None,
              help="Comma-separated table names, `schema.table` for a schema other than the "
                   "default one (default: all tables of the configured schemas).")
@click.option("--max-wait", type=click.FloatRange(min=0.1), default=None,
              help="Give up (exit 4) after waiting this many seconds for transactions that were "
                   "open when the snapshot started (default: wait; what it waits for is printed "
                   "every 15 s).")
@click.option("--online", is_flag=True,
              help="Copy each table with a key in chunks, in key order, while the changes keep "
                   "being applied and the slot confirmed (no WAL piles up). A table whose online "
                   "copy is in progress goes on from its last loaded chunk (in a rerun, or in "
                   "`cdc --max-seconds`); the others are copied again. Tables without a key "
                   "cannot be reconciled by key: they are copied whole, in one consistent "
                   "snapshot. Needs PostgreSQL 14+.")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=None,
              help="With --online: rows per chunk at most (default 200000; chunks are also "
                   "bounded by bytes).")
@click.option("--max-seconds", type=click.FloatRange(min=0.1), default=None,
              help="With --online: stop copying after this many seconds (the copy stays in "
                   "progress; `cdc --max-seconds` or a rerun goes on with it).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Connections that read the consistent copy together, in one exported "
                   "snapshot: whole tables, and CTID ranges of large ones (default: 1, or one "
                   "per core up to 4 when the tables hold more than 1 GB).")
@click.option("--reader", type=click.Choice(["copy", "sql_database"]), default=None,
              help="What reads the consistent copy: `copy` (COPY TO STDOUT, the default and the "
                   "fastest) or `sql_database` (dlt's sql_database source in the same snapshot; "
                   "its backend is the config key sql_database_backend, default pyarrow).")
@click.pass_context
@handle_errors
def snapshot(ctx: click.Context, tables: Optional[str], max_wait: Optional[float], online: bool,
             chunk_rows: Optional[int], max_seconds: Optional[float],
             workers: Optional[int], reader: Optional[str]) -> None:
    """Copy the tables as of the replication slot's start (creates slot and publication).

    \b
    Example:
        python pipeline_main.py --destination duckdb snapshot --tables film,actor
        python pipeline_main.py snapshot --online --tables big_orders
    """
    from pg_replication.bounds import RunBounds
    from pg_replication.jobs import recorded_run, run_online_snapshot, run_snapshot

    if not online and (chunk_rows is not None or max_seconds is not None):
        from pg_replication.exceptions import ExitCode

        raise CliError("--chunk-rows and --max-seconds go with --online", ExitCode.CONFIG)
    pipeline = _pipeline(ctx)
    with recorded_run(pipeline, "snapshot") as record:
        settings = _job_settings(tables, max_wait=max_wait, chunk_rows=chunk_rows,
                                 workers=workers, reader=reader)
        if online:
            report, changes = run_online_snapshot(settings, pipeline, _progress_printer(),
                                                  RunBounds(max_seconds=max_seconds))
        else:
            report, changes = run_snapshot(settings, pipeline), None
        record["summary"] = report.summary()
    for line in report.table_lines():
        click.echo(line)
    for line in report.warnings():
        click.echo(line, err=True)
    if changes is not None:
        click.echo(changes.summary())
    click.echo(report.total_line())


def _progress_printer() -> Callable[[Any], None]:
    """One line per chunk on a terminal (stderr); nothing otherwise, the summary says it all."""
    if not sys.stderr.isatty():
        return lambda progress: None
    return lambda progress: click.echo(progress.line(), err=True)


@cli.command()
@click.option("--max-changes", type=click.IntRange(min=1), default=None,
              help="Stop at the first commit after this many changes.")
@click.option("--max-seconds", type=click.FloatRange(min=0.1), default=None,
              help="Stop at the first commit after this many seconds of reading; time left "
                   "once the changes are caught up goes on with online copies in progress "
                   "(`snapshot --online`).")
@click.option("--deletes", type=click.Choice(["hard", "soft"]), default=None,
              help="hard: remove deleted rows (default); soft: keep them with _pg_deleted_at.")
@click.option("--follow", is_flag=True,
              help="Run continuously; SIGTERM/SIGINT finish the load in progress, then exit 0.")
@click.option("--interval", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="With --follow: seconds to sleep between runs.")
@click.pass_context
@handle_errors
def cdc(ctx: click.Context, max_changes: Optional[int], max_seconds: Optional[float],
        deletes: Optional[str], follow: bool, interval: float) -> None:
    """Merge the changes since the last run into the destination, then confirm the slot.

    \b
    Example (cron, every 5 minutes):
        */5 * * * * cd /opt/pipeline && .venv/bin/python pipeline_main.py cdc
    """
    from pg_replication.bounds import RunBounds
    from pg_replication.jobs import follow_cdc, recorded_run, run_cdc

    settings = _job_settings(deletes=deletes)
    pipeline = _pipeline(ctx)
    if follow:
        stop = threading.Event()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signal_number, lambda *_: stop.set())
        follow_cdc(settings, pipeline, interval, stop, lambda report: click.echo(report.summary()))
        return
    with recorded_run(pipeline, "cdc") as record:
        report = run_cdc(settings, pipeline,
                         RunBounds(max_changes=max_changes, max_seconds=max_seconds),
                         _progress_printer())
        record["summary"] = report.summary()
    click.echo(report.summary())


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--max-lag-mb", type=click.FloatRange(min=0), default=None,
              help="Exit 9 when the slot lags more than this behind the server's WAL.")
@click.pass_context
@handle_errors
def status(ctx: click.Context, as_json: bool, max_lag_mb: Optional[float]) -> None:
    """Show the replication slot, its lag, the publication and the last run.

    Exits 6 when the slot is missing, invalidated or not this database's, 9 when the lag exceeds --max-lag-mb or the
    last run failed, 0 otherwise.
    """
    from pg_replication.exceptions import ExitCode
    from pg_replication.jobs import run_status

    report = run_status(_job_settings(), _pipeline(ctx), max_lag_mb)
    click.echo(report.to_json() if as_json else report.to_text())
    if not report.slot_exists or report.wal_status == "lost" or not report.slot_usable:
        ctx.exit(ExitCode.SLOT)
    if report.problems:
        ctx.exit(ExitCode.CHECK_FAILED)


@cli.command()
@click.option("--data", is_flag=True,
              help="Also compare every table's rows, source against destination, by chunk "
                   "checksums; chunks that differ are compared again once the destination has "
                   "caught up (runs a bounded cdc), and the differing rows are named.")
@click.option("--tables", default=None,
              help="With --data: comma-separated tables to compare (default: all replicated).")
@click.option("--max-keys", type=click.IntRange(min=1), default=10, show_default=True,
              help="With --data: rows named per table that differs.")
@click.option("--wait", "wait", type=click.FloatRange(min=0), default=30, show_default=True,
              help="With --data: seconds to wait for a running cdc or snapshot (cdc --follow "
                   "runs one at a time) before exiting 5, and for the transactions open when "
                   "a recheck starts (at least 1) before exiting 4.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@handle_errors
def verify(ctx: click.Context, data: bool, tables: Optional[str], max_keys: int,
           wait: float, as_json: bool) -> None:
    """Check the deployment: slot exists, destination state matches the slot, no staged files;
    with --data, that every table holds the source's rows.

    One line per check (✓ passed, ✗ failed, - not applicable); exits 0 only when every applicable
    check passes, 9 otherwise.

    \b
    Example:
        python pipeline_main.py verify --data --tables orders,customers
    """
    from pg_replication.exceptions import ExitCode
    from pg_replication.jobs import run_verify

    if not data and (tables is not None or max_keys != 10 or wait != 30):
        raise CliError("--tables, --max-keys and --wait go with --data", ExitCode.CONFIG)
    settings, pipeline = _job_settings(), _pipeline(ctx)
    checks = []

    def run_checklist() -> None:
        checks.extend(run_verify(settings, pipeline))
        if not as_json:  # before the data comparison, which takes a while and may fail
            for check in checks:
                click.echo(check.line())

    report = None
    if data:
        from pg_replication.verify_data import run_verify_data

        report = run_verify_data(settings, pipeline, _table_list(tables), max_keys,
                                 _line_printer(), once_locked=run_checklist, wait=wait)
    else:
        run_checklist()
    if as_json:
        found = {"checks": [check.as_dict() for check in checks]}
        found.update(report.as_dict() if report else {})
        click.echo(json.dumps(found, indent=2))
    elif report:
        for line in report.lines():
            click.echo(line)
    if any(check.passed is False for check in checks) or (report and not report.equal):
        ctx.exit(ExitCode.CHECK_FAILED)


def _table_list(tables: Optional[str]) -> Optional[List[str]]:
    """`--tables a,b` as a list without repeats; None when not given."""
    if tables is None:
        return None
    names = list(dict.fromkeys(name.strip() for name in tables.split(",") if name.strip()))
    if not names:
        from pg_replication.exceptions import ExitCode

        raise CliError("--tables names no table", ExitCode.CONFIG)
    return names


def _line_printer() -> Callable[[str], None]:
    """Progress lines on a terminal (stderr); nothing otherwise."""
    if not sys.stderr.isatty():
        return lambda line: None
    return lambda line: click.echo(line, err=True)


if __name__ == "__main__":
    cli()
