"""Saga step handlers under python-cqrs 5's path."""

from cqrs.saga.step import Resp, SagaStepHandler, SagaStepResult

__all__ = ["Resp", "SagaStepHandler", "SagaStepResult"]
