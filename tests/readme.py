"""The README's code blocks by name: `<!-- run: NAME -->` (commands a test runs) or
`<!-- block: NAME -->` just above a fence. Tests run exactly what the README shows, so the two
cannot drift apart; where a block names something that cannot exist here (your photo folder, a
team share, a 12-run sweep) the test swaps that one string and asserts it is still there."""
import re

from tests.conftest import ROOT

README = ROOT / "README.md"
FENCE = re.compile(r"(?:^<!-- (run|block): ([\w-]+) -->\n)?^```(\w*)\n(.*?)^```", re.M | re.S)


def fences() -> list[tuple[str | None, str | None, str, str]]:
    """Every fenced block as (marker kind, name, language, text)."""
    return [m.groups() for m in FENCE.finditer(README.read_text())]


def block(name: str, replace: dict[str, str] | None = None) -> str:
    """The text of the named block, with each old -> new swap applied (every old must be in it)."""
    found = [text for _, n, _, text in fences() if n == name]
    assert len(found) == 1, f"README has {len(found)} blocks named {name!r}"
    text = found[0]
    for old, new in (replace or {}).items():
        assert old in text, f"README block {name!r} no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def commands(name: str, replace: dict[str, str] | None = None) -> list[str]:
    """The named block's command lines (comments left for bash to ignore)."""
    return [line for line in block(name, replace).splitlines() if line.strip() and not line.lstrip().startswith("#")]
