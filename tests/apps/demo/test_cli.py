"""`apps-demo` / `python -m apps.demo`: what it refuses before any model loads."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from apps.demo.cli import main
from tests.backend_utils import PROJECT_ROOT, subprocess_env


def test_without_gradio_the_command_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError.
    status = main(["--medical", str(tmp_path / "missing")])
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert err.startswith("error: the demo page needs Gradio, which the core install leaves out")
    assert err.rstrip().endswith('pip install -e ".[demo]"')
    assert len(err.splitlines()) == 1  # Before any model: no word about the missing run.


def test_importing_the_demo_needs_neither_gradio_nor_tensorflow():
    script = (
        "import sys\n"
        "sys.modules['gradio'] = None\n"
        "import apps, apps.demo, apps.demo.__init__, apps.demo.cli, apps.demo.backends\n"
        "import apps.demo.page\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
        "print('imported')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=subprocess_env("tensorflow"),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "imported\n"


def test_a_taken_port_is_refused_before_any_model_loads(tmp_path, capsys):
    pytest.importorskip(
        "gradio", reason='the demo extra is not installed: pip install -e ".[demo]"'
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = main(["--port", str(port), "--medical", str(tmp_path / "missing")])
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port} (")
    assert "pass another --port" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("port", ["0", "65536", "http"])
def test_a_bad_port_is_a_usage_error(port, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--port", port])
    assert exit_info.value.code == 2
    assert f"argument --port: expected a port number in 1..65535, got '{port}'" in (
        capsys.readouterr().err
    )
