"""From a folder of images to what training reads: aspect-ratio buckets, captions meeting trigger
words (prompts), WD14 tags, the text conditioning of SD 1.5 / SDXL, and encode@S's latent cache.

Imports go down only: the core (stylemix's top-level modules)."""
