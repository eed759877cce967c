"""Applying a model to clips, photos, folders and pipes: the jobs (jobs.py), the decode / network / encode
stream (pipeline.py), flicker reduction (temporal.py), the job's plan (plan.py), long clips in segments
(segments.py) and their work folder's journal (journal.py), and the numbers its options default to (limits.py)."""
