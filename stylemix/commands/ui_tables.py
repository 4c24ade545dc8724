"""The tables the web UI shows beside its pictures: the report's metrics per model, the experiments
`dvc exp show` knows (only the params that differ between them), and the new tokens on offer."""
import json
from pathlib import Path

import pandas as pd
import yaml

from stylemix.adapters.loading import read_info
from stylemix.evaluation.score_table import scores_table
from stylemix.paths import PARAMS_FILE, REPORTS

METRICS = REPORTS / "metrics.json"


def metrics_table(path: Path = METRICS) -> pd.DataFrame:
    """The report's scores table: one row per model."""
    if not path.is_file():
        return pd.DataFrame({"note": [f"no {path} yet: `dvc repro` writes it"]})
    return scores_table(json.loads(path.read_text()))


def flat_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        keys |= flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + str(key)}
    return keys


def experiments_table(repo: str = ".") -> pd.DataFrame:
    """Experiments and commits in `dvc exp show`'s order (each commit, then its experiments, newest
    first): name, when, state, the params that differ between them, the headline metrics."""
    import dvc.api

    try:
        table = pd.DataFrame(dvc.api.exp_show(repo))
        known = flat_keys(yaml.safe_load(PARAMS_FILE.read_text()) or {})
    except Exception as err:  # noqa: BLE001 - not a DVC repo, a lock held by a running stage, ...
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        return pd.DataFrame({"note": [f"`dvc exp show` failed ({why}): run `stylemix ui` in the project's git + DVC repo"]})
    fixed = [c for c in ("Experiment", "rev", "Created", "State") if c in table.columns]
    params = [c for c in table.columns if c.split(":")[-1] in known and table[c].astype(str).nunique() > 1]
    metrics = [c for c in table.columns if c.endswith(("clip_score.mean", "style_gain_over_base", "final_loss"))]
    return table[fixed + params + metrics].astype(str)


def tokens_of(folders: dict[str, Path]) -> list[str]:
    """`<token> (style)` for every new concept token a trained style or combination carries."""
    return [f"{token} ({name})" for name, folder in folders.items() for token in (read_info(folder).get("tokens") or {})]
