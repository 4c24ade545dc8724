"""What a style becomes and how it is read back: the LoRA files in both layouts (lora_files), loading
them into a pipeline (loading), LyCORIS's LoHa / LoKr and DoRA's formulas, the load check that
each file loads back as trained, new concept tokens, per-block weights and per-step schedules.

Imports go down only: the core (stylemix's top-level modules), data/, models/."""
