"""Maps under python-cqrs 5's paths: `cqrs.mapping.requests` and `cqrs.mapping.events`."""

from cqrs.events.map import EventMap
from cqrs.saga.map import SagaMap

__all__ = ["EventMap", "SagaMap"]
