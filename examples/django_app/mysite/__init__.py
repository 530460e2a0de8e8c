"""A minimal Django site on ``"ENGINE": "elasticpool.django"``."""
