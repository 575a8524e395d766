"""The saga console: a small web app to see and steer stored sagas (ASGI, with a WSGI adapter).

Lists sagas by status, name and age, with search by saga id or correlation
id; one saga's page shows its status, lease, errors, step timeline, context
and its run drawn as a Mermaid diagram (mermaid.js ships inside the package:
no CDN). The operator actions of `cqrs.saga.operations` are offered behind an
authorization hook, read-only by default.

FastAPI / Starlette (ASGI)::

    app.mount("/sagas", SagaConsole(storage, sagas=[OrderSaga], authorize=may_act))

Flask (WSGI, werkzeug's dispatcher)::

    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/sagas": SagaConsole(url, sagas=...).wsgi()})

Django (``wsgi.py``; in ``asgi.py`` route the prefix to the console the same way)::

    application = dispatch(get_wsgi_application(), {"/sagas": SagaConsole(url, sagas=...).wsgi()})

Needs nothing beyond the standard library (``pip install 'cqrs-saga[console]'``
names the extra for when it does).
"""

from cqrs.console._app import Authorize, SagaConsole, read_only
from cqrs.console._http import ConsoleRequest
from cqrs.console._wsgi import WSGIConsole, dispatch

__all__ = ["Authorize", "ConsoleRequest", "SagaConsole", "WSGIConsole", "dispatch", "read_only"]
