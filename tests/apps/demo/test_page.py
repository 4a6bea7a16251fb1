"""The page as built (a `gradio.Blocks`, no server): tabs that are off, notes where a part is hidden.

The page's behaviour in a browser is `test_browser.py`'s.
"""

from __future__ import annotations

import pytest

from apps.demo.backends import NO_ATTENTION_SERVER, NO_GRADCAM, TranslateDemo, Unavailable, XrayDemo
from apps.demo.page import build_page, escape_markdown

gr = pytest.importorskip(
    "gradio", reason='the demo extra is not installed: pip install -e ".[demo]"'
)


def blocks_by_id(page) -> dict:
    """`{elem_id: component}` of the page."""
    return {b.elem_id: b for b in page.blocks.values() if getattr(b, "elem_id", None)}


def test_a_tab_without_its_model_shows_why_instead_of_inputs():
    reasons = ("model not found: /tmp/a_run/*x*", "no translator: start the demo with --translator")
    page = build_page(Unavailable(reasons[0]), Unavailable(reasons[1]))
    blocks = blocks_by_id(page)
    assert blocks["xray-off"].value == (
        "**The X-ray tab is off.**\n\nmodel not found: /tmp/a\\_run/\\*x\\*"
    )
    assert blocks["translate-off"].value.endswith(escape_markdown(reasons[1]))
    assert not {"xray-upload", "translate-input", "attention-plot"} & set(blocks)
    tabs = [b for b in page.blocks.values() if isinstance(b, gr.Tab)]
    assert [t.label for t in tabs] == ["X-ray", "Translate"]


def test_served_models_hide_grad_cam_and_attention_with_a_note():
    xray = XrayDemo(server="http://127.0.0.1:8501")  # Built only: nothing is asked of it.
    translate = TranslateDemo(
        object(), None, NO_ATTENTION_SERVER, "model 'translator' on TF Serving"
    )
    blocks = blocks_by_id(build_page(xray, translate))
    assert blocks["xray-upload"].visible and blocks["translate-input"].visible
    assert blocks["xray-overlay"].visible is False
    assert blocks["xray-gradcam-note"].value == escape_markdown(NO_GRADCAM)
    assert blocks["attention-plot"].visible is False
    assert blocks["attention-note"].value == escape_markdown(NO_ATTENTION_SERVER)
    assert blocks["xray-source"].value == (
        "Model: model 'medical\\_cnn' on TF Serving at http://127.0.0.1:8501"
    )
