"""stylemix: the library the pipeline's stages share, and the `stylemix` command.

The core, at this level, is what every part uses: where files live (paths), the validated params
(params) and their one-line errors (errors), atomic writes (outputs), progress bars, the GPU a
process takes (gpu), image files (images) and the demo's emoji sets (emoji). Above it, by concern,
each package importing only the core and the packages before it in this list (tests/test_layout.py
checks it): data/, models/, adapters/, training/, drawing/, evaluation/, mixing/, demo/, commands/.
Nothing here imports a stage (stages/)."""
import logging

# With torchao 0.18 installed (train.quantize_base), importing diffusers 0.42.1 looks for torchao
# classes that have moved (a warning naming none of ours) and makes torch warn about torchao's enums:
# two lines in every stage's log that concern nothing we load. Set before either library is imported.
logging.getLogger("diffusers.quantizers.torchao.torchao_quantizer").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
