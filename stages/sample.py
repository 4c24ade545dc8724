"""sample: build the offline demo dataset (stylemix.demo_data), one folder per style."""
from stylemix import params
from stylemix.demo_data import build_style
from stylemix.errors import run_stage
from stylemix.outputs import atomic_dir
from stylemix.paths import SAMPLE


def main() -> None:
    p = params.load("sample")
    with atomic_dir(SAMPLE) as tmp:
        for style in p.sample.styles:
            (tmp / style).mkdir()
            build_style(style, tmp / style, p.sample.images_per_style, p.sample.seed)
    print(f"sample: {len(p.sample.styles)} styles x {p.sample.images_per_style} images in {SAMPLE}/")


if __name__ == "__main__":
    run_stage(main)
