"""``python manage.py saga_worker``: run pending and interrupted sagas until stopped."""

from __future__ import annotations

import asyncio
import signal
import typing

from django.core.management.base import BaseCommand, CommandError  # type: ignore[import-untyped]

from cqrs.config import SagaConfig
from cqrs.integrations.django._commands import command_config, one_line, opened, probe, run
from cqrs.integrations.django._settings import redact


def _tally(recovered: dict[str, int]) -> str:
    return ", ".join(f"{outcome}={count}" for outcome, count in sorted(recovered.items())) or "nothing run"


class Command(BaseCommand):  # type: ignore[misc]
    help = (
        "Run sagas that are pending (started with atomic_saga_start and not yet run) or whose runner "
        "died (lease expired): claims them with leases, so any number of workers may run at once. "
        "SIGTERM or Ctrl-C stops claiming and lets in-flight sagas finish (or releases them after "
        "--shutdown-grace seconds, for another worker to pick up)."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: typing.Any) -> None:
        parser.add_argument("--concurrency", type=int, default=8, help="sagas run at once (default 8)")
        parser.add_argument("--once", action="store_true", help="claim and run one batch, then exit")
        parser.add_argument(
            "--poll-interval", type=float, default=None,
            help="seconds between claims when idle (default CQRS_SAGA['RECOVERY_INTERVAL'], 5)",
        )
        parser.add_argument("--batch-size", type=int, default=20, help="sagas claimed per pass (default 20)")
        parser.add_argument(
            "--max-attempts", type=int, default=10,
            help="park a saga claimed more often than this (default 10)",
        )
        parser.add_argument(
            "--shutdown-grace", type=float, default=10.0,
            help="seconds in-flight sagas get to finish on SIGTERM before they are released (default 10)",
        )

    def handle(self, *args: typing.Any, **options: typing.Any) -> None:
        for name in ("concurrency", "batch_size", "max_attempts"):
            if options[name] < 1:
                raise CommandError(f"--{name.replace('_', '-')} must be at least 1, got {options[name]}")
        for name in ("poll_interval", "shutdown_grace"):
            if options[name] is not None and options[name] < 0:
                raise CommandError(f"--{name.replace('_', '-')} must not be negative, got {options[name]}")
        config = command_config()
        if not config.saga_map.sagas():
            raise CommandError("CQRS_SAGA['SAGAS'] lists no sagas: the worker would have nothing to run")
        try:
            run(self._main(config, options))
        except CommandError:
            raise
        except Exception as error:
            raise CommandError(
                f"saga_worker stopped: {one_line(error)} (is the database up, and `python manage.py migrate` run?)"
            ) from None

    async def _main(self, config: SagaConfig, options: dict[str, typing.Any]) -> None:
        async with opened(config) as storage:
            await probe(storage, config)
            chosen = {name: options[name] for name in ("concurrency", "batch_size", "max_attempts", "shutdown_grace")}
            if options["poll_interval"] is not None:  # else the config's recovery interval
                chosen["poll_interval"] = options["poll_interval"]
            worker = config.recovery_worker(storage, **chosen)
            names = ", ".join(saga_type.name for saga_type in config.saga_map.sagas())
            if options["once"]:
                claimed = await worker.run_once()
                self.stdout.write(f"saga_worker: claimed {claimed} saga(s): {_tally(worker.recovered)}")
                return

            def announce(sig: signal.Signals) -> None:
                self.stdout.write(f"saga_worker: {sig.name}: no more claims; finishing in-flight sagas")
                self.stdout.flush()

            installed = worker.install_signal_handlers(announce)
            self.stdout.write(
                f"saga_worker: running {names} from {redact(config.storage_url)} "
                f"(concurrency {options['concurrency']}, polling every {worker.poll_interval:g}s)"
            )
            self.stdout.flush()
            try:
                await worker.run()
            finally:
                for sig in installed:
                    asyncio.get_running_loop().remove_signal_handler(sig)
            self.stdout.write(f"saga_worker: stopped: {_tally(worker.recovered)}")
