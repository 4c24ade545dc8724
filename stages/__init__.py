"""stylemix pipeline stages: one module per DVC stage, plus a few shared helpers."""
