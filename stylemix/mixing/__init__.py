"""Styles combined: exact and SVD / TIES / DARE merges (merging), combinations saved from the UI
(mixes), and the mixing lab's plane of weights, drawn and scored (exploring).

Imports go down only: the core (stylemix's top-level modules), data/, models/, adapters/, training/,
drawing/, evaluation/."""
