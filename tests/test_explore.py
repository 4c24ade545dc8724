"""The mixing lab's arithmetic (stylemix.mixing.exploring) on made-up scores, where the right answer is
known, and its params. The stage itself runs in the e2e pipeline tests (tests/test_pipeline.py)."""
import numpy as np
import pandas as pd
import pytest

from stylemix import params
from stylemix.errors import StyleMixError
from stylemix.mixing.exploring import BASE, drawn_as, pareto, point_table, to_draw

PAIR = params.ExplorePair(styles=["ink", "paint"], weights=[0, 0.5, 1])


def images(sim, clip=lambda wa, wb: 1 - 0.4 * (wa + wb), bleed=lambda wa, wb: (wa + wb) / 2) -> pd.DataFrame:
    """Two images a point (one triggered, one bleed) with scores from the weights."""
    rows = []
    for method, wa, wb in to_draw(PAIR):
        sa, sb = sim(wa, wb)
        rows += [{"method": method, "wa": wa, "wb": wb, "kind": "style", "clip_score": clip(wa, wb), "bleed": np.nan,
                  "sim_ink": sa, "sim_paint": sb},
                 {"method": method, "wa": wa, "wb": wb, "kind": "bleed", "clip_score": 0.0, "bleed": bleed(wa, wb),
                  "sim_ink": 0.0, "sim_paint": 0.0}]
    return pd.DataFrame(rows)


def test_pareto_front():
    x, y = np.array([0, 1, 2, 1, 2]), np.array([2, 1, 0, 0, 0])
    assert pareto(x, y).tolist() == [True, True, True, False, True]  # (1, 0) is beaten by (1, 1); equal points both stay


def test_the_plane_draws_each_model_once():
    pair = params.ExplorePair(styles=["ink", "paint"], weights=[0, 1], methods=["linear", "svd"])
    assert drawn_as(("svd", 0.0, 0.0)) == BASE and drawn_as(("svd", 0.0, 1.0)) == ("linear", 0.0, 1.0)
    assert to_draw(pair) == [BASE, ("linear", 1.0, 0.0), ("linear", 0.0, 1.0), ("linear", 1.0, 1.0), ("svd", 1.0, 1.0)]


def test_shares_floor_front_and_best():
    # Each style's similarity grows with its own weight and shrinks with the other's; the content
    # (CLIP score) falls with the total weight, below half the base's at a total above 1.25.
    table, metrics = point_table(images(lambda wa, wb: (wa - 0.2 * wb, wb - 0.2 * wa)), PAIR, content_kept=0.5)
    assert len(table) == 9 and metrics["base"] == {"clip_score": 1.0, "sim_ink": 0.0, "sim_paint": 0.0}
    at = table.set_index(["w_ink", "w_paint"])
    assert at.loc[(1, 0.5), "share_ink"] == pytest.approx(0.9) and at.loc[(1, 0.5), "share_paint"] == pytest.approx(0.3)
    assert at.loc[(0.5, 0.5), "bleed"] == 0.5 and at.loc[(0, 0), "bleed"] == 0
    assert at["kept"].tolist() == [w_a + w_b <= 1.25 for w_a, w_b in at.index]
    # kept, and beaten on both similarities by no kept point: (0, 0) is, by (0.5, 0.5)
    assert set(at.index[at["pareto"]]) == {(1, 0), (0.5, 0), (0.5, 0.5), (0, 0.5), (0, 1)}
    assert metrics["best"]["weights"] == {"ink": 0.5, "paint": 0.5} and metrics["best"]["share_ink"] == pytest.approx(0.4)
    assert at["best"].sum() == 1 and metrics["not_learned"] == []


def test_styles_that_cancel_each_other_have_no_best_mix():
    """Each style alone keeps itself (ink even looks half like paint: one style alone is still no
    mix), every mix of the two loses both: there is no best mix."""
    sim = lambda wa, wb: (wa * (wb == 0), wb * (wa == 0) + 0.5 * wa * (wb == 0))  # noqa: E731
    _, metrics = point_table(images(sim), PAIR, content_kept=0.5)
    assert metrics["not_learned"] == [] and metrics["best"] is None


def test_a_style_that_learned_nothing_has_no_share_and_no_best():
    table, metrics = point_table(images(lambda wa, wb: (wa, -0.1 * wb)), PAIR, content_kept=0.5)
    assert metrics["not_learned"] == ["paint"] and metrics["best"] is None
    assert metrics["alone"]["paint"]["gain_over_base"] == pytest.approx(-0.1)
    assert table["share_paint"].isna().all() and not table["best"].any()


@pytest.mark.parametrize("pair, message", [
    ({"styles": ["ink", "ink"]}, "two different styles"),
    ({"styles": ["ink"]}, "at least 2 items"),
    ({"styles": ["ink", "paint"], "methods": ["ties"]}, "method ties needs an explicit density"),
    ({"styles": ["ink", "paint"], "methods": ["linear", "svd"], "schedule": {"ink": {"end": 0.5}}}, "a schedule is drawn live"),
    ({"styles": ["ink", "paint"], "blocks": {"wash": "OUTALL"}}, "blocks names wash, not among its styles"),
    ({"styles": ["ink", "paint"], "weights": [0, 1, 1]}, "must not repeat"),
    ({"styles": ["ink", "gouache"]}, "merge.explore.pairs.x names unknown style(s) gouache"),
])
def test_bad_pairs_are_one_line(pair, message):
    raw = {"styles": {"ink": {"source": "a", "trigger": "inkstyle"}, "paint": {"source": "b", "trigger": "pntstyle"}},
           "merge": {"explore": {"pairs": {"x": pair}}}}
    with pytest.raises(StyleMixError) as err:
        params.validate(raw)
    assert message in str(err.value) and "\n" not in str(err.value)
