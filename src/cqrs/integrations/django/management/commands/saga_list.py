"""``python manage.py saga_list``: stored sagas as a table."""

from __future__ import annotations

import datetime
import typing

from django.core.management.base import BaseCommand, CommandError  # type: ignore[import-untyped]

from cqrs.config import SagaConfig
from cqrs.integrations.django._commands import (
    aware,
    command_config,
    duration_option,
    humanize,
    one_line,
    opened,
    probe,
    run,
    table,
)
from cqrs.saga.storage.enums import SagaStatus
from cqrs.saga.storage.models import SagaRecord

HEADERS = ("ID", "NAME", "STATUS", "AGE", "UPDATED", "ATTEMPTS", "CORRELATION ID", "ERROR")


class Command(BaseCommand):  # type: ignore[misc]
    help = "List stored sagas, oldest first: by --status, --name, --older-than (e.g. 5m, 2h) or --correlation-id."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: typing.Any) -> None:
        parser.add_argument("--status", choices=[status.value for status in SagaStatus])
        parser.add_argument("--name", help="saga name (the Saga class's `name`)")
        parser.add_argument(
            "--older-than", type=duration_option, metavar="DURATION",
            help="only sagas created longer ago than this: 30s, 5m, 2h, 1d",
        )
        parser.add_argument("--correlation-id")
        parser.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")

    def handle(self, *args: typing.Any, **options: typing.Any) -> None:
        if options["limit"] < 1:
            raise CommandError(f"--limit must be at least 1, got {options['limit']}")
        config = command_config()
        try:
            records = run(self._list(config, options))
        except CommandError:
            raise
        except Exception as error:
            raise CommandError(
                f"Cannot list sagas: {one_line(error)} (is the database up, and `python manage.py migrate` run?)"
            ) from None
        if not records:
            self.stdout.write("No sagas match.")
            return
        now = datetime.datetime.now(datetime.timezone.utc)
        for line in table(HEADERS, [_row(record, now) for record in records]):
            self.stdout.write(line)
        more = " (the --limit; there may be more)" if len(records) >= options["limit"] else ""
        self.stdout.write(f"{len(records)} saga(s){more}")

    async def _list(self, config: SagaConfig, options: dict[str, typing.Any]) -> list[SagaRecord]:
        async with opened(config, create_tables=False) as storage:
            await probe(storage, config)
            return await storage.list_sagas(
                status=SagaStatus(options["status"]) if options["status"] else None,
                name=options["name"],
                older_than=options["older_than"],
                correlation_id=options["correlation_id"],
                limit=options["limit"],
            )


def _row(record: SagaRecord, now: datetime.datetime) -> list[str]:
    created = aware(record.created_at)
    updated = aware(record.updated_at)
    error = (record.error or "-").replace("\n", " ")
    return [
        str(record.saga_id),
        record.name,
        record.status.value,
        humanize(now - created) if created else "-",
        f"{humanize(now - updated)} ago" if updated else "-",
        str(record.recovery_attempts),
        record.correlation_id or "-",
        error if len(error) <= 60 else error[:57] + "...",
    ]
