"""The example's URLs plus the test views under ``/t/``."""

from __future__ import annotations

from django.urls import include, path

from django_project import views

urlpatterns = [
    path("", include("config.urls")),
    path("t/run/", views.run_echo),
    path("t/arun/", views.arun_echo),
    path("t/start/", views.start_echo),
    path("t/astart/", views.astart_echo),
    path("t/astatus/<str:saga_id>/", views.astatus),
    path("t/adiagram/<str:saga_id>/", views.adiagram),
    path("t/whoami/", views.whoami),
    path("t/awhoami/", views.awhoami),
]
