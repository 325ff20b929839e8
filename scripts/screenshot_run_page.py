"""Open a run's MLflow pages in a real browser, screenshot them and check what a person should see.

It needs Playwright's Python package (pinned in requirements.txt) and Debian's ``chromium``
(Playwright drives that binary; no browser download). Rerun after a demo::

    make demo
    sudo apt-get install -y chromium      # once; make test does it when run as root
    .venv/bin/python scripts/screenshot_run_page.py --experiment magicapture-demo

It starts ``mlflow server`` on a free 127.0.0.1 port over a local store (an http tracking URI is
used as it is), opens the experiment's latest run (or ``--run-id``) in headless Chromium with a
fresh profile, and writes PNGs to ``--out``:

* ``run_overview.png``: the run page; the run's logged model must be named on it;
* ``charts_<prefix>.png``: the model-metrics tab filtered to each chart group (the stage-two loss
  terms, each stage's validation metrics); every metric of the group must be drawn as a Plotly
  chart with a line or bars (a plain ``chromium --screenshot`` shows only loading spinners);
* ``validation_<stage>_step<n>.png``: each stage's validation grid in MLflow's image chart, opened
  full screen, its step slider dragged to the first and to the last validated step; the image
  shown must be the one logged at that step.

Exit status 0 when every check passed, 1 when one failed (each printed as ``FAILED: ...``), 2 when
Playwright or Chromium is missing. The server it started is stopped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from magicapture_pipeline.tracking.server import free_port, server_environment

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
VIEW = "?workflowType=machine_learning"  # MLflow 3.17's UI opens the GenAI view otherwise
CARD_ID = "experiment-view-compare-runs-card"
CARD_MENU = f"[data-testid={CARD_ID}-menu]"
WAIT_MS = 60_000
BOTTOM_POLLS = 15
"""Polls (0.4 s each) a chart search waits at the bottom of the charts for the card to render
before it says the card is absent, instead of polling on to 80 (32 s in all)."""


def start_ui(backend: str) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on 127.0.0.1 over ``backend``; returns the process and its URL."""
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    command = [str(mlflow), "server", "--backend-store-uri", backend, "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env=server_environment(mlflow),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5):
                return process, url
        except OSError:
            time.sleep(1)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError("mlflow server did not answer /health within 180 s")


def stop_ui(process: subprocess.Popen | None) -> None:
    if process is not None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # seen at load 25: do not wait on a graceful stop
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def sync_playwright():
    """Playwright's entry point, or None when the package is not importable."""
    try:
        from playwright.sync_api import sync_playwright as entry
    except ImportError:
        return None
    return entry


def expected(client, run) -> dict:
    """What the pages must show: chart groups ``{filter: [metric keys]}``, logged model names
    and ``{stage prefix: sorted validated steps}`` of the grids."""
    metrics = sorted(run.data.metrics)
    groups = {"stage_two/loss": [k for k in metrics if k.startswith("stage_two/loss")]}
    for prefix in sorted({k.split("/", 1)[0] for k in metrics if "_validation/" in k}):
        groups[f"{prefix}/"] = [k for k in metrics if k.startswith(f"{prefix}/")]
    files = [f.path for f in client.list_artifacts(run.info.run_id, "images") if not f.is_dir]
    steps: dict[str, set[int]] = {}
    for path in files:
        name = path.removeprefix("images/")
        if "~grid+step+" in name:
            prefix, rest = name.split("~grid+step+", 1)
            steps.setdefault(prefix, set()).add(int(rest.split("+", 1)[0]))
    experiment = run.info.experiment_id
    models = client.search_logged_models(experiment_ids=[experiment])
    names = sorted({m.name for m in models if m.source_run_id == run.info.run_id})
    return {"groups": groups, "models": names, "grids": {k: sorted(v) for k, v in steps.items()}}


class Browser:
    """One headless Chromium page over the MLflow UI at ``base`` (the experiment's URL)."""

    def __init__(self, context, base: str, out: Path) -> None:
        self.page = context.new_page()
        self.base, self.out = base, out

    def open(self, path: str) -> None:
        self.page.goto(f"{self.base}/{path}{VIEW}")

    def shot(self, name: str, locator=None) -> Path:
        path = self.out / f"{name}.png"
        (locator or self.page).screenshot(path=str(path))
        print(f"{name}: {path}")  # noqa: T201
        return path

    def scroll_to(self, title: str):
        """The chart card titled ``title``, scrolled into view (MLflow renders only the cards
        near the view), or None."""
        page = self.page
        found = page.get_by_text(title, exact=True)
        scroller = page.evaluate_handle(
            """() => { for (const e of document.querySelectorAll('div')) {
                 const s = getComputedStyle(e).overflowY;
                 if ((s === 'auto' || s === 'scroll') && e.scrollHeight > e.clientHeight + 5
                     && e.querySelector('[data-testid=experiment-view-compare-runs-card]'))
                   return e; } return null; }"""
        )
        scrolls = page.evaluate("(e) => e !== null", scroller)
        if scrolls:
            page.evaluate("(e) => { e.scrollTop = 0; }", scroller)
        at_bottom = 0  # polls since the scroller stopped moving
        for _ in range(80):
            if found.count():
                try:  # a card can leave the DOM while the grid re-renders: look again
                    found.first.scroll_into_view_if_needed(timeout=5000)
                    card = found.first.locator(f"xpath=ancestor::*[@data-testid='{CARD_ID}'][1]")
                    card.wait_for(timeout=5000)
                    return card
                except Exception:  # playwright's Error / TimeoutError
                    pass
            if scrolls:
                moved = page.evaluate(
                    "(e) => { const top = e.scrollTop; e.scrollTop += 400;"
                    " return e.scrollTop !== top; }",
                    scroller,
                )
                at_bottom = 0 if moved else at_bottom + 1
                if at_bottom > BOTTOM_POLLS:  # scrolled to the end, rendered, still absent
                    return None
            page.wait_for_timeout(400)
        return None


def check_overview(browser: Browser, run_id: str, models: list[str]) -> list[str]:
    browser.open(f"runs/{run_id}")
    failures = [] if models else ["the run has no logged model"]
    for model in models:
        try:
            browser.page.get_by_text(model).first.wait_for(timeout=WAIT_MS)
        except Exception:  # playwright's TimeoutError
            failures.append(f"run page does not show logged model {model!r}")
    browser.shot("run_overview")
    return failures


def check_charts(browser: Browser, run_id: str, groups: dict[str, list[str]]) -> list[str]:
    """Each group filtered by the charts' search box: every metric drawn (a Plotly chart with a
    line or bars), then one screenshot of the group."""
    failures = []
    page = browser.page
    for search, keys in groups.items():
        if not keys:
            failures.append(f"the run logged no metric {search}*")
            continue
        browser.open(f"runs/{run_id}/model-metrics")
        box = page.get_by_placeholder("Search metric charts")
        box.wait_for(timeout=WAIT_MS)
        box.fill(search)
        for key in keys:
            card = browser.scroll_to(key.split("/", 1)[1])
            drawn = "path.js-line, .bars path, .scatterlayer path"
            try:
                card.locator(".js-plotly-plot").first.wait_for(timeout=WAIT_MS)
                card.locator(drawn).first.wait_for(state="attached", timeout=WAIT_MS)
            except Exception:  # None card, or playwright's TimeoutError
                failures.append(f"model-metrics tab does not draw {key}")
        browser.scroll_to(keys[0].split("/", 1)[1])
        browser.shot(f"charts_{search.strip('/').replace('/', '_')}")
    return failures


def _shown_step(dialog) -> int | None:
    """The step of the image the open image chart shows (its file name), None if none."""
    images = dialog.locator("img[src*='get-artifact']")
    if not images.count():
        return None
    path = urllib.parse.parse_qs(urllib.parse.urlparse(images.first.get_attribute("src")).query)
    name = path.get("path", [""])[0]
    loaded = images.first.evaluate("(i) => i.complete && i.naturalWidth > 0")
    return int(name.split("+step+", 1)[1].split("+", 1)[0]) if loaded and "+step+" in name else None


def check_grid(browser: Browser, run_id: str, stage: str, steps: list[int]) -> list[str]:
    """``<stage>/grid``'s image chart: run parameters hidden, full screen, the slider dragged to
    the first and the last step; each time the image of that step must be shown."""
    page = browser.page
    browser.open(f"runs/{run_id}/model-metrics")
    page.wait_for_selector(".js-plotly-plot", timeout=WAIT_MS)
    card = browser.scroll_to(f"{stage}/grid")
    if card is None:
        return [f"model-metrics tab has no image chart {stage}/grid (no step slider)"]
    card.locator(CARD_MENU).click()
    page.get_by_role("menuitem", name="Configure").click()
    switch = page.locator("[role=dialog] [role=switch]").first
    if switch.get_attribute("aria-checked") == "true":
        switch.click()  # "Show run parameters": hundreds of them cover the image
    page.get_by_role("button", name="Save changes").click()
    page.locator("[role=dialog]").wait_for(state="detached", timeout=WAIT_MS)
    card.locator("button").first.click()  # full screen
    dialog = page.locator("[role=dialog]").last
    thumb = dialog.locator("[role=slider]")
    try:
        thumb.wait_for(timeout=WAIT_MS)
    except Exception:  # playwright's TimeoutError
        return [f"the image chart {stage}/grid has no step slider"]
    failures = []
    low, high = thumb.get_attribute("aria-valuemin"), thumb.get_attribute("aria-valuemax")
    if (low, high) != (str(steps[0]), str(steps[-1])):
        failures.append(f"{stage}/grid slider spans {low}..{high}, logged {steps[0]}..{steps[-1]}")
    track = thumb.locator("xpath=ancestor::span[@dir='ltr'][1]").bounding_box()
    for step, x in ((steps[0], track["x"]), (steps[-1], track["x"] + track["width"])):
        box = thumb.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(x, box["y"] + box["height"] / 2, steps=15)
        page.mouse.up()
        shown = None
        for _ in range(40):
            shown = _shown_step(dialog)
            if shown == step:
                break
            page.wait_for_timeout(500)
        browser.shot(f"validation_{stage}_step{step}", dialog)
        if shown != step:
            failures.append(f"{stage}/grid slider at step {step} shows the image of step {shown}")
    page.keyboard.press("Escape")
    return failures


def run_checks(context, url: str, client, run, out: Path) -> list[str]:
    want = expected(client, run)
    browser = Browser(context, f"{url}/#/experiments/{run.info.experiment_id}", out)
    run_id = run.info.run_id
    failures = check_overview(browser, run_id, want["models"])
    failures += check_charts(browser, run_id, want["groups"])
    if not want["grids"]:
        failures.append("the run logged no validation grid (images/<stage>~grid+step+...)")
    for stage, steps in want["grids"].items():
        print(f"{stage}: grids at steps {', '.join(map(str, steps))}")  # noqa: T201
        failures += check_grid(browser, run_id, stage, steps)
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}",
    )
    parser.add_argument("--experiment", default="magicapture-demo")
    parser.add_argument("--run-id", default=None, help="default: the experiment's latest run")
    parser.add_argument("--out", default="data/08_reporting/mlflow_ui")
    parser.add_argument("--chromium", default=None, help="default: chromium on PATH")
    args = parser.parse_args(argv)
    entry, binary = sync_playwright(), args.chromium or chromium_binary()
    if entry is None or binary is None:
        missing = "Playwright's Python package" if entry is None else "Debian's chromium"
        hint = "make install (playwright is pinned in requirements.txt)"
        if entry is not None:
            hint = "apt-get install -y chromium"
        print(f"NOT CHECKED: {missing} is missing ({hint})")  # noqa: T201
        return 2
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=args.tracking_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no experiment {args.experiment!r} in {args.tracking_uri}")
    if args.run_id:
        run = client.get_run(args.run_id)
    else:
        [run] = client.search_runs(
            [experiment.experiment_id], order_by=["start_time DESC"], max_results=1
        )
    process, url = None, args.tracking_uri.rstrip("/")
    if not args.tracking_uri.startswith("http"):
        process, url = start_ui(args.tracking_uri)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with entry() as playwright, tempfile.TemporaryDirectory() as profile:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=binary, headless=True, args=CHROMIUM_FLAGS,
                viewport={"width": 1500, "height": 1100},
            )  # fmt: skip
            try:
                failures = run_checks(context, url, client, run, out)
            finally:
                context.close()
    finally:
        stop_ui(process)
    for failure in failures:
        print(f"FAILED: {failure}")  # noqa: T201
    print("ok" if not failures else f"{len(failures)} check(s) failed")  # noqa: T201
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
