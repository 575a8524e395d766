"""Testing sagas: a harness with a fake clock, injected faults and assertions, and a pytest plugin.

`SagaHarness` runs a test's sagas on memory storage (or any storage) with
time that only moves when the test says so. It can make a step fail, crash
the "process" before a step, after its act but before its commit, or after
its commit, lose the lease mid-step, and deliver a trigger's event twice;
`SagaHarness.recover` then finishes what was left, as a recovery worker
would. `SagaHarness.assert_saga` checks the steps run, compensations run,
events emitted and final status, naming every difference.

With the ``testing`` extra installed, pytest loads `cqrs.testing.plugin`,
whose fixtures (``saga_harness``, ``sqlite_saga_harness``, ``saga_clock``,
``saga_sleep``) make these for each test.
"""

from __future__ import annotations

from cqrs.testing._clock import FakeClock, FakeSleep
from cqrs.testing._faults import InjectedFault, SimulatedCrash
from cqrs.testing._harness import SagaHarness
from cqrs.testing._recorder import Attempt, SagaRecording

__all__ = ["Attempt", "FakeClock", "FakeSleep", "InjectedFault", "SagaHarness", "SagaRecording", "SimulatedCrash"]
