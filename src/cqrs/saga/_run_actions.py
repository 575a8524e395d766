"""A run's actions: resolving and running a step's ``act`` (retries, timeouts, the saga's
deadline, fallbacks and circuit breakers), inside the saga's correlation scope."""

from __future__ import annotations

import asyncio
import datetime
import logging
import typing

from cqrs.adapters.circuit_breaker import CircuitOpenError
from cqrs.saga import _serialization
from cqrs.saga._hookset import call_hooks
from cqrs.saga._run_state import RunState
from cqrs.saga.exceptions import (
    SagaDeadlineExceededError,
    SagaOwnershipLostError,
    SagaStepTimeoutError,
    StepContractError,
)
from cqrs.saga.fallback import Fallback
from cqrs.saga.hooks import Action, error_text
from cqrs.saga.retry import NO_RETRY, RetryPolicy
from cqrs.saga.saga import SagaEntry, StepType
from cqrs.saga.step import SagaStepHandler, SagaStepResult

__all__ = ["RunActions"]

logger = logging.getLogger("cqrs.saga")

T = typing.TypeVar("T")
_UTC = datetime.timezone.utc
Step = SagaStepHandler[typing.Any, typing.Any]
Result = SagaStepResult[typing.Any, typing.Any]


class RunActions(RunState):
    """Runs steps' actions for a run (see the module doc)."""

    __slots__ = ()

    async def _act_entry(self, entry: SagaEntry) -> tuple[StepType, Step, Result]:
        """Run an entry's action (the deadline checked first; a `Fallback`'s stand-in if need be)."""
        if self.saga_type.deadline is not None:
            self._check_deadline()
        if isinstance(entry, Fallback):
            return await self._run_fallback(entry)
        instance = await self._resolve(entry)
        return entry, instance, await self._act(entry, instance)

    async def _run_fallback(self, entry: Fallback) -> tuple[StepType, Step, Result]:
        breaker = entry.circuit_breaker
        primary = entry.step
        if breaker is None or not breaker.is_open(primary.name):
            snapshot = _serialization.dump_context(self.context)
            try:
                instance = await self._resolve(primary)
                if breaker is None:
                    result = await self._act(primary, instance)
                else:
                    result = await breaker.call(primary.name, lambda: self._act(primary, instance))
                return primary, instance, result
            except (asyncio.CancelledError, SagaOwnershipLostError):
                raise
            except Exception as error:
                if not (isinstance(error, CircuitOpenError) or entry.handles(error)):
                    raise
                logger.warning(
                    "Saga %s: step %s failed (%s); running fallback %s",
                    self.saga_id, primary.name, error_text(error), entry.fallback.name,
                )
                if self.hooks.step_failed:
                    hooked = call_hooks(self.hooks.step_failed, self, primary.name, error)
                    if hooked is not None:
                        await hooked
                _serialization.restore_in_place(self.context, snapshot)
        if self.hooks.step_started:
            hooked = call_hooks(self.hooks.step_started, self, entry.fallback.name)
            if hooked is not None:
                await hooked
        instance = await self._resolve(entry.fallback)
        return entry.fallback, instance, await self._act(entry.fallback, instance)

    def _resolve(self, step_type: StepType) -> typing.Awaitable[Step]:
        # Not a coroutine itself: one layer less on every step.
        self._current_step = step_type.name
        return self.container.resolve(step_type)

    async def _act(self, step_type: StepType, instance: Step) -> Result:
        self._current_step = step_type.name
        heartbeat = self._heartbeat
        heartbeat.begin()
        try:
            policy = step_type.retry
            if policy is None and not self._observed and step_type.timeout is None and self.saga_type.deadline is None:
                # One attempt, no time limit, nothing watching it: `_attempt` inlined.
                events = getattr(instance, "_events", None)
                events_before = len(events) if type(events) is list else -1
                with self._scope:
                    try:
                        result = await instance.act(self.context)
                    except BaseException:
                        if events_before >= 0:  # a failed attempt's events describe what did not happen
                            del typing.cast("list[object]", events)[events_before:]
                        raise
                if not isinstance(result, SagaStepResult):
                    raise StepContractError(
                        f"{step_type.__qualname__}.act returned {result!r}; "
                        "return self._generate_step_result(response)"
                    )
                return result
            return await self._retry(policy or NO_RETRY, step_type.name, "act", self._attempt, step_type, instance)
        finally:
            renewal = heartbeat.end()
            if renewal is not None:
                await renewal

    async def _attempt(self, step_type: StepType, instance: Step) -> Result:
        events = getattr(instance, "_events", None)
        events_before = len(events) if isinstance(events, list) else 0
        try:
            if step_type.timeout is None and self.saga_type.deadline is None:
                result = await instance.act(self.context)
            else:
                result = await self._with_deadline(step_type, instance.act(self.context))
        except BaseException:
            # A failed attempt's events describe something that did not happen.
            if isinstance(events, list):
                del events[events_before:]
            raise
        if not isinstance(result, SagaStepResult):
            raise StepContractError(
                f"{step_type.__qualname__}.act returned {result!r}; return self._generate_step_result(response)"
            )
        return result

    async def _with_deadline(self, step_type: StepType, action: typing.Awaitable[T]) -> T:
        timeout = step_type.timeout
        remaining = self._deadline_remaining()
        by_deadline = remaining is not None and (timeout is None or remaining < timeout)
        limit = remaining if by_deadline else timeout
        if limit is None:
            return await action
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            return await asyncio.wait_for(action, max(limit, 0.0))
        except asyncio.TimeoutError as exc:
            if loop.time() - started < limit:
                raise  # the step's own TimeoutError
            if by_deadline:
                raise SagaDeadlineExceededError(
                    f"Saga {self.saga_id} passed its deadline during step {step_type.name}"
                ) from exc
            raise SagaStepTimeoutError(
                f"Step {step_type.name} of saga {self.saga_id} took longer than {timeout}s"
            ) from exc

    async def _retry(
        self,
        policy: RetryPolicy,
        step_name: str,
        what: Action,
        func: typing.Callable[..., typing.Awaitable[T]],
        *args: typing.Any,
    ) -> T:
        """``await func(*args)`` in the saga's correlation scope, retried as ``policy`` says."""
        hooks = self.hooks
        observed = bool(hooks.attempt_started or hooks.attempt_finished)
        attempt = 1
        while True:
            try:
                with self._scope:
                    if not observed:
                        return await func(*args)
                    return await self._observed_attempt(step_name, what, attempt, func, args)
            except (asyncio.CancelledError, SagaOwnershipLostError):
                raise
            except Exception as error:
                if attempt >= policy.attempts or not policy.should_retry(error):
                    raise
                delay = policy.delay_before(attempt)
                logger.warning(
                    "Saga %s: %s of step %s failed (attempt %d of %d: %s); retrying in %.3fs",
                    self.saga_id, "compensation" if what == "compensate" else what, step_name, attempt,
                    policy.attempts, error_text(error), delay,
                )
                attempt += 1
                await self.settings.sleep(delay)

    async def _observed_attempt(
        self,
        step_name: str,
        what: Action,
        attempt: int,
        func: typing.Callable[..., typing.Awaitable[T]],
        args: tuple[typing.Any, ...],
    ) -> T:
        hooks = self.hooks
        if hooks.attempt_started:
            hooked = call_hooks(hooks.attempt_started, self, step_name, what, attempt)
            if hooked is not None:
                await hooked
        try:
            outcome = await func(*args)
        except BaseException as error:
            if hooks.attempt_finished:
                hooked = call_hooks(hooks.attempt_finished, self, step_name, what, attempt, error)
                if hooked is not None:
                    await hooked
            raise
        if hooks.attempt_finished:
            hooked = call_hooks(hooks.attempt_finished, self, step_name, what, attempt, None)
            if hooked is not None:
                await hooked
        return outcome

    def _deadline_remaining(self) -> float | None:
        deadline = self.saga_type.deadline
        if deadline is None or self.created_at is None:
            return None
        return deadline - (datetime.datetime.now(_UTC) - self.created_at).total_seconds()

    def _check_deadline(self) -> None:
        remaining = self._deadline_remaining()
        if remaining is not None and remaining <= 0:
            raise SagaDeadlineExceededError(f"Saga {self.saga_id} passed its deadline of {self.saga_type.deadline}s")
