"""Docs that stay true: the command-line reference is the commands', and every fenced Python
example in README.md and docs/*.md runs (tests/local/test_docs_examples.py) or says why not.

Regenerate after changing a command: ``python -m grain.cli.doc --write``.
"""

from __future__ import annotations

from pathlib import Path

import click
from support.docs import python_examples

from grain.cli import doc

REPO = Path(__file__).resolve().parents[2]


def test_cli_reference_is_generated_from_the_commands() -> None:
    assert doc.REFERENCE.read_text() == doc.render_reference(), \
        "docs/cli.md is stale: python -m grain.cli.doc --write"
    assert doc.current_synopsis() == doc.render_synopsis(), \
        "docs/interfaces.md's synopsis is stale: python -m grain.cli.doc --write"


def test_every_option_is_documented_in_help_and_in_interfaces() -> None:
    interfaces = doc.INTERFACES.read_text()
    for name in ("executor", "worker", "status"):
        cmd, ctx = doc.commands()[name]
        for opt in doc.options(cmd, ctx):
            assert opt.help, f"grain {name} {opt.opts[0]} has no help text"
            if "--help" not in opt.opts:
                assert max(opt.opts, key=len) in interfaces, (name, opt.opts)
    assert "grain operator" in doc.render_reference()
    assert "--all-namespaces" in doc.render_reference(), "the operator's own options"


def test_cli_reference_is_linked() -> None:
    assert "(docs/cli.md)" in (REPO / "README.md").read_text()
    assert "(cli.md)" in doc.INTERFACES.read_text()


def test_cli_reference_commands_exist() -> None:
    for name, (cmd, _) in doc.commands().items():
        assert isinstance(cmd, click.Command) and f"## grain {name}" in doc.render_reference()


def test_python_examples_are_found_and_compile() -> None:
    examples = python_examples()
    assert any(e.file == "README.md" and e.not_run is None for e in examples), \
        "the README's program runs in a test"
    for e in examples:
        compile(e.code, e.name, "exec")   # a typo fails here even where not run


def test_metric_names_anywhere_in_the_docs_are_the_executors() -> None:
    """Every ``grain_*`` name the docs mention is a metric the executor serves (or a module
    or attribute named here). The table of docs/interfaces.md is checked field by field in
    tests/network/test_observability.py."""
    import re

    from grain.executor.metrics import METRICS

    not_metrics = {"grain_operator", "grain_harness", "grain_finished"}
    served = {d.name for d in METRICS}
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for name in set(re.findall(r"\bgrain_[a-z_]+", path.read_text())) - not_metrics:
            assert name in served, f"{path.name} names {name}, which /metrics does not serve"
