"""The rendered report in real headless Chromium: it draws everything and logs no errors."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import psutil
import pytest

from flame_async.report import write_report

from .cdp import launch, load

DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "assets" / "report.png"

COUNTS = """({
  nodes: document.querySelectorAll("#summary .node-row").length,
  lanes: document.querySelectorAll("#timeline .lane").length,
  msgs: document.querySelectorAll("#timeline .msg").length,
  visibleAcks: [...document.querySelectorAll("#timeline .msg.ack")]
      .filter(el => getComputedStyle(el).display !== "none").length,
  series: document.querySelectorAll("#progress .series").length,
  embedded: JSON.parse(document.getElementById("run-data").textContent).messages.length,
  timelineWidth: document.getElementById("timeline-svg").getBoundingClientRect().width,
  pageWidth: document.documentElement.scrollWidth,
  rootCauseRows: [...document.querySelectorAll("#summary .node-row.root-cause")]
      .map(el => el.dataset.node),
  rootCauseLanes: [...document.querySelectorAll("#timeline .lane.root-cause")]
      .map(el => el.dataset.node),
  lostColour: getComputedStyle(document.querySelector("#timeline .msg.drop:not(.ended)")).stroke,
  endedColour: getComputedStyle(document.querySelector("#timeline .msg.drop.ended")).stroke,
  failColour: getComputedStyle(document.documentElement).getPropertyValue("--fail").trim(),
})"""

# Where each progress line is drawn on screen: the top of its bounding box, in CSS pixels.
PROGRESS_LINES = """Object.fromEntries([...document.querySelectorAll("#progress .series")].map(
  g => [g.dataset.node, g.querySelector("polyline").getBoundingClientRect().top]))"""


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the first run may install Chromium with apt-get
async def test_report_renders_in_headless_chromium_without_errors(
    chromium: Path, run: dict[str, Any], tmp_path: Path
) -> None:
    report = write_report(run, tmp_path / "report.html")
    acks = sum(m["ack"] for m in run["messages"])

    async with launch(chromium, tmp_path / "profile") as browser:
        page = browser.page
        await load(page, report.as_uri())
        counts = await page.evaluate(COUNTS)
        shot = await page.screenshot(tmp_path / "report.png")
        await page.screenshot(tmp_path / "report-full.png", full_page=True)
        chart = await page.screenshot(tmp_path / "progress.png", selector="#progress")
        lines = await page.evaluate(PROGRESS_LINES)
        await page.evaluate('document.getElementById("show-acks").click()')
        hidden = await page.evaluate(COUNTS)
        errors = page.errors()
        requests = page.requests()

    assert counts["nodes"] == 4
    assert counts["lanes"] == 4
    assert counts["msgs"] == len(run["messages"])
    assert counts["visibleAcks"] == acks
    assert hidden["visibleAcks"] == 0
    assert counts["series"] == 4
    assert counts["embedded"] == len(run["messages"])
    assert counts["pageWidth"] <= 1280, "the page scrolls sideways at 1280 px"
    assert counts["timelineWidth"] > 1000
    assert counts["rootCauseRows"] == counts["rootCauseLanes"] == ["node-4"]
    assert counts["lostColour"] != counts["endedColour"]
    # node-2 and node-3 report identical progress: their lines are drawn apart, visibly
    assert abs(lines["node-2"] - lines["node-3"]) >= 1, lines
    assert len({round(top) for top in lines.values()}) == 4, lines
    assert chart.read_bytes().startswith(b"\x89PNG")
    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert shot.read_bytes().startswith(b"\x89PNG")
    assert not [p for p in browser.pids if _alive(p)], "chromium left processes behind"

    DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, DOCS_SCREENSHOT)


def _alive(pid: int) -> bool:
    try:
        status = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return False
    return bool(status != psutil.STATUS_ZOMBIE)
