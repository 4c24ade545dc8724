"""The demo's training exactly as `make repro` runs it (params.yaml unchanged), once, in a temporary
git repo, up to the validate stage (the pictures, scores and report after it are the e2e tests'
part): the evidence that each style's LoRA learned its style. An lr of zero (tried once), a LoRA
that never reaches the UNet or a broken loss leaves every LoRA at the base and fails these tests."""
import json

import pytest

from tests.e2e import make_repo, ran, sh

STYLES = ("watercolor", "pixelart", "cartoon", "sketch")
DEMO_S = 2400  # the demo up to validate: ~8 min under `make test`, longer beside a second test run
pytestmark = pytest.mark.timeout(DEMO_S + 300)  # the first test's setup runs the demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("demo") / "repo")
    assert {f"train@{s}" for s in STYLES} | {"validate"} <= ran(sh(repo, "dvc", "repro", "validate", timeout=DEMO_S).stdout)
    return repo


def test_every_lora_beats_the_base_on_its_own_heldout_images(demo):
    for style in STYLES:
        metrics = json.loads((demo / f"reports/train/{style}/metrics.json").read_text())
        assert metrics["val_loss"] < metrics["val_loss_base"], (style, metrics["val_loss"], metrics["val_loss_base"])


def test_each_style_is_best_served_by_its_own_lora(demo):
    """The cross-style matrix is diagonal-dominant: in each style's column its own LoRA is lowest."""
    loss = json.loads((demo / "reports/validation.json").read_text())["loss"]
    for style in STYLES:
        column = {model: row[style] for model, row in loss.items() if model != "base"}
        assert min(column, key=column.get) == style, (style, column)
