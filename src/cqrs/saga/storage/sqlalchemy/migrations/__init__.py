"""Alembic revisions of the saga tables, for your own Alembic environment (the ``cqrs_saga`` branch).

Add this directory to your ``version_locations`` (``alembic.ini``)::

    version_locations = %(here)s/alembic/versions cqrs.saga.storage.sqlalchemy:migrations

then ``alembic upgrade heads`` (or ``alembic upgrade cqrs_saga@head``). The
revisions run the same upgrade as ``cqrs-saga db upgrade``: they create the
tables, or bring any earlier schema version of them to the current one, and
record the version. ``alembic`` itself: ``pip install 'cqrs-saga[alembic]'``.
"""
