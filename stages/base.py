"""base: pin the base model. `tiny` (copied from the committed pretrained weights), `tiny-sdxl`, `tiny-flux`
and `tiny-sd3` (built from configs) are made here in models/base/; any other model is
resolved (downloaded once, for a hub id) and its identity recorded in models/base/source.json,
so every stage that depends on models/base reruns when the weights behind the name change."""
from pathlib import Path

from stylemix import params
from stylemix.errors import run_stage
from stylemix.families import FLUX, SD3
from stylemix.models.base_model import build_tiny, copy_pretrained_tiny, identity
from stylemix.models.tiny_flow import build_tiny_flow
from stylemix.outputs import atomic_dir, write_json
from stylemix.paths import BASE_DIR


def main() -> None:
    p = params.load("base")
    # A single file's configs and a prediction type or noise schedule override change the model as much as its weights.
    source = identity(p.base.model, p.base.revision) | p.base.model_dump(include={"config", "components", "prediction_type", "zero_terminal_snr"},
                                                                          exclude_defaults=True)
    with atomic_dir(BASE_DIR) as tmp:
        if p.base.model == "tiny":
            copy_pretrained_tiny(tmp)
        elif p.base.model == "tiny-sdxl":
            build_tiny(tmp, sdxl=True)
        elif p.base.model in ("tiny-flux", "tiny-sd3"):
            build_tiny_flow(tmp, FLUX if p.base.model == "tiny-flux" else SD3)
        write_json(Path(tmp) / "source.json", source)
    print(f"base: {source['kind']} model {p.base.model} pinned in {BASE_DIR}/source.json")


if __name__ == "__main__":
    run_stage(main)
