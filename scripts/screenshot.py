"""Picture a page as headless Chromium draws it: the README's ``docs/report.png`` of ``reports/index.html``.

    python scripts/screenshot.py PAGE OUT_PNG [--width 1280] [--height 2000] [--full-page] [--sections IDS]
    # make screenshot (after make run): reports/index.html -> docs/report.png

Debian's Chromium (``make browser``) driven by Playwright: factory/measure/browser.py, the same code as the
browser test. The page is checked first: a console or script error, a failed or external request, an image that
did not decode or a missing section (``--sections``: comma-separated ids, the report's by default; empty for
none) gets no picture but one line on stderr and exit code 2, and ``OUT_PNG`` stays as it was.
"""

from factory.core.stage import run_stage, stage_args
from factory.measure.browser import REPORT_SECTIONS, screenshot


def main() -> None:
    args = stage_args(__doc__, ("page", "the HTML file to picture"), ("out", "the PNG to write"),
                      ("--width", "the window's width in pixels", {"type": int, "default": 1280}),
                      ("--height", "the window's height in pixels: the picture's, unless --full-page",
                       {"type": int, "default": 2000}),
                      ("--full-page", "picture the whole page, however tall",
                       {"action": "store_true", "default": False}),
                      ("--sections", "ids the page must have, comma-separated",
                       {"default": ",".join(REPORT_SECTIONS)}))
    sections = [s for s in args.sections.split(",") if s]
    check = screenshot(args.page, args.out, full_page=args.full_page, width=args.width, height=args.height,
                       sections=sections)
    print(f"{args.out}: {args.page} as headless Chromium draws it ({check.images} images, sections "
          f"{', '.join(sections) or 'not checked'})")


if __name__ == "__main__":
    run_stage(main)
