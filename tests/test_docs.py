"""The documents: every relative link leads to a file and heading that exist, and the
product's files speak of the product, not of how its work was organised."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "bench/RESULTS.md", "pretrained/README.md", "bench/README.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {anchor(m) for m in re.findall(r"^#+\s+(.+)$", text, flags=re.M)}


def test_anchor_follows_github():
    assert anchor("Zero-shot: the general base") == "zero-shot-the-general-base"
    assert (
        anchor("A site's own constraints, case folding and the labelling loop")
        == "a-sites-own-constraints-case-folding-and-the-labelling-loop"
    )
    assert anchor("Deployment: ONNX") == "deployment-onnx"


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if (ROOT / d).is_file()])
def test_relative_links_point_at_existing_files_and_headings(document):
    source = ROOT / document
    broken = []
    for target in LINK.findall(source.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, section = target.partition("#")
        path = (source.parent / file).resolve() if file else source
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif section and section not in anchors(path):
            broken.append(f"{target}: no heading '{section}' in {path.relative_to(ROOT)}")
    assert not broken, f"{document}: " + "; ".join(broken)


# numbered work periods, tracker entries, lettered runs, which machine was lent
PROCESS_WORDS = re.compile(r"(?i:\bsessions? \d+|\bissues? #?\d+\b|\bwas lent\b)|\b[Rr]uns? [A-Z]{1,2}\b")


def test_tracked_files_speak_of_the_product_only():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    found = []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in {".py", ".md", ".txt", ".sh", ".toml", ".cfg", ""} or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            match = PROCESS_WORDS.search(line)
            if match and name != "tests/test_docs.py":
                found.append(f"{name}:{number}: {match.group(0)!r}")
    assert not found, "\n".join(found[:40])
