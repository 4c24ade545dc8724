"""stylemix pipeline stages: one module per DVC stage, plus a few shared helpers."""
import stylemix  # noqa: F401 (first: its import settings precede diffusers' and torch's)
