"""One shared layer-test helper, in the spirit of Keras's `run_layer_test`.

`run_layer_test` checks what every custom layer owes its users, so that the
behaviour tests of each layer can concentrate on values:

1. the config round-trips (`get_config` -> `from_config` -> same config, every
   `__init__` argument present) and the layer is registered (serialize and
   deserialize by name, without `custom_objects`);
2. eager call: output shape(s), number of trainable / non-trainable weights,
   `compute_output_shape` agrees with the real output;
3. symbolic call on `keras.Input`s: same output shape with the batch left open;
4. masking support is what the layer claims;
5. one `fit` step in a Functional model changes the trainable weights;
6. the model saves to `.keras` and loads back (by registered name) with
   identical outputs.
"""

from __future__ import annotations

import os

import keras
import numpy as np
from keras import ops


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _shape(x):
    return tuple(int(d) if d is not None else None for d in x.shape)


def _flat(outputs):
    return list(keras.tree.flatten(outputs))


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    *,
    call_kwargs=None,
    expected_output_shape=None,
    expected_num_trainable_weights=None,
    expected_num_non_trainable_weights=None,
    supports_masking=None,
    run_training_check=True,
    run_saving_check=True,
    tmp_path=None,
    atol=1e-6,
):
    """Run the standard checks on `layer_cls(**init_kwargs)`.

    Args:
        layer_cls: the layer class under test.
        init_kwargs: dict of constructor arguments.
        input_data: a NumPy array, or a tuple of arrays passed positionally.
        call_kwargs: extra keyword arguments for `call` (not tensors that need
            a symbolic counterpart).
        expected_output_shape: a shape tuple, or a tuple of shapes for layers
            returning several tensors (batch dimension included).
        expected_num_trainable_weights: int or None to skip.
        expected_num_non_trainable_weights: int or None to skip.
        supports_masking: expected value of `layer.supports_masking`, or None.
        run_training_check: run one `fit` step and check weights move.
        run_saving_check: save a model to `.keras`, reload, compare outputs.
        tmp_path: folder for the saving check (pytest's `tmp_path`).
        atol: tolerance of the reload comparison.

    Returns:
        The eager output of a freshly built layer, for further assertions.
    """
    call_kwargs = dict(call_kwargs or {})
    inputs = _as_tuple(input_data)

    # 1. Config round-trip and registration.
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    missing = [k for k in init_kwargs if k not in config]
    assert not missing, f"get_config() of {layer_cls.__name__} lacks {missing}"
    revived = layer_cls.from_config(config)
    assert revived.get_config() == config, "from_config(get_config()) changed the config"
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"].startswith("custom_layers>"), (
        f"{layer_cls.__name__} is not registered under the 'custom_layers' package: "
        f"{serialized['registered_name']}"
    )
    deserialized = keras.saving.deserialize_keras_object(serialized)
    assert type(deserialized) is layer_cls
    assert deserialized.get_config() == config

    # 2. Eager call.
    outputs = layer(*inputs, **call_kwargs)
    flat_outputs = _flat(outputs)
    if expected_output_shape is not None:
        expected = (
            list(expected_output_shape)
            if isinstance(expected_output_shape[0], (tuple, list))
            else [expected_output_shape]
        )
        got = [_shape(o) for o in flat_outputs]
        assert got == [tuple(s) for s in expected], f"output shapes {got} != {expected}"
    if expected_num_trainable_weights is not None:
        assert len(layer.trainable_weights) == expected_num_trainable_weights, (
            f"{len(layer.trainable_weights)} trainable weights, "
            f"expected {expected_num_trainable_weights}"
        )
    if expected_num_non_trainable_weights is not None:
        assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights, (
            f"{len(layer.non_trainable_weights)} non-trainable weights, "
            f"expected {expected_num_non_trainable_weights}"
        )
    if supports_masking is not None:
        assert layer.supports_masking == supports_masking
    if type(layer).compute_output_shape is not keras.layers.Layer.compute_output_shape:
        shapes = [tuple(x.shape) for x in inputs]
        computed = layer.compute_output_shape(*shapes)
        computed = (
            [tuple(computed)] if not isinstance(computed[0], (tuple, list)) else list(computed)
        )
        assert [tuple(c) for c in computed] == [_shape(o) for o in flat_outputs], (
            f"compute_output_shape gave {computed}, call gave {[_shape(o) for o in flat_outputs]}"
        )

    # 3. Symbolic call.
    symbolic_inputs = [
        keras.Input(shape=tuple(x.shape[1:]), dtype=str(np.asarray(x).dtype)) for x in inputs
    ]
    sym_layer = layer_cls(**init_kwargs)
    sym_outputs = sym_layer(*symbolic_inputs, **call_kwargs)
    flat_sym = _flat(sym_outputs)
    assert [_shape(s)[1:] for s in flat_sym] == [_shape(o)[1:] for o in flat_outputs], (
        "symbolic and eager output shapes differ"
    )
    model = keras.Model(symbolic_inputs, sym_outputs)
    reference = [ops.convert_to_numpy(o) for o in _flat(model(list(inputs)))]

    # 5. One training step moves the trainable weights.
    if run_training_check and sym_layer.trainable_weights:
        float_outputs = [o for o in flat_sym if "float" in str(o.dtype)]
        train_model = keras.Model(symbolic_inputs, float_outputs[0])
        train_model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        before = [ops.convert_to_numpy(w).copy() for w in sym_layer.trainable_weights]
        target = np.ones(_shape(train_model(list(inputs))), dtype="float32")
        train_model.fit(list(inputs), target, batch_size=len(inputs[0]), epochs=1, verbose=0)
        after = [ops.convert_to_numpy(w) for w in sym_layer.trainable_weights]
        assert any(not np.allclose(b, a) for b, a in zip(before, after, strict=True)), (
            "one fit step left every trainable weight unchanged"
        )
        reference = [ops.convert_to_numpy(o) for o in _flat(model(list(inputs)))]

    # 6. `.keras` save and reload by registered name.
    if run_saving_check:
        assert tmp_path is not None, "pass tmp_path to run the saving check"
        path = os.path.join(str(tmp_path), f"{layer_cls.__name__}.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path)
        again = [ops.convert_to_numpy(o) for o in _flat(reloaded(list(inputs)))]
        for a, b in zip(reference, again, strict=True):
            np.testing.assert_allclose(a, b, atol=atol, err_msg="reloaded model differs")

    return outputs
