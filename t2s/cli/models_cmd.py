"""`t2s models`: filled in by the models work (issue 2)."""
