"""The two training stages, written against the backend interface (ipl.backends.base)."""
