"""`EventHandler` under python-cqrs 5's path."""

from cqrs.events.event_handler import EventHandler

__all__ = ["EventHandler"]
