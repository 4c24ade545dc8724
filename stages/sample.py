"""sample: build the offline demo dataset from the committed emoji sets (stylemix.demo.sample): one folder
per style, each its own subjects, and the ground truth, every held-out subject in every look."""
from stylemix import params
from stylemix.demo.sample import build_style, build_truth, check_heldout
from stylemix.errors import run_stage
from stylemix.outputs import atomic_dir
from stylemix.paths import SAMPLE, TRUTH


def main() -> None:
    p = params.load("sample").sample
    check_heldout(p.heldout)
    with atomic_dir(SAMPLE) as tmp:
        for slot, style in enumerate(p.styles):
            (tmp / style).mkdir()
            build_style(style, tmp / style, p.images_per_style, p.seed, p.size, p.heldout, slot)
    with atomic_dir(TRUTH) as tmp:
        build_truth(tmp, p.heldout, p.size)
    print(f"sample: {len(p.styles)} styles x {p.images_per_style} pictures in {SAMPLE}/, "
          f"{len(p.heldout)} held-out subjects in every look in {TRUTH}/")


if __name__ == "__main__":
    run_stage(main)
