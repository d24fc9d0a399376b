"""User modules the hostile-input corpus points `family: torch` models at."""
