"""Judging pictures: CLIP score and style similarity (scoring), the demo's ground truth (style and
subject accuracy, nearness to the real pictures), plots, and the scores table the report and the
web UI show.

Imports go down only: the core (stylemix's top-level modules), data/, models/, adapters/, training/,
drawing/."""
