"""The base models: SD 1.5 / SDXL from a hub id, a folder or an original-layout single file (with the
real models' configs shipped in stylemix/configs/), and the demo's tiny models.

Imports go down only: the core (stylemix's top-level modules), data/."""
