"""dependency-injector containers as the engine's container: ``pip install 'cqrs-saga[dependency-injector]'``.

    class Services(containers.DeclarativeContainer):
        payments = providers.Factory(PaymentService)
        charge = providers.Factory(ChargeStep, payments=payments)

    cqrs_container = DependencyInjectorCQRSContainer()
    cqrs_container.attach_external_container(Services())

A type is resolved by the provider that makes it: the provider's class (or a
callable's return annotation), found in the declarative container and in
nested containers; failing an exact match, the first provider of a subclass.
"""

from __future__ import annotations

import inspect
import typing

try:
    from dependency_injector import containers, providers
except ImportError as _error:  # pragma: no cover - exercised by a test that hides dependency-injector
    raise ImportError(
        "cqrs.container.dependency_injector needs dependency-injector: "
        "pip install 'cqrs-saga[dependency-injector]'"
    ) from _error

__all__ = ["DependencyInjectorCQRSContainer"]

T = typing.TypeVar("T")


class DependencyInjectorCQRSContainer:
    """Resolves through the providers of a dependency-injector container."""

    def __init__(self, container: containers.Container | None = None) -> None:
        self._container: containers.Container | None = None
        self._providers: dict[type[typing.Any], providers.Provider[typing.Any]] = {}
        if container is not None:
            self.attach_external_container(container)

    @property
    def external_container(self) -> containers.Container:
        if self._container is None:
            raise ValueError("External container not attached: call attach_external_container(container)")
        return self._container

    def attach_external_container(self, container: containers.Container) -> None:
        self._container = container
        self._providers = {}
        _collect(container, self._providers)

    def _provider(self, type_: type[T]) -> providers.Provider[typing.Any]:
        provider = self._providers.get(type_)
        if provider is None:
            for made, candidate in self._providers.items():
                if isinstance(made, type) and issubclass(made, type_):
                    provider = self._providers[type_] = candidate
                    break
        if provider is None:
            raise ValueError(
                f"No provider of {type_.__qualname__} in {type(self.external_container).__qualname__}; "
                "add one (e.g. providers.Factory(...)) to the container"
            )
        return provider

    async def resolve(self, type_: type[T]) -> T:
        instance = self._provider(type_)()
        if inspect.isawaitable(instance):
            instance = await instance
        return typing.cast(T, instance)


def _collect(container: typing.Any, found: dict[type[typing.Any], providers.Provider[typing.Any]]) -> None:
    for provider in container.providers.values():
        if isinstance(provider, providers.Container):
            _collect(provider, found)
            continue
        made = _made_by(provider)
        if made is not None:
            found.setdefault(made, provider)


def _made_by(provider: typing.Any) -> type[typing.Any] | None:
    provides = getattr(provider, "provides", None)
    if isinstance(provides, type):
        return provides
    if callable(provides):
        annotation = inspect.signature(provides).return_annotation
        if isinstance(annotation, type) and annotation is not inspect.Signature.empty:
            return annotation
    return None
