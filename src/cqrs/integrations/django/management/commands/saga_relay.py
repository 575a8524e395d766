"""``python manage.py saga_relay``: publish the saga outbox to the message broker until stopped."""

from __future__ import annotations

import typing

from django.core.management.base import BaseCommand, CommandError  # type: ignore[import-untyped]

from cqrs.config import SagaConfig
from cqrs.integrations.django._commands import command_config, one_line, opened, probe, run
from cqrs.integrations.django._settings import redact


class Command(BaseCommand):  # type: ignore[misc]
    help = (
        "Publish the messages sagas wrote to the outbox (CQRS_SAGA['OUTBOX'] = True) through "
        "CQRS_SAGA['MESSAGE_BROKER'] (or --broker). Claims rows with leases, so any number of relays may "
        "run at once; one saga's messages go out in order. SIGTERM or Ctrl-C stops after the pass under way."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: typing.Any) -> None:
        parser.add_argument(
            "--broker", default=None,
            help="package.module:name of a MessageBroker or of what makes one (default CQRS_SAGA['MESSAGE_BROKER'])",
        )
        parser.add_argument("--once", action="store_true", help="publish what is due, then exit")
        parser.add_argument("--batch-size", type=int, default=100, help="messages claimed per pass (default 100)")
        parser.add_argument(
            "--poll-interval", type=float, default=None,
            help="seconds between passes when idle (default CQRS_SAGA['RELAY_INTERVAL'], 1)",
        )
        parser.add_argument("--lease-seconds", type=float, default=30.0, help="how long a claim lasts (default 30)")

    def handle(self, *args: typing.Any, **options: typing.Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError(f"--batch-size must be at least 1, got {options['batch_size']}")
        for name in ("poll_interval", "lease_seconds"):
            if options[name] is not None and options[name] <= 0:
                raise CommandError(f"--{name.replace('_', '-')} must be positive, got {options[name]}")
        config = command_config()
        broker: typing.Any = options["broker"] or config.message_broker
        if broker is None:
            raise CommandError("No message broker: set CQRS_SAGA['MESSAGE_BROKER'] or pass --broker module:name")
        try:
            run(self._main(config, broker, options))
        except CommandError:
            raise
        except Exception as error:
            raise CommandError(
                f"saga_relay stopped: {one_line(error)} (is the database up, and `python manage.py migrate` run?)"
            ) from None

    async def _main(self, config: SagaConfig, broker: typing.Any, options: dict[str, typing.Any]) -> None:
        from cqrs.outbox.protocol import OutboxStorage
        from cqrs.outbox.runner import run_relay

        async with opened(config) as storage:
            await probe(storage, config)
            if not isinstance(storage, OutboxStorage):  # pragma: no cover - every shipped storage has one
                raise CommandError(f"{type(storage).__name__} has no outbox")
            interval = options["poll_interval"] if options["poll_interval"] is not None else config.relay_interval
            if not options["once"]:
                self.stdout.write(
                    f"saga_relay: publishing the outbox of {redact(config.storage_url)} (polling every {interval:g}s; "
                    "SIGTERM or Ctrl-C stops after the pass under way)"
                )
                self.stdout.flush()
            relay = await run_relay(
                storage, broker, once=options["once"], handle_signals=not options["once"],
                batch_size=options["batch_size"], poll_interval=interval, lease_seconds=options["lease_seconds"],
            )
            self.stdout.write(f"saga_relay: {'done' if options['once'] else 'stopped'}: {_tally(relay)}")


def _tally(relay: typing.Any) -> str:
    return f"published={relay.published}, failed={relay.failed}, parked={relay.parked}"
