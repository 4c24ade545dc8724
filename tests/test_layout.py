"""The package layout: imports only go down (stages over the library, the library's packages over
each other), the `stylemix` command answers for every subcommand, and the model registry is complete."""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from stylemix.cli import COMMANDS
from tests.conftest import ROOT
from tests.readme import commands

STAGES, LIBRARY = ROOT / "stages", ROOT / "stylemix"


def imported(path: Path) -> set[str]:
    """Every module a file imports, as written (`from stages import x` counts as stages.x)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_the_library_never_imports_a_stage_and_no_stage_imports_another():
    for path in LIBRARY.rglob("*.py"):
        up = sorted(n for n in imported(path) if n == "stages" or n.startswith("stages."))
        assert not up, f"{path.relative_to(ROOT)} imports {up}: the library must not import a stage"
    for path in STAGES.glob("*.py"):
        sideways = sorted(n for n in imported(path) if n.startswith("stages."))
        assert not sideways, f"{path.relative_to(ROOT)} imports {sideways}: move what stages share into stylemix/"


LAYERS = ["data", "models", "adapters", "training", "drawing", "evaluation", "mixing", "demo", "commands"]


def layer(module: str) -> int | None:
    """A stylemix module's place: -1 for the core (the top-level modules), its package's index in
    LAYERS, None if it is not the library's."""
    parts = module.split(".")
    if parts[0] != "stylemix" or len(parts) == 1:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else -1


def upward_imports(path: Path, module: str) -> list[str]:
    """The stylemix modules that `module` (the file at `path`) imports from above its level: for the core,
    any package; for a package, a later one."""
    own = layer(module)
    return sorted(n for n in imported(path) if (to := layer(n)) is not None and (to > own if own >= 0 else to >= 0))


def test_imports_between_the_librarys_packages_only_go_down():
    """The core imports only the core; each package of LAYERS only the core and the packages before it;
    each package's docstring says which."""
    assert {p.name for p in LIBRARY.iterdir() if (p / "__init__.py").is_file()} == set(LAYERS)
    for path in LIBRARY.rglob("*.py"):
        if path.parent == LIBRARY and path.stem in ("cli", "__main__"):
            continue  # the command's entry point: it loads commands/ by name
        up = upward_imports(path, ".".join(path.relative_to(ROOT).with_suffix("").parts))
        assert not up, f"{path.relative_to(ROOT)} imports {up}: imports go down only ({' < '.join(['core', *LAYERS])})"
    for i, package in enumerate(LAYERS):
        doc = (LIBRARY / package / "__init__.py").read_text()
        below = re.search(r"Imports go down only: the core \(stylemix's top-level modules\)(.*?)\.\"\"\"", doc, re.S)
        assert below, f"stylemix/{package}/__init__.py does not say what it may import"
        assert re.findall(r"(\w+)/", below[1]) == LAYERS[:i], (package, below[1])


def test_stages_holds_exactly_what_dvc_yaml_runs():
    run = set(re.findall(r"python -m stages\.(\w+)", (ROOT / "dvc.yaml").read_text()))
    assert {p.stem for p in STAGES.glob("*.py")} - {"__init__"} == run


def test_the_import_check_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from stages.train import main\nimport stages.merge\nfrom stages import report\n")
    assert {"stages.train", "stages.merge", "stages.report"} <= imported(bad)
    bad.write_text("from stylemix import gpu, params\nfrom stylemix.data import buckets\nfrom stylemix.mixing.merging import merge_combo\n")
    assert upward_imports(bad, "stylemix.adapters.x") == ["stylemix.mixing.merging", "stylemix.mixing.merging.merge_combo"]
    assert upward_imports(bad, "stylemix.params") == ["stylemix.data", "stylemix.data.buckets", "stylemix.mixing.merging",
                                                      "stylemix.mixing.merging.merge_combo"]
    assert upward_imports(bad, "stylemix.commands.x") == []


def test_stylemix_help_lists_every_command_and_each_has_its_own_help():
    bin_dir = Path(sys.executable).parent
    out = []
    for line in commands("commands"):
        result = subprocess.run(["bash", "-c", line], cwd=ROOT, capture_output=True, text=True, timeout=120,
                                env=os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}"})
        assert result.returncode == 0, result.stderr
        out.append(result.stdout)
    assert all(name in out[0] for name in COMMANDS)
    assert out[1].startswith("usage: stylemix draw")
    for name in COMMANDS:
        result = subprocess.run([bin_dir / "stylemix", name, "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and result.stdout.startswith(f"usage: stylemix {name}"), result.stderr
    unknown = subprocess.run([bin_dir / "stylemix", "paint"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "invalid choice: 'paint'" in unknown.stderr


def test_no_stage_loads_gradio():
    """The web UI's gradio costs seconds to import: only `stylemix ui` may load it."""
    code = ("import importlib, pathlib, sys\n"
            "for p in sorted(pathlib.Path('stages').glob('*.py')): importlib.import_module(f'stages.{p.stem}')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('gradio', 'playwright')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_style_and_combination_is_in_the_model_registry():
    """dvc.yaml's `artifacts:` (read by DVC itself, interpolation resolved) names every style LoRA and
    combination of params.yaml, at the folder its stage writes, labelled with its base, type and rank."""
    import yaml
    from dvc.repo import Repo

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    declared = Repo(str(ROOT)).artifacts.read()["dvc.yaml"]
    expected = {s: f"models/lora/{s}" for s in raw["styles"]} | {c: f"models/merged/{c}" for c in raw["merge"]["combos"]}
    assert {name: a.path for name, a in declared.items()} == expected
    for name, artifact in declared.items():
        assert artifact.type == "model" and artifact.desc and f"base-{raw['base']['model']}" in artifact.labels, (name, artifact)
        styles = raw["merge"]["combos"][name]["weights"] if name in raw["merge"]["combos"] else [name]
        assert {f"style-{s}" for s in styles} <= set(artifact.labels), (name, artifact.labels)
        if name in raw["styles"]:
            assert {f"type-{raw['lora']['type']}", f"rank-{raw['lora']['rank']}"} <= set(artifact.labels), (name, artifact.labels)
