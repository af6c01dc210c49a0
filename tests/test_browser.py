"""One real browser session: the app served by `streamlit run`, driven by headless Chromium through Playwright."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")  # None: Playwright's own build
SCREENSHOTS = os.environ.get("XAI_SCREENSHOTS_DIR")  # set to docs/screenshots to refresh the README's pictures


# Chromium on a closed network: no background connections to refused hosts
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    env = {**os.environ, "XAI_STORE_PATH": str(tmp_path / "cases.sqlite")}
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"streamlit did not start: {process.stdout.read().decode()[-2000:]}")
    yield url
    process.terminate()
    process.wait(timeout=20)


def _shot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SCREENSHOTS) / f"{name}.png")
    return path


def test_upload_a_dicom_choose_a_finding_and_see_overlays(server, tmp_path):
    from playwright.sync_api import Error, expect, sync_playwright

    dicom = ROOT / "assets" / "samples" / "dicom" / "samples-0-000003.dcm"  # a phantom effusion
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        except Error as exc:
            pytest.fail(f"no Chromium to drive ({exc.message.splitlines()[0]}): `make test` installs one "
                        "(scripts/setup-browser)")
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        outside: list[str] = []  # every request to anything but the app itself (fonts, icons, help links)
        page.on("request", lambda r: None if r.url.startswith((server, "data:", "blob:")) else outside.append(r.url))
        page.goto(server, wait_until="networkidle")
        expect(page.get_by_text("Load a radiograph to begin")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("not for clinical use").first).to_be_visible(), "the disclaimer on the first screen"
        assert page.get_by_test_id("stSidebarNav").count() == 0, "no legacy pages/ navigation"
        page.locator("input[type=file]").set_input_files(str(dicom))
        expect(page.get_by_text("Window centre")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Findings above their operating point")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Demonstration model")).to_be_visible()
        _shot(page, tmp_path, "case")

        page.get_by_role("link", name="Explain").click()
        expect(page.get_by_text("Finding to explain")).to_be_visible(timeout=60_000)
        page.get_by_test_id("stSelectbox").filter(has_text="Finding to explain").click()
        page.get_by_role("option", name="Effusion").click()
        charts = page.get_by_test_id("stPlotlyChart")
        expect(charts.first).to_be_visible(timeout=120_000)
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 2", timeout=120_000)
        expect(page.locator("strong", has_text="Grad-CAM").first).to_be_visible()
        expect(page.get_by_text("**Finding:** Effusion").or_(page.get_by_text("Finding: Effusion")).first) \
            .to_be_visible(), "the header names the finding"
        assert page.get_by_test_id("stException").count() == 0, "no traceback on the page"
        shot = _shot(page, tmp_path, "explain")
        assert shot.stat().st_size > 50_000

        page.get_by_role("link", name="Refine & certainty").click()
        expect(page.get_by_text("Inside-mass")).to_be_visible(timeout=60_000)
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 4", timeout=60_000)
        _shot(page, tmp_path, "refine")

        page.get_by_role("link", name="Concepts").click()
        expect(page.get_by_text("Neuron browser")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Representative images")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Search concepts")).to_be_visible(timeout=60_000)
        expect(page.get_by_test_id("stDataFrame").first).to_be_visible(timeout=60_000)
        page.wait_for_function("document.querySelectorAll('[data-testid=stSkeleton]').length === 0", timeout=60_000)
        _shot(page, tmp_path, "concepts")

        page.get_by_role("link", name="Evaluate").click()
        expect(page.get_by_text("Metric groups")).to_be_visible(timeout=60_000)
        _shot(page, tmp_path, "evaluate")

        page.get_by_role("link", name="Review").click()
        expect(page.get_by_text("Does this explanation look right?").first).to_be_visible(timeout=60_000)
        page.get_by_text("agree", exact=True).first.click()
        page.get_by_role("button", name="Save verdict").first.click()
        expect(page.get_by_text("Saved:").first).to_be_visible(timeout=60_000)
        _shot(page, tmp_path, "review")
        assert page.get_by_test_id("stException").count() == 0
        assert outside == [], f"requests outside the app: {outside[:5]}"
        browser.close()


def test_a_real_radiograph_is_flagged_and_its_verdict_reopens_it_from_the_worklist(server, tmp_path, real_cxr):
    from playwright.sync_api import expect, sync_playwright

    from xai_core.models.ood import UNRELIABLE, banner

    radiograph = real_cxr / "nih" / "00000001_000.png"  # a real NIH film: nothing like the phantom world
    warning = banner().split(":")[0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(server, wait_until="networkidle")
        expect(page.get_by_text("Load a radiograph to begin")).to_be_visible(timeout=60_000)
        page.locator("input[type=file]").set_input_files(str(radiograph))
        expect(page.get_by_text("Findings above their operating point")).to_be_visible(timeout=60_000)
        expect(page.get_by_text(warning)).to_be_visible(timeout=60_000), "the out-of-domain banner on the Case page"
        expect(page.get_by_text("Out-of-domain score")).to_be_visible()
        _shot(page, tmp_path, "out-of-domain")

        page.get_by_role("link", name="Explain").click()
        expect(page.get_by_text("Finding to explain")).to_be_visible(timeout=60_000)
        expect(page.get_by_text(warning)).to_be_visible(timeout=60_000), "the banner on the Explain page too"
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 2", timeout=120_000)
        expect(page.get_by_text(UNRELIABLE).first).to_be_visible(), "each tile is marked unreliable"
        expect(page.get_by_role("button", name="All maps (NPZ")).to_be_visible(timeout=120_000)

        page.get_by_role("link", name="Review").click()
        expect(page.get_by_text("Does this explanation look right?").first).to_be_visible(timeout=60_000)
        expect(page.get_by_text(warning)).to_be_visible()
        form = page.get_by_test_id("stForm").first
        expect(form.get_by_text("original")).to_be_visible(), "the verdict form shows the original..."
        expect(form.get_by_text("overlay")).to_be_visible(), "...beside the overlay"
        expect(form.get_by_text("probability")).to_be_visible(), "and the finding's probability"
        expect(form.get_by_text(UNRELIABLE)).to_be_visible()
        form.get_by_text("disagree", exact=True).click()
        form.get_by_label("Comment").fill("heat on the clavicle")
        form.get_by_role("button", name="Save verdict").click()
        expect(page.get_by_test_id("stToast").first).to_be_visible(timeout=60_000), "a Saved toast"
        expect(page.get_by_text("Saved:").first).to_be_visible()
        expect(form.get_by_text("Latest verdict: disagree")).to_be_visible(timeout=60_000)

        page.get_by_role("tab", name="Worklist").click()
        worklist = page.get_by_role("tabpanel", name="Worklist")
        expect(worklist.get_by_test_id("stDataFrame").first).to_be_visible(timeout=60_000)
        expect(worklist.get_by_role("button", name="Export case report (HTML)")).to_be_visible()
        listed = worklist.get_by_role("combobox", name="Case").input_value()
        assert "case-" in listed and "00000001" not in listed, "a stored case (shared by all sessions) has no file name"
        _shot(page, tmp_path, "worklist")
        worklist.get_by_role("button", name="Open in Explain").click()
        expect(page.get_by_text("Finding to explain")).to_be_visible(timeout=60_000), "the worklist reopens the case"
        expect(page.get_by_text(warning)).to_be_visible(timeout=60_000)
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 2", timeout=120_000)
        assert page.get_by_test_id("stException").count() == 0, "no traceback on any page"
        browser.close()
