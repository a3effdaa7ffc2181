"""The documentation site builds strictly and renders as its pages mean.

mkdocstrings takes a directive's options only when they are indented under
its ``:::`` line; otherwise they show up as a paragraph of text
("options: show_source: true ...") and the directive renders with the
defaults. Every page of the built site is read back here: no leaked options,
no heading or anchor twice on a page, and on the API page each public
function documented once, with its examples under it.
"""

from __future__ import annotations

import html
import re
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = ("start_logging", "get_active_experiment", "stop_logging")


class Page(HTMLParser):
    """The article of one built page: its headings (level, id, text) and its prose."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.headings: list[tuple[int, str, str]] = []
        self.ids: list[str] = []
        self.prose: list[str] = []  # text outside <pre>/<code>, where options would leak
        #: the article in order: ("heading", name), ("prose" | "code" | "pre", text)
        self.items: list[tuple[str, str]] = []
        self._heading: tuple[int, str, list[str]] | None = None
        self._code = 0
        self._pre = 0
        self._main = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "div" and "main" in (attr.get("role") or ""):
            self._main += 1
        elif tag == "div" and self._main:
            self._main += 1
        if not self._main:
            return
        if attr.get("id"):
            self.ids.append(attr["id"] or "")
        if tag in ("pre", "code"):
            self._code += 1
        if tag == "pre":
            self._pre += 1
        if re.fullmatch(r"h[1-6]", tag):
            self._heading = (int(tag[1]), attr.get("id") or "", [])

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._main:
            self._main -= 1
        if not self._main:
            return
        if tag in ("pre", "code"):
            self._code -= 1
        if tag == "pre":
            self._pre -= 1
        if self._heading and re.fullmatch(r"h[1-6]", tag):
            level, anchor, parts = self._heading
            text = "".join(parts).replace("¶", "").strip()
            self.headings.append((level, anchor, text))
            self.items.append(("heading", name_of(anchor, text)))
            self._heading = None

    def handle_data(self, data: str) -> None:
        if not self._main:
            return
        if self._heading:
            self._heading[2].append(data)
            return
        if not self._code:
            self.prose.append(data)
        if data.strip():
            kind = "pre" if self._pre else "code" if self._code else "prose"
            self.items.append((kind, data.strip()))


def name_of(anchor: str, text: str) -> str:
    """What a heading names: an object's last name (its id is a dotted path), else its text.

    ``tracelet.interface.start_logging`` → ``start_logging``, as the heading
    ``### start_logging`` written above it.
    """
    return anchor.rsplit(".", 1)[-1] if "." in anchor else text.strip()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--quiet",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def pages(site: Path) -> dict[str, Page]:
    parsed = {}
    for path in sorted(site.rglob("index.html")):
        if path.parent.name in ("search",) or path.parent == site / "404":
            continue
        page = Page()
        page.feed(path.read_text())
        parsed[str(path.parent.relative_to(site))] = page
    return parsed


def test_no_page_shows_directive_options_as_text(site: Path) -> None:
    built = pages(site)
    assert {"api/interface", "api/experiment", "."} <= set(built), sorted(built)
    for name, page in built.items():
        prose = html.unescape(" ".join(page.prose))
        leaked = re.findall(r"options:\s*\w+:", prose) + re.findall(
            r"\b(?:show_source|show_bases|heading_level|show_root_heading):\s", prose
        )
        assert not leaked, (name, leaked)
        assert page.headings, name


def test_no_page_has_a_heading_or_anchor_twice(site: Path) -> None:
    for name, page in pages(site).items():
        # A name twice under one parent heading is one thing documented twice
        # (``end`` of two classes is not). The page title may name the object
        # documented under it (Experiment).
        keys: Counter[tuple[str, str]] = Counter()
        parents: list[tuple[int, str]] = []
        for level, anchor, text in page.headings:
            while parents and parents[-1][0] >= level:
                parents.pop()
            if level > 1:
                keys[(parents[-1][1] if parents else "", name_of(anchor, text))] += 1
            parents.append((level, name_of(anchor, text)))
        twice = [key for key, count in keys.items() if count > 1]
        assert not twice, (name, twice, page.headings)
        ids = [i for i in Counter(page.ids).items() if i[1] > 1]
        assert not ids, (name, ids)


def test_the_api_page_documents_each_function_once_with_its_examples(site: Path) -> None:
    text = (site / "api" / "interface" / "index.html").read_text()
    page = Page()
    page.feed(text)
    headings = [(level, name_of(a, t)) for level, a, t in page.headings]
    # the module (its docstring, no members), then one section per function
    assert headings[:3] == [(1, "Main Interface"), (2, "interface"), (2, "Main Public Functions")]
    assert [h for h in headings if h[1] in FUNCTIONS] == [(3, f) for f in FUNCTIONS]
    # Each function's section: its docstring (once on the page, outside the
    # source listings), its source, then its examples.
    import tracelet

    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for kind, text in page.items:
        if kind == "heading":
            current = text
        sections.setdefault(current, []).append((kind, text))
    for function in FUNCTIONS:
        summary = re.sub(r"[`\s]", "", getattr(tracelet, function).__doc__.splitlines()[0])
        where = [  # compared without spaces: the text comes in pieces (prose, inline code)
            name
            for name, items in sections.items()
            if summary in re.sub(r"\s", "", "".join(t for kind, t in items if kind != "pre"))
        ]
        assert where == [function], (function, where)
        items = sections[function]
        prose = [text for kind, text in items if kind == "prose"]
        assert "Source code in" in prose, function
        assert prose.index("Source code in") < prose.index("Example Usage:"), function
        example = items[items.index(("prose", "Example Usage:")) :]
        code = "".join(text for kind, text in example if kind == "pre")  # highlighted: in spans
        assert f"tracelet.{function}(" in code, function
