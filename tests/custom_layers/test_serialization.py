"""A model that uses every custom object survives `.keras` save/load in a fresh process."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
from keras import ops

from custom_layers import activations, layers, losses, metrics


def _every_layer_model():
    """Two inputs (an image and a token sequence) through every layer of the library."""
    image = keras.Input((12, 12, 1), name="image")
    x = layers.ConvBlock(4, kernel_size=3, activation="prelu", pooling="l2", name="block_l2")(image)
    x = layers.ConvBlock(4, kernel_size=3, activation=activations.elu, name="block_plain")(x)
    x = layers.DistanceWeightedPooling2D(pool_size=3, strides=1, sigma=1.5)(x)
    x = layers.L2Pooling2D(pool_size=2)(x)
    x = layers.PReLU(shared_axes=[1, 2])(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(8, activation=activations.leaky_relu)(x)

    source = keras.Input((6,), dtype="int32", name="source")
    target = keras.Input((5,), dtype="int32", name="target")
    src = layers.PositionalEmbedding(6, 20, 8)(source)
    src = keras.layers.Add()([src, layers.SinusoidalPositionEncoding()(src)])
    encoded = layers.TransformerEncoder(16, num_heads=2)(src)
    # Tied input/output embeddings: one matrix embeds the target and projects onto the vocabulary.
    tied = layers.ReversibleEmbedding(20, 8, mask_zero=True, name="tied")
    tgt = tied(target)
    tgt = keras.layers.Add()([tgt, layers.LearnedPositionEncoding(5)(tgt)])
    decoded = layers.TransformerDecoder(16, num_heads=2, normalize_first=True)(tgt, encoded)
    attended = layers.CachedMultiHeadAttention(num_heads=2, key_dim=4)(decoded, encoded)
    logits = keras.layers.Add(name="logits")(
        [keras.layers.Dense(20, name="dense_logits")(attended), tied(attended, reverse=True)]
    )

    pooled = keras.layers.GlobalAveragePooling1D()(attended)
    merged = keras.layers.Concatenate()([x, pooled])
    prob = keras.layers.Dense(1, activation=activations.sigmoid, name="prob")(merged)
    model = keras.Model([image, source, target], {"prob": prob, "logits": logits})
    model.compile(
        optimizer="adam",
        loss={
            "prob": losses.BinaryFocalCrossentropy(alpha=0.3, gamma=1.5),
            "logits": losses.MaskedSparseCategoricalCrossentropy(from_logits=True),
        },
        metrics={"logits": [metrics.MaskedAccuracy()]},
    )
    return model


def _inputs():
    rng = np.random.default_rng(0)
    image = rng.random((3, 12, 12, 1)).astype("float32")
    source = rng.integers(1, 20, size=(3, 6)).astype("int32")
    source[:, 4:] = 0
    target = rng.integers(1, 20, size=(3, 5)).astype("int32")
    target[0, 3:] = 0
    return image, source, target


def test_every_layer_model_reloads_in_fresh_process(tmp_path):
    model = _every_layer_model()
    image, source, target = _inputs()
    # One training step so that no weight is at its initial value.
    labels = {"prob": np.array([[0.0], [1.0], [1.0]], "float32"), "logits": target}
    model.fit([image, source, target], labels, epochs=1, verbose=0)
    expected = {k: ops.convert_to_numpy(v) for k, v in model([image, source, target]).items()}

    model_path = tmp_path / "every_layer.keras"
    model.save(model_path)
    np.savez(tmp_path / "inputs.npz", image=image, source=source, target=target)

    script = textwrap.dedent(
        f"""
        import json
        import keras
        import numpy as np
        import custom_layers  # registers the custom objects
        model = keras.saving.load_model({str(model_path)!r})  # safe_mode is on by default
        data = np.load({str(tmp_path / "inputs.npz")!r})
        out = model([data["image"], data["source"], data["target"]])
        np.savez({str(tmp_path / "outputs.npz")!r},
                 **{{k: keras.ops.convert_to_numpy(v) for k, v in out.items()}})
        print(json.dumps({{
            "loss": type(model.loss["prob"]).__name__ if isinstance(model.loss, dict) else None,
        }}))
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reloaded = np.load(tmp_path / "outputs.npz")
    for key, value in expected.items():
        np.testing.assert_allclose(reloaded[key], value, atol=1e-5, err_msg=key)
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["loss"] == "BinaryFocalCrossentropy"
