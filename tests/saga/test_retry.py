"""`RetryPolicy`: what it accepts, its waits and what it retries (its use by runs: test_run_step_policies.py)."""

from __future__ import annotations

import pytest

from cqrs.saga.retry import NO_RETRY, RetryPolicy


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attempts": 0}, "attempts must be >= 1, got 0"),
        ({"delay": -0.1}, "delay >= 0"),
        ({"backoff": 0.5}, "backoff >= 1"),
        ({"max_delay": -1.0}, "max_delay >= 0"),
    ],
)
def test_a_policy_that_cannot_work_is_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_waits_grow_by_the_backoff_up_to_max_delay() -> None:
    policy = RetryPolicy(attempts=6, delay=0.5, backoff=3.0, max_delay=10.0)

    assert [policy.delay_before(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]


def test_only_the_listed_exceptions_are_retried() -> None:
    policy = RetryPolicy(retry_on=(ConnectionError, TimeoutError))

    assert policy.should_retry(ConnectionResetError())
    assert policy.should_retry(TimeoutError())
    assert not policy.should_retry(ValueError())
    assert RetryPolicy().should_retry(ValueError())  # by default, any Exception


def test_no_retry_is_one_attempt() -> None:
    assert NO_RETRY.attempts == 1
