"""Applying a model to clips, photos, folders and pipes: the jobs (jobs.py), the decode / network / encode
stream (pipeline.py) and flicker reduction (temporal.py)."""
