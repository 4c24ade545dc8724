"""Fetch the demo's six emoji sets from the npm registry and commit the subset the demo uses.

    python -m stylemix.demo.fetch_emoji            # needs npm and the registry; writes stylemix/emoji_sets/
    python -m stylemix.demo.fetch_emoji --from DIR # the same from tarballs `npm pack` already put in DIR

A developer runs it once; `make repro` and `make test` read the committed files and never need npm.
Each package is fetched by name and exact version with `npm pack`, which checks the tarball against
the registry's integrity; this script then checks the tarball's SHA-512 against the one pinned in
INTEGRITY, so a republished or tampered version stops here. The subset: subjects that every set draws
(iconify names, e.g. alarm-clock), from the categories that are things (animals, food, objects,
places, activities: faces, people and symbols are too alike at 64 px), leaving out families whose
members differ only in a detail (clock faces, moon phases, medals, buttons, skin tones), then a
seeded sample. Written per look as IconifyJSON (the packages' own format), keys sorted, with the
source and licence; ATTRIBUTION.md beside them says who made what, under which licence.
"""
import argparse
import base64
import hashlib
import json
import random
import subprocess
import tarfile
import tempfile
from pathlib import Path

from stylemix.emoji import LOOKS, SETS
from stylemix.errors import StyleMixError, run_stage
from stylemix.outputs import atomic_dir

# npm's integrity strings of the pinned versions (sha512 of the tarball, base64).
INTEGRITY = {
    "noto": "sha512-DQiuXENbun41ch+XPSV55H9FaWKpHTyz46YIKtSaKYD4fIDDzL1tR6H4np/T38jfrTAeI3rcKF0mqHYeZVAuaw==",
    "twemoji": "sha512-uKpuIEV0v6K5BW3Mjdyl+XKFVAbbcPxAgifKvEMtZoUZB5+YiY5zaMm2uNNCxyXzAWU9yNLlj41WU6/mvgALsw==",
    "fluent": "sha512-D8G6bKAyIsyxP1rzZtIWr/gg/fO4Rg1+DyCWlfqKK4h8W+4Em/Y0P6QYgJUQTlUcagzJvSyg+9OBv4hz4Hc/QA==",
    "flat": "sha512-RY47RgPb47fYUiyrA64sIOL0+UU02s29sXpNBbIQRBUlPlfNFTKUmZDERGuxDs/7yNGWqQYvuaSYM1M4fRXlUw==",
    "lineart": "sha512-esqhZPpkrF7sNX3NsLoh8KW64okEr/bzko7WNnFP+qTJGAqDPDYjp0925yxuivXy3HtVQB8xhIKu3+Nq1byX5w==",
    "openmoji": "sha512-vXdhkqcXVSO6suy+m9LbcUM3OdVyuNOtpV8/als/WqfkQIRxevL5Geb/g+6GH/Qwnq1OqksEmaDGTCmZ5nFKJQ==",
}
CATEGORIES = ("Animals & Nature", "Food & Drink", "Objects", "Travel & Places", "Activities")
CATEGORIES_FROM = "flat"  # the one package of the six whose metadata.json names every subject's category
# Families whose members the demo's 64 px could not tell apart.
LOOKALIKES = ("oclock", "thirty", "moon", "button", "place-medal", "-sign", "arrow", "flag", "-dark", "-light", "-medium")


def tarball_name(package: str, version: str) -> str:
    """The file `npm pack` writes: @scope/name@1.0 -> scope-name-1.0.tgz."""
    return f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"


def integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def npm_pack(look: str, folder: Path) -> Path:
    """The look's package tarball in `folder`, fetched by `npm pack` unless it is there already."""
    package, version, _ = LOOKS[look]
    path = folder / tarball_name(package, version)
    if not path.is_file():
        try:
            subprocess.run(["npm", "pack", f"{package}@{version}", "--pack-destination", str(folder)], check=True,
                           capture_output=True, text=True, timeout=600)
        except FileNotFoundError:
            raise StyleMixError("npm not found: install Node.js and npm (only this script needs them)") from None
        except subprocess.CalledProcessError as err:
            raise StyleMixError(f"npm pack {package}@{version} failed: {err.stderr.strip().splitlines()[-1]}") from None
    return path


def read_package(look: str, path: Path) -> dict[str, dict]:
    """icons.json, info.json (licence, author) and metadata.json (categories) of a checked tarball, by
    name; a file the package lacks is {}."""
    if (found := integrity(path)) != INTEGRITY[look]:
        raise StyleMixError(f"{path}: integrity {found} is not the pinned {INTEGRITY[look]}; "
                            f"{'@'.join(LOOKS[look][:2])} changed under its version: do not use it")
    with tarfile.open(path) as tar:
        names = set(tar.getnames())
        return {name: json.load(tar.extractfile(f"package/{name}.json")) if f"package/{name}.json" in names else {}
                for name in ("icons", "info", "metadata")}


def choose(icon_sets: dict[str, dict], metadata: dict, count: int, seed: int) -> list[str]:
    """The demo's subjects: drawn by every set, things rather than faces or signs, no lookalikes."""
    common = set.intersection(*(set(data["icons"]) for data in icon_sets.values()))
    category = {name: cat for cat, names in metadata.get("categories", {}).items() for name in names}
    fit = sorted(n for n in common if category.get(n) in CATEGORIES and not any(part in n for part in LOOKALIKES))
    if count > len(fit):
        raise StyleMixError(f"--subjects {count}: only {len(fit)} subjects fit; ask for fewer")
    return sorted(random.Random(seed).sample(fit, count))


def subset(look: str, package: dict[str, dict], names: list[str]) -> dict:
    """The IconifyJSON of `names` only, with the package's info (licence, author) and where it came from."""
    name, version, about = LOOKS[look]
    icons = package["icons"]
    keep = {k: icons[k] for k in ("prefix", "left", "top", "width", "height") if k in icons}
    return keep | {"info": package["info"], "icons": {n: icons["icons"][n] for n in names},
                   "source": {"package": name, "version": version, "integrity": INTEGRITY[look], "look": about}}


def attribution(sets: dict[str, dict], count: int) -> str:
    lines = ["# The demo's emoji", "",
             f"{count} subjects from six published emoji sets, fetched by `python -m stylemix.demo.fetch_emoji` from the npm "
             "registry (the Iconify packages below, which repackage each project's SVG files unchanged). Each file "
             "here is a subset of its package's `icons.json`. The pictures the demo renders from them, and what is "
             "trained on those pictures, carry the same licences and credits.", "",
             "| file | look | package | licence | by |", "|---|---|---|---|---|"]
    for look, data in sets.items():
        info, source = data.get("info", {}), data["source"]
        licence, author = info.get("license", {}), info.get("author", {})
        lines.append(f"| {look}.json | {source['look']} | `{source['package']}@{source['version']}` | "
                     f"[{licence.get('title', '?')}]({licence.get('url', '')}) | [{author.get('name', '?')}]({author.get('url', '')}) |")
    lines += ["", "OpenMoji's CC BY-SA 4.0 asks that what is made from its pictures be shared under the same licence.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stylemix.demo.fetch_emoji", description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, help="a folder with the tarballs (npm pack's file names)")
    parser.add_argument("--subjects", type=int, default=200, help="how many subjects to keep")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=SETS)
    a = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = a.source or Path(tmp)
        packages = {look: read_package(look, npm_pack(look, folder)) for look in LOOKS}
    names = choose({look: p["icons"] for look, p in packages.items()}, packages[CATEGORIES_FROM]["metadata"], a.subjects, a.seed)
    sets = {look: subset(look, package, names) for look, package in packages.items()}
    with atomic_dir(a.out) as tmp:
        for look, data in sets.items():
            (tmp / f"{look}.json").write_text(json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n")
        (tmp / "ATTRIBUTION.md").write_text(attribution(sets, len(names)))
    print(f"fetch_emoji: {len(names)} subjects in {len(sets)} looks -> {a.out}/")


if __name__ == "__main__":
    run_stage(main)
