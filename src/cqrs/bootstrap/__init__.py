"""`bootstrap`: build a `SagaMediator` (python-cqrs 5's ``cqrs.bootstrap`` package).

``cqrs.bootstrap.bootstrap(...)`` and ``cqrs.bootstrap.saga.bootstrap(...)``
are the same function as ``cqrs.saga.bootstrap.bootstrap(...)``.
"""

from cqrs.bootstrap import saga
from cqrs.saga.bootstrap import bootstrap

__all__ = ["bootstrap", "saga"]
