"""The report page in a real headless browser (Debian's Chromium driven by Playwright: factory/measure/browser.py).

First the checker itself, on small pages made here: a good page passes, and each way a page can be broken
fails it (so a passing report proves something). Then the real report page, rendered by the library.
"""

import base64
import io
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from factory.core.errors import FactoryError
from factory.measure.browser import REPORT_SECTIONS, check_page, screenshot

pytestmark = pytest.mark.usefixtures("chromium")  # skips without /usr/bin/chromium (fails instead under CI)


def png_uri(size: int = 6) -> str:
    img = Image.new("RGB", (size, size), (200, 40, 40))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def page(tmp_path, body: str, sections=REPORT_SECTIONS, name: str = "index.html"):
    parts = "".join(f'<section id="{s}"><h2>{s}</h2></section>' for s in sections)
    path = tmp_path / name
    path.write_text(f'<!doctype html><html><head><meta charset="utf-8"><title>report</title></head>'
                    f'<body>{parts}{body}</body></html>')
    return path


def test_a_good_page_passes(tmp_path):
    check = check_page(page(tmp_path, f'<img src="{png_uri()}" alt="a"><img src="{png_uri(9)}" alt="b">'))
    assert check.problems(REPORT_SECTIONS) == []
    assert check.images == 2 and check.ids == list(REPORT_SECTIONS)
    assert check.url.startswith("http://127.0.0.1:")  # served, as a user opens it, not file://


@pytest.mark.parametrize("body, sections, expected", [
    ('<img src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==">', REPORT_SECTIONS,
     ["image did not decode: data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="]),
    ('<script>console.error("drawing failed")</script>', REPORT_SECTIONS, ["console error: drawing failed"]),
    ('<script>null.width</script>', REPORT_SECTIONS, ["page error: Cannot read properties of null"]),
    ('<img src="http://198.51.100.1/x.png">', REPORT_SECTIONS,
     ["console error: Failed to load resource: net::ERR_BLOCKED_BY_CLIENT", "external request: http://198.51.100.1/x.png",
      "image did not decode: http://198.51.100.1/x.png"]),
    ('<img src="missing.png">', REPORT_SECTIONS,
     ["console error: Failed to load resource: the server responded with a status of 404",
      "failed request: http://127.0.0.1:", "image did not decode: missing.png"]),
    (f'<img src="{png_uri()}">', [s for s in REPORT_SECTIONS if s != "charts"], ["section missing: #charts"]),
], ids=["broken-data-image", "console-error", "script-throws", "external-image", "missing-file", "missing-section"])
def test_each_broken_page_fails(tmp_path, body, sections, expected):
    problems = check_page(page(tmp_path, body, sections)).problems(REPORT_SECTIONS)
    assert len(problems) == len(expected), problems
    for line, start in zip(problems, expected):
        assert line.startswith(start), problems


def test_an_external_request_is_blocked_not_sent(tmp_path):
    """A request off the page's origin (here a server on another port: another origin) is reported and never
    reaches the network, however the page makes it (an image, a stylesheet, a fetch from a script)."""
    hits = []

    class Counting(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    other = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        check = check_page(page(tmp_path, f'<link rel="stylesheet" href="{other}/s.css"><img src="{other}/i.png">'
                                          f'<script>fetch("{other}/f.json").catch(() => null)</script>'))
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(check.external_requests) == sorted(f"{other}/{f}" for f in ("s.css", "i.png", "f.json"))
    assert hits == []


def test_screenshot_pictures_a_good_page_and_refuses_a_broken_one(tmp_path):
    good = page(tmp_path, f'<img src="{png_uri(40)}" width="400" height="300">')
    out = tmp_path / "docs" / "report.png"
    out.parent.mkdir()
    check = screenshot(good, out, width=640, height=480, sections=REPORT_SECTIONS)
    assert check.problems(REPORT_SECTIONS) == []
    assert Image.open(out).size == (640, 480)
    whole = tmp_path / "whole.png"
    screenshot(page(tmp_path, '<div style="height:3000px"></div>', name="tall.html"), whole, width=640, height=480,
               full_page=True)
    assert Image.open(whole).size[0] == 640 and Image.open(whole).size[1] >= 3000
    short = tmp_path / "short.png"
    screenshot(page(tmp_path, "", sections=["run"], name="short.html"), short, width=640, height=2000)
    assert 0 < Image.open(short).size[1] < 2000  # no blank band under a short page
    before = out.read_bytes()
    with pytest.raises(FactoryError, match="not pictured.*console error: no"):
        screenshot(page(tmp_path, '<script>console.error("no")</script>', name="bad.html"), out)
    assert out.read_bytes() == before  # left as it was


def test_a_page_that_is_not_there_or_does_not_load_is_one_error(tmp_path):
    with pytest.raises(FactoryError, match="nowhere.html: no such page"):
        check_page(tmp_path / "nowhere.html")
    with pytest.raises(FactoryError, match="slow.html: the page did not load .*Timeout"):
        check_page(page(tmp_path, '<img src="slow.png">', name="slow.html"), timeout_s=0.001)
    with pytest.raises(FactoryError, match="false: headless Chromium did not start"):
        check_page(page(tmp_path, ""), chromium=Path("/bin/false"))


# --- the real report page -------------------------------------------------------------------------------------
# the tiny run of the page's own tests (tests/test_report_page.py: datasets, rejected samples with evidence,
# metrics, dvclive curves), so the browser sees the page those tests check piece by piece
sys.path.insert(0, str(Path(__file__).parent))
from test_report_page import inputs  # noqa: E402
from test_report_page import run as tiny_run  # noqa: E402,F401  (its module fixture, here named tiny_run)


@pytest.fixture(scope="module")
def report_page(request):
    """reports/index.html as the report stage writes it (factory.measure.page.build), from the tiny run."""
    from factory.measure.page import build

    root = request.getfixturevalue("tiny_run")
    out = root / "reports" / "index.html"
    out.write_text(build(inputs(root)).html)
    return out


@pytest.fixture(scope="module")
def report_check(report_page, chromium):
    return check_page(report_page)


def test_the_report_page_loads_clean_with_every_section_and_image(report_check):
    assert report_check.problems(REPORT_SECTIONS) == [], report_check  # no error, no request out, all decoded
    assert report_check.images >= 6 and report_check.console_warnings == []


def test_the_report_page_pictured(report_page, tmp_path):
    out = tmp_path / "report.png"
    screenshot(report_page, out, width=1280, height=2000, sections=REPORT_SECTIONS)
    im = Image.open(out)
    assert im.width == 1280 and 400 < im.height <= 2000
    assert len(set(im.convert("L").resize((64, 64)).getdata())) > 8  # drawn, not blank
