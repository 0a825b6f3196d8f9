"""The fenced Python examples of README.md and docs/*.md (tests/unit/test_docs.py checks
them, tests/local/test_docs_examples.py runs them).

A block that cannot run in the test suite says why in an HTML comment on the line before it:
``<!-- not run: needs a GrainCluster on Kubernetes -->``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<why>\S.*?)\s*-->")
FENCE = re.compile(r"\s*```py(thon)?\s*$")


@dataclass(frozen=True)
class Example:
    file: str             # relative to the repository
    line: int             # of the opening fence
    code: str
    not_run: str | None   # the reason given, or None: it runs

    @property
    def name(self) -> str:
        return f"{self.file}:{self.line}"


def python_examples() -> list[Example]:
    """Every fenced Python block, in file order."""
    out = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            if FENCE.match(lines[i]):
                j = i + 1
                while not lines[j].strip().startswith("```"):
                    j += 1
                before = next((x for x in reversed(lines[:i]) if x.strip()), "")
                found = NOT_RUN.search(before)
                out.append(Example(path.relative_to(REPO).as_posix(), i + 1,
                                   "\n".join(lines[i + 1:j]), found["why"] if found else None))
                i = j
            i += 1
    return out
