"""Helpers for the durability tests: a ledger-writing saga, a crash runner and the judge.

- `saga`: a 3-step saga whose steps record every run of ``act`` and
  ``compensate`` in a side-effect ledger (an fsynced file or a PostgreSQL
  table), with hooks that stop the step code at exact points (to be killed
  there, or paused in-process).
- `judge`: reads ledgers and saga histories and checks the durability promises.
- `db`: SQL helpers shared by tests and the runner (open the storage, expire
  leases, kill a storage's connections, seed interrupted or compensating sagas).
- `runner`: the script the tests start as a real subprocess
  (``python tests/durability/runner.py crash|recover ...``).
"""
