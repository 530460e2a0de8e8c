"""Views for the request-cycle test: each borrows a connection for its queries."""

from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, JsonResponse

from .models import Note


def write(request: HttpRequest, run: str) -> JsonResponse:
    """Write a note and answer with the backend that served the request."""
    Note.objects.create(run=run, text=request.path)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    return JsonResponse({"pid": pid, "notes": Note.objects.filter(run=run).count()})


def fail(request: HttpRequest, run: str) -> JsonResponse:
    """Query, then fail: the request ends in a 500, and its connection must still go back."""
    Note.objects.filter(run=run).exists()
    raise RuntimeError("this view fails on purpose")
