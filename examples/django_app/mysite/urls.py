"""One view: it reads from the database on the request's pooled connection."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.urls import path


def index(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    return JsonResponse({"backend": pid, "users": User.objects.count()})


urlpatterns = [path("", index)]
