"""The docs site in a real browser: built into a temporary folder and opened from disk (file://).

A browser on file:// shows a folder link (`model-spec/`) as a directory listing, so every
side-menu link must name an .html file and land on its page; every internal link on every page
must name a file the build wrote; search must answer without a server. The browser is Debian's
Chromium driven by playwright (playwright's own browser download cannot be reached); requests
off the machine are refused, as for a reader offline.

Skipped with the reason where the docs extra (mkdocs-material: `make docs` installs it),
playwright (the `dev` extra) or Chromium (`.ci/run` installs it) is missing. The serving side,
`make docs-serve`, is checked for its address: 127.0.0.1 only.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urldefrag, urlsplit
from urllib.request import url2pathname

import pytest
import yaml

from tests.helpers import REPO

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-headless-shell")
NAV_LINKS = "nav.md-nav--primary a.md-nav__link[href]"
# Links in the page's text, less the permalink pilcrows of its own headings.
CONTENT_LINKS = "article.md-content__inner a[href]:not(.headerlink)"


def _needs(module: str, why: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed: {why}")


def nav_pages(entries: list) -> list[str]:
    """The Markdown pages mkdocs.yml's nav names, in order."""
    pages = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def local_file(url: str) -> Path:
    return Path(url2pathname(urlsplit(urldefrag(url).url).path))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _needs("material", "the docs extra; make docs installs it")
    out = tmp_path_factory.mktemp("site")
    # Material for MkDocs' own switch for its end-of-life banner (see the Makefile's docs target).
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"), "--site-dir", str(out)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"mkdocs build --strict failed (make docs shows the same):\n{done.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator:
    _needs("playwright", "the dev extra installs it")
    if CHROMIUM is None:
        pytest.skip("no Chromium: apt-get install chromium (.ci/run installs it where it can)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


@pytest.fixture
def script_errors() -> list[str]:
    return []


@pytest.fixture
def page(browser, script_errors):
    context = browser.new_context()
    # Offline, as a reader with site/ on disk may be: the web fonts are not needed.
    context.route(re.compile(r"^https?://"), lambda route: route.abort())
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    yield page
    context.close()


def test_every_side_menu_link_opens_its_page_from_disk(site, page, script_errors):
    page.goto((site / "index.html").as_uri())
    links = page.eval_on_selector_all(NAV_LINKS, "els => els.map(e => [e.getAttribute('href'), e.href, e.textContent.trim()])")
    pages = [(href, url, text) for href, url, text in links if not href.startswith("#")]

    folders = [f"{text!r} is {href!r}" for href, url, text in pages if not href.endswith(".html")]
    assert not folders, "side-menu links that are not .html files (file:// shows a folder as a listing): " + ", ".join(folders)
    want = nav_pages(yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"])
    linked = [local_file(url).relative_to(site).as_posix() for _, url, _ in pages]
    assert linked == [p.removesuffix(".md") + ".html" for p in want], "the side menu does not link mkdocs.yml's nav, in order"

    for href, url, text in pages:
        page.goto(url)
        heading = page.locator("article.md-content__inner h1").first.inner_text()
        assert not page.title().startswith("Index of"), f"{href}: a directory listing, not a page"
        assert heading.strip().removesuffix("¶").strip(), f"{href}: no heading"
        title = "pipeline" if local_file(url) == site / "index.html" else f"{text} - pipeline"
        assert page.title() == title, f"{href}: titled {page.title()!r}, the menu says {text!r}"
    assert not script_errors, f"script errors on the pages: {script_errors}"


def test_every_internal_link_names_a_file_the_build_wrote(site, page):
    broken = []
    # 404.html is a web server's page (its links are absolute, from the site's root); a disk has no 404.
    for html in sorted(set(site.rglob("*.html")) - {site / "404.html"}):
        page.goto(html.as_uri())
        hrefs = page.eval_on_selector_all(f"{NAV_LINKS}, {CONTENT_LINKS}", "els => els.map(e => e.href)")
        broken += [f"{html.relative_to(site)} -> {url}" for url in hrefs if url.startswith("file:") and not local_file(url).is_file()]
    assert not broken, "links to files the build did not write:\n" + "\n".join(broken)


def test_search_answers_from_disk(site, page, script_errors):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto((site / "results" / "index.html").as_uri())
    # Material hides the search box when its worker cannot start: from file:// that takes the
    # offline plugin's search/search_index.js and the iframe-worker shim (mkdocs.yml).
    try:
        page.wait_for_selector(".md-search:not([hidden])", state="attached", timeout=5_000)
    except PlaywrightTimeout:
        pytest.fail(f"search is hidden from file://; script errors: {script_errors}")
    page.fill("input.md-search__input", "parity")
    page.wait_for_selector(".md-search-result__item a")
    hits = page.eval_on_selector_all(".md-search-result__item a", "els => els.map(e => e.href)")
    assert hits and all(local_file(url).is_file() and urlsplit(url).path.endswith(".html") for url in hits), hits
    assert not script_errors, f"script errors: {script_errors}"


def test_docs_serve_listens_on_127_0_0_1_only():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    shown = subprocess.run(["make", "-n", "docs-serve"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    serve = next(line for line in shown.splitlines() if "mkdocs serve" in line)
    assert re.search(r"(-a|--dev-addr)[ =]127\.0\.0\.1:\d+", serve), serve
