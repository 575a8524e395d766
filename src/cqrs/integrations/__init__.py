"""Web framework integrations: `cqrs.integrations.fastapi`, `.flask`, `.django`.

Each is a thin adapter over the framework-agnostic pieces in this package:
`cqrs.config.SagaConfig`, correlation ids, the background runner, the sync
bridge, request parsing and status views.
"""
