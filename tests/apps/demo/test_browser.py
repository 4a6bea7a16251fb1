"""The demo page in a real browser: `python -m apps.demo` on 127.0.0.1, Debian's Chromium.

The page is started as a user starts it, on the session's tiny runs, and
driven by Playwright (the `playwright` package from PyPI) through the
system's Chromium (`apt-get install -y chromium`; no browser is downloaded).
Every value read from the page is compared with what the CLIs print for the
same input: the prediction line and the Grad-CAM PNG of `medical-cnn predict
--explain`, the lines and the attention PNGs of `translator translate
--attention-plot`, and their error and warning messages. After each bad input
a good one still gets its answer, and the server process is still running.
Any request of the page to another host than 127.0.0.1 is refused and fails
the test (no fonts, scripts or analytics from outside).

Screenshots of both tabs go to `test-artifacts/demo/` (`$TEST_ARTIFACTS_DIR/demo`).
With `DEMO_SCREENSHOTS_DIR=docs` they are also written there, as the README's
`demo_xray.png` and `demo_translate.png` (about 100 KB each);
`DEMO_MEDICAL_RUN` and `DEMO_TRANSLATOR_RUN` put trained runs on the page
instead of the tiny ones.

Without Chromium at /usr/bin/chromium (or `chromium` on PATH) the tests skip,
saying how to install it; `.ci/run` installs it first.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from apps.common.io import to_json
from apps.medical_cnn.cli import main as medical_main
from apps.translator.cli import main as translator_main
from tests.backend_utils import PROJECT_ROOT, free_loopback_ports, subprocess_env

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_TIMEOUT_S = 300  # Loading TensorFlow and both models on a busy 2-core machine.
ANSWER_TIMEOUT_MS = 120_000  # One prediction or translation (the first one traces graphs).
SENTENCES = ["Where is Tom?", "", "I like to read books."]
LONG = " ".join(["word"] * 500)
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", PROJECT_ROOT / "test-artifacts")) / "demo"


def _chromium() -> str:
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path is None:
        pytest.skip(
            f"NO BROWSER: the demo page's browser test needs Chromium at {CHROMIUM} and found "
            f"none (Debian/Ubuntu: apt-get update && apt-get install -y chromium; .ci/run does "
            f"this). The demo page itself was NOT tested in a browser."
        )
    return path


sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason='NO PLAYWRIGHT: the browser test needs the dev extra: pip install -e ".[dev,demo]"',
)
pytest.importorskip(
    "gradio", reason='NO GRADIO: the demo page needs the demo extra: pip install -e ".[dev,demo]"'
)
expect = sync_api.expect


def run_cli(main, argv, capsys):
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def rgb(data: bytes | Path) -> np.ndarray:
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        return np.asarray(image.convert("RGB"))


@dataclasses.dataclass
class Demo:
    """The running page: its URL, its process, the runs it shows and its log."""

    url: str
    process: subprocess.Popen
    medical: Path
    translator: Path
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def demo(request, tmp_path_factory):
    """`python -m apps.demo --medical RUN --translator RUN --port FREE`, until the module ends."""
    _chromium()
    medical = os.environ.get("DEMO_MEDICAL_RUN") or request.getfixturevalue("medical_run")
    translator = os.environ.get("DEMO_TRANSLATOR_RUN") or request.getfixturevalue("translator_run")
    (port,) = free_loopback_ports(1)
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path_factory.mktemp("demo_server") / "server.log"
    env = subprocess_env("tensorflow", GRADIO_ANALYTICS_ENABLED="False")
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "apps.demo", "--medical", str(medical)]
            + ["--translator", str(translator), "--host", "127.0.0.1", "--port", str(port)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    running = Demo(url, process, Path(medical), Path(translator), log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, f"the demo exited:\n{running.log_tail()}"
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (
                f"no page after {START_TIMEOUT_S} s:\n{running.log_tail()}"
            )
            time.sleep(1)
        yield running
    finally:
        process.terminate()  # SIGTERM: the demo closes its server as on Ctrl-C.
        try:
            assert process.wait(timeout=60) == 0, running.log_tail()
        finally:
            if process.poll() is None:
                process.kill()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, demo):
    """A fresh tab on the demo; requests to other hosts are refused and listed in `page.outside`."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(ANSWER_TIMEOUT_MS)
    outside = []

    def only_local(route):
        host = urlsplit(route.request.url).hostname
        if host == "127.0.0.1" or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.outside = outside
    page.goto(demo.url)
    yield page
    context.close()
    assert outside == [], f"the page asked other hosts: {outside}"
    assert demo.process.poll() is None, f"the demo server stopped:\n{demo.log_tail()}"


def save_screenshot(page, name: str) -> Path:
    """`test-artifacts/demo/<name>.png`; also `$DEMO_SCREENSHOTS_DIR/demo_<name>.png`."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    docs = os.environ.get("DEMO_SCREENSHOTS_DIR")
    if docs:
        Path(docs).mkdir(parents=True, exist_ok=True)
        with Image.open(path) as shot:  # RGB (no alpha), compressed harder: ~100 KB.
            shot.convert("RGB").save(Path(docs) / f"demo_{name}.png", optimize=True)
    return path


def image_pixels(page, selector: str) -> np.ndarray:
    """The pixels of the `<img>` shown in `selector`, as the browser got them."""
    image = page.locator(f"{selector} img")
    expect(image).to_be_visible()
    page.wait_for_function(
        "s => { const i = document.querySelector(s); return i && i.complete && i.naturalWidth > 0 }",
        arg=f"{selector} img",
    )
    answer = page.request.get(image.get_attribute("src"))
    assert answer.ok, answer.status
    return rgb(answer.body())


def upload(page, path) -> None:
    """Puts `path` in the X-ray upload box (clearing the file before it)."""
    clear = page.locator("#xray-upload button[aria-label='Clear']")
    if clear.count():
        clear.click()
    page.locator("#xray-upload input[type=file]").set_input_files(str(path))


def expect_prediction(page, expected: dict) -> dict:
    """Waits for the JSON line of a prediction and checks it is `expected`; returns it."""
    box = page.locator("#xray-json textarea")
    expect(box).to_have_value(to_json(expected))
    return json.loads(box.input_value())


def cli_prediction(demo, image, explain_dir, capsys) -> tuple[dict, dict]:
    """`medical-cnn predict --explain` of one image: (its line, the line the page shows)."""
    status, out, _ = run_cli(
        medical_main, ["predict", "--model", demo.medical, image, "--explain", explain_dir], capsys
    )
    assert status == 0
    line = json.loads(out)
    return line, {k: v for k, v in line.items() if k != "gradcam"} | {"file": Path(image).name}


def test_xray_tab_shows_the_cli_prediction_beside_its_grad_cam(
    demo, page, image_files, tmp_path, capsys
):
    image = image_files["pneumonia"]
    line, shown = cli_prediction(demo, image, tmp_path, capsys)
    upload(page, image)
    expect_prediction(page, shown)
    result = page.locator("#xray-result")
    expect(result).to_contain_text(f"{line['class_name']} (label {line['label']})")
    expect(result).to_contain_text(f"probability of label 1: {line['probability']:.4f}")
    expect(result).to_contain_text(f"threshold: {line['threshold']:.4f}")
    expect(page.locator("#xray-message")).to_be_hidden()
    # The overlay is the CLI's PNG, pixel for pixel, beside the input, both readable.
    np.testing.assert_array_equal(image_pixels(page, "#xray-overlay"), rgb(Path(line["gradcam"])))
    np.testing.assert_array_equal(image_pixels(page, "#xray-input"), rgb(image))
    boxes = [page.locator(f"{s} img").bounding_box() for s in ("#xray-input", "#xray-overlay")]
    assert all(min(b["width"], b["height"]) >= 224 for b in boxes), boxes
    assert abs(boxes[0]["y"] - boxes[1]["y"]) < 5 and boxes[0]["x"] < boxes[1]["x"]  # Side by side.
    save_screenshot(page, "xray")

    # A sample of the run's validation images: one click, its own prediction.
    sample = page.locator("button", has_text="_normal.png").first
    name = sample.inner_text().strip()
    sample.click()
    expect(page.locator("#xray-json textarea")).to_have_value(
        re.compile(rf'^\{{"file": "{re.escape(name)}", "probability": ')
    )


def test_xray_bad_uploads_show_the_cli_message_and_the_page_keeps_serving(
    demo, page, image_files, tmp_path, capsys
):
    good = image_files["normal"]
    _, shown = cli_prediction(demo, good, tmp_path, capsys)
    for name in ("notes", "empty", "broken"):
        bad = image_files[name]
        status, _, err = run_cli(medical_main, ["predict", "--model", demo.medical, bad], capsys)
        assert status == 1
        message = err.strip().replace(str(bad), bad.name)
        assert message.startswith(f"error: {bad.name} is not a readable image")
        upload(page, bad)
        expect(page.locator("#xray-message textarea")).to_have_value(message)
        expect(page.locator("#xray-json textarea")).to_have_value("")
        expect(page.locator("#xray-overlay img")).to_have_count(0)
        upload(page, good)  # The next good image gets its answer.
        expect_prediction(page, shown)
        expect(page.locator("#xray-message")).to_be_hidden()
        assert demo.process.poll() is None


def test_translate_tab_shows_the_cli_translation_and_its_attention(demo, page, tmp_path, capsys):
    from apps.demo.backends import load_translate

    status, out, err = run_cli(
        translator_main,
        ["translate", "--model", demo.translator, "--attention-plot", tmp_path, *SENTENCES],
        capsys,
    )
    assert status == 0
    page.get_by_role("tab", name="Translate").click()
    page.locator("#translate-input textarea").fill("\n".join(SENTENCES))
    page.locator("#translate-run").click()
    expect(page.locator("#translate-output textarea")).to_have_value(out.removesuffix("\n"))
    assert out.splitlines()[0] != ""  # A real translation, not an empty box.
    expect(page.locator("#translate-message")).to_be_hidden()
    expect(page.locator("#attention-line input")).to_have_value("1: Where is Tom?")
    mean = image_pixels(page, "#attention-plot")
    np.testing.assert_array_equal(mean, rgb(tmp_path / "line_0001.png"))
    save_screenshot(page, "translate")

    # Another line, then one head: the plots the CLI and the backend draw.
    page.locator("#attention-line input").click()
    page.get_by_role("option", name="3: I like to read books.").click()
    expect(page.locator("#attention-line input")).to_have_value("3: I like to read books.")
    page.wait_for_function(
        "s => document.querySelector('#attention-plot img').src !== s",
        arg=page.locator("#attention-plot img").get_attribute("src"),
    )
    np.testing.assert_array_equal(
        image_pixels(page, "#attention-plot"), rgb(tmp_path / "line_0003.png")
    )
    before = page.locator("#attention-plot img").get_attribute("src")
    page.locator("#attention-head").get_by_label("head 2").check()
    page.wait_for_function(
        "s => document.querySelector('#attention-plot img').src !== s", arg=before
    )
    head_2 = load_translate(demo.translator, None).attention_plot(SENTENCES[2], head=1)
    np.testing.assert_array_equal(image_pixels(page, "#attention-plot"), head_2)


def test_translate_bad_texts_show_the_cli_messages_and_the_page_keeps_serving(demo, page, capsys):
    from apps.demo.backends import NO_TEXT

    status, good_out, _ = run_cli(
        translator_main, ["translate", "--model", demo.translator, "Where is Tom?"], capsys
    )
    status, long_out, long_err = run_cli(
        translator_main, ["translate", "--model", demo.translator, LONG], capsys
    )
    assert status == 0 and long_err.startswith("warning: line 1 has ")
    page.get_by_role("tab", name="Translate").click()
    text = page.locator("#translate-input textarea")
    output = page.locator("#translate-output textarea")
    message = page.locator("#translate-message textarea")
    for bad, expected_message, expected_output in (
        ("", f"error: {NO_TEXT}", ""),
        ("  \n \n", f"error: {NO_TEXT}", ""),
        (LONG, long_err.strip(), long_out.removesuffix("\n")),
    ):
        text.fill(bad)
        page.locator("#translate-run").click()
        expect(message).to_have_value(expected_message)
        expect(output).to_have_value(expected_output)
        text.fill("Where is Tom?")  # The next good text gets its translation.
        page.locator("#translate-run").click()
        expect(output).to_have_value(good_out.removesuffix("\n"))
        expect(page.locator("#translate-message")).to_be_hidden()
        assert demo.process.poll() is None
