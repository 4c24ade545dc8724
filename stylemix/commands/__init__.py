"""The `stylemix` subcommands, one module each with `add_arguments(parser)` and `run(args)` (the
names in stylemix.cli.COMMANDS), and what only they use: the web UI's tables (ui_tables), the Hub
upload (publishing) and DVC's queue workers (queue).

Imports go down only: the core (stylemix's top-level modules), data/, models/, adapters/, training/,
drawing/, evaluation/, mixing/, demo/."""
