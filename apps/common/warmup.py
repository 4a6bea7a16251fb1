"""TF Serving warm-up records, written into every export.

When TF Serving loads a version it replays the requests in
`<version>/assets.extra/tf_serving_warmup_requests` before it marks the
version AVAILABLE, so the graph tracing, kernel choices and memory allocation
a first call costs are paid then, not by the first user (TF Serving's
"SavedModel Warmup" guide). The file is a TFRecord file of
`tensorflow.serving.PredictionLog` protos (here each one a `PredictLog` whose
`request` is a `PredictRequest` naming a signature); TF Serving reads at most
1000 of them.

`write_warmup_requests` writes the file with the official
`tensorflow-serving-api` protos. The exports call it on their temporary
folder, inside `apps.common.export.export_versioned`, so a version never
appears without its warm-up file.

Example:

```python
write_warmup_requests(path, [("serving_default", {"sentences": ["Hello."]})])
```
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from apps.common.errors import UserError

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_RECORDS = 1000  # TF Serving replays no more than this.


def warmup_path(saved_model_dir: str | os.PathLike) -> Path:
    """`<saved_model_dir>/assets.extra/tf_serving_warmup_requests`."""
    return Path(saved_model_dir) / WARMUP_DIR / WARMUP_FILE


def _protos():
    try:
        from tensorflow_serving.apis import predict_pb2, prediction_log_pb2
    except ImportError as e:
        raise UserError(
            f"writing TF Serving warm-up requests needs tensorflow-serving-api ({e}): pip "
            f"install tensorflow-serving-api with the version of your TensorFlow."
        ) from None
    return predict_pb2, prediction_log_pb2


def write_warmup_requests(
    saved_model_dir: str | os.PathLike,
    requests: Iterable[tuple[str, Mapping[str, Any]]],
) -> Path:
    """Writes `requests` as TF Serving's warm-up file of the SavedModel at `saved_model_dir`.

    Args:
        saved_model_dir: a SavedModel folder (in practice the export's
            temporary folder, before it is renamed to its version number).
        requests: `(signature_name, {input_name: batch})` pairs; each batch
            is anything `tf.make_tensor_proto` takes (a list of strings or
            bytes, a NumPy array) with the signature's dtype.

    Returns:
        The file written.

    Raises:
        ValueError: no requests, or more than TF Serving replays.
    """
    import tensorflow as tf

    predict_pb2, prediction_log_pb2 = _protos()
    logs = []
    for signature_name, inputs in requests:
        request = predict_pb2.PredictRequest()
        request.model_spec.signature_name = signature_name
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        logs.append(
            prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
        )
    if not logs or len(logs) > MAX_RECORDS:
        raise ValueError(
            f"expected 1 to {MAX_RECORDS} warm-up requests. Received: {len(logs)} requests"
        )
    path = warmup_path(saved_model_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(saved_model_dir: str | os.PathLike) -> list:
    """The `PredictionLog` protos of a SavedModel's warm-up file, in order."""
    import tensorflow as tf

    _, prediction_log_pb2 = _protos()
    path = warmup_path(saved_model_dir)
    if not path.is_file():
        raise UserError(f"{saved_model_dir} has no warm-up file ({WARMUP_DIR}/{WARMUP_FILE}).")
    return [
        prediction_log_pb2.PredictionLog.FromString(record.numpy())
        for record in tf.data.TFRecordDataset(str(path))
    ]
