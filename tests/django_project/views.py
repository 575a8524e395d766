"""Views exercising the helpers: sync and async runs and starts, the correlation id."""

from __future__ import annotations

import logging
import typing

from django.http import HttpRequest, JsonResponse

from cqrs.correlation import get_correlation_id
from cqrs.integrations import django as sagas
from django_project.sagas import EchoContext, EchoSaga

logger = logging.getLogger("django_project.views")


def _outcome(outcome: typing.Any) -> JsonResponse:
    return JsonResponse(
        {
            "saga_id": str(outcome.saga_id),
            "status": outcome.status.value,
            "responses": [result.response.model_dump() for result in outcome.results],
            "error": str(outcome.error) if outcome.error else None,
        }
    )


def run_echo(request: HttpRequest) -> JsonResponse:
    context = sagas.read_saga_context(request, EchoContext)  # a Problem is answered by the middleware
    return _outcome(sagas.run_saga(EchoSaga, context))


async def arun_echo(request: HttpRequest) -> JsonResponse:
    try:
        context = sagas.read_saga_context(request, EchoContext)
    except sagas.Problem as problem:
        return sagas.problem_response(problem)  # answered by hand, as a view may
    return _outcome(await sagas.arun_saga(context))


def start_echo(request: HttpRequest) -> JsonResponse:
    saga_id = sagas.start_saga(EchoContext(text=request.GET.get("text", "hi")))
    return JsonResponse({"saga_id": str(saga_id)}, status=202)


async def astart_echo(request: HttpRequest) -> JsonResponse:
    saga_id = await sagas.astart_saga(EchoSaga, EchoContext(text=request.GET.get("text", "hi")))
    return JsonResponse({"saga_id": str(saga_id)}, status=202)


async def astatus(request: HttpRequest, saga_id: str) -> JsonResponse:
    return JsonResponse(await sagas.asaga_status(saga_id))


async def adiagram(request: HttpRequest, saga_id: str) -> JsonResponse:
    return JsonResponse({"diagram": await sagas.asaga_diagram(saga_id)})


def whoami(request: HttpRequest) -> JsonResponse:
    logger.info("whoami (sync)")
    return JsonResponse({"current": get_correlation_id(), "request": getattr(request, "correlation_id", None)})


async def awhoami(request: HttpRequest) -> JsonResponse:
    logger.info("whoami (async)")
    return JsonResponse({"current": get_correlation_id(), "request": getattr(request, "correlation_id", None)})
