"""The ``cqrs-saga`` commands (Typer): each parses its options and calls the operations, storage or worker."""

from __future__ import annotations

import asyncio
import datetime
import getpass
import json
import socket
import typing
import uuid

import typer
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cqrs.cli import _render
from cqrs.cli._durations import parse_duration
from cqrs.cli._errors import run
from cqrs.cli._exit import CliError, ExitCode
from cqrs.cli._session import not_found, open_mediator, opened_storage, resolve_url
from cqrs.cli._worker import configure_logging, run_outbox_relay, run_worker
from cqrs.saga.apps import AppError, load_object
from cqrs.saga.operations import ActionResult, SagaOperations
from cqrs.saga.saga import Saga
from cqrs.saga.storage.enums import SagaStatus

__all__ = ["app"]

app = typer.Typer(
    help="See and steer stored sagas. Storage: --url or CQRS_SAGA_STORAGE_URL. Exit codes: 0 done, 1 the answer "
    "is no (saga failed, schema drift), 2 usage, 3 no such saga, 4 refused (state or a live runner), "
    "5 database unusable, 130 interrupted.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
db = typer.Typer(help="Create, check and upgrade the saga tables.", no_args_is_help=True)
app.add_typer(db, name="db")

out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, markup=False)

Url = typing.Annotated[
    str | None,
    typer.Option("--url", help="Database URL (default: CQRS_SAGA_STORAGE_URL).", show_default=False),
]
App = typing.Annotated[
    str, typer.Option("--app", help="Saga definitions, module:object (SagaMap, list of sagas, SagaMediator, factory).")
]
OptionalApp = typing.Annotated[
    str | None,
    typer.Option("--app", help="Saga definitions, module:object; needed to run saga code here.", show_default=False),
]
Note = typing.Annotated[str, typer.Option("--note", help="Why; recorded in the saga's history.")]
Actor = typing.Annotated[
    str | None,
    typer.Option("--actor", help="Who acts (default: user@host).", show_default=False),
]
AsJson = typing.Annotated[bool, typer.Option("--json", help="JSON on stdout instead of tables.")]
LogLevel = typing.Annotated[str, typer.Option(help="Log level of the cqrs loggers.")]


def _exit(code: int) -> None:
    raise typer.Exit(code)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _duration(text: str | None) -> datetime.timedelta | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as error:
        raise CliError(str(error)) from None


def _actor(actor: str | None) -> str:
    return actor or f"{getpass.getuser()}@{socket.gethostname()}"


# -- reading ------------------------------------------------------------------------------------------------


@app.command("list")
def list_sagas(
    url: Url = None,
    status: typing.Annotated[
        list[SagaStatus] | None,
        typer.Option("--status", "-s", help="Only these statuses (repeat for several)."),
    ] = None,
    name: typing.Annotated[str | None, typer.Option(help="Only sagas of this name.")] = None,
    older_than: typing.Annotated[
        str | None, typer.Option(help="Created at least this long ago (90s, 15m, 2h, 7d).")
    ] = None,
    idle_for: typing.Annotated[
        str | None, typer.Option(help="Not updated for this long.")
    ] = None,
    correlation_id: typing.Annotated[str | None, typer.Option(help="Only this correlation id.")] = None,
    recoverable: typing.Annotated[bool, typer.Option(help="Only resumable sagas without a live lease.")] = False,
    after: typing.Annotated[
        uuid.UUID | None, typer.Option(help="The page after this saga id (cursor).")
    ] = None,
    limit: typing.Annotated[int, typer.Option(min=1, max=10000, help="At most this many.")] = 50,
    as_json: AsJson = False,
) -> None:
    """List sagas, oldest first, filtered."""

    async def work() -> int:
        async with opened_storage(url) as storage:
            cursor = None
            if after is not None:
                cursor = await storage.get_saga(after)
                if cursor is None:
                    raise not_found(after)
            records = await storage.list_sagas(
                status=status or None, name=name, older_than=_duration(older_than), idle_for=_duration(idle_for),
                correlation_id=correlation_id, recoverable=recoverable, after=cursor, limit=limit,
            )
        now = _now()
        if as_json:
            out.print_json(json.dumps([_render.record_json(r, now) for r in records]))
        elif records:
            out.print(_render.saga_table(records, now))
        else:
            err.print("no sagas match")
        return 0

    _exit(run(work))


@app.command()
def show(
    saga_id: typing.Annotated[uuid.UUID, typer.Argument(metavar="ID", help="The saga id.")],
    url: Url = None,
    app_spec: OptionalApp = None,
    mermaid: typing.Annotated[bool, typer.Option(help="Also print the run as Mermaid source (needs --app).")] = False,
    as_json: AsJson = False,
) -> None:
    """One saga: status, owner and lease, context, history, errors, and its run as text."""

    async def work() -> int:
        saga_type = await _saga_lookup(app_spec)
        async with opened_storage(url) as storage:
            record = await storage.get_saga(saga_id)
            history = await storage.get_history(saga_id) if record else None
        if record is None or history is None:
            raise not_found(saga_id)
        definition = saga_type(record.name) if saga_type else None
        if mermaid and definition is None:
            raise CliError("--mermaid draws the run over its definition: give --app with this saga in it")
        now = _now()
        if as_json:
            data = _render.record_json(record, now)
            data["history"] = _render.history_json(history)
            data["run"] = _render.run_flow(history, definition)
            out.print_json(json.dumps(data))
            return 0
        drawn = None
        if mermaid and definition is not None:
            from cqrs.saga.mermaid import SagaMermaid

            drawn = SagaMermaid(definition).run_diagram(history)
        out.print(_render.saga_detail(record, history, now, definition, drawn))
        return 0

    _exit(run(work))


@app.command()
def watch(
    saga_id: typing.Annotated[uuid.UUID, typer.Argument(metavar="ID", help="The saga id.")],
    url: Url = None,
    interval: typing.Annotated[float, typer.Option(min=0.05, help="Seconds between reads.")] = 1.0,
) -> None:
    """Follow one saga live until it stops (completed, failed, compensation_failed or parked).

    Exits 0 if it completed, 1 otherwise.
    """

    async def work() -> int:
        async with opened_storage(url) as storage:
            record = await storage.get_saga(saga_id)
            if record is None:
                raise not_found(saga_id)
            with Live(console=out, auto_refresh=False, transient=False) as live:
                while True:
                    record = await storage.get_saga(saga_id)
                    history = await storage.get_history(saga_id)
                    if record is None or history is None:
                        raise not_found(saga_id)
                    live.update(_render.saga_detail(record, history, _now()), refresh=True)
                    if record.status.is_final or record.status == SagaStatus.COMPENSATION_FAILED:
                        break
                    await asyncio.sleep(interval)
        err.print(f"saga {saga_id} is {record.status.value}")
        return ExitCode.OK if record.status == SagaStatus.COMPLETED else ExitCode.NO

    _exit(run(work))


@app.command()
def diagram(
    target: typing.Annotated[str, typer.Argument(metavar="MODULE:SAGA", help="The saga class, module:Class.")],
    kind: typing.Annotated[
        str, typer.Option(help="sequence, state, class or flow (a run-less flowchart).")
    ] = "sequence",
) -> None:
    """Print a saga definition's Mermaid diagram."""

    async def work() -> int:
        from cqrs.saga.mermaid import SagaMermaid

        try:
            saga_type = load_object(target)
        except AppError as error:
            raise CliError(f"{target}: {error}") from None
        if not (isinstance(saga_type, type) and issubclass(saga_type, Saga)):
            raise CliError(f"{target} is {saga_type!r}, not a Saga class")
        drawn = SagaMermaid(saga_type)
        if kind == "sequence":
            text = drawn.sequence()
        elif kind == "state":
            text = drawn.state_diagram()
        elif kind == "class":
            text = drawn.class_diagram()
        elif kind == "flow":
            text = drawn.run_diagram([])
        else:
            raise CliError(f"--kind {kind!r}: use sequence, state, class or flow")
        out.out(text, end="")
        return 0

    _exit(run(work))


# -- running -------------------------------------------------------------------------------------------------


@app.command()
def worker(
    app_spec: App,
    url: Url = None,
    concurrency: typing.Annotated[int, typer.Option(min=1, help="Sagas recovered at once.")] = 8,
    batch_size: typing.Annotated[int, typer.Option(min=1, help="Sagas claimed per pass.")] = 20,
    poll_interval: typing.Annotated[float, typer.Option(min=0.01, help="Seconds between passes.")] = 5.0,
    max_attempts: typing.Annotated[int, typer.Option(min=1, help="Recovery attempts before a saga is parked.")] = 10,
    lease_seconds: typing.Annotated[float, typer.Option(min=0.1, help="Lease of the sagas this worker runs.")] = 30.0,
    shutdown_grace: typing.Annotated[float, typer.Option(min=0, help="Seconds in-flight sagas get on SIGTERM.")] = 10.0,
    once: typing.Annotated[bool, typer.Option(help="One pass, then exit (cron).")] = False,
    outbox: typing.Annotated[
        bool,
        typer.Option(envvar="CQRS_SAGA_OUTBOX", help="Write recovered steps' notification events to the outbox."),
    ] = False,
    log_level: LogLevel = "INFO",
) -> None:
    """Run the recovery worker: claim sagas whose runner died and finish them; stops gracefully on SIGTERM."""
    _logging(log_level)
    _exit(run(lambda: run_worker(
        app_spec, url, concurrency=concurrency, batch_size=batch_size, poll_interval=poll_interval,
        max_attempts=max_attempts, lease_seconds=lease_seconds, shutdown_grace=shutdown_grace, once=once,
        outbox=outbox,
    )))


@app.command()
def relay(
    broker: typing.Annotated[
        str,
        typer.Option(
            "--broker", envvar="CQRS_SAGA_BROKER",
            help="module:object of a MessageBroker, or of what makes one (called with no arguments).",
        ),
    ],
    url: Url = None,
    batch_size: typing.Annotated[int, typer.Option(min=1, help="Messages claimed per pass.")] = 100,
    poll_interval: typing.Annotated[float, typer.Option(min=0.01, help="Seconds between passes when idle.")] = 1.0,
    lease_seconds: typing.Annotated[float, typer.Option(min=0.1, help="How long a claim lasts.")] = 30.0,
    once: typing.Annotated[bool, typer.Option(help="Publish what is due, then exit.")] = False,
    log_level: LogLevel = "INFO",
) -> None:
    """Run an outbox relay: publish committed outbox messages to the broker; any number may run at once."""
    _logging(log_level)
    _exit(run(lambda: run_outbox_relay(
        url, broker, once=once, batch_size=batch_size, poll_interval=poll_interval, lease_seconds=lease_seconds,
    )))


def _logging(level: str) -> None:
    if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        err.print(f"error: --log-level {level!r}: use DEBUG, INFO, WARNING or ERROR")
        _exit(ExitCode.USAGE)
    configure_logging(level)


@app.command()
def recover(
    saga_id: typing.Annotated[uuid.UUID, typer.Argument(metavar="ID", help="The saga id.")],
    app_spec: App,
    url: Url = None,
    from_step: typing.Annotated[
        str | None,
        typer.Option("--from-step", help="Re-run a failed or parked saga from this step (its first not completed)."),
    ] = None,
    note: Note = "",
    actor: Actor = None,
) -> None:
    """Run a saga here and now: a resumable one as far as it goes, or a failed one again --from-step."""

    async def work() -> int:
        async with open_mediator(app_spec, url) as mediator:
            ops = SagaOperations(mediator=mediator, actor=_actor(actor))
            if from_step is None:
                result = await ops.recover(saga_id)
            else:
                result = await ops.rerun(saga_id, from_step, note)
        return _report(result)

    _exit(run(work))


def _operator_command(name: str, doc: str, method: str, *, step: bool = False, runs: bool = False) -> None:
    """Register ``park``, ``reset``, ``retry``, ``resolve`` and ``skip``: one shape, one action each."""

    def command(
        saga_id: typing.Annotated[uuid.UUID, typer.Argument(metavar="ID", help="The saga id.")],
        step_name: typing.Annotated[str, typer.Argument(metavar="STEP", help="The step.")] = "",
        url: Url = None,
        app_spec: OptionalApp = None,
        note: Note = "",
        actor: Actor = None,
    ) -> None:
        async def work() -> int:
            if app_spec is not None:
                async with open_mediator(app_spec, url) as mediator:
                    return await act(SagaOperations(mediator=mediator, actor=_actor(actor)))
            async with opened_storage(url) as storage:
                return await act(SagaOperations(storage, actor=_actor(actor)))

        async def act(ops: SagaOperations) -> int:
            call = getattr(ops, method)
            result: ActionResult = await (call(saga_id, step_name, note) if step else call(saga_id, note))
            return _report(result)

        if step and not step_name:
            err.print("error: give the STEP whose compensation to skip")
            _exit(ExitCode.USAGE)
        _exit(run(work))

    command.__doc__ = doc
    if not step:
        # Without a STEP argument in the signature, Typer shows none.
        def without_step(
            saga_id: typing.Annotated[uuid.UUID, typer.Argument(metavar="ID", help="The saga id.")],
            url: Url = None,
            app_spec: OptionalApp = None,
            note: Note = "",
            actor: Actor = None,
        ) -> None:
            command(saga_id, "", url, app_spec, note, actor)

        without_step.__doc__ = doc
        app.command(name)(without_step)
    else:
        app.command(name)(command)


_operator_command("park", "Take an unfinished saga out of recovery until it is reset.", "park")
_operator_command("reset", "Make a parked or stuck saga recoverable again, with fresh attempts.", "reset")
_operator_command(
    "retry",
    "Retry the failed compensations of a compensation_failed saga (here with --app, else by the workers).",
    "retry_compensations",
    runs=True,
)
_operator_command(
    "resolve", "Mark a compensation_failed saga's outstanding compensations done by hand (--note required).", "resolve"
)
_operator_command(
    "skip", "Skip one outstanding compensation of a compensation_failed saga (--note required).",
    "skip_compensation", step=True,
)


def _report(result: ActionResult) -> int:
    out.print(result.message)
    if result.outcome is not None and result.status in (
        SagaStatus.FAILED, SagaStatus.COMPENSATION_FAILED, SagaStatus.PARKED,
    ) and result.action in ("recover", "rerun"):
        return ExitCode.NO
    return ExitCode.OK


@app.command()
def purge(
    older_than: typing.Annotated[str, typer.Option(help="Finished sagas created this long ago (e.g. 30d).")],
    url: Url = None,
    status: typing.Annotated[
        SagaStatus | None,
        typer.Option(help="completed, failed or parked (default: completed and failed)."),
    ] = None,
    batch: typing.Annotated[int, typer.Option(min=1, help="Sagas deleted per transaction.")] = 500,
    dry_run: typing.Annotated[bool, typer.Option(help="Only count them.")] = False,
) -> None:
    """Delete finished sagas (and their histories) older than --older-than, with a progress bar."""

    async def work() -> int:
        age = _duration(older_than)
        assert age is not None
        async with opened_storage(url) as storage:
            ops = SagaOperations(storage)
            try:
                total = await ops.count_purgeable(age, status=status)
            except ValueError as error:
                raise CliError(str(error)) from None
            if dry_run:
                out.print(f"{total} saga(s) would be purged")
                return 0
            columns = (TextColumn("purging"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=err, transient=False) as progress:
                task = progress.add_task("purge", total=total)
                deleted = await ops.purge(
                    age, status=status, batch=batch, progress=lambda n: progress.advance(task, n)
                )
        out.print(f"{deleted} saga(s) purged")
        return 0

    _exit(run(work))


# -- the tables ------------------------------------------------------------------------------------------------


@db.command("create")
def db_create(url: Url = None) -> None:
    """Create the saga tables (refuses foreign, older or newer tables of the same names, writing nothing)."""
    _exit(run(lambda: _schema(url, "create")))


@db.command("check")
def db_check(url: Url = None) -> None:
    """Report the schema version and any drift; exits 1 on drift or missing tables."""
    _exit(run(lambda: _schema(url, "check")))


@db.command("upgrade")
def db_upgrade(url: Url = None) -> None:
    """Upgrade saga tables of any earlier schema version to this one (creating them if there are none)."""
    _exit(run(lambda: _schema(url, "upgrade")))


async def _schema(url: str | None, what: str) -> int:
    resolved = resolve_url(url)
    from cqrs.saga.storage.sqlalchemy import SqlAlchemySagaStorage

    storage = SqlAlchemySagaStorage.from_url(resolved)
    try:
        if what == "create":
            await storage.create_tables()
            report = await storage.check_schema()
            out.print(f"saga tables ready: schema version {report.version}")
            return 0
        if what == "upgrade":
            before, after = await storage.upgrade_schema()
            was = "no tables" if before.state == "empty" else f"schema version {before.version}"
            out.print(f"upgraded: {was} -> schema version {after.version}")
            for line in after.drift:
                out.print(f"  still: {line}")
            return 0 if after.ok else ExitCode.NO
        report = await storage.check_schema()
        for line in report.lines():
            out.print(line)
        if report.state == "foreign":
            return ExitCode.STORAGE
        return ExitCode.OK if report.ok else ExitCode.NO
    finally:
        await storage.close()


async def _saga_lookup(spec: str | None) -> typing.Callable[[str], type[Saga[typing.Any]] | None] | None:
    """A lookup of saga classes by name from ``--app`` (a list, a SagaMap, a mediator or a factory), or None."""
    if spec is None:
        return None
    from cqrs.saga.apps import resolve, saga_map_of
    from cqrs.saga.mediator import SagaMediator

    try:
        source = await resolve(load_object(spec))
        saga_map = source.saga_map if isinstance(source, SagaMediator) else saga_map_of(source, f"--app {spec}")
    except AppError as error:
        raise CliError(f"--app {spec}: {error}") from None
    return saga_map.by_name
