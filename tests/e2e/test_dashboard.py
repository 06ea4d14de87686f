"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright
with `executable_path`), against the control plane on the session's Ray head, with its
token set: sign in, load a template into the launch form, see validation errors next to
their fields, launch the smoke config, watch the run's charts gain points and its log
fill while it trains, see it succeed with its meaning map and storyboard, compare two
runs, and the families and templates pages. Every test fails on a JavaScript error or a
console error. Screenshots of each page go to $RAY_APP_SCREENSHOTS (docs/screenshots/ for
the README) or the test's temporary directory."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.servers import CONTROL_PLANE_TOKEN, PLANE_SMOKE_EPOCHS, ControlPlaneServer

CHROMIUM = Path(os.environ.get("RAY_APP_CHROMIUM", "/usr/bin/chromium"))
TRAINING_TIMEOUT_MS = 600_000


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = os.environ.get("RAY_APP_SCREENSHOTS")
    folder = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.fail(f"the browser tests need Debian's chromium at {CHROMIUM}: apt-get install -y chromium "
                    "(or set RAY_APP_CHROMIUM to a Chromium binary)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root in a container, where Chromium's sandbox cannot start.
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Console:
    """Every console error and uncaught exception of the page, for the tests to assert on."""

    def __init__(self, page: Any) -> None:
        self.problems: list[str] = []
        page.on("console", lambda message: self.problems.append(f"console {message.type}: {message.text}")
                if message.type == "error" else None)
        page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))

    def expect_rejected(self, status: int) -> None:
        """The browser logs a request the API refused on purpose (a 422 for a form the
        test filled in wrong) as a console error; that one, and only that one, is fine."""
        expected = f"the server responded with a status of {status}"
        self.problems = [p for p in self.problems if expected not in p]

    def check(self) -> None:
        assert self.problems == [], "\n".join(self.problems)


@pytest.fixture(scope="module")
def page(browser: Any, control_plane: ControlPlaneServer, plane_smoke: dict[str, Any]) -> Iterator[tuple[Any, Console]]:
    context = browser.new_context(viewport={"width": 1400, "height": 900}, base_url=control_plane.url)
    context.set_default_timeout(30_000)
    tab = context.new_page()
    console = Console(tab)
    yield tab, console
    context.close()


def points(page: Any, chart: str, trace: int = 0) -> int:
    return int(page.evaluate(f"() => (document.getElementById('{chart}').data || [])[{trace}]?.x.length || 0"))


def test_sign_in_then_the_runs_table(page: tuple[Any, Console], plane_smoke: dict[str, Any]) -> None:
    tab, console = page
    tab.goto("/")
    assert tab.url.endswith("/login?next=%2F")  # the token is required
    tab.fill("input[name=token]", "wrong")
    tab.click("button[type=submit]")
    assert "not this server's" in tab.inner_text(".errors")
    console.expect_rejected(401)
    tab.fill("input[name=token]", CONTROL_PLANE_TOKEN)
    tab.click("button[type=submit]")
    row = tab.locator(f"tr[data-run='{plane_smoke['run']}']")
    row.wait_for()
    assert "succeeded" in row.inner_text() and plane_smoke["template"] in row.inner_text()
    tab.select_option("#filter-status", "failed")
    tab.wait_for_selector("#runs-empty:not([hidden])")
    tab.select_option("#filter-status", "")
    row.wait_for()
    console.check()


def test_launch_form_keeps_the_template_shows_errors_saves_and_launches(
    page: tuple[Any, Console], control_plane: ControlPlaneServer, plane_smoke: dict[str, Any], screenshots: Path
) -> None:
    tab, console = page
    template = plane_smoke["template"]
    tab.goto(f"/launch?template={template}")
    tab.wait_for_function(f"document.getElementById('source-name').textContent.includes('{template}')")
    assert tab.input_value("#source-picker") == f"template:{template}"
    assert tab.input_value("[data-key='training.epochs']") == str(PLANE_SMOKE_EPOCHS)
    assert tab.input_value("#family-params [data-param='hidden_size']") == "32"
    assert tab.input_value("#family") == "vit"

    # Clear goes back to the default preset; picking the template again shows it again.
    tab.click("#source-clear")
    tab.wait_for_function("document.getElementById('source-name').textContent.includes('preset digits')")
    assert tab.input_value("[data-key='training.epochs']") == "30"
    tab.select_option("#source-picker", f"template:{template}")
    tab.wait_for_function(f"document.getElementById('source-name').textContent.includes('{template}')")
    assert tab.input_value("[data-key='training.epochs']") == str(PLANE_SMOKE_EPOCHS)

    # Every problem next to its field, nothing launched.
    runs_before = control_plane.session().get(f"{control_plane.api}/runs").json()["total"]
    tab.fill("[data-key='training.lr']", "-1")
    tab.fill("[data-key='training.epochs']", "0")
    tab.fill("#family-params [data-param='hidden_size']", "33")
    tab.click("#launch")
    tab.wait_for_selector("#family-params label.invalid")
    assert "multiple" in tab.inner_text("#family-params label.invalid .error")
    console.expect_rejected(422)
    tab.fill("#family-params [data-param='hidden_size']", "32")
    tab.click("#launch")
    tab.wait_for_selector("label.invalid [data-key='training.lr']")
    lr_error = tab.locator("label:has([data-key='training.lr']) .error").inner_text()
    epochs_error = tab.locator("label:has([data-key='training.epochs']) .error").inner_text()
    assert "greater than 0" in lr_error and "greater than" in epochs_error
    console.expect_rejected(422)
    assert control_plane.session().get(f"{control_plane.api}/runs").json()["total"] == runs_before
    tab.fill("[data-key='training.lr']", "0.003")
    tab.fill("[data-key='training.epochs']", str(PLANE_SMOKE_EPOCHS))
    tab.fill("[data-key='seed']", "1")

    # Save as template: the generated name and description, edited, then saved.
    tab.click("#suggest")
    tab.wait_for_selector("#save-fields:not([hidden])")
    assert tab.input_value("#template-name") == "vit-h32-l2_sklearn-digits_baseline"
    assert "Hidden: 32" in tab.input_value("#template-description")
    tab.fill("#template-name", "dashboard-smoke")
    tab.fill("#template-description", "smoke, seed 1, from the dashboard")
    tab.click("#save-template")
    tab.wait_for_function("document.getElementById('source-name').textContent.includes('dashboard-smoke')")
    saved = control_plane.session().get(f"{control_plane.api}/templates/dashboard-smoke").json()
    assert saved["config"]["seed"] == 1 and saved["description"] == "smoke, seed 1, from the dashboard"

    # The compute budget of the form as it is.
    tab.click("#budget")
    tab.wait_for_selector("#budget-result .stat", timeout=TRAINING_TIMEOUT_MS)
    assert "parameters" in tab.inner_text("#budget-result").lower()
    tab.screenshot(path=str(screenshots / "launch.png"), full_page=True)

    tab.click("#launch")
    tab.wait_for_url(re.compile(r"/runs/smoke_vit_baseline_s1$"))
    console.check()


def test_the_run_page_follows_training_then_shows_what_the_model_learned(
    page: tuple[Any, Console], screenshots: Path
) -> None:
    tab, console = page
    assert tab.url.endswith("/runs/smoke_vit_baseline_s1")
    tab.wait_for_function("(document.getElementById('chart-loss').data || [])[0]?.x.length >= 1",
                          timeout=TRAINING_TIMEOUT_MS)
    first = points(tab, "chart-loss")
    if first < PLANE_SMOKE_EPOCHS:  # the chart gains points while the run trains
        tab.wait_for_function(f"document.getElementById('chart-loss').data[0].x.length > {first}", timeout=TRAINING_TIMEOUT_MS)
    tab.wait_for_function("document.getElementById('log').textContent.includes('==== start: ray-app run')")
    tab.wait_for_selector("#run-status.status-succeeded", timeout=TRAINING_TIMEOUT_MS)
    assert points(tab, "chart-loss") == points(tab, "chart-loss", 1) == PLANE_SMOKE_EPOCHS
    assert points(tab, "chart-accuracy") == PLANE_SMOKE_EPOCHS
    tab.wait_for_function("document.getElementById('log').textContent.includes('==== end: exit 0')")
    assert tab.locator(".stage-complete").count() == 6

    tab.wait_for_selector("#chart-map .scatterlayer .point")
    note = tab.inner_text("#map-note")
    shown = int(re.match(r"(\d+) of", note).group(1))
    assert tab.locator("#chart-map .scatterlayer .point").count() == shown > 0
    tab.select_option("#map-color", "decision")
    tab.wait_for_function("document.querySelector('#chart-map').layout.legend.title.text === 'decision'")
    legend = tab.locator("#chart-map .legend").text_content() or ""
    assert set(re.findall(r"accept|assist|abstain", legend)) <= {"accept", "assist", "abstain"} and "accept" in legend
    tab.locator("#chart-map .scatterlayer .point").first.click(force=True)
    tab.wait_for_selector("#example img")
    assert "prediction" in tab.inner_text("#example")

    tab.wait_for_selector("#storyboard .tile img")
    categories = tab.locator("#storyboard section.story[data-category]")
    assert categories.count() >= 4
    assert "confident wrong" in tab.inner_text("#storyboard").lower()
    assert "ray-app serve" in tab.inner_text("#serve") and "smoke_vit_baseline_s1@" in tab.inner_text("#serve")
    assert "val_test accuracy" in tab.inner_text("#summary").lower()
    tab.wait_for_selector("#chart-reliability .scatterlayer")
    tab.wait_for_timeout(500)  # the last images decode
    tab.screenshot(path=str(screenshots / "run.png"), full_page=True)
    console.check()


def test_compare_two_runs(page: tuple[Any, Console], plane_smoke: dict[str, Any], screenshots: Path) -> None:
    tab, console = page
    tab.goto("/")
    for run in (plane_smoke["run"], "smoke_vit_baseline_s1"):
        tab.locator(f"tr[data-run='{run}'] input[type=checkbox]").check()
    tab.screenshot(path=str(screenshots / "runs.png"), full_page=True)
    tab.click("#compare")
    tab.wait_for_url(re.compile(r"/compare\?names="))
    tab.wait_for_selector("#cmp-diff tr[data-key='seed']")
    for chart in ("cmp-accuracy", "cmp-val-loss", "cmp-train-loss"):
        assert tab.evaluate(f"document.getElementById('{chart}').data.length") == 2
        assert points(tab, chart, 0) == points(tab, chart, 1) == PLANE_SMOKE_EPOCHS
    seed_row = tab.inner_text("#cmp-diff tr[data-key='seed']")
    assert "0" in seed_row and "1" in seed_row
    assert tab.locator("#cmp-results tbody tr").count() >= 8
    tab.screenshot(path=str(screenshots / "compare.png"), full_page=True)
    console.check()


def test_families_and_templates_pages(page: tuple[Any, Console], plane_smoke: dict[str, Any], screenshots: Path) -> None:
    tab, console = page
    tab.goto("/families")
    variant = tab.locator("section[data-family='vit'] tr[data-variant='vit-h32-l2']")
    variant.wait_for()
    assert plane_smoke["run"] in variant.inner_text() and "smoke_vit_baseline_s1" in variant.inner_text()
    assert tab.locator("section.family").count() >= 5
    tab.screenshot(path=str(screenshots / "families.png"), full_page=True)

    tab.goto("/templates")
    tab.wait_for_selector("tr[data-template='dashboard-smoke']")
    assert "smoke, seed 1, from the dashboard" in tab.inner_text("tr[data-template='dashboard-smoke']")
    tab.screenshot(path=str(screenshots / "templates.png"), full_page=True)
    delete = tab.locator("tr[data-template='dashboard-smoke'] button.danger")
    delete.click()
    assert "again" in delete.inner_text()  # asked twice
    delete.click()
    tab.wait_for_selector("tr[data-template='dashboard-smoke']", state="detached")
    assert tab.locator(f"tr[data-template='{plane_smoke['template']}']").count() == 1
    console.check()
