"""``python manage.py saga_check``: is the saga setup healthy? Non-zero exit when not."""

from __future__ import annotations

import dataclasses
import datetime
import typing

from django.core.management.base import BaseCommand, CommandError  # type: ignore[import-untyped]

from cqrs.config import SagaConfig
from cqrs.integrations.django._commands import aware, command_config, duration_option, humanize, one_line, opened, run
from cqrs.integrations.django._settings import redact
from cqrs.saga.storage.enums import SagaStatus
from cqrs.saga.storage.models import SagaRecord

#: Statuses in which a saga should be making progress.
IN_PROGRESS = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)
#: Statuses that need an operator.
NEEDS_OPERATOR = (SagaStatus.COMPENSATION_FAILED, SagaStatus.PARKED)


@dataclasses.dataclass
class Check:
    name: str
    ok: bool | None  # None: skipped
    detail: str


class Command(BaseCommand):  # type: ignore[misc]
    help = (
        "Check the saga setup: configuration, database reachable, tables present, no saga stuck "
        "pending/running/compensating without progress for --stuck-after, none compensation_failed "
        "or parked. Prints each check OK/FAIL; exits 1 when any fails."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: typing.Any) -> None:
        parser.add_argument(
            "--stuck-after", type=duration_option, default=datetime.timedelta(minutes=15), metavar="DURATION",
            help="a saga in progress with no progress for this long is stuck (default 15m)",
        )
        parser.add_argument("--limit", type=int, default=20, help="list at most this many sagas per check")

    def handle(self, *args: typing.Any, **options: typing.Any) -> None:
        checks: list[Check] = []
        later = ("database", "tables", "stuck sagas", "needs attention")
        try:
            config = command_config()
        except CommandError as error:
            checks.append(Check("configuration", False, str(error)))
            checks += [Check(name, None, "skipped") for name in later]
        else:
            names = ", ".join(saga_type.name for saga_type in config.saga_map.sagas()) or "none"
            checks.append(
                Check("configuration", True, f"sagas: {names}; storage {redact(config.storage_url)}")
            )
            checks += run(self._probe(config, options["stuck_after"], options["limit"]))
        for check in checks:
            word = "OK" if check.ok else ("SKIP" if check.ok is None else "FAIL")
            style = self.style.SUCCESS if check.ok else (self.style.WARNING if check.ok is None else self.style.ERROR)
            self.stdout.write(style(f"{word:<4}  {check.name}: {check.detail}"))
        failed = [check.name for check in checks if check.ok is False]
        if failed:
            raise CommandError(f"Unhealthy: {len(failed)} check(s) failed ({', '.join(failed)})")
        self.stdout.write(self.style.SUCCESS("Healthy."))

    async def _probe(self, config: SagaConfig, stuck_after: datetime.timedelta, limit: int) -> list[Check]:
        checks: list[Check] = []
        try:
            async with opened(config, create_tables=False) as storage:
                engine = getattr(storage, "engine", None)  # the SQL storage's; the memory storage has none
                if engine is None:
                    checks.append(Check("database", True, f"{type(storage).__name__} (nothing to reach)"))
                    checks.append(Check("tables", True, "not needed"))
                else:
                    reachable, missing = await _inspect(engine)
                    checks.append(reachable)
                    if not reachable.ok:
                        checks.append(Check("tables", None, "skipped"))
                    elif missing:
                        checks.append(
                            Check("tables", False, f"missing {', '.join(missing)}: run `python manage.py migrate`")
                        )
                    else:
                        checks.append(Check("tables", True, "saga tables present"))
                if not all(check.ok for check in checks):
                    return [*checks, Check("stuck sagas", None, "skipped"), Check("needs attention", None, "skipped")]
                checks.append(await _stuck(storage, stuck_after, limit))
                checks.append(await _needing_operator(storage, limit))
        except Exception as error:
            checks.append(Check("database", False, one_line(error)))
            checks += [Check(name, None, "skipped") for name in ("tables", "stuck sagas", "needs attention")]
        return checks


async def _inspect(engine: typing.Any) -> tuple[Check, list[str]]:
    import sqlalchemy

    from cqrs.integrations.django.transaction import saga_tables

    names = [table.name for table in saga_tables()]
    try:
        async with engine.connect() as connection:
            await connection.execute(sqlalchemy.text("SELECT 1"))
            missing: list[str] = await connection.run_sync(
                lambda sync: [name for name in names if not sqlalchemy.inspect(sync).has_table(name)]
            )
    except Exception as error:
        return Check("database", False, f"unreachable: {one_line(error)}"), []
    return Check("database", True, f"reachable ({engine.dialect.name})"), sorted(missing)


def _describe(records: list[SagaRecord], now: datetime.datetime, limit: int) -> str:
    shown = []
    for record in records[:limit]:
        updated = aware(record.updated_at) or aware(record.created_at)
        since = f", no progress for {humanize(now - updated)}" if updated else ""
        shown.append(f"{record.saga_id} ({record.name}, {record.status.value}{since})")
    more = f" and {len(records) - limit} more" if len(records) > limit else ""
    return "; ".join(shown) + more


async def _stuck(storage: typing.Any, stuck_after: datetime.timedelta, limit: int) -> Check:
    now = datetime.datetime.now(datetime.timezone.utc)
    stuck: list[SagaRecord] = []
    for status in IN_PROGRESS:
        for record in await storage.list_sagas(status=status, older_than=stuck_after, limit=limit + 1):
            updated = aware(record.updated_at) or aware(record.created_at)
            if updated is None or now - updated >= stuck_after:
                stuck.append(record)
    if stuck:
        return Check(
            "stuck sagas", False,
            f"{len(stuck)} without progress for {humanize(stuck_after)} or more (is saga_worker running?): "
            + _describe(stuck, now, limit),
        )
    return Check("stuck sagas", True, f"none without progress for {humanize(stuck_after)}")


async def _needing_operator(storage: typing.Any, limit: int) -> Check:
    now = datetime.datetime.now(datetime.timezone.utc)
    found: list[SagaRecord] = []
    for status in NEEDS_OPERATOR:
        found += await storage.list_sagas(status=status, limit=limit + 1)
    if found:
        return Check(
            "needs attention", False, f"{len(found)} compensation_failed or parked: " + _describe(found, now, limit)
        )
    return Check("needs attention", True, "none compensation_failed or parked")
