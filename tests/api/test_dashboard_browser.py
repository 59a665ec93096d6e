"""The dashboard in headless Chromium against a live run: the charts and tables show the run's data, and a
round appended to the log shows up without a reload (EventSource on /api/v1/stream)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from services.api.server import ApiServer
from tests.api.conftest import TOKENS, VIEWER_TOKEN, on_log, serving
from tests.api.world import CLIENTS, accuracy_of, loss_of, play_round

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1150",
)
ARTIFACTS = Path(__file__).parent / "artifacts"
WAIT_S = 30


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.environ.get("FEDBUS_REQUIRE_SERVICES") == "1":
            pytest.fail("Chromium and chromedriver are required (apt-get install chromium chromium-driver)")
        pytest.skip("no /usr/bin/chromium or /usr/bin/chromedriver")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def live_api(fresh_sqlite: str) -> Iterator[tuple[ApiServer, str]]:
    with serving(fresh_sqlite, tokens=TOKENS, stream_poll_s=0.1) as server:
        yield server, fresh_sqlite


def plotted(driver: WebDriver, series: str) -> list[tuple[int, float]]:
    """The points of one chart series, read in one script call (the page re-renders while it is live)."""
    script = """return Array.from(document.querySelectorAll(`circle.point[data-series="${arguments[0]}"]`))
        .map((p) => [p.dataset.round, p.dataset.value]);"""
    return [(int(r), float(v)) for r, v in driver.execute_script(script, series)]


def attribute_values(driver: WebDriver, selector: str, name: str) -> list[str]:
    script = "return Array.from(document.querySelectorAll(arguments[0])).map((e) => e.getAttribute(arguments[1]));"
    return [str(value) for value in driver.execute_script(script, selector, name)]


def wait_for(driver: WebDriver, condition: object, message: str) -> None:
    WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition, message)  # type: ignore[arg-type]


def test_the_dashboard_charts_the_run_and_follows_it_live(browser: WebDriver, live_api: tuple[ApiServer, str]) -> None:
    server, url = live_api

    browser.get(f"{server.url}/?token={VIEWER_TOKEN}")
    wait_for(browser, lambda d: len(plotted(d, "accuracy")) == 2, "two rounds of accuracy plotted")
    wait_for(browser, lambda d: attribute_values(d, "#live-status", "data-state") == ["live"], "stream open")

    assert plotted(browser, "accuracy") == [(1, accuracy_of(1)), (2, accuracy_of(2))]
    assert plotted(browser, "loss") == [(1, loss_of(1)), (2, loss_of(2))]
    assert [r for r, _ in plotted(browser, "run epsilon")] == [1, 2]
    assert plotted(browser, "run epsilon")[-1][1] == pytest.approx(1.1)
    assert sorted(attribute_values(browser, "#clients tbody tr", "data-client-id")) == sorted(CLIENTS)
    assert attribute_values(browser, "#runs tbody tr", "data-run-id") == ["run-a"]
    assert "token=" not in browser.current_url  # moved to sessionStorage

    on_log(url, lambda log: play_round(log, "run-a", 3))

    wait_for(browser, lambda d: len(plotted(d, "accuracy")) == 3, "the third round arrives live")
    assert plotted(browser, "accuracy")[-1] == (3, accuracy_of(3))
    wait_for(
        browser,
        lambda d: attribute_values(d, "#current-round", "data-round") == ["3"],
        "round progress follows",
    )
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))  # docs/dashboard.png is a copy of one
