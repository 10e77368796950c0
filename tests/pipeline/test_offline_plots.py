"""`dvc plots show` renders fully offline, checked in a real headless Chromium with the network cut off.

The project's template (.dvc/plots_template.html, set by `plots.html_template` in .dvc/config) loads Vega
from node_modules/ (`npm ci`) instead of DVC's CDN. tests/pipeline/browser/render_check.mjs (playwright-core,
driving the system Chromium) loads the generated page, refuses every non-file request and reports what
drew. Skipped, with the reason, where Node, `npm ci` or Chromium are missing; .ci/run installs them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from dvc_render.html import PAGE_HTML
from pipeline_helpers import ROOT, make_project, project_env, run, write_mirror

RUNNER = Path(__file__).resolve().parent / "browser" / "render_check.mjs"
NODE_FILES = ("vega/build/vega.min.js", "vega-lite/build/vega-lite.min.js", "vega-embed/build/vega-embed.min.js",
              "playwright-core/package.json")
VEGA_PLOTS = ["Loss", "Accuracy", "Learning_rate", "Confusion"]  # the ids DVC gives dvc.yaml's plots
IMAGES = ["accuracy_plot", "confusion_matrix", "loss_curve", "misclassified"]


@pytest.fixture(scope="module")
def browser() -> dict[str, str]:
    """Environment for the runner, or skip saying what is missing."""
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    missing = [name for name in NODE_FILES if not (ROOT / "node_modules" / name).is_file()]
    if missing:
        pytest.skip(f"node_modules/ lacks {', '.join(missing)}: run `npm ci` in the project root")
    if chromium is None:
        pytest.skip("no Chromium: apt-get install -y chromium (or set CHROMIUM=/path/to/chrome)")
    return dict(os.environ, CHROMIUM=chromium)


@pytest.fixture(scope="module")
def project(tmp_path_factory, browser):
    """The synthetic project, reproduced, with the root's node_modules/ where `npm ci` would put it."""
    tmp = tmp_path_factory.mktemp("offline_plots")
    mirror = tmp / "mirror"
    project = make_project(tmp, write_mirror(mirror), {"epochs": 2})
    env = project_env(project, mirror)
    run(["dvc", "repro"], project, env)
    (project / "node_modules").symlink_to(ROOT / "node_modules", target_is_directory=True)
    return project, env


def render(page: Path, screenshot: Path, env: dict[str, str], timeout_ms: int = 20000) -> dict:
    result = subprocess.run(["node", str(RUNNER), str(page), str(screenshot)], capture_output=True, text=True,
                            env=dict(env, RENDER_TIMEOUT_MS=str(timeout_ms)), timeout=120, check=False)
    assert result.returncode == 0, f"render_check.mjs failed\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


def test_plots_page_renders_every_plot_offline(project, browser, tmp_path):
    project, env = project
    run(["dvc", "plots", "show"], project, env)
    page = project / "dvc_plots" / "index.html"
    html = page.read_text()
    assert '<script src="https://' not in html  # DVC's CDN script tags were left out
    assert '<script src="../node_modules/vega-embed/build/vega-embed.min.js">' in html

    screenshot = tmp_path / "offline_plots.png"
    report = render(page, screenshot, browser)
    print(f"\nscreenshot of the offline plots page: {screenshot}")
    assert report["externalRequests"] == [] and report["failedRequests"] == [], report
    assert report["consoleErrors"] == [] and report["pageErrors"] == [], report
    assert "timeout" not in report, report
    assert report["vegaPlots"] == VEGA_PLOTS and report["vegaRendered"] == VEGA_PLOTS, report
    images = {Path(image["src"]).stem.removeprefix("workspace_plots_"): image for image in report["images"]}
    assert sorted(images) == IMAGES, report["images"]
    assert all(image["complete"] and image["naturalWidth"] > 0 for image in images.values()), report["images"]
    assert screenshot.stat().st_size > 20_000  # a page of drawn plots, not a blank one


def test_default_dvc_page_needs_the_internet(project, browser, tmp_path):
    """The control: DVC's own template fetches Vega from a CDN, so offline its plots stay empty."""
    project, env = project
    template = tmp_path / "dvc_default.html"
    template.write_text(PAGE_HTML)
    run(["dvc", "plots", "show", "--html-template", str(template), "-o", "dvc_plots_default"], project, env)
    report = render(project / "dvc_plots_default" / "index.html", tmp_path / "default.png", browser, 1500)
    assert any("cdn.jsdelivr.net" in url for url in report["externalRequests"]), report
    assert report["vegaPlots"] == VEGA_PLOTS and report["vegaRendered"] == [], report


def test_page_says_what_to_do_without_node_modules(project, browser, tmp_path):
    """An output folder with no node_modules/ beside it names the fix in place of each plot."""
    project, env = project
    run(["dvc", "plots", "show", "-o", "nested/plots"], project, env)  # ../node_modules is nested/node_modules
    report = render(project / "nested" / "plots" / "index.html", tmp_path / "no_vega.png", browser, 1000)
    assert report["vegaRendered"] == [] and report["pageErrors"] == [], report
    assert report["externalRequests"] == [], report  # no fallback to the internet
    assert report["vegaMessages"] and all("npm ci" in text for text in report["vegaMessages"]), report
