"""stylemix: the library the pipeline's stages share, and the `stylemix` command.

The core, at this level, is what every part uses: where files live (paths), the validated params
(params) and their one-line errors (errors), atomic writes (outputs), progress bars, the GPU a
process takes (gpu), image files (images) and the demo's emoji sets (emoji). Above it, by concern,
each package importing only the core and the packages before it in this list (tests/test_layout.py
checks it): data/, models/, adapters/, training/, drawing/, evaluation/, mixing/, demo/, commands/.
Nothing here imports a stage (stages/)."""
