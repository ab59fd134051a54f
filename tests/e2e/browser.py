"""Drive the MLflow UI in Debian's headless Chromium (Playwright, no browser download)."""

from __future__ import annotations

import shutil

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps dialling out on a closed network.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
]


def check_mlflow_ui(
    uri: str, experiment_id: str, run_name: str, model: str, screenshots
) -> dict[str, str]:
    """Open the experiment, the run's metric charts and the registered model; return what was seen."""
    from playwright.sync_api import expect, sync_playwright

    seen = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{uri}/#/experiments/{experiment_id}/runs")
            link = page.get_by_role("link", name=run_name).first
            expect(link).to_be_visible(timeout=60_000)
            seen["experiment"] = page.url
            link.click()
            page.get_by_role("tab", name="Model metrics").click()
            # charts below the fold are rendered lazily: filter to the one we look for
            page.get_by_placeholder("Search metric charts").fill("val_loss")
            chart = page.get_by_text("val_loss", exact=True).first
            expect(chart).to_be_visible(timeout=60_000)
            plot = page.locator(".js-plotly-plot").first  # the drawn chart, not its spinner
            expect(plot).to_be_visible(timeout=60_000)
            seen["run"] = page.url
            page.screenshot(path=str(screenshots / "run_metrics.png"))
            page.goto(f"{uri}/#/models/{model}")
            alias = page.get_by_text("@ champion", exact=True).first  # the alias tag on v1
            expect(alias).to_be_visible(timeout=60_000)
            seen["alias"] = alias.inner_text()
            page.screenshot(path=str(screenshots / "registered_model.png"))
        finally:
            browser.close()
    return seen


def open_offline(path, wait_for: str, screenshot) -> tuple[object, list[str]]:
    """Open a local page with every non-file request blocked; (what `inspect` saw, blocked URLs).

    `wait_for` is a CSS selector that must appear; the page's content is read in the browser.
    """
    from playwright.sync_api import sync_playwright

    blocked: list[str] = []

    def block(route) -> None:
        if route.request.url.startswith(("file:", "data:", "blob:", "about:")):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("internetdisconnected")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.route("**/*", block)
            page.goto(path.resolve().as_uri())
            page.wait_for_selector(wait_for, timeout=60_000)
            seen = page.evaluate(
                """() => ({
                    text: document.body.innerText,
                    lines: new Set([...document.querySelectorAll("g.mark-line path")]
                        .map(l => l.getAttribute("d"))).size,  // a hover layer repeats them
                    titles: [...document.querySelectorAll("g.role-title-text text")]
                        .map(t => t.textContent),
                    marks: [...document.querySelectorAll(".bigdeep-mark")]
                        .filter(m => m.getBoundingClientRect().width > 0).map(m => m.textContent),
                })"""
            )
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return seen, blocked
