"""The options of a mounted webhook endpoint, shared by the FastAPI, Flask and Django adapters.

Each adapter reads the raw body (refusing one over the limit with 413
before reading it all) and hands it with the headers to
`cqrs.integrations._endpoints.deliver_answer`, which runs the dispatcher
this module builds for the app's config.
"""

from __future__ import annotations

import threading
import typing

import typing_extensions

from cqrs.config import SagaConfig
from cqrs.integrations.webhooks import SignatureVerifier, TriggerDispatcher
from cqrs.saga.saga import Saga


class WebhookOptions(typing_extensions.TypedDict, total=False):
    """The options of every framework's ``webhook_routes(...)`` (see `WebhookEndpoint`)."""

    verifier: SignatureVerifier | None
    sagas: typing.Sequence[type[Saga[typing.Any]]] | None
    max_body_bytes: int | None
    insecure_unsigned_sources: typing.Iterable[str]


class WebhookEndpoint:
    """The options of one mounted webhook endpoint; builds its dispatcher for an app's config.

    ``sagas`` defaults to every saga of the config (those with ``@trigger``
    methods serve events); sagas given here must be among the config's too,
    so that recovery can finish them. ``max_body_bytes`` defaults to the
    config's. A ``verifier`` is required unless ``insecure_unsigned_sources``
    names the sources accepted without a signature (checked here, when the
    routes are made).
    """

    def __init__(
        self,
        *,
        sagas: typing.Sequence[type[Saga[typing.Any]]] | None = None,
        verifier: SignatureVerifier | None = None,
        max_body_bytes: int | None = None,
        insecure_unsigned_sources: typing.Iterable[str] = (),
    ) -> None:
        if isinstance(insecure_unsigned_sources, str):
            raise TypeError("insecure_unsigned_sources is a list of source names, not one string")
        self.sagas = tuple(sagas) if sagas is not None else None
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes
        self.insecure_unsigned_sources = tuple(insecure_unsigned_sources)
        # Refuse a missing verifier and bad options now, at startup, not at the first delivery.
        TriggerDispatcher(
            (), verifier=verifier, max_body_bytes=max_body_bytes or 1,
            insecure_unsigned_sources=self.insecure_unsigned_sources,
        )
        self._lock = threading.Lock()
        self._cached: tuple[SagaConfig, TriggerDispatcher] | None = None

    def limit(self, config: SagaConfig) -> int:
        """The body size limit for ``config``'s app."""
        return self.max_body_bytes if self.max_body_bytes is not None else config.max_body_bytes

    def dispatcher(self, config: SagaConfig) -> TriggerDispatcher:
        """The dispatcher for ``config`` (built on first use, again if the config changes)."""
        cached = self._cached
        if cached is not None and cached[0] is config:
            return cached[1]
        with self._lock:
            if self._cached is None or self._cached[0] is not config:
                saga_map = config.saga_map
                sagas = self.sagas if self.sagas is not None else tuple(saga_map.sagas())
                for saga_type in sagas:
                    if saga_map.by_name(saga_type.name) is not saga_type:
                        raise RuntimeError(
                            f"Webhook saga {saga_type.__qualname__} is not among the app's sagas; "
                            "add it to the config's sagas so it can be run and recovered"
                        )
                dispatcher = TriggerDispatcher(
                    sagas,
                    verifier=self.verifier,
                    max_body_bytes=self.limit(config),
                    insecure_unsigned_sources=self.insecure_unsigned_sources,
                )
                self._cached = (config, dispatcher)
            return self._cached[1]
