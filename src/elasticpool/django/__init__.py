"""A Django database backend whose connection pool is elasticpool's (needs the ``django`` extra).

Django (5.1 and newer) pools PostgreSQL connections with
:class:`psycopg_pool.ConnectionPool` when ``OPTIONS["pool"]`` is set. This
backend is Django's own PostgreSQL backend with that one thing changed: its
pool is :class:`elasticpool.psycopg.ConnectionPool`, so it grows only for
requests it cannot serve, shrinks connection by connection when they sit
idle, and can share one ``total_max_connections`` with every other process
serving the site::

    DATABASES = {
        "default": {
            "ENGINE": "elasticpool.django",  # was "django.db.backends.postgresql"
            "NAME": "app",
            ...,
            "OPTIONS": {"pool": {"max_size": 10, "total_max_connections": 100,
                                 "name": "web", "membership": "postgres"}},
        }
    }

``OPTIONS["pool"]`` takes what Django's own pool takes (``True``, or a dict
of :class:`psycopg_pool.ConnectionPool` arguments) plus elasticpool's
settings; ``docs/integrations/django.md`` lists every key. An unknown or
ill-typed key is an :class:`~django.core.exceptions.ImproperlyConfigured`
naming it and what is allowed.

Django imports ``elasticpool.django.base`` (the :class:`DatabaseWrapper`);
this package itself imports nothing from Django.
"""

from __future__ import annotations
