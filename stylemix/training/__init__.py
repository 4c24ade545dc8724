"""train@S and what it needs: the training loop (loop), which images each step draws (batches),
resumable checkpoints, the held-out loss (validation) and the model card.

Imports go down only: the core (stylemix's top-level modules), data/, models/, adapters/."""
