"""A minimal Django project on ``"ENGINE": "elasticpool.django"``, run by test_django.py.

Django's settings are process-wide, so nothing here is imported by the test
process itself: :mod:`.run` configures Django in a child process.
"""
