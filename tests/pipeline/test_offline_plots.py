"""`dvc plots show` pages render fully offline wherever they are written, checked in a real headless Chromium
with the network cut off.

`npm ci` runs .dvc/offline_plots.mjs, which inlines Vega from node_modules/ into a copy of the committed
template (.dvc/plots_offline.html, not committed) and selects it in .dvc/config.local; the pages then need
no other file and no network, so they draw from any folder, moved or not. tests/pipeline/browser/
render_check.mjs (playwright-core, driving the system Chromium) loads a page, refuses every non-file request
and reports what drew. Skipped, with the reason, where Node, `npm ci` or Chromium are missing; .ci/run
installs them.
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
VEGA_PLOTS = ["Loss", "Accuracy", "Learning_rate", "Confusion", "Reliability"]  # the ids DVC gives dvc.yaml's plots
IMAGES = ["accuracy_plot", "confusion_matrix", "loss_curve", "misclassified", "reliability"]


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
    """The synthetic project, reproduced, set up as `npm ci` sets up a clone (the offline page template)."""
    tmp = tmp_path_factory.mktemp("offline_plots")
    mirror = tmp / "mirror"
    project = make_project(tmp, write_mirror(mirror), {"epochs": 2})
    env = project_env(project, mirror)
    run(["dvc", "repro"], project, env)
    (project / "node_modules").symlink_to(ROOT / "node_modules", target_is_directory=True)
    setup = run(["node", str(ROOT / ".dvc" / "offline_plots.mjs"), str(project)], project, env).stdout
    assert "wrote .dvc/plots_offline.html" in setup and "now uses it" in setup, setup
    (project / "node_modules").unlink()  # the pages must not need it
    return project, env


def render(page: Path, screenshot: Path, env: dict[str, str], timeout_ms: int = 20000) -> dict:
    result = subprocess.run(["node", str(RUNNER), str(page), str(screenshot)], capture_output=True, text=True,
                            env=dict(env, RENDER_TIMEOUT_MS=str(timeout_ms)), timeout=120, check=False)
    assert result.returncode == 0, f"render_check.mjs failed\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


def assert_every_plot_drawn(report: dict, screenshot: Path) -> None:
    assert report["externalRequests"] == [] and report["failedRequests"] == [], report
    assert report["consoleErrors"] == [] and report["pageErrors"] == [], report
    assert "timeout" not in report, report
    assert report["vegaPlots"] == VEGA_PLOTS and report["vegaRendered"] == VEGA_PLOTS, report
    images = {Path(image["src"]).stem.rsplit("_images_", 1)[-1]: image for image in report["images"]}
    assert sorted(images) == IMAGES, report["images"]
    assert all(image["complete"] and image["naturalWidth"] > 0 for image in images.values()), report["images"]
    assert screenshot.stat().st_size > 20_000  # a page of drawn plots, not a blank one


def test_plots_page_renders_every_plot_offline(project, browser, tmp_path):
    project, env = project
    run(["dvc", "plots", "show"], project, env)
    page = project / "dvc_plots" / "index.html"
    html = page.read_text()
    assert "<script src=" not in html  # neither DVC's CDN nor any other file: Vega is inside the page
    screenshot = tmp_path / "offline_plots.png"
    print(f"\nscreenshot of the offline plots page: {screenshot}")
    assert_every_plot_drawn(render(page, screenshot, browser), screenshot)


def test_page_written_anywhere_and_moved_still_renders(project, browser, tmp_path):
    """`dvc plots show -o ANY_DIR`, deep in the project, then the folder moved out of it and opened there."""
    project, env = project
    run(["dvc", "plots", "show", "-o", "deep/nested/plots"], project, env)
    moved = tmp_path / "elsewhere" / "plots"
    moved.parent.mkdir()
    shutil.move(project / "deep" / "nested" / "plots", moved)
    screenshot = tmp_path / "moved.png"
    assert_every_plot_drawn(render(moved / "index.html", screenshot, browser), screenshot)


def test_default_dvc_page_needs_the_internet(project, browser, tmp_path):
    """The control: DVC's own template fetches Vega from a CDN, so offline its plots stay empty."""
    project, env = project
    template = tmp_path / "dvc_default.html"
    template.write_text(PAGE_HTML)
    run(["dvc", "plots", "show", "--html-template", str(template), "-o", "dvc_plots_default"], project, env)
    report = render(project / "dvc_plots_default" / "index.html", tmp_path / "default.png", browser, 1500)
    assert any("cdn.jsdelivr.net" in url for url in report["externalRequests"]), report
    assert report["vegaPlots"] == VEGA_PLOTS and report["vegaRendered"] == [], report


def test_committed_template_says_what_to_do_before_npm_ci(project, browser, tmp_path):
    """Without `npm ci` the committed template is used: it names the fix in place of each plot, offline."""
    project, env = project
    run(["dvc", "plots", "show", "--html-template", ".dvc/plots_template.html", "-o", "no_vega"], project, env)
    report = render(project / "no_vega" / "index.html", tmp_path / "no_vega.png", browser, 1000)
    assert report["vegaRendered"] == [] and report["pageErrors"] == [], report
    assert report["externalRequests"] == [], report  # no fallback to the internet
    assert report["vegaMessages"] and all("npm ci" in text for text in report["vegaMessages"]), report
