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

from tests.helpers.servers import (
    CONTROL_PLANE_DRIFT_PSI,
    CONTROL_PLANE_TOKEN,
    PLANE_SMOKE_EPOCHS,
    ControlPlaneServer,
    wait_for,
)

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

    # The run name, live: the template's run exists (same config), so the choices show;
    # another seed is another run.
    assert tab.inner_text("#run-name") == f"run {plane_smoke['run']} exists: choose above what to do"
    assert "the same config" in tab.inner_text("#exists-text") and tab.is_visible("#exists")
    tab.fill("[data-key='seed']", "7")
    tab.wait_for_function("document.getElementById('run-name').textContent === 'will train run smoke_vit_baseline_s7'")
    assert not tab.is_visible("#exists")
    tab.fill("[data-key='seed']", "0")
    tab.wait_for_selector("#exists:not([hidden])")
    tab.check("#exists input[value=new]")
    assert tab.inner_text("#run-name") == f"will train run {plane_smoke['run']}-2"

    # Clear goes back to the default preset; picking the template again shows it again.
    tab.click("#source-clear")
    tab.wait_for_function("document.getElementById('source-name').textContent.includes('preset digits')")
    assert tab.input_value("[data-key='training.epochs']") == "30"
    # The default's ConvNeXt: its list parameters typed comma-separated, read back as lists.
    assert tab.input_value("#family") == "convnext"
    assert tab.input_value("#family-params [data-param='hidden_sizes']") == "32, 64"
    tab.wait_for_function("document.getElementById('run-name').textContent.startsWith("
                          "'will train run sklearn_digits_convnext_baseline_lr0.004_s0')")
    tab.select_option("#source-picker", f"template:{template}")
    tab.wait_for_function(f"document.getElementById('source-name').textContent.includes('{template}')")
    assert tab.input_value("[data-key='training.epochs']") == str(PLANE_SMOKE_EPOCHS)

    # Every problem at once, each next to its field (a family parameter's too), quoting
    # what was typed; nothing launched.
    runs_before = control_plane.session().get(f"{control_plane.api}/runs").json()["total"]
    tab.fill("[data-key='training.lr']", "-1")
    tab.fill("[data-key='training.epochs']", "0")
    tab.fill("[data-key='calibration.guardrail.widths']", "0, abc")
    tab.fill("#family-params [data-param='hidden_size']", "33")
    tab.click("#launch")
    tab.wait_for_selector("#family-params label.invalid")
    tab.wait_for_selector("label.invalid [data-key='training.lr']")
    assert "multiple" in tab.inner_text("#family-params label.invalid .error")
    lr_error = tab.locator("label:has([data-key='training.lr']) .error").inner_text()
    epochs_error = tab.locator("label:has([data-key='training.epochs']) .error").inner_text()
    assert "greater than 0" in lr_error and "greater than" in epochs_error
    widths_error = tab.locator("label:has([data-key='calibration.guardrail.widths']) .error").inner_text()
    assert widths_error.startswith("item 2: ") and "'abc'" in widths_error, widths_error
    assert tab.is_hidden("#form-errors"), tab.inner_text("#form-errors")  # nothing left unplaced
    tab.fill("#family-params [data-param='hidden_size']", "32")
    # One width, no band: this run's policy accepts or abstains, as the default preset's
    # sweep chose on its own; the run page's review link must then lead to the abstentions.
    tab.fill("[data-key='calibration.guardrail.widths']", "0")
    tab.click("#launch")
    tab.wait_for_selector("label.invalid [data-key='training.lr']")
    assert tab.locator("#family-params label.invalid").count() == 0
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

    # The compute budget of the form as it is; the seconds count while it measures and
    # the server answers other requests meanwhile.
    tab.click("#budget")
    tab.wait_for_selector("#budget-progress:not([hidden])")
    assert control_plane.session().get(f"{control_plane.api}/runs", timeout=5).status_code == 200
    tab.wait_for_selector("#budget-result .stat", timeout=TRAINING_TIMEOUT_MS)
    assert "parameters" in tab.inner_text("#budget-result").lower()
    assert re.fullmatch(r"(measured|from the cache) in \d+\.\d s", tab.inner_text("#budget-progress"))
    tab.screenshot(path=str(screenshots / "launch.png"), full_page=True)

    tab.click("#launch")
    tab.wait_for_url(re.compile(r"/runs/smoke_vit_baseline_s1$"))
    console.expect_rejected(422)  # the live name preview met the form while it was invalid
    console.check()


def test_the_run_page_follows_training_then_shows_what_the_model_learned(
    page: tuple[Any, Console], control_plane: ControlPlaneServer, screenshots: Path
) -> None:
    tab, console = page
    assert tab.url.endswith("/runs/smoke_vit_baseline_s1")
    # Until the first epoch, a sentence instead of empty axes; the job's news is not an error.
    if tab.evaluate("!(document.getElementById('chart-loss').data)"):
        assert tab.is_hidden("#charts") and "No epoch has finished yet" in tab.inner_text("#charts-empty")
    tab.wait_for_function("(document.getElementById('chart-loss').data || [])[0]?.x.length >= 1",
                          timeout=TRAINING_TIMEOUT_MS)
    assert tab.is_hidden("#charts-empty")
    if tab.is_visible("#run-message"):
        assert tab.get_attribute("#run-message", "class") == "notice"
    first = points(tab, "chart-loss")
    if first < PLANE_SMOKE_EPOCHS:  # the chart gains points while the run trains
        tab.wait_for_function(f"document.getElementById('chart-loss').data[0].x.length > {first}", timeout=TRAINING_TIMEOUT_MS)
    tab.wait_for_function("document.getElementById('log').textContent.includes('==== start: ray-app run')")
    tab.wait_for_selector("#run-status.status-succeeded", timeout=TRAINING_TIMEOUT_MS)
    assert points(tab, "chart-loss") == points(tab, "chart-loss", 1) == PLANE_SMOKE_EPOCHS
    assert points(tab, "chart-accuracy") == PLANE_SMOKE_EPOCHS
    assert tab.is_hidden("#chart-lr-range")  # a fixed learning rate: no range test to show
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
    board = tab.inner_text("#storyboard")
    assert "confident wrong" in board.lower() and "right" in tab.inner_text("#storyboard .legend")
    assert not re.search(r"\b1 (rows|mistakes)\b", board)
    # A tile's colour is its outcome: green when right, red when wrong, whatever the decision.
    for tile in tab.locator("#storyboard .tile").all():
        label, prediction = re.match(r"label (\S+) → (\S+)", tile.inner_text()).groups()
        assert tile.get_attribute("data-outcome") == ("right" if label == prediction else "wrong")
    outcomes = {c: set(tab.eval_on_selector_all(f"section[data-category='{c}'] .tile", "ts => ts.map(t => t.dataset.outcome)"))
                for c in ("confident_right", "confident_wrong")}
    assert outcomes["confident_right"] <= {"right"} and outcomes["confident_wrong"] <= {"wrong"}
    colour = tab.eval_on_selector("#storyboard .tile", "t => getComputedStyle(t).borderTopColor")
    assert colour in ("rgb(22, 163, 74)", "rgb(220, 38, 38)")
    # An empty group says so in a sentence instead of showing nothing.
    for section in categories.all():
        count = int(re.search(r"· (\d+) rows?", section.inner_text()).group(1))
        if count == 0 and "has no assist band" not in section.inner_text() and "accepts every input" not in section.inner_text():
            assert section.locator(".empty-story").inner_text().startswith("None of the ")
        else:
            assert section.locator(".empty-story").count() == 0
    assert "ray-app serve" in tab.inner_text("#serve") and "smoke_vit_baseline_s1@" in tab.inner_text("#serve")
    assert "val_test accuracy" in tab.inner_text("#summary").lower()
    # Its guardrail had one width to try (the launch form's), so no assist band: a person
    # is sent the abstained answers, and the review link says so and opens on them.
    policy = control_plane.session().get(f"{control_plane.api}/runs/smoke_vit_baseline_s1", timeout=10).json()[
        "evaluation"]["policy"]
    assert policy["assist_rate"] == 0 and policy["abstain_rate"] > 0, policy
    assert tab.inner_text("#review-link") == "Review the abstained answers"
    assert tab.get_attribute("#review-link", "href") == "/runs/smoke_vit_baseline_s1/review?decisions=assist,abstain"
    tab.wait_for_selector("#chart-reliability .scatterlayer")
    tab.wait_for_timeout(500)  # the last images decode
    tab.screenshot(path=str(screenshots / "run.png"), full_page=True)

    # t-SNE on the smoke run's 75 val_test rows is refused (perplexity 30 needs over 90):
    # the reason is shown, not "computing…" forever.
    tab.select_option("#map-method", "tsne")
    tab.wait_for_selector("#map-note.error")
    assert "perplexity" in tab.inner_text("#map-note") and "computing" not in tab.inner_text("#map-note")
    console.expect_rejected(422)
    console.check()


def test_a_run_trained_with_lr_auto_shows_its_range_test(
    page: tuple[Any, Console], plane_smoke: dict[str, Any], screenshots: Path
) -> None:
    tab, console = page
    tab.goto(f"/runs/{plane_smoke['run']}")
    # The range test's curve with the chosen rate marked, beside the epoch charts.
    tab.wait_for_selector("#chart-lr-range:not([hidden]) .main-svg", timeout=60_000)
    assert "Learning-rate range test" in tab.inner_text("#chart-lr-range")
    chosen = tab.evaluate("document.getElementById('chart-lr-range').data[1].name")
    assert chosen.startswith("chosen "), chosen
    tab.locator("#charts").screenshot(path=str(screenshots / "run-lr-auto.png"))
    console.check()


def _inverted(content: bytes) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(255 - np.asarray(Image.open(io.BytesIO(content)))).save(out, format="PNG")
    return out.getvalue()


def test_the_monitor_shows_served_answers_and_three_assist_answers_are_labelled_with_the_keyboard(
    page: tuple[Any, Console], control_plane: ControlPlaneServer, plane_smoke: dict[str, Any], screenshots: Path
) -> None:
    """On the template's run (its policy has an assist band; the dashboard's own run has
    none): the monitor of its recorded answers, then the Review page labels three with
    the keyboard, exports them, and lists the abstentions and the audit sample."""
    import pyarrow.parquet as pq

    from tests.helpers.review import answer_and_record

    tab, console = page
    http, api, run = control_plane.session(), control_plane.api, plane_smoke["run"]
    run_dir = control_plane.runs / run
    images = [bytes(b) for b in pq.read_table(run_dir / "splits" / "val_test").to_pydict()["image"]]
    # The trained bundle's real answers, recorded as its Serve replica records them:
    # val_test digits, then the same digits inverted (inputs it never saw).
    answered = answer_and_record(run_dir / "bundle", control_plane.runs, images, "in-range")
    answered += answer_and_record(run_dir / "bundle", control_plane.runs, [_inverted(c) for c in images], "inverted")
    assist = sum(p.decision == "assist" for p in answered)
    assert assist >= 3, f"the smoke model sent only {assist} answers to a person"

    tab.goto(f"/runs/{run}")
    tab.wait_for_selector("#monitor-body:not([hidden])", timeout=60_000)
    assert tab.inner_text("#monitor-note").startswith(f"{len(answered)} answers")
    monitor = http.get(f"{api}/runs/{run}/monitor", params={"window_s": 3600}, timeout=30).json()
    assert monitor["answers"] == len(answered) and monitor["decisions"]["assist"]["count"] == assist
    # The server's drift threshold, unless a request gives its own.
    assert (monitor["drift"]["psi_threshold"], monitor["drift"]["p_threshold"]) == (CONTROL_PLANE_DRIFT_PSI, 0.01)
    lenient = http.get(f"{api}/runs/{run}/monitor", params={"window_s": 3600, "drift_psi": 9}, timeout=30).json()
    assert lenient["drift"]["psi_threshold"] == 9 and not lenient["drift"]["flagged"], lenient["drift"]
    banner = tab.inner_text("#monitor-drift")
    assert ("Drift" in banner) == monitor["drift"]["flagged"], (banner, monitor["drift"])
    assert ("classes it predicts" in banner) == monitor["drift"]["by_prediction"], banner
    assert ("calibrated confidences (" in banner) == monitor["drift"]["by_confidence"], banner
    assert f"PSI > {CONTROL_PLANE_DRIFT_PSI}" in banner, banner
    assert points(tab, "chart-monitor-confidence") == 40 and points(tab, "chart-monitor-decisions") == 3
    assert points(tab, "chart-monitor-classes") == 10
    assert re.search(r"LATENCY P50 / P99\s+[0-9.]+ / [0-9.]+ ms", tab.inner_text("#monitor-stats"), re.IGNORECASE)
    tab.locator("#monitor-card").screenshot(path=str(screenshots / "monitor.png"))

    # The review page: the least confident assist answer first; keys label, skip, undo.
    tab.click("#review-link")
    tab.wait_for_url(re.compile(rf"/runs/{run}/review$"))
    tab.wait_for_selector("#review-item:not([hidden]) #review-input img")
    assert tab.inner_text("#review-counts").startswith(f"{assist} answers to review")
    tab.fill("#reviewer", "dana")
    tab.locator("#reviewer").dispatch_event("change")
    tab.locator("body").click(position={"x": 5, "y": 5})  # the keys go to the page, not the name field
    first = tab.get_attribute("#review-item", "data-item")
    tab.keyboard.press("3")
    tab.wait_for_function(f"document.getElementById('review-item').dataset.item !== '{first}'")
    second = tab.get_attribute("#review-item", "data-item")
    tab.keyboard.press("s")  # skipped, then taken back
    tab.wait_for_function(f"document.getElementById('review-item').dataset.item !== '{second}'")
    tab.keyboard.press("u")
    tab.wait_for_function(f"document.getElementById('review-item').dataset.item === '{second}'")
    tab.keyboard.press("7")
    tab.wait_for_function(f"document.getElementById('review-item').dataset.item !== '{second}'")
    third = tab.get_attribute("#review-item", "data-item")
    tab.screenshot(path=str(screenshots / "review.png"), full_page=True)
    tab.keyboard.press("1")
    tab.wait_for_function("document.getElementById('review-counts').textContent.includes('3 labelled')")
    labelled = http.get(f"{api}/runs/{run}/review", params={"status": "labelled"}, timeout=30).json()
    by_item = {item["id"]: item["review"] for item in labelled["items"]}
    assert {i: (r["label"], r["reviewer"]) for i, r in by_item.items()} == {
        first: ("3", "dana"), second: ("7", "dana"), third: ("1", "dana")}
    assert labelled["counts"]["skipped"] == 0  # the skip was undone

    tab.click("#review-export")
    tab.wait_for_selector("#review-exported:not([hidden])")
    path = re.search(r"written to (\S+\.parquet)", tab.inner_text("#review-export-result")).group(1)
    exported = pq.read_table(path).to_pydict()
    assert sorted(exported["label"]) == ["1", "3", "7"] and len(exported["image"]) == 3

    # Opened on assist and abstain answers, as the run page links them when its policy has no assist band.
    tab.goto(f"/runs/{run}/review?decisions=assist,abstain")
    tab.wait_for_function("document.getElementById('review-counts').textContent.includes('labelled')")
    assert tab.input_value("#review-decisions") == "assist,abstain"
    both = http.get(f"{api}/runs/{run}/review", params={"decisions": "assist,abstain"}, timeout=30).json()["counts"]
    assert both["pending"] > assist - 3  # the abstained answers too
    assert tab.inner_text("#review-counts").startswith(f"{both['pending']} answers to review")

    # The audit sample: the accepted answers whose (request id, index) hashed into the
    # Serve app's audit rate kept their inputs, and only those are listed.
    from ray_app.review import item_id
    from serve.config import DecisionRecording
    from serve.decisions import in_audit_sample

    version, rate = monitor["model_version"], DecisionRecording().audit_rate
    sent = [("in-range", i) for i in range(len(images))] + [("inverted", i) for i in range(len(images))]
    sampled = {item_id(version, request, index) for (request, index), p in zip(sent, answered, strict=True)
               if p.decision == "accept" and in_audit_sample(request, index, rate)}
    listed = http.get(f"{api}/runs/{run}/review", params={"decisions": "accept", "limit": 500}, timeout=30).json()
    assert {i["id"] for i in listed["items"]} == sampled
    # Every accepted inverted digit audited (a rate of 1) and labelled with its true digit:
    # the monitor measures the accepted answers' accuracy, and the run page shows it.
    truth = [str(label) for label in pq.read_table(run_dir / "splits" / "val_test").to_pydict()["label"]]
    audited = answer_and_record(run_dir / "bundle", control_plane.runs, [_inverted(c) for c in images], "audited",
                                DecisionRecording(audit_rate=1.0))
    for index, answer in enumerate(audited):
        if answer.decision == "accept":
            item = item_id(version, "audited", index)
            http.put(f"{api}/runs/{run}/review/items/{item}", json={"label": truth[index]}, timeout=30).raise_for_status()
    checked = http.get(f"{api}/runs/{run}/monitor", params={"window_s": 3600}, timeout=30).json()
    accepted = [(a.label == truth[i]) for i, a in enumerate(audited) if a.decision == "accept"]
    assert checked["audited_accuracy"]["n"] == len(accepted) > 0
    assert checked["audited_accuracy"]["accuracy"] == pytest.approx(sum(accepted) / len(accepted))
    assert checked["measured_accuracy"]["n"] == 3  # the band's three labels, counted apart
    tab.goto(f"/runs/{run}")
    tab.wait_for_selector("#monitor-body:not([hidden])", timeout=60_000)
    audit = checked["audited_accuracy"]
    assert f"{100 * audit['accuracy']:.1f}% of {audit['n']}" in tab.inner_text("#monitor-stats")
    shown = tab.is_visible("#monitor-audit")
    assert shown == (checked["drift"]["flagged"] or audit["contradicts_estimate"])
    if audit["contradicts_estimate"]:
        assert "confidently wrong" in tab.inner_text("#monitor-audit")
    tab.locator("#monitor-card").screenshot(path=str(screenshots / "monitor-audit.png"))

    # Labels taken back leave the measurement: undone, the audit counts none of them.
    for index, answer in enumerate(audited):
        if answer.decision == "accept":
            http.delete(f"{api}/runs/{run}/review/items/{item_id(version, 'audited', index)}",
                        timeout=30).raise_for_status()
    undone = http.get(f"{api}/runs/{run}/monitor", params={"window_s": 3600}, timeout=30).json()
    assert undone["audited_accuracy"] is None and undone["measured_accuracy"]["n"] == 3
    console.check()


def test_a_rerun_from_the_run_page_trains_on_the_reviewed_labels(
    page: tuple[Any, Console], control_plane: ControlPlaneServer, plane_smoke: dict[str, Any], screenshots: Path
) -> None:
    """The run page offers the labels people gave (the test above's, else three given
    here through the API); ticked, "Run again" trains a new run through a Ray job on the
    source plus them, and that run records the export it read. Asking with nothing
    labelled is a 409 that says so."""
    tab, console = page
    http, api, run = control_plane.session(), control_plane.api, plane_smoke["run"]
    queue = http.get(f"{api}/runs/{run}/review", params={"decisions": "assist,abstain", "status": "all", "limit": 3},
                     timeout=30).json()
    if queue["counts"]["labelled"] == 0:  # run on its own: label three answers here
        from tests.helpers.review import answer_and_record

        if not queue["items"]:
            import pyarrow.parquet as pq

            images = [bytes(b) for b in pq.read_table(control_plane.runs / run / "splits" / "val_test")
                      .to_pydict()["image"]]
            answer_and_record(control_plane.runs / run / "bundle", control_plane.runs, images, "for-rerun")
            queue = http.get(f"{api}/runs/{run}/review", params={"decisions": "assist,abstain", "limit": 3},
                             timeout=30).json()
        for item in queue["items"]:
            http.put(f"{api}/runs/{run}/review/items/{item['id']}", json={"label": "3"}, timeout=30)
    labelled = http.get(f"{api}/runs/{run}/review", params={"decisions": "assist,abstain,accept", "limit": 1},
                        timeout=30).json()["counts"]["labelled"]
    export = http.post(f"{api}/runs/{run}/review/export", timeout=60).json()  # what the rerun will read
    assert export["rows"] == labelled >= 3

    tab.goto(f"/runs/{run}")
    tab.wait_for_selector("#rerun-reviewed-box:not([hidden])", timeout=60_000)
    assert tab.inner_text("#rerun-reviewed-count") == f"{labelled} reviewed labels"
    tab.check("#rerun-reviewed")
    tab.locator("#rerun-box").screenshot(path=str(screenshots / "rerun-reviewed.png"))
    tab.click("#rerun")
    tab.wait_for_url(re.compile(rf"/runs/{run}-\d+$"))
    rerun = tab.url.rsplit("/", 1)[1]
    wait_for(lambda: http.get(f"{api}/runs/{rerun}", timeout=10).json()["status"] not in ("pending", "running"),
             TRAINING_TIMEOUT_MS / 1000, f"the rerun {rerun} to end")
    detail = http.get(f"{api}/runs/{rerun}", timeout=10).json()
    assert detail["status"] == "succeeded", detail.get("message")
    assert detail["stages"]["train"]["status"] == "complete"
    # The same labels exported again are the same export; the run names it and its fingerprint.
    assert detail["config"]["data"]["reviewed"] == [export["path"]]
    [read] = detail["stages"]["splits"]["reviewed"]
    assert (read["path"], read["fingerprint"], read["rows"]) == (export["path"], export["fingerprint"], labelled)
    assert read["added_to_train"] + read["already_in_source"] == labelled
    tab.wait_for_selector("#run-status.status-succeeded", timeout=60_000)
    tab.wait_for_function("document.getElementById('run-facts').textContent.includes('review export')")
    assert f"review export: {labelled} labelled answers, {read['added_to_train']} new to train" in (
        tab.inner_text("#run-facts"))
    tab.screenshot(path=str(screenshots / "run-reviewed.png"), clip={"x": 0, "y": 0, "width": 1400, "height": 240})

    # The new run has served nothing, so nothing of it is labelled: the API says so.
    refused = http.post(f"{api}/runs/{rerun}/rerun", json={"with_reviewed": True, "on_exists": "new"}, timeout=60)
    assert refused.status_code == 409 and "no labelled review items" in refused.json()["detail"], refused.text
    assert tab.is_hidden("#rerun-reviewed-box")
    console.check()


def test_a_launch_into_a_finished_run_is_refused_then_a_new_run_stopped_shows_no_fake_axes(
    page: tuple[Any, Console], control_plane: ControlPlaneServer, plane_smoke: dict[str, Any], screenshots: Path
) -> None:
    tab, console = page
    http, api, run = control_plane.session(), control_plane.api, plane_smoke["run"]
    finished = http.get(f"{api}/runs/{run}").json()
    tab.goto(f"/launch?template={plane_smoke['template']}")
    tab.wait_for_selector("#exists:not([hidden])")
    tab.click("#launch")  # "leave it" is the default: refused, the run untouched
    tab.wait_for_selector("#exists-refused:not([hidden])")
    assert "not changed without being asked" in tab.inner_text("#exists-refused")
    console.expect_rejected(409)
    assert http.get(f"{api}/runs/{run}").json()["created"] == finished["created"]
    tab.screenshot(path=str(screenshots / "launch-exists.png"), full_page=False)

    tab.check("#exists input[value=new]")
    tab.click("#launch")
    tab.wait_for_url(re.compile(rf"/runs/{run}-\d+$"))
    http.post(f"{api}/runs/{tab.url.rsplit('/', 1)[1]}/stop", timeout=60)
    tab.wait_for_selector("#run-status.status-stopped", timeout=120_000)
    tab.wait_for_function("document.getElementById('charts-empty').textContent.includes('stopped before its first epoch')")
    assert tab.is_hidden("#charts") and tab.locator("#chart-loss .xtick").count() == 0
    log_shown = tab.is_visible("#log") and tab.inner_text("#log").strip() != ""
    assert log_shown or "no log lines" in tab.inner_text("#log-empty")
    assert tab.get_attribute("#run-message", "class") != "errors"
    assert http.get(f"{api}/runs/{run}").json()["created"] == finished["created"]  # the original is untouched
    tab.screenshot(path=str(screenshots / "run-stopped.png"), full_page=True)

    response = tab.goto("/runs/no_such_run")
    assert response is not None and response.status == 404
    assert "no run named 'no_such_run'" in tab.inner_text("main")
    console.expect_rejected(404)
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

    # "Launch one" of another family keeps the shape the preset's data needs.
    tab.click("section[data-family='dinov2'] a.button")
    tab.wait_for_function("document.getElementById('family').value === 'dinov2'")
    tab.wait_for_selector("#family-params [data-param='image_size']")
    shape = {key: tab.input_value(f"#family-params [data-param='{key}']") for key in ("image_size", "num_channels", "patch_size")}
    # The default preset's ConvNeXt: 8 px, 1 channel, every pixel its own patch.
    assert shape == {"image_size": "8", "num_channels": "1", "patch_size": "1"}, shape
    tab.wait_for_function("document.getElementById('run-name').textContent.startsWith('will train run ')")

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


def test_a_run_whose_calibration_found_nothing_is_calibrated_again_without_training(
    page: tuple[Any, Console], control_plane: ControlPlaneServer, screenshots: Path
) -> None:
    """The dashboard's run resumed with a coverage no band of its grid can meet fails at
    calibrate, its training kept; the run page says so and links the launch form loaded
    with the run's own config, where a workable coverage and "resume" calibrate the same
    model again: the train stage is not run a second time."""
    tab, console = page
    http, api, run = control_plane.session(), control_plane.api, "smoke_vit_baseline_s1"
    trained = http.get(f"{api}/runs/{run}", timeout=10).json()["stages"]["train"]["finished"]
    resumed = http.post(f"{api}/runs/{run}/rerun", json={"on_exists": "resume",
                                                         "overrides": ["calibration.guardrail.min_coverage=0.99"]},
                        timeout=60)
    assert resumed.status_code == 201 and resumed.json()["run"] == run, resumed.text
    tab.goto(f"/runs/{run}")
    tab.wait_for_selector("#run-status.status-failed", timeout=TRAINING_TIMEOUT_MS)
    tab.wait_for_selector("#recalibrate:not([hidden])")
    assert "no band met max_assist_rate 0.2 and min_coverage 0.99" in tab.inner_text("#run-message")
    tab.screenshot(path=str(screenshots / "run-calibration-failed.png"), clip={"x": 0, "y": 0, "width": 1400, "height": 300})

    tab.click("#recalibrate-link")
    tab.wait_for_function(f"document.getElementById('source-name').textContent === 'run {run}'")
    assert tab.input_value("[data-key='calibration.guardrail.min_coverage']") == "0.99"
    assert tab.input_value("[data-key='calibration.guardrail.widths']") == "0"  # as the run recorded it
    tab.wait_for_selector("#exists:not([hidden])")
    assert "the same config" in tab.inner_text("#exists-text")
    tab.fill("[data-key='calibration.guardrail.min_coverage']", "0.5")
    tab.wait_for_function("document.getElementById('exists-text').textContent.includes('a different config')")
    tab.check("#exists input[value=resume]")
    assert tab.inner_text("#run-name") == f"will resume run {run}"
    tab.click("#launch")
    tab.wait_for_url(re.compile(rf"/runs/{run}$"))
    tab.wait_for_selector("#run-status.status-succeeded", timeout=TRAINING_TIMEOUT_MS)
    assert tab.is_hidden("#recalibrate")
    detail = http.get(f"{api}/runs/{run}", timeout=10).json()
    assert detail["stages"]["train"]["finished"] == trained  # the same model, not trained again
    assert detail["stages"]["calibrate"]["status"] == detail["stages"]["export"]["status"] == "complete"
    assert detail["config"]["calibration"]["guardrail"]["min_coverage"] == 0.5
    console.expect_rejected(422)  # the live name preview may meet the form mid-edit
    console.check()
