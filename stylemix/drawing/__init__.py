"""Pictures: a batch rendered with its PNG metadata (render), one loaded pipeline with adapters
switched by weight (drawer), and X/Y grids over weights, seeds or prompts (xy_grid).

Imports go down only: the core (stylemix's top-level modules), data/, models/, adapters/,
training/."""
