"""The repository stands alone: docs/README.md is the first page, and nothing points outside."""
from __future__ import annotations

import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: documents that are not in this repository (split, so this file does not name them itself)
OUTSIDE = re.compile("DES" + r"IGN|\.\./" + "shared")


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [name for name in out.decode().split("\0") if name]


def test_no_file_refers_outside_the_repository():
    offenders = []
    for name in tracked_files():
        path = os.path.join(ROOT, name)
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8", "replace")
        offenders += [f"{name}:{n}" for n, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]
    assert not offenders, f"references outside the repository: {offenders}"


def test_docs_readme_is_the_first_page_and_lists_every_page():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        assert "(docs/README.md)" in fh.read()
    with open(os.path.join(ROOT, "docs", "README.md"), encoding="utf-8") as fh:
        first = fh.read()
    for heading in ("## Words", "## What the code promises", "## How a request travels", "## Where each page fits"):
        assert heading in first
    pages = sorted(f for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md") and f != "README.md")
    missing = [page for page in pages if f"]({page})" not in first]
    assert not missing, f"docs/README.md does not say where these pages fit: {missing}"
    for target in re.findall(r"\]\(([^)#]+)\)", first):
        assert os.path.exists(os.path.join(ROOT, "docs", target)), f"docs/README.md links a missing {target}"
