"""Settings of the example site: the database comes from ``DATABASE_URL``.

The one line that moves a Django site onto elasticpool is ``ENGINE``; the
``OPTIONS["pool"]`` dict is what Django's own pool takes plus the fleet
settings: every process serving the site (gunicorn workers, pods) shares
``total_max_connections``.
"""

from __future__ import annotations

import os

from psycopg.conninfo import conninfo_to_dict

_db = conninfo_to_dict(os.environ.get("DATABASE_URL", "postgresql:///mysite"))

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "only-for-the-example")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "mysite.urls"
WSGI_APPLICATION = "mysite.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASES = {
    "default": {
        "ENGINE": "elasticpool.django",  # was "django.db.backends.postgresql"
        "NAME": _db.get("dbname", ""),
        "USER": _db.get("user", ""),
        "PASSWORD": _db.get("password", ""),
        "HOST": _db.get("host", ""),
        "PORT": _db.get("port", ""),
        "CONN_MAX_AGE": 0,  # pooled: each request borrows, and gives back at its end
        "OPTIONS": {
            "pool": {
                "min_size": 1,  # a warm floor per worker, asked of the fleet like the rest
                "timeout": 10,  # a request waits at most 10 s for one
                # Every process of this name on the database shares the total (no
                # max_size: the total sets the limit, and each process's share of it
                # follows its demand).
                "name": "mysite",
                "total_max_connections": int(os.environ.get("TOTAL_MAX_CONNECTIONS", "20")),
                "membership": "postgres",
            },
        },
    }
}
