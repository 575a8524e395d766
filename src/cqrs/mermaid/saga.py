"""`SagaMermaid` under python-cqrs 5's path."""

from cqrs.saga.mermaid import SagaMermaid

__all__ = ["SagaMermaid"]
