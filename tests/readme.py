"""The documents' code blocks by name: `<!-- run: NAME -->` (commands a test runs) or
`<!-- block: NAME -->` just above a fence, in README.md or any docs/*.md (a name is unique across
them all). Tests run exactly what the documents show, so the two cannot drift apart; where a block
names something that cannot exist here (your photo folder, a team share, a 12-run sweep) the test
swaps that one string and asserts it is still there."""
import re
from collections import Counter
from pathlib import Path

from tests.conftest import ROOT

README = ROOT / "README.md"
FENCE = re.compile(r"(?:^<!-- (run|block): ([\w-]+) -->\n)?^```(\w*)\n(.*?)^```", re.M | re.S)


def documents() -> list[Path]:
    """README.md, then every docs/*.md in name order."""
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def located_fences() -> list[tuple[Path, tuple[str | None, str | None, str, str]]]:
    """Every fenced block of every document, with the document it is in."""
    found = [(doc, m.groups()) for doc in documents() for m in FENCE.finditer(doc.read_text())]
    names = Counter(f[1] for _, f in found if f[1] is not None)
    twice = {name: [str(doc.relative_to(ROOT)) for doc, f in found if f[1] == name] for name, n in names.items() if n > 1}
    assert not twice, f"block names used more than once: {twice}"
    return found


def fences() -> list[tuple[str | None, str | None, str, str]]:
    """Every fenced block as (marker kind, name, language, text)."""
    return [f for _, f in located_fences()]


def block(name: str, replace: dict[str, str] | None = None) -> str:
    """The text of the named block, with each old -> new swap applied (every old must be in it)."""
    found = [text for _, n, _, text in fences() if n == name]
    assert len(found) == 1, f"README.md and docs/ have {len(found)} blocks named {name!r}"
    text = found[0]
    for old, new in (replace or {}).items():
        assert old in text, f"block {name!r} no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def commands(name: str, replace: dict[str, str] | None = None) -> list[str]:
    """The named block's command lines (comments left for bash to ignore)."""
    return [line for line in block(name, replace).splitlines() if line.strip() and not line.lstrip().startswith("#")]
