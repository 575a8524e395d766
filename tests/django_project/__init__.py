"""A Django project for the Django integration tests (tests/test_django*.py).

It installs the saga app, the example's ``orders`` app (examples/django_app)
and a few test sagas and views; `testing` configures Django with it, lazily,
only when a Django test runs, so the rest of the suite never sees Django set up.
"""
