"""OHIF, as MONAI Label serves it at ``/ohif/``, driven in headless Chromium the way a person uses it.

Clicks are real mouse events at the element's centre, text is typed into the focused field, and what is checked is
first what the screen shows (screenshots cropped to a viewport's canvas) and then OHIF's own state (its display sets
and labelmaps, through the ``window.services`` and ``window.cornerstone`` objects OHIF exposes). On failure,
:func:`artefacts_on_failure` keeps the screenshot, the page's console and the app server's log.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tools.servers import LabelServer
from tools.servers.chromium import Chromium

logger = logging.getLogger(__name__)

ARTEFACTS = Path(__file__).resolve().parents[2] / "test-artefacts" / "ohif"  # git-ignored


def _js(value: str) -> str:
    return json.dumps(value)


class OhifPage:
    """One Chromium page on the OHIF of the app at ``server.url``."""

    def __init__(self, browser: Chromium, server: LabelServer) -> None:
        self.browser, self.server = browser, server

    # navigation and input --------------------------------------------------------------------------------------
    def open(self, path: str, ready: str, timeout: float = 60.0) -> None:
        """Open ``/ohif/<path>`` and wait until the JavaScript condition ``ready`` holds; hide the start banner."""
        self.browser.navigate(f"{self.server.url}/ohif/{path}")
        self.browser.wait_for(f"document.readyState === 'complete' && ({ready})", timeout, f"OHIF page {path}")
        self.click_if_present(
            "[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Confirm and Hide')"
        )

    def centre(self, element: str) -> tuple[float, float] | None:
        """The centre of the visible element the JavaScript expression ``element`` finds (None: not there)."""
        box = self.browser.evaluate(
            f"(() => {{ const e = {element}; if (!e) return null; const r = e.getBoundingClientRect();"
            " return r.width > 0 && r.height > 0 ? [r.x + r.width / 2, r.y + r.height / 2] : null; })()"
        )
        return tuple(box) if box else None

    def click(self, element: str, what: str, timeout: float = 30.0, count: int = 1) -> None:
        """A left click (``count`` 2: a double click) on the element once it is visible."""
        deadline = time.time() + timeout
        while (at := self.centre(element)) is None:
            if time.time() > deadline:
                raise TimeoutError(f"{what}: not on the page within {timeout:g} s")
            time.sleep(0.3)
        for n in range(1, count + 1):
            for kind in ("mousePressed", "mouseReleased"):
                self.browser.send("Input.dispatchMouseEvent", type=kind, x=at[0], y=at[1], button="left", clickCount=n)

    def click_if_present(self, element: str) -> None:
        if self.centre(element) is not None:
            self.click(element, "optional button")

    def type_into(self, element_id: str, text: str) -> None:
        """Replace the text of the input ``element_id`` as typing does (the field keeps focus until the next click)."""
        self.browser.evaluate(
            f"(() => {{ const e = document.getElementById({_js(element_id)}); e.focus(); e.select(); }})()"
        )
        self.browser.send("Input.insertText", text=text)

    def text(self) -> str:
        return self.browser.evaluate("document.body.innerText") or ""

    def wait_text(self, text: str, timeout: float, what: str) -> None:
        self.browser.wait_for(f"document.body.innerText.includes({_js(text)})", timeout, what)

    # what the screen shows ---------------------------------------------------------------------------------------
    def canvas(self, index: int = 0) -> np.ndarray | None:
        """The RGB pixels (rows, columns, 3) of the ``index``-th viewport's canvas, from a screenshot of the page;
        None while the page has no such canvas (OHIF creates it after the study list)."""
        box = self.browser.evaluate(
            f"(() => {{ const c = document.querySelectorAll('canvas.cornerstone-canvas')[{index}]; if (!c) return null;"
            " const r = c.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })()"
        )
        if not box:
            return None
        shot = np.asarray(Image.open(io.BytesIO(self.browser.screenshot())).convert("RGB"))
        x, y, w, h = (int(round(v)) for v in box)
        edge = 3  # the active viewport's coloured border
        return shot[y + edge : y + h - edge, x + edge : x + w - edge]

    def state(self, expression: str) -> Any:
        """A value of OHIF's state (``services``, ``cs``: cornerstone, ``cst``: cornerstone tools in scope)."""
        return self.browser.evaluate(
            "(() => { const services = window.services, cs = window.cornerstone, cst = window.cornerstoneTools;"
            f" return {expression}; }})()"
        )

    # MONAI Label panel -------------------------------------------------------------------------------------------
    def connect_panel(self) -> None:
        """Type the server's URL into the MONAI Label panel and connect (the panel assumes port 8000)."""
        self.type_into("monailabelServerURL", f"{self.server.url}/")
        self.click("document.querySelector('.settingsTable button.actionButton')", "the panel's connect button")
        self.wait_text("Auto-Segmentation", 30, "the panel's model list after connecting")

    def run_model(self, model: str, timeout: float = 120.0) -> None:
        """Pick ``model`` in the Auto-Segmentation tab, press Run and wait for OHIF's success notification."""
        self.click(
            "[...document.querySelectorAll('label.tab-label')].find(e => e.innerText.includes('Auto-Segmentation'))",
            "the Auto-Segmentation tab",
        )
        select = "document.querySelector('button[title=\"Run Segmentation\"]').closest('table').querySelector('select')"
        self.browser.evaluate(
            f"(() => {{ const s = {select}; const set = Object.getOwnPropertyDescriptor(HTMLSelectElement.prototype,"
            f" 'value').set; set.call(s, {_js(model)}); s.dispatchEvent(new Event('change', {{bubbles: true}})); }})()"
        )
        self.click("document.querySelector('button[title=\"Run Segmentation\"]')", "the Run button")
        self.browser.wait_for(
            "document.body.innerText.includes('Running Segmentation - Successful') ||"
            " document.body.innerText.includes('Failed to Run Segmentation')",
            timeout,
            f"the result of running {model}",
        )
        if "Failed to Run Segmentation" in self.text():
            raise AssertionError(
                f"OHIF says: Failed to Run Segmentation ({model}); server log:\n{self.server.log_tail()}"
            )


# pixels ---------------------------------------------------------------------------------------------------------------
def chroma(pixels: np.ndarray) -> np.ndarray:
    """Per pixel, max - min over R, G, B: 0 for grey (the MR image), large for an overlay's colour."""
    p = pixels.astype(np.int16)
    return p.max(axis=-1) - p.min(axis=-1)


def coloured(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Pixels in colour in ``after`` that were grey in ``before`` (OHIF's coloured viewport text is in both)."""
    return (chroma(after) > 60) & (chroma(before) < 30)


def dominant(pixels: np.ndarray, channel: int, margin: int = 40) -> np.ndarray:
    """Pixels whose ``channel`` (0 R, 1 G, 2 B) exceeds both others by ``margin``."""
    p = pixels.astype(np.int16)
    others = [c for c in range(3) if c != channel]
    return (p[..., channel] - p[..., others[0]] > margin) & (p[..., channel] - p[..., others[1]] > margin)


def inside(mask: np.ndarray, region: np.ndarray, pad: int = 4) -> bool:
    """Whether every pixel of ``mask`` lies in the bounding box of ``region`` (grown by ``pad``)."""
    if not mask.any() or not region.any():
        return False
    ry, rx = np.nonzero(region)
    my, mx = np.nonzero(mask)
    return bool(
        my.min() >= ry.min() - pad and my.max() <= ry.max() + pad and mx.min() >= rx.min() - pad
        and mx.max() <= rx.max() + pad
    )  # fmt: skip


@contextmanager
def artefacts_on_failure(page: OhifPage, name: str) -> Iterator[Path]:
    """On any failure inside, keep the page's screenshot, console and the server's log in ``ARTEFACTS/name``."""
    folder = ARTEFACTS / name
    try:
        yield folder
    except BaseException as e:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            page.browser.screenshot(folder / "screenshot.png")
        except Exception as shot_error:  # the browser may be the problem
            logger.warning("no screenshot: %s", shot_error)
        (folder / "console.txt").write_text("\n".join(page.browser.console))
        (folder / "server.log").write_text(page.server.log_tail(400))
        e.add_note(f"OHIF screenshot, browser console and server log: {folder}")
        raise
