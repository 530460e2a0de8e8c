"""The project's one app: a ``Note`` model, its migration and two views."""
