"""The app in a real browser: Debian's Chromium driven by Playwright (never ``playwright install``).

Uploads an image, runs a comparison, finds the output images, the metrics table, the error maps and the
slider pair's difference map with their colour bars, runs a short fine-tune, opens "Model zoo", "Results"
(with its plots) and "How it works", and saves screenshots to a temporary folder: a test never writes
into tracked files. To refresh README's screenshots (with the bundled
``checkpoints/tiny-*-x4`` models, so the numbers are real)::

    KALDN_SCREENSHOTS_DIR=docs/screenshots python -m pytest tests/test_browser.py

Skipped when ``/usr/bin/chromium`` is absent.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from kaldn.models import variant

from app_server import DEFAULT_VARIANTS, featured_x4, running_app


ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def served(throwaway, tmp_path_factory):
    with running_app(throwaway) as server:
        env_dir = os.environ.get("KALDN_SCREENSHOTS_DIR")
        if env_dir and not server["real"]:
            pytest.fail("KALDN_SCREENSHOTS_DIR is set but there are no bundled checkpoints: the screenshots "
                        "would show untrained models")
        shots = Path(env_dir) if env_dir else tmp_path_factory.mktemp("screenshots")
        shots.mkdir(parents=True, exist_ok=True)
        yield {**server, "shots": shots}


@pytest.fixture(scope="module")
def page(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        pg = context.new_page()
        pg.set_default_timeout(60_000)
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.goto(served["url"], wait_until="load")
        pg.wait_for_selector("#kaldn-run")
        pg.errors = errors
        yield pg
        browser.close()


def _text(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def test_compare_tab(served, page):
    page.set_input_files("#kaldn-input input[type=file]", str(ROOT / "examples" / "chelsea.png"))
    page.wait_for_selector("#kaldn-input img")
    page.click("#kaldn-run")
    # Outputs: the slider's two images, the zoomed crops and the metrics table.
    page.wait_for_function(
        "document.querySelectorAll('#kaldn-gallery img').length >= 3", timeout=180_000)
    page.wait_for_selector("#kaldn-slider img")
    assert page.locator("#kaldn-slider img").count() >= 2
    crops = page.locator("#kaldn-gallery img").count()
    table = _text(page, "#kaldn-metrics")
    assert "Bicubic" in table and "PSNR" in table
    psnrs = [float(x) for x in re.findall(r"\b(\d{2}\.\d{3})\b", table)]
    assert psnrs, table
    expected_rows = 1 + len([v for v in DEFAULT_VARIANTS if not served["real"]
                             or variant(v).model_name(4) in served["real"]])
    expected_rows += len(featured_x4()) if served["real"] else 0  # the small showcase, ticked beside them
    assert crops == expected_rows + 2  # + LR input and ground truth
    assert "Best PSNR" in _text(page, "#kaldn-status")
    files = _text(page, "#kaldn-files")
    assert "bicubic-x4" in files and "metrics" in files and "tiny-" in files

    # Error maps (one per output, each with its colour bar drawn in) and the slider pair's difference map.
    page.wait_for_selector("#kaldn-errors img")
    assert "one scale" in _text(page, "#kaldn-errors-note")
    page.wait_for_selector("#kaldn-pair-map img")
    assert "closer to the ground truth" in _text(page, "#kaldn-pair-note")
    for selector in ("#kaldn-pair-map img", "#kaldn-errors img"):  # maps with a title and a bar: taller than wide
        size = page.eval_on_selector(selector, "img => [img.naturalWidth, img.naturalHeight]")
        assert size[1] > 256 and size[0] >= 256, (selector, size)

    # A typed centre (Enter) moves the crops.
    before = page.locator("#kaldn-gallery img").first.get_attribute("src")
    drawn = page.locator("#kaldn-picker img").get_attribute("src")
    cx = page.locator("#kaldn-cx input")
    cx.fill("40")
    cx.press("Enter")
    page.wait_for_function(
        "(b) => document.querySelector('#kaldn-gallery img').getAttribute('src') !== b", arg=before)
    # The picker is drawn again with the new region: click it once it has loaded, not while it is replaced.
    page.wait_for_function("(d) => { const img = document.querySelector('#kaldn-picker img');"
                           " return img.getAttribute('src') !== d && img.complete; }", arg=drawn)

    # Click the zoom picker: the crops follow.
    before = page.locator("#kaldn-gallery img").first.get_attribute("src")
    picker = page.locator("#kaldn-picker img")
    picker.scroll_into_view_if_needed()
    box = picker.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.36)  # an eye
    page.wait_for_function(
        "(b) => document.querySelector('#kaldn-gallery img').getAttribute('src') !== b", arg=before)
    time.sleep(1.0)
    page.screenshot(path=str(served["shots"] / "compare.png"), full_page=True)
    page.locator("#kaldn-errors").scroll_into_view_if_needed()
    page.locator("#kaldn-pair-map").screenshot(path=str(served["shots"] / "pair_map.png"))
    page.locator("#kaldn-errors").screenshot(path=str(served["shots"] / "error_maps.png"))
    assert not page.errors, page.errors


def test_a_bad_upload_is_reported_at_once(served, page, tmp_path):
    page.get_by_role("tab", name="Compare").click()
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello, I am text")
    page.set_input_files("#kaldn-input input[type=file]", str(bad))
    page.wait_for_function("document.querySelector('#kaldn-status').innerText.includes('cannot be used')")
    assert "not an image" in _text(page, "#kaldn-status")
    # Clearing it asks for an image again (and the later tabs measure the last comparison's input, not this).
    page.locator("#kaldn-input button[aria-label='Remove Image']").click()
    page.wait_for_function("document.querySelector('#kaldn-status').innerText.includes('Upload an image')")


def test_finetune_tab(served, page):
    page.get_by_role("tab", name="Fine-tune").click()
    iters = page.locator("#kaldn-ft-iters input[type=number]")
    iters.fill("20")
    iters.press("Enter")
    page.click("#kaldn-ft-start")
    page.wait_for_function(
        "/Finished|Cancelled/.test(document.querySelector('#kaldn-ft-status').innerText)", timeout=300_000)
    status = _text(page, "#kaldn-ft-status")
    assert "Fine-tuned #" in status, status
    time.sleep(1.5)  # let the plots settle
    page.screenshot(path=str(served["shots"] / "finetune.png"), full_page=True)
    # The new model is offered on the Compare tab.
    page.get_by_role("tab", name="Compare").click()
    assert "Fine-tuned #" in _text(page, "#kaldn-variants")
    assert not page.errors, page.errors


def test_zoo_tab(served, page):
    page.get_by_role("tab", name="Model zoo").click()
    page.wait_for_function("document.querySelector('#kaldn-zoo').innerText.includes('tiny-')")
    time.sleep(1.0)
    page.screenshot(path=str(served["shots"] / "zoo.png"), full_page=True)
    page.get_by_role("radio", name="x4").first.check()
    page.wait_for_function("!/-x[23]\\b/.test(document.querySelector('#kaldn-zoo').innerText)")
    table = _text(page, "#kaldn-zoo")
    for name in served["real"]:  # every shipped x4 model, with its measured Set5 PSNR
        assert name in table, name
    if served["real"]:
        assert re.search(r"\b\d{2}\.\d{2} / 0\.\d{4}\b", table), table
    assert "x4: CPU ms" in _text(page, "#kaldn-zoo-timing")  # which machine timed the CPU ms column
    assert not page.errors, page.errors


def test_results_tab(served, page):
    page.get_by_role("tab", name="Results").click()
    page.wait_for_function("document.querySelector('#kaldn-claims').innerText.length > 50", timeout=60_000)
    # The plots are drawn (Vega renders into a canvas or an svg) with the published points' legend.
    for plot in ("#kaldn-cost-cpu", "#kaldn-cost-params"):
        page.wait_for_selector(f"{plot} canvas, {plot} svg")
    if served["real"]:
        assert "seed-to-seed spread" in _text(page, "#kaldn-claims")
    assert "log.jsonl" in _text(page, "#kaldn-curves-note")
    time.sleep(2.0)
    page.screenshot(path=str(served["shots"] / "results.png"), full_page=True)
    assert not page.errors, page.errors


def test_how_it_works_tab(served, page):
    page.get_by_role("tab", name="How it works").click()
    page.wait_for_selector("#kaldn-kernels img")
    page.get_by_role("button", name="Measure on the current image").click()
    page.wait_for_function("document.querySelector('#kaldn-hasty').innerText.includes('DSConv')",
                           timeout=120_000)
    summary = _text(page, "#kaldn-hasty")
    assert re.search(r"\*?\*?\d+\.\d%", summary), summary
    if not served["real"] or "tiny-dsconv-x4" in served["real"]:
        assert re.search(r"zeroes \d+\.\d%", summary), summary
    time.sleep(1.5)
    page.screenshot(path=str(served["shots"] / "how_it_works.png"), full_page=True)
    assert not page.errors, page.errors
