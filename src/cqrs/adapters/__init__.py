"""Adapters to third-party libraries: circuit breakers and DI containers."""
