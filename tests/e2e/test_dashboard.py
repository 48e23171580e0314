"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright, clicking through a
rollback. Screenshots are kept in test-artifacts/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.client import EngramClient
from tests.e2e.conftest import KEYS, Server, start_server, stop_server
from tests.e2e.support import blobs, learn_starved

pytestmark = pytest.mark.timeout(300)
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("ui") / "data")
    with EngramClient(s.url, KEYS["admin"]) as c:
        c.create_classifier("shapes", {"kind": "vector", "dim": 4})
        for task, labels in (("first", {"x": 0.0, "y": 3.0}), ("second", {"z": -3.0, "w": 6.0})):
            job = c.wait(c.learn("shapes", task, "replay", blobs(labels)).job_id)
            assert job.status == "promoted", job
    yield s
    stop_server(s)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium); .ci/run installs it")
def test_rollback_through_the_dashboard(srv: Server) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(f"{srv.url}/ui")
        page.click("text=shapes")
        expect(page.locator("a.v.active")).to_have_attribute("data-version", "2")
        expect(page.locator("#heatmap td.cell")).to_have_count(3)  # v1: task first; v2: first and second
        expect(page.locator("#jobs-table tr[data-status=promoted]")).to_have_count(2)
        page.screenshot(path=str(ARTIFACTS / "dashboard-before-rollback.png"), full_page=True)

        # a wrong key is refused and changes nothing
        page.click("#rollback summary")
        page.fill("#rb-key", "not-the-key")
        page.fill("#rb-reason", "trying")
        page.click("text=Confirm rollback")
        expect(page.locator("#error")).to_contain_text("unknown API key")
        expect(page.locator("a.v.active")).to_have_attribute("data-version", "2")

        page.click("#rollback summary")
        page.fill("#rb-key", KEYS["admin"])
        page.fill("#rb-reason", "v2 confuses z and w")
        page.click("text=Confirm rollback")
        expect(page.locator("#message")).to_contain_text("v1 is active")
        expect(page.locator("a.v.active")).to_have_attribute("data-version", "1")
        page.screenshot(path=str(ARTIFACTS / "dashboard-after-rollback.png"), full_page=True)
        browser.close()
    with EngramClient(srv.url, KEYS["admin"]) as c:
        assert c.classifier("shapes").active_version == 1
        last = c.audit("shapes")[-1]
        assert (last.action, last.to_version, last.reason) == ("rollback", 1, "v2 confuses z and w")
    assert (ARTIFACTS / "dashboard-after-rollback.png").stat().st_size > 10_000


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium); .ci/run installs it")
def test_a_rejected_version_shows_its_forgotten_classes_and_next_step(srv: Server) -> None:
    """A generative-replay job with a starved generator (two small jobs, seconds): the gate report's
    forgotten classes, per-class rows and next step are on the version's page."""
    from playwright.sync_api import expect, sync_playwright

    promoted, rejected = learn_starved(srv.client(), "starved")
    assert rejected["status"] == "rejected", rejected
    report = rejected["report"]
    assert report["forgotten"] and report["next_step"]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1200})
        page.goto(f"{srv.url}/ui/classifiers/starved?version={rejected['version']}")
        expect(page.locator("#forgotten")).to_have_text(f"forgotten classes: {', '.join(report['forgotten'])}")
        expect(page.locator("#next-step")).to_have_text(f"next step: {report['next_step']}")
        expect(page.locator("#classes tr[data-class]")).to_have_count(len(report["classes"]))
        forgotten_rows = page.locator("#classes tr[data-forgotten=true]")
        expect(forgotten_rows).to_have_count(len(report["forgotten"]))
        expect(forgotten_rows.first).to_contain_text("FORGOTTEN")
        page.screenshot(path=str(ARTIFACTS / "dashboard-forgotten-classes.png"), full_page=True)
        # the active version (the first task, nothing forgotten) shows neither
        page.goto(f"{srv.url}/ui/classifiers/starved")
        expect(page.locator("#classes tr[data-class]")).to_have_count(len(promoted["report"]["classes"]))
        expect(page.locator("#forgotten")).to_have_count(0)
        expect(page.locator("#next-step")).to_have_count(0)
        browser.close()
