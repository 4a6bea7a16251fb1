"""The demo page: two Gradio tabs over `backends.XrayDemo` and `backends.TranslateDemo`.

A thin layer: every handler calls one backend method and lays its result out.
A user's mistake (a `UserError`: a file that is not an image, an empty text, a
server that fails) is shown on the page as the CLIs print it, `error:
<message>`, and the page goes on serving; anything else is a bug and Gradio
reports it as an error (its traceback goes to the server's log).

Gradio is imported here only, when the page is built: `import apps` and the
core install never need it (`pip install -e ".[demo]"` adds it).

Elements the browser test reads have `elem_id`s: `xray-upload`,
`xray-message`, `xray-result`, `xray-input`, `xray-overlay`, `xray-json`;
`translate-input`, `translate-run`, `translate-message`, `translate-output`,
`attention-line`, `attention-head`, `attention-plot`; `xray-off` and
`translate-off` on a tab that is off.
"""

from __future__ import annotations

import os

from apps.common.cli import USER_ERRORS
from apps.demo.backends import (
    TranslateDemo,
    TranslateResult,
    Unavailable,
    XrayDemo,
    describe_prediction,
    escape_markdown,
)

TITLE = "Keras app templates: demo"
# The first lines of the page.
INTRO = (
    "# Keras app templates: demo\n"
    "**X-ray**: a chest X-ray classified by `apps/medical_cnn`, with the Grad-CAM overlay of where "
    "the network looked. **Translate**: English to Spanish by `apps/translator`, with the "
    "cross-attention of each Spanish word over the English words. Not a medical device."
)
MEAN_HEAD = -1  # The head selector's value for "the mean over heads".
IMAGE_HEIGHT = 320  # Pixels: X-ray and overlay side by side at a readable size.
# The X-ray (28 pixels wide, say) and its overlay fill their boxes, pixels kept sharp.
CSS = """
#xray-input img, #xray-overlay img {
  width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated;
}
"""


def gradio_environment() -> None:
    """Settings that keep Gradio from phoning home (usage analytics, version check)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def error_line(error: BaseException) -> str:
    """`error: <message>`, as `run_cli` prints a user error."""
    return f"error: {str(error) or type(error).__name__}"


def _message(gr, text: str | None):
    return gr.update(value=text or "", visible=bool(text))


def _xray_tab(gr, xray: XrayDemo) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(
                label="Chest X-ray (PNG, JPEG, BMP or GIF)",
                file_count="single",
                type="filepath",
                elem_id="xray-upload",
            )
            if xray.samples:
                gr.Examples(
                    [[str(p)] for p in xray.samples],
                    inputs=[upload],
                    label="Samples (validation images of the run)",
                )
        with gr.Column(scale=1):
            message = gr.Textbox(
                label="Message", visible=False, interactive=False, elem_id="xray-message"
            )
            result = gr.Markdown(elem_id="xray-result")
            gr.Markdown(f"Model: {escape_markdown(xray.source)}", elem_id="xray-source")
    with gr.Row():
        image = gr.Image(
            label="Input",
            format="png",
            height=IMAGE_HEIGHT,
            interactive=False,
            elem_id="xray-input",
        )
        overlay = gr.Image(
            label="Grad-CAM (last convolution block)",
            format="png",
            height=IMAGE_HEIGHT,
            interactive=False,
            visible=xray.explains,
            elem_id="xray-overlay",
        )
        if not xray.explains:
            from apps.demo.backends import NO_GRADCAM

            gr.Markdown(escape_markdown(NO_GRADCAM), elem_id="xray-gradcam-note")
    json_line = gr.Textbox(
        label="As medical-cnn predict prints it", interactive=False, elem_id="xray-json"
    )

    def classify(path):
        if path is None:  # The upload was cleared.
            return _message(gr, None), "", None, None, ""
        try:
            out = xray.predict(path)
        except USER_ERRORS as e:
            return _message(gr, error_line(e)), "", None, None, ""
        return (
            _message(gr, None),
            describe_prediction(out.record),
            out.image,
            out.overlay,
            out.json_line,
        )

    upload.change(classify, [upload], [message, result, image, overlay, json_line])


def _translate_tab(gr, translate: TranslateDemo) -> None:
    text = gr.Textbox(
        label="English (one sentence per line)",
        lines=4,
        placeholder="Where is Tom?\nI like to read books.",
        elem_id="translate-input",
    )
    run = gr.Button("Translate", variant="primary", elem_id="translate-run")
    message = gr.Textbox(
        label="Messages", visible=False, interactive=False, elem_id="translate-message"
    )
    output = gr.Textbox(label="Spanish", lines=4, interactive=False, elem_id="translate-output")
    gr.Markdown(f"Model: {escape_markdown(translate.source)}", elem_id="translate-source")
    sentences = gr.State([])
    has_attention = translate.attention is not None
    with gr.Row(visible=has_attention):
        line = gr.Dropdown(label="Line", choices=[], elem_id="attention-line")
        head = gr.Radio(
            label="Attention heads",
            choices=[("mean", MEAN_HEAD)]
            + [(f"head {h + 1}", h) for h in range(translate.num_heads)],
            value=MEAN_HEAD,
            elem_id="attention-head",
        )
    plot = gr.Image(
        label="Cross-attention (rows: Spanish words, columns: English words)",
        format="png",
        interactive=False,
        visible=has_attention,
        elem_id="attention-plot",
    )
    if not has_attention:
        gr.Markdown(escape_markdown(translate.note), elem_id="attention-note")

    def heatmap(lines, number, head_value):
        if not has_attention or not lines or number is None:
            return None
        head_index = None if head_value in (None, MEAN_HEAD) else int(head_value)
        return translate.attention_plot(lines[int(number) - 1], head=head_index)

    def run_translation(source_text, head_value):
        try:
            result: TranslateResult = translate.translate(source_text)
        except USER_ERRORS as e:
            empty_line = gr.update(choices=[], value=None)
            return _message(gr, error_line(e)), "", empty_line, [], None
        numbers = result.lines_with_text()
        choices = [(f"{i}: {result.sentences[i - 1][:60]}", i) for i in numbers]
        first = numbers[0]
        return (
            _message(gr, "\n".join(result.warnings)),
            result.text,
            gr.update(choices=choices, value=first),
            result.sentences,
            heatmap(result.sentences, first, head_value),
        )

    outputs = [message, output, line, sentences, plot]
    run.click(run_translation, [text, head], outputs)
    line.input(heatmap, [sentences, line, head], [plot])
    head.input(heatmap, [sentences, line, head], [plot])


def build_page(
    xray: XrayDemo | Unavailable,
    translate: TranslateDemo | Unavailable,
    delete_cache: tuple[int, int] | None = None,
):
    """The page (a `gradio.Blocks`): tabs **X-ray** and **Translate**.

    A tab given an `Unavailable` shows its reason instead of inputs.
    `delete_cache` is Gradio's `(every_seconds, older_than_seconds)` for the
    uploads and images it keeps.
    """
    gradio_environment()
    import gradio as gr

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=delete_cache) as page:
        gr.Markdown(INTRO)
        with gr.Tabs():
            with gr.Tab("X-ray", id="xray", elem_id="tab-xray"):
                if isinstance(xray, Unavailable):
                    gr.Markdown(
                        f"**The X-ray tab is off.**\n\n{escape_markdown(xray.reason)}",
                        elem_id="xray-off",
                    )
                else:
                    _xray_tab(gr, xray)
            with gr.Tab("Translate", id="translate", elem_id="tab-translate"):
                if isinstance(translate, Unavailable):
                    gr.Markdown(
                        f"**The Translate tab is off.**\n\n{escape_markdown(translate.reason)}",
                        elem_id="translate-off",
                    )
                else:
                    _translate_tab(gr, translate)
    return page
