"""The offline demo's making: the sample stage's styles and ground truth from the emoji sets
(sample), the script that fetched the sets from npm (fetch_emoji), and the seeded scripts that
trained the committed tiny base (pretrain) and the demo's scorer (pretrain_clip).

Imports go down only: the core (stylemix's top-level modules), data/, models/, adapters/, training/,
drawing/, evaluation/, mixing/."""
