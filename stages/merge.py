"""merge@C: combine style LoRAs, with weights, into one standalone LoRA (stylemix.mixing.merging), each file
loaded back into the base model and checked layer by layer (stylemix.adapters.load_check)."""
import sys

from stylemix import params
from stylemix.errors import StyleMixError, run_stage
from stylemix.mixing.merging import merge_combo
from stylemix.models.base_model import load_pipeline
from stylemix.paths import MERGED


def main() -> None:
    if len(sys.argv) != 2:
        raise StyleMixError("usage: python -m stages.merge COMBO")
    p = params.load("merge", "styles", "base")
    name = sys.argv[1]
    if name not in p.merge.combos:
        raise StyleMixError(f"unknown combination {name!r}; merge.combos are: {', '.join(p.merge.combos) or 'none'}")
    info = merge_combo(name, p.merge.combos[name], check_with=load_pipeline(p.base))  # the load check
    print(f"merge {name}: {info['method']} of {info['components']} at rank {info['rank']} -> {MERGED / name}/")


if __name__ == "__main__":
    run_stage(main)
