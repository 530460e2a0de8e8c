"""One model, enough for migrate and ORM queries."""

from __future__ import annotations

from django.db import models


class Note(models.Model):
    """A line of text, written by a thread or a request of some run."""

    run = models.CharField(max_length=40, db_index=True)
    text = models.CharField(max_length=200)
