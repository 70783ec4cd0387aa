"""The documentation stays true to the tree: every link, path, module and kernel file it names
exists, and the README's headline figures are those of docs/results.md.

Pages checked: README.md, docs/*.md and kernels/README.md. A rename that forgets the docs fails
here, naming the page and the stale name.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

from tvm_tiny.codegen.variant import CONFIG_HEADER
from tvm_tiny.partition.patterns import (
    CONV_S8_COMPOSITE,
    LINEAR_S8_COMPOSITE,
    LINEAR_SPARSE_COMPOSITE,
    MHSA_COMPOSITES,
)

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
TOPICS = ("architecture", "int8", "tuning", "boards", "sparse", "results")
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md")), REPO / "kernels" / "README.md"]
PAGE_IDS = [str(p.relative_to(REPO)) for p in PAGES]

# Top-level folders of the repository a doc may name a path in.
_ROOTS = ("tvm_tiny", "kernels", "runtime_c", "tests", "benchmarks", "examples", "tuning_logs",
          "scripts", "docs")
_PATH = re.compile(rf"(?<![\w./-])(?:{'|'.join(_ROOTS)})/[\w./-]*[\w/]")
_KERNEL_FILE = re.compile(r"(?<![\w/])tt_\w+\.[ch]\b")
_DOTTED = re.compile(r"(?<![\w.])tvm_tiny(?:\.\w+)+")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
# Names a page spells like a module that are not one: the composite function names of
# ``partition/patterns.py``.
_COMPOSITES = {*MHSA_COMPOSITES, LINEAR_SPARSE_COMPOSITE, LINEAR_S8_COMPOSITE,
               CONV_S8_COMPOSITE}
_FIGURE = re.compile(r"\d{1,3}(?:,\d{3})+|\d+\.\d+x")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a markdown page."""
    anchors = set()
    for heading in re.findall(r"(?m)^#{1,6} (.+)$", page.read_text()):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def _resolves(dotted: str) -> bool:
    """``tvm_tiny.a.b.c`` is a module, or an attribute of the longest importable prefix."""
    if dotted in _COMPOSITES:
        return True
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            found = importlib.util.find_spec(module_name) is not None
        except ModuleNotFoundError:  # a parent of ``module_name`` is not a package
            found = False
        if not found:
            continue
        obj = importlib.import_module(module_name)
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_topic_page_exists_and_the_readme_links_it() -> None:
    readme = (REPO / "README.md").read_text()
    for topic in TOPICS:
        assert (DOCS / f"{topic}.md").is_file(), topic
        assert f"(docs/{topic}.md)" in readme, f"README.md does not link docs/{topic}.md"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_links_resolve(page: Path) -> None:
    for target in _LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: link to missing {target}"
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file), f"{page.name}: no heading #{anchor} in {path}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_paths_exist(page: Path) -> None:
    text = page.read_text()
    missing = sorted({p for p in _PATH.findall(text) if "<" not in p
                      and not (REPO / p).exists() and not (page.parent / p).exists()})
    assert not missing, f"{page.name} names paths that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_kernel_files_exist(page: Path) -> None:
    shipped = {p.name for root in ("kernels", "runtime_c") for p in (REPO / root).rglob("*")}
    shipped.add(CONFIG_HEADER)  # written by build into a model's runtime/include/
    missing = sorted(set(_KERNEL_FILE.findall(page.read_text())) - shipped)
    assert not missing, f"{page.name} names C files that are not shipped: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_modules_and_names_exist(page: Path) -> None:
    missing = sorted({d for d in _DOTTED.findall(page.read_text()) if not _resolves(d)})
    assert not missing, f"{page.name} names modules or attributes that do not exist: {missing}"


def test_readme_figures_are_those_of_the_results_page() -> None:
    """The README's headline figures are copied from docs/results.md, never re-typed."""
    readme = (REPO / "README.md").read_text()
    headline = readme[readme.index("## Headline results"):readme.index("## Documentation")]
    results = (DOCS / "results.md").read_text()
    strays = sorted(f for f in set(_FIGURE.findall(headline)) if f not in results)
    assert not strays, f"README figures not in docs/results.md: {strays}"
