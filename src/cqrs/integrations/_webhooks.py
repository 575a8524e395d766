"""What the FastAPI, Flask and Django webhook endpoints share.

Each framework adapter reads the raw body (refusing one over the limit with
413 before reading it all), then hands it with the headers to the
`cqrs.integrations.webhooks.TriggerDispatcher` this module builds for the app's config,
answers ``202`` with `cqrs.triggers.AcceptedEvent.as_json` and runs the
recorded sagas in the background (`cqrs.integrations._background.resume_quietly`). Every
refusal is a `BadRequest`, answered ``{"error": ...}`` with its status by all
three frameworks alike.
"""

from __future__ import annotations

import threading
import typing

from cqrs.config import SagaConfig
from cqrs.integrations.webhooks import SignatureVerifier, TriggerDispatcher
from cqrs.saga.saga import Saga


class WebhookEndpoint:
    """The options of one mounted webhook endpoint; builds its dispatcher for an app's config.

    ``sagas`` defaults to every saga of the config (those with ``@trigger``
    methods serve events); sagas given here must be among the config's too,
    so that recovery can finish them. ``max_body_bytes`` defaults to the
    config's.
    """

    def __init__(
        self,
        *,
        sagas: typing.Sequence[type[Saga[typing.Any]]] | None = None,
        verifier: SignatureVerifier | None = None,
        max_body_bytes: int | None = None,
    ) -> None:
        if verifier is not None and not isinstance(verifier, SignatureVerifier):
            raise TypeError(f"verifier must be a cqrs.integrations.webhooks.SignatureVerifier, got {verifier!r}")
        self.sagas = tuple(sagas) if sagas is not None else None
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes
        self._lock = threading.Lock()
        self._cached: tuple[SagaConfig, TriggerDispatcher] | None = None

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
                limit = self.max_body_bytes if self.max_body_bytes is not None else config.max_body_bytes
                self._cached = (config, TriggerDispatcher(sagas, verifier=self.verifier, max_body_bytes=limit))
            return self._cached[1]
