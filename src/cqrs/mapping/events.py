"""`EventMap` under python-cqrs 5's path."""

from cqrs.events.map import EventMap

__all__ = ["EventMap"]
