"""`DIContainer` under its earlier path; it lives in `cqrs.container.di`."""

from cqrs.container.di import DIContainer

__all__ = ["DIContainer"]
