"""stylemix: the library the pipeline's stages share (params, base models, LoRA files, tokens,
images, rendering, scores, paths, outputs) and the `stylemix` command. Imports only go down:
nothing here imports a stage (stages/)."""
