"""Correlation ids and problem answers for Django requests, in sync (WSGI) and async (ASGI) chains."""

from __future__ import annotations

import typing

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from cqrs import correlation
from cqrs.config import SagaConfig
from cqrs.integrations._endpoints import Answer, problem_answer, still_running_answer
from cqrs.integrations._requests import Problem
from cqrs.integrations._runtime import SagaStillRunning

__all__ = ["CorrelationIdMiddleware"]

DEFAULT_HEADER = SagaConfig.correlation_header


def _header_name() -> str:
    from cqrs.integrations.django import _runtime

    sagas = _runtime.current_or_none()
    if sagas is None or sagas.settings is None:
        return DEFAULT_HEADER
    return sagas.settings.config.correlation_header or DEFAULT_HEADER


def render(answer: Answer) -> typing.Any:
    """An `Answer` as a Django ``HttpResponse``."""
    from django.http import HttpResponse  # type: ignore[import-untyped]

    response = HttpResponse(answer.content(), status=answer.status, content_type=answer.media_type)
    for name, value in answer.headers.items():
        response[name] = value
    return response


def _as_problem(response: typing.Any) -> typing.Any:
    """Django's own HTML answers to an unknown URL (404) or method (405), as problem details."""
    if response.status_code not in (404, 405) or not response.get("Content-Type", "").startswith("text/html"):
        return response
    detail = "No such URL" if response.status_code == 404 else "Method not allowed here"
    headers = {"Allow": response["Allow"]} if response.has_header("Allow") else {}
    return render(problem_answer(Problem(response.status_code, detail, headers=headers)))


class CorrelationIdMiddleware:
    """Gives each request a correlation id, as the FastAPI and Flask integrations do.

    Add ``"cqrs.integrations.django.CorrelationIdMiddleware"`` near the top of
    ``MIDDLEWARE``. The id comes from the ``CQRS_SAGA["CORRELATION_HEADER"]``
    request header (default ``X-Correlation-ID``) when it is a sane value (see
    `cqrs.correlation.accept_correlation_id`), else a fresh one. For the
    request it is:

    - ``request.correlation_id``;
    - the current correlation id (`cqrs.correlation.get_correlation_id`), so
      sagas started in the request store it and their steps see it;
    - on log records, through `cqrs.correlation.CorrelationIdFilter`
      (``CQRS_SAGA["LOGGING"]`` adds it to the log handlers);
    - echoed on the response in the same header.

    A view that raises `Problem` (the saga helpers do, for bad input) is
    answered with its problem details, and one that raises `SagaStillRunning`
    with 202 and the status link, as in the other integrations; Django's own
    HTML 404 and 405 answers become problem details too.

    Works in both sync and async middleware chains.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: typing.Callable[[typing.Any], typing.Any]) -> None:
        self.get_response = get_response
        self.header_name = _header_name()
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def _accept(self, request: typing.Any) -> str:
        correlation_id = correlation.accept_correlation_id(request.headers.get(self.header_name))
        request.correlation_id = correlation_id
        return correlation_id

    def __call__(self, request: typing.Any) -> typing.Any:
        if self.async_mode:
            return self.__acall__(request)
        correlation_id = self._accept(request)
        token = correlation.set_correlation_id(correlation_id)
        try:
            response = _as_problem(self.get_response(request))
        finally:
            correlation.reset_correlation_id(token)
        response[self.header_name] = correlation_id
        return response

    def process_exception(self, request: typing.Any, exception: Exception) -> typing.Any:
        """Problems and runs that outlast their wait, answered as every integration answers them."""
        if isinstance(exception, Problem):
            response = render(problem_answer(exception))
        elif isinstance(exception, SagaStillRunning):
            response = render(still_running_answer(exception))
        else:
            return None
        response[self.header_name] = getattr(request, "correlation_id", None) or correlation.new_correlation_id()
        return response

    async def __acall__(self, request: typing.Any) -> typing.Any:
        correlation_id = self._accept(request)
        token = correlation.set_correlation_id(correlation_id)
        try:
            response = _as_problem(await self.get_response(request))
        finally:
            correlation.reset_correlation_id(token)
        response[self.header_name] = correlation_id
        return response
