"""The project's URLs."""

from __future__ import annotations

from django.urls import path

from .notes import views

urlpatterns = [
    path("write/<str:run>/", views.write),
    path("fail/<str:run>/", views.fail),
]
