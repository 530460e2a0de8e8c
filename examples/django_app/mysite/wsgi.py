"""The WSGI application (``gunicorn mysite.wsgi``): a worker makes its pool at its first query."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
application = get_wsgi_application()
