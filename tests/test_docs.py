"""The docs keep up with the code: every flag is documented, the README stays a front door, no link is dead."""

from __future__ import annotations

import re
from pathlib import Path

from a3c.cli import make_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FLAGS_DOC = ROOT / "docs" / "flags.md"
README_MAX_LINES = 250

# [text](target) or ![alt](target); the target ends at whitespace (a title may follow) or the closing parenthesis.
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def documented_flags() -> list[str]:
    """Every long option string `python main.py --help` lists, --help itself left out."""
    return [
        option
        for action in make_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ]


def relative_links(doc: Path) -> list[str]:
    """Targets of the markdown links in doc that point into the repository: no URL, no same-page #anchor."""
    targets = []
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue  # http:, https:, mailto: ... and anchors on the same page
        targets.append(target)
    return targets


def test_every_flag_is_in_the_flags_doc() -> None:
    text = FLAGS_DOC.read_text(encoding="utf-8")
    missing = [flag for flag in documented_flags() if f"`{flag}`" not in text]
    assert not missing, f"docs/flags.md does not name these flags (as `--flag`, in backticks): {', '.join(missing)}"


def test_readme_is_short() -> None:
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines, over {README_MAX_LINES}: move detail to docs/ and link to it"
    )


def test_relative_links_point_to_files() -> None:
    docs = [README, *sorted((ROOT / "docs").glob("*.md"))]
    dead = []
    for doc in docs:
        for target in relative_links(doc):
            path = target.split("#", 1)[0]
            if not (doc.parent / path).exists():
                dead.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not dead, "links to files that do not exist:\n" + "\n".join(dead)
