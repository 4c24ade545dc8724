"""Saving a mix found by hand as a combination in params.yaml (`merge.combos.<name>`), so the next
`dvc repro` merges, draws and scores it like any other. The file keeps its comments and order
(ruamel's round trip), the result must pass the same schema the stages use, and it is written
whole or not at all."""
import io
import json
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from stylemix import params
from stylemix.adapters.loading import read_info
from stylemix.errors import StyleMixError
from stylemix.outputs import atomic_write
from stylemix.paths import MERGED, PARAMS_FILE


def style_weights(weights: dict[str, float], styles: list[str]) -> dict[str, float]:
    """The mix in styles only: a linear combination at weight w adds w times its own weights
    (the merge is the exact sum of deltas, so this is the same model)."""
    out: dict[str, float] = {}
    for name, weight in weights.items():
        if not weight:
            continue
        if name in styles:
            out[name] = round(out.get(name, 0.0) + weight, 6)
            continue
        info = read_info(MERGED / name) if (MERGED / name).is_dir() else {}
        if info.get("method") != "linear" or "components" not in info:
            raise StyleMixError(f"{name} is not a linear combination of styles, so it cannot be part of a saved mix: "
                                f"set its weight to 0 and mix its styles instead")
        for style, w in info["components"].items():
            out[style] = round(out.get(style, 0.0) + weight * w, 6)
    return out


def save_mix(name: str, weights: dict[str, float], path: Path = PARAMS_FILE, extra: dict | None = None) -> dict[str, float]:
    """Add `merge.combos.<name>: {weights: ..., **extra}` to params.yaml (extra: the rest of a
    combination, as params.yaml writes it: method, density, blocks, schedule); returns the style weights."""
    yaml = YAML()  # round trip: comments, order and quoting survive; our file's layout otherwise
    yaml.preserve_quotes, yaml.width = True, 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = yaml.load(path.read_text())
    styles = list(doc.get("styles") or {})
    if not params.NAME.match(name or ""):
        raise StyleMixError(f"combination name {name!r}: use lowercase letters, digits and _ (e.g. soft_pixels)")
    combos = doc.setdefault("merge", CommentedMap()).setdefault("combos", CommentedMap())
    if name in combos or name in styles or name == "base":
        raise StyleMixError(f"merge.combos.{name}: the name is taken (a combination, style or the base); choose another")
    mix = style_weights(weights, styles)
    row = CommentedMap(mix)
    row.fa.set_flow_style()  # `weights: {a: 0.6, b: 0.4}`, as the file writes them
    combos[name] = CommentedMap(weights=row, **(extra or {}))
    params.validate(json.loads(json.dumps(doc)), path)  # the stages' schema (as plain dicts): unknown styles, fewer than two, ...
    out = io.StringIO()
    yaml.dump(doc, out)
    atomic_write(path, out.getvalue())
    return mix

