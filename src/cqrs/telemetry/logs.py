"""Saga lifecycle as log records: one INFO record per event, with structured fields.

The library logs under one tree, so an application can tune each part:

=====================  ==============================================================
logger                 what it logs
=====================  ==============================================================
``cqrs.saga``          the engine: every lifecycle event of every run at INFO (this
                       module's `LogHook`), step and compensation failures at
                       WARNING/ERROR, lease renewals that failed
``cqrs.saga.storage``  the SQL storage: which write path it uses, connection trouble
``cqrs.recovery``      recovery workers: each claim at INFO, parked sagas at ERROR,
                       recoveries that were interrupted
``cqrs.events``        event handlers and brokers that failed
``cqrs.integrations``  the web integrations (``.fastapi``, ``.flask``, ``.django``)
``cqrs.telemetry``     tracing and metrics hooks that could not do their job
=====================  ==============================================================

Every record `LogHook` writes carries these attributes (``extra``), so a JSON
formatter puts them in its output without parsing the message:
``saga_id`` (str), ``saga_name``, ``correlation_id`` (None when the saga has
none), ``step`` (None for saga-level events), ``saga_event`` (``started``,
``resumed``, ``step_completed``, ``step_failed``, ``compensating``,
``step_compensated``, ``compensation_failed``, ``completed``, ``failed``,
``lease_lost``) and, where there is one, ``error``; the records of the
saga's end also carry its final ``status``.

The hook costs one ``isEnabledFor`` check per event when INFO is off for
``cqrs.saga`` (the default: Python's root logger is at WARNING). Every
`SagaMediator` installs it unless built with ``telemetry=False``.
"""

from __future__ import annotations

import logging
import typing

from cqrs.saga.hooks import RunInfo, SagaHook
from cqrs.saga.storage.enums import SagaStatus

if typing.TYPE_CHECKING:
    from cqrs.saga.step import SagaStepResult

__all__ = ["LOGGER_NAMES", "LogHook", "saga_fields"]

#: The library's loggers, each with what it logs (see the module docstring).
LOGGER_NAMES: dict[str, str] = {
    "cqrs.saga": "every run's lifecycle events (INFO), step and compensation failures",
    "cqrs.saga.storage": "the SQL storage's write path and connection trouble",
    "cqrs.recovery": "recovery claims (INFO), parked sagas (ERROR), interrupted recoveries",
    "cqrs.events": "event handlers and message brokers that failed",
    "cqrs.integrations": "the FastAPI, Flask and Django integrations",
    "cqrs.telemetry": "tracing and metrics hooks that could not record something",
}

_INFO = logging.INFO
_WARNING = logging.WARNING


def saga_fields(run: RunInfo, step: str | None = None, event: str | None = None) -> dict[str, typing.Any]:
    """The structured fields of a record about ``run`` (the ``extra`` of a logging call)."""
    return {
        "saga_id": str(run.saga_id),
        "saga_name": run.saga_name,
        "correlation_id": run.correlation_id,
        "step": step,
        "saga_event": event,
    }


class LogHook(SagaHook):
    """Writes an INFO record to ``logger`` (``cqrs.saga``) for each lifecycle event of a run.

    Nothing is formatted, and no record is made, unless the logger is
    enabled for INFO; `active` leaves the hook out of runs built while it is
    not. A lost lease is `LeaseLossLogHook`'s (a WARNING).
    """

    __slots__ = ("logger",)

    def __init__(self, logger: logging.Logger | str = "cqrs.saga") -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger

    def _log(
        self,
        level: int,
        message: str,
        run: RunInfo,
        step: str | None,
        event: str,
        *args: object,
        error: str | None = None,
        status: SagaStatus | None = None,
    ) -> None:
        fields = saga_fields(run, step, event)
        if error is not None:
            fields["error"] = error
        if status is not None:
            fields["status"] = status.value
        self.logger.log(level, message, *args, extra=fields)

    def saga_started(self, run: RunInfo) -> None:
        if self.logger.isEnabledFor(_INFO):
            self._log(_INFO, "Saga %s (%s) started", run, None, "started", run.saga_id, run.saga_name)

    def saga_resumed(self, run: RunInfo) -> None:
        if self.logger.isEnabledFor(_INFO):
            self._log(
                _INFO, "Saga %s (%s) taken up from storage (status %s)", run, None, "resumed",
                run.saga_id, run.saga_name, run.status.value,
            )

    def step_completed(
        self,
        run: RunInfo,
        step: str,
        result: SagaStepResult[typing.Any, typing.Any],
        events: typing.Sequence[object],
    ) -> None:
        if self.logger.isEnabledFor(_INFO):
            self._log(_INFO, "Saga %s: step %s completed", run, step, "step_completed", run.saga_id, step)

    def step_failed(self, run: RunInfo, step: str, error: BaseException) -> None:
        if self.logger.isEnabledFor(_INFO):
            text = _error_text(error)
            self._log(
                _INFO, "Saga %s: step %s failed: %s", run, step, "step_failed", run.saga_id, step, text, error=text
            )

    def compensation_started(self, run: RunInfo, error: str | None) -> None:
        if self.logger.isEnabledFor(_INFO):
            self._log(
                _INFO, "Saga %s compensating after: %s", run, None, "compensating", run.saga_id, error, error=error
            )

    def step_compensated(self, run: RunInfo, step: str, events: typing.Sequence[object]) -> None:
        if self.logger.isEnabledFor(_INFO):
            self._log(_INFO, "Saga %s: step %s compensated", run, step, "step_compensated", run.saga_id, step)

    def compensation_failed(self, run: RunInfo, step: str, error: BaseException) -> None:
        if self.logger.isEnabledFor(_INFO):
            text = _error_text(error)
            self._log(
                _INFO, "Saga %s: compensation of step %s failed: %s", run, step, "compensation_failed",
                run.saga_id, step, text, error=text,
            )

    def saga_finished(self, run: RunInfo, status: SagaStatus, error: str | None) -> None:
        if self.logger.isEnabledFor(_INFO):
            if status == SagaStatus.COMPLETED:
                self._log(
                    _INFO, "Saga %s (%s) completed", run, None, "completed", run.saga_id, run.saga_name, status=status
                )
            else:
                self._log(
                    _INFO, "Saga %s (%s) ended %s: %s", run, None, "failed", run.saga_id, run.saga_name,
                    status.value, error, error=error, status=status,
                )

    def active(self) -> bool:
        """Whether this hook has anything to write (INFO is enabled): checked as each run is built,
        so with INFO off the hook costs a run nothing."""
        return self.logger.isEnabledFor(_INFO)


class LeaseLossLogHook(SagaHook):
    """Writes a WARNING to ``logger`` when a run loses its saga to another runner."""

    __slots__ = ("logger",)

    def __init__(self, logger: logging.Logger | str = "cqrs.saga") -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger

    def lease_lost(self, run: RunInfo) -> None:
        if self.logger.isEnabledFor(_WARNING):
            self.logger.warning(
                "Saga %s: another runner took it over; this run stopped without writing",
                run.saga_id, extra=saga_fields(run, None, "lease_lost"),
            )


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
