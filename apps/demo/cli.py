"""`apps-demo` (also `python -m apps.demo`): the demo page of both apps.

```
apps-demo [--medical RUN_DIR] [--translator RUN_DIR_OR_EXPORT] [--server URL]
          [--host 127.0.0.1] [--port 7860]
```

One page with two tabs, **X-ray** (`medical-cnn predict --explain`) and
**Translate** (`translator translate --attention-plot`), served by Gradio at
`http://HOST:PORT/` until Ctrl-C. With `--server URL` the predictions and
translations come from TF Serving (models `medical_cnn` and `translator`), and
a run directory given beside it adds the Grad-CAM overlay or the attention
heatmap. A tab whose model is missing or cannot be loaded shows why instead.

Gradio is an optional extra (`pip install -e ".[demo]"`); without it, and for
a port already taken, the command prints `error: ...` and exits with status 2
before loading any model.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from apps.common.cli import CliError, run_cli  # noqa: E402

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
# Uploads larger than this are refused by Gradio before they reach a model.
MAX_UPLOAD = "20mb"
# Uploaded X-rays and the images shown are deleted from Gradio's cache after an hour.
CACHE_SECONDS = 3600


def port_number(text: str) -> int:
    """An argparse `type`: a TCP port, 1..65535."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number in 1..65535, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apps-demo",
        description="Demo page: chest X-ray with Grad-CAM, English->Spanish with attention.",
    )
    parser.add_argument(
        "--medical",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="medical-cnn run directory (or .keras file)",
    )
    parser.add_argument(
        "--translator",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="translator run directory or export",
    )
    parser.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="TF Serving (models medical_cnn and translator): REST http://HOST:8501 or gRPC "
        "grpc://HOST:8500; --medical/--translator then only add Grad-CAM and attention",
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port",
        type=port_number,
        default=DEFAULT_PORT,
        help=f"port to listen on (default: {DEFAULT_PORT})",
    )
    return parser


def import_gradio():
    """`gradio`, or a `CliError` saying how to install the extra that brings it."""
    from apps.demo.page import gradio_environment

    gradio_environment()
    try:
        import gradio
    except ImportError as e:
        raise CliError(
            f"the demo page needs Gradio, which the core install leaves out ({e}); install the "
            f'demo extra from the repository root: pip install -e ".[demo]"'
        ) from None
    return gradio


def check_port(host: str, port: int) -> None:
    """Raises `CliError` unless `host:port` can be listened on (before any model loads)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as e:
        raise CliError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); pass another --port, or "
            f"--host an address of this machine."
        ) from None


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    import_gradio()
    check_port(args.host, args.port)
    from apps.demo.backends import Unavailable, load_translate, load_xray
    from apps.demo.page import CSS, build_page

    with tempfile.TemporaryDirectory(prefix="apps-demo-") as samples_dir:
        xray = load_xray(args.medical, args.server, samples_dir=samples_dir)
        translate = load_translate(args.translator, args.server)
        for name, tab in (("X-ray", xray), ("Translate", translate)):
            if isinstance(tab, Unavailable):
                print(f"warning: the {name} tab is off: {tab.reason}", file=sys.stderr)
        page = build_page(xray, translate, delete_cache=(CACHE_SECONDS, CACHE_SECONDS))
        page.queue(default_concurrency_limit=1)
        page.launch(
            server_name=args.host,
            server_port=args.port,
            share=False,
            inbrowser=False,
            prevent_thread_lock=True,
            ssr_mode=False,
            css=CSS,
            run_history=False,
            max_file_size=MAX_UPLOAD,
            allowed_paths=[samples_dir],
        )
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` closes the server as Ctrl-C does.
        page.block_thread()  # Until Ctrl-C or SIGTERM: then the server closes.
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit status."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
