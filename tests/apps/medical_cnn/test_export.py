import json
import os
import subprocess
import sys
import sysconfig
import textwrap

import numpy as np
import pytest
from PIL import Image

from apps.common.model_io import load_keras_model
from apps.medical_cnn.export import export
from apps.medical_cnn.predict import predict_files

# Run in a fresh interpreter that cannot import this project: `-S` skips
# site-packages processing (so the editable install's path hook never loads),
# PYTHONPATH names only the site-packages folder (TensorFlow, NumPy), and the
# working directory is a temporary folder.
RELOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    try:
        import apps  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the project is importable in the fresh process")
    try:
        import custom_layers  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("custom_layers is importable in the fresh process")
    import numpy as np
    import tensorflow as tf

    export_dir, pixels_file, image_files = sys.argv[1], sys.argv[2], sys.argv[3:]
    loaded = tf.saved_model.load(export_dir)
    pixels = np.load(pixels_file)
    by_pixels = loaded.signatures["predict_pixels"](pixels=tf.constant(pixels))
    encoded = [open(f, "rb").read() for f in image_files]
    by_bytes = loaded.signatures["serving_default"](image_bytes=tf.constant(encoded))
    out = {
        "signatures": sorted(loaded.signatures.keys()),
        "pixels": {k: v.numpy().tolist() for k, v in by_pixels.items() if k != "class_name"},
        "bytes": {k: v.numpy().tolist() for k, v in by_bytes.items() if k != "class_name"},
        "bytes_class_name": [s.decode() for s in by_bytes["class_name"].numpy()],
    }
    print(json.dumps(out))
    """
)


def _run_fresh(tmp_path, *args):
    script = tmp_path / "reload.py"
    script.write_text(RELOAD_SCRIPT)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": sysconfig.get_paths()["purelib"],
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "CUDA_VISIBLE_DEVICES": "",
    }
    result = subprocess.run(
        [sys.executable, "-S", str(script), *map(str, args)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_project_not_importable_in_fresh_process(tmp_path):
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    result = subprocess.run(
        [sys.executable, "-S", "-c", "import apps"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "No module named 'apps'" in result.stderr


def test_export_reload_in_fresh_process_matches_keras(tiny_run, tmp_path, pneumoniamnist_npz):
    run_dir, _ = tiny_run
    base = tmp_path / "saved_models" / "medical_cnn"
    first = export(run_dir, base)
    second = export(run_dir, base)
    assert (first.name, second.name) == ("1", "2")  # versions, never overwritten
    assert not [p for p in base.iterdir() if p.name.startswith(".tmp")]

    val = np.load(pneumoniamnist_npz)["val_images"][:6]
    pixels = val[..., None].astype("float32")
    np.save(tmp_path / "pixels.npy", pixels)
    files = []
    for i, image in enumerate(val[:3]):
        files.append(tmp_path / f"v{i}.png")
        Image.fromarray(image).save(files[-1])
    big = tmp_path / "big.jpg"
    Image.fromarray(val[3]).resize((200, 160)).convert("RGB").save(big, quality=90)
    files.append(big)

    out = _run_fresh(tmp_path, second, tmp_path / "pixels.npy", *files)
    assert out["signatures"] == ["predict_pixels", "serving_default"]

    model = load_keras_model(run_dir)
    expected = model.predict(pixels, verbose=0)[:, 0]
    np.testing.assert_allclose(out["pixels"]["probability"], expected, atol=1e-5)
    threshold = json.loads((run_dir / "threshold.json").read_text())["threshold"]
    np.testing.assert_array_equal(out["pixels"]["label"], (expected >= threshold).astype(int))
    # The run's threshold travels with every prediction, exactly as stored (float64).
    assert out["pixels"]["threshold"] == [threshold] * len(pixels)
    assert out["bytes"]["threshold"] == [threshold] * len(files)

    # Encoded images: the graph's decoding matches local prediction on the same files.
    local = predict_files(run_dir, files)
    np.testing.assert_allclose(
        out["bytes"]["probability"], [r["probability"] for r in local], atol=1e-5
    )
    assert out["bytes"]["label"] == [r["label"] for r in local]
    assert out["bytes"]["threshold"] == [r["threshold"] for r in local]
    assert out["bytes_class_name"] == [r["class_name"] for r in local]
    np.testing.assert_allclose(out["bytes"]["probability"][:3], expected[:3], atol=1e-5)


def test_export_refuses_bad_model(tmp_path):
    from apps.common.model_io import ModelLoadError

    broken = tmp_path / "model.keras"
    broken.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ModelLoadError, match="not a valid .keras file"):
        export(broken, tmp_path / "base")
    assert not (tmp_path / "base").exists()


def test_export_carries_warmup_requests_that_replay(tiny_run, tmp_path):
    from tests.serving_stub import replay_warmup_requests

    run_dir, _ = tiny_run
    version = export(run_dir, tmp_path / "medical_cnn")
    replayed = replay_warmup_requests(version)
    assert [(name, len(next(iter(inputs.values())))) for name, inputs, _ in replayed] == [
        ("serving_default", 1),
        ("serving_default", 3),
        ("predict_pixels", 1),
        ("predict_pixels", 3),
    ]
    # The images and their pixels give the same answers, with the run's threshold.
    (_, _, by_bytes), (_, _, by_pixels) = replayed[1], replayed[3]
    np.testing.assert_allclose(by_bytes["probability"], by_pixels["probability"], atol=1e-6)
    threshold = json.loads((run_dir / "threshold.json").read_text())["threshold"]
    assert by_bytes["threshold"].tolist() == [threshold] * 3
    assert replayed[3][1]["pixels"].shape[1:] == (28, 28, 1)
