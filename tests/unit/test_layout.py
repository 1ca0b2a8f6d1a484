"""The source tree keeps the shape the README's Layout section describes."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "commandbus"
#: a file about one thing fits in this many lines
MAX_LINES = 500


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))


def test_no_source_file_is_over_the_line_limit() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these files (at most {MAX_LINES} lines each): {long}"


def test_the_readme_layout_names_every_module() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") : readme.index("## Testing")]
    missing = [
        str(p.relative_to(ROOT))
        for p in _modules()
        if re.search(rf"\b{re.escape(p.stem)}\b", layout) is None
    ]
    assert missing == [], f"the README's Layout section does not name {missing}"
    assert len(_modules()) > 100  # the walk found the tree
