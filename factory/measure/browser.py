"""The report page in a real headless browser: Debian's Chromium (``/usr/bin/chromium``, ``make browser``)
driven by Playwright (``pip install playwright``; never ``playwright install``: no browser is downloaded).

``check_page`` opens a page as a user does (served over HTTP from 127.0.0.1 by a server it starts and stops)
and says what went wrong: console errors, uncaught script errors, failed requests, requests that leave the
page's own origin (a self-contained page makes none; they are blocked, never sent), images that did not
decode, and the ids of its elements (the report's sections). ``screenshot`` renders it to a PNG (the README's
picture, ``make screenshot``). The tests (tests/test_report_browser.py) and the screenshot script use both.
Playwright is imported inside the functions, so the rest of the package never needs it.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote, urlsplit

from factory.core.errors import FactoryError
from factory.core.files import atomic_write_bytes

CHROMIUM = Path("/usr/bin/chromium")
# headless as root needs --no-sandbox; the rest keep Chromium from phoning home (a closed network refuses it)
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-default-apps", "--mute-audio")
# the sections reports/index.html must have (issue 15): run metadata, contact sheets, rejected samples, score
# histograms, charts, the tables of reports/results.md. Written out here, not read from factory.measure.page,
# so that the check does not take the page's word for what it should contain.
REPORT_SECTIONS = ("run", "sheets", "rejected", "scores", "charts", "tables")

# every <img> that did not decode, and every id on the page
_INSPECT = """() => ({
  images: document.images.length,
  broken: Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)
               .map(i => (i.getAttribute('src') || '').slice(0, 80) || i.outerHTML.slice(0, 120)),
  ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
})"""

# the content's height (documentElement.scrollHeight is never under the window's)
_HEIGHT = ("Math.ceil(document.body.getBoundingClientRect().bottom"
           " + parseFloat(getComputedStyle(document.body).marginBottom))")


@dataclass
class PageCheck:
    """What a browser saw on one page. ``problems()`` lists what makes it fail, one line each."""

    url: str
    console_errors: list[str] = field(default_factory=list)
    console_warnings: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)  # uncaught exceptions in the page's scripts
    failed_requests: list[str] = field(default_factory=list)  # network failures and HTTP statuses >= 400
    external_requests: list[str] = field(default_factory=list)  # off the page's origin (blocked, not sent)
    images: int = 0  # <img> elements on the page
    broken_images: list[str] = field(default_factory=list)  # not complete, or naturalWidth 0
    ids: list[str] = field(default_factory=list)  # every element id, in document order

    def missing(self, sections: tuple[str, ...] | list[str] = REPORT_SECTIONS) -> list[str]:
        return [s for s in sections if s not in self.ids]

    def problems(self, sections: tuple[str, ...] | list[str] = ()) -> list[str]:
        return ([f"console error: {m}" for m in self.console_errors]
                + [f"page error: {m}" for m in self.page_errors]
                + [f"failed request: {m}" for m in self.failed_requests]
                + [f"external request: {m}" for m in self.external_requests]
                + [f"image did not decode: {m}" for m in self.broken_images]
                + [f"section missing: #{s}" for s in self.missing(sections)])


def _playwright() -> Any:
    try:
        from playwright import sync_api
    except ImportError:
        raise ImportError("the browser check needs Playwright: pip install 'synthfactory[dev]' (or pip install "
                          "playwright; its browsers are not needed: it drives /usr/bin/chromium)") from None
    return sync_api


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # no access log on stderr
        pass


@contextmanager
def _served(folder: Path) -> Iterator[str]:
    """``folder`` over HTTP on 127.0.0.1 (a free port) while the block runs; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


@contextmanager
def _opened(target: Path | str, *, width: int, height: int, timeout_s: float,
            chromium: Path) -> Iterator[tuple[Any, PageCheck]]:
    """The page loaded in headless Chromium, and what was seen while loading it (filled in on the way)."""
    target = str(target)
    local = not target.startswith(("http://", "https://"))
    if local and not Path(target).is_file():
        raise FactoryError(f"{target}: no such page")
    if not chromium.exists():
        raise FactoryError(f"{chromium} not found: the browser check runs Debian's Chromium (make browser, or "
                           "apt-get install chromium)")
    pw_api = _playwright()
    with _served(Path(target).resolve().parent) if local else nullcontext(target) as base:
        url = base + quote(Path(target).name) if local else target
        check, own = PageCheck(url), _origin(url)
        profile = tempfile.mkdtemp(prefix="factory-chromium-")  # a fresh profile: nothing carried between runs
        try:
            with pw_api.sync_playwright() as pw:
                try:
                    context = pw.chromium.launch_persistent_context(
                        profile, executable_path=str(chromium), headless=True, args=list(CHROMIUM_ARGS),
                        viewport={"width": width, "height": height}, device_scale_factor=1,
                        service_workers="block")
                except pw_api.Error as exc:
                    raise FactoryError(f"{chromium}: headless Chromium did not start ({_first_line(exc)})") from None
                try:
                    page = context.pages[0] if context.pages else context.new_page()
                    _watch(context, page, check, own)
                    try:
                        page.goto(url, wait_until="load", timeout=timeout_s * 1000)
                        page.wait_for_load_state("networkidle", timeout=timeout_s * 1000)
                    except pw_api.Error as exc:
                        raise FactoryError(f"{target}: the page did not load ({_first_line(exc)})") from None
                    seen = page.evaluate(_INSPECT)
                    check.images, check.broken_images, check.ids = seen["images"], seen["broken"], seen["ids"]
                    yield page, check
                finally:
                    context.close()
        finally:
            shutil.rmtree(profile, ignore_errors=True)


def _watch(context: Any, page: Any, check: PageCheck, own: tuple[str, str]) -> None:
    """Record console messages, script errors and requests; block every request off the page's origin."""
    def route(r: Any) -> None:
        if _origin(r.request.url) == own:
            r.continue_()
        else:
            check.external_requests.append(r.request.url[:200])
            r.abort("blockedbyclient")

    def console(msg: Any) -> None:
        if msg.type == "error":
            check.console_errors.append(msg.text[:300])
        elif msg.type == "warning":
            check.console_warnings.append(msg.text[:300])

    def failed(request: Any) -> None:
        if request.url[:200] not in check.external_requests:  # a blocked request is reported once, as external
            check.failed_requests.append(f"{request.url[:200]} ({request.failure})")

    def response(resp: Any) -> None:
        if resp.status >= 400:
            check.failed_requests.append(f"{resp.url[:200]} (HTTP {resp.status})")

    context.route("**/*", route)
    page.on("console", console)
    page.on("pageerror", lambda exc: check.page_errors.append(str(exc)[:300]))
    page.on("requestfailed", failed)
    page.on("response", response)


def check_page(target: Path | str, *, width: int = 1280, height: int = 800, timeout_s: float = 30,
               chromium: Path = CHROMIUM) -> PageCheck:
    """Open ``target`` (an HTML file, served from 127.0.0.1, or an http(s) URL) in headless Chromium and
    return what it saw; ``check.problems(REPORT_SECTIONS)`` is empty for a good report page."""
    with _opened(target, width=width, height=height, timeout_s=timeout_s, chromium=chromium) as (_, check):
        return check


def screenshot(target: Path | str, out_png: Path | str, *, full_page: bool = False, width: int = 1280,
               height: int = 2000, sections: tuple[str, ...] | list[str] = (), timeout_s: float = 30,
               chromium: Path = CHROMIUM) -> PageCheck:
    """A PNG of ``target`` as headless Chromium draws it, ``width`` pixels wide: its first ``height`` pixels
    (fewer if the page is shorter), or all of it with ``full_page``. A page with problems
    (``PageCheck.problems(sections)``) gets no picture: FactoryError, and ``out_png`` is left as it was."""
    with _opened(target, width=width, height=height, timeout_s=timeout_s, chromium=chromium) as (page, check):
        if problems := check.problems(sections):
            raise FactoryError(f"{target}: not pictured, the page has {len(problems)} problem(s): "
                               + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else ""))
        tall = page.evaluate(_HEIGHT)
        clip = None if full_page else {"x": 0, "y": 0, "width": width, "height": min(height, tall)}
        png = page.screenshot(full_page=full_page, clip=clip, type="png", animations="disabled")
    atomic_write_bytes(Path(out_png), png)
    return check
