"""Handlers under python-cqrs 5's paths: `cqrs.handlers.saga` and `cqrs.handlers.event`."""

from cqrs.events.event_handler import EventHandler
from cqrs.saga.step import Resp, SagaStepHandler, SagaStepResult

__all__ = ["EventHandler", "Resp", "SagaStepHandler", "SagaStepResult"]
