"""Prediction through a TF Serving server that serves a `medical_cnn` export.

`predict_files_served` has the contract of `predict.predict_files`: one record
per file, in order, built by the same `prediction_record`, so that
`medical-cnn predict --server URL` prints exactly what local prediction prints
(the export returns the run's `threshold` with every prediction for that).

Files are read and checked locally first (`predict.read_image_file`): a missing
file or one that does not start like an image gets its error record and is
never sent. The others go to `serving_default` as `{"image_bytes": {"b64": ...}}`
in batches. If the server refuses a batch as bad input (HTTP 400: an image that
starts right but does not decode), each image of that batch is sent alone, so
that only the broken ones get an error record. Any other failure (server down,
model or version missing, timeout) raises a `ServingError`.

`server` is a REST URL (`http://HOST:8501`) or a gRPC address
(`grpc://HOST:8500`); `apps.common.serving.connect` picks the client, and both
give the same records. Over REST only the standard library and NumPy are
needed here; gRPC imports `tensorflow-serving-api` (and so TensorFlow).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from apps.common.errors import UserError
from apps.common.serving import (
    MalformedResponseError,
    ServerError,
    ServingClient,
    ServingError,
    connect,
    encode_b64,
)
from apps.medical_cnn.predict import (
    FILE_ERRORS,
    error_record,
    not_an_image,
    prediction_record,
    read_image_file,
)

DEFAULT_MODEL_NAME = "medical_cnn"
SIGNATURE = "serving_default"
INPUT = "image_bytes"
BINARY_OUTPUTS = frozenset({"probability", "label", "class_name", "threshold"})
MULTICLASS_OUTPUTS = frozenset({"probabilities", "probability", "label", "class_name"})


class ModelMismatchError(ServingError):
    """The served model is not a `medical_cnn` export this client can read."""


def check_signature(client: ServingClient) -> frozenset[str]:
    """Checks, from the server's metadata, that the model is a `medical_cnn` export.

    Returns:
        The output names of `serving_default` (`BINARY_OUTPUTS` or `MULTICLASS_OUTPUTS`).

    Raises:
        ModelMismatchError: the signature's inputs or outputs are not those of
            a `medical_cnn` export (another model, or an export too old to
            carry its threshold).
        ServingError: the server is unreachable, the model or version is not
            loaded, or the metadata is malformed.
    """
    metadata = client.metadata()
    try:
        signature = metadata["metadata"]["signature_def"]["signature_def"][SIGNATURE]
        inputs = frozenset(signature.get("inputs", {}))
        outputs = frozenset(signature.get("outputs", {}))
    except (KeyError, TypeError, AttributeError) as e:
        raise MalformedResponseError(
            f"the metadata of {client.model_url} has no '{SIGNATURE}' signature ({e!r}); "
            f"is {client.model_name!r} a medical_cnn export?",
            url=f"{client.model_url}/metadata",
            status=200,
        ) from e
    where = f"model {client.model_name!r} on {client.base_url}"
    if inputs != {INPUT}:
        raise ModelMismatchError(
            f"{where} is not a medical_cnn export: its {SIGNATURE} signature takes "
            f"{sorted(inputs)}, not ['{INPUT}']. Check --model-name.",
            url=client.model_url,
        )
    if outputs not in (BINARY_OUTPUTS, MULTICLASS_OUTPUTS):
        hint = (
            " It was exported before exports carried their threshold: export the run again "
            "(medical-cnn export --model RUN_DIR)."
            if outputs == BINARY_OUTPUTS - {"threshold"}
            else " Check --model-name."
        )
        raise ModelMismatchError(
            f"{where} returns {sorted(outputs)}, not the outputs of a medical_cnn export "
            f"({sorted(BINARY_OUTPUTS)}).{hint}",
            url=client.model_url,
        )
    return outputs


# TensorFlow's decoration around an op's error: node names, op names, stack notes.
_TF_NOISE = re.compile(r"\[\[.*?\]\]|\[Op:[^\]]*\]|\{\{[^}]*\}\}")
_TF_NOISE_LINES = ("Graph execution error", "Detected at node", "<stack traces")


def decode_error_reason(server_message: str | None) -> str:
    """The decoder's own words in a TF Serving error, without TensorFlow's decoration.

    `"Graph execution error: ... jpeg::Uncompress failed. Invalid JPEG data ...
    [[{{node ...}}]]"` -> `"jpeg::Uncompress failed. Invalid JPEG data ..."`, the
    reason local prediction gives for the same file.
    """
    text = _TF_NOISE.sub("", server_message or "")
    lines = [line.strip() for line in text.splitlines()]
    kept = [line for line in lines if line and not line.startswith(_TF_NOISE_LINES)]
    return " ".join(kept) or (server_message or "").strip() or "TF Serving could not decode it"


def _record(path, row, url: str) -> dict:
    try:
        return prediction_record(
            path,
            row["probability"],
            row["label"],
            row["class_name"],
            threshold=row.get("threshold"),
            probabilities=row.get("probabilities"),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise MalformedResponseError(
            f"a prediction from {url} is not a medical_cnn answer ({e!r}): {str(row)[:200]}",
            url=url,
            status=200,
        ) from e


def _predict_batch(client: ServingClient, paths: list, encoded: list[bytes]) -> list[dict]:
    """Records for a batch of checked files; a refused batch is retried image by image."""
    instances = [{INPUT: encode_b64(data)} for data in encoded]
    try:
        rows = client.predict(instances, signature_name=SIGNATURE)
    except ServerError as e:
        if e.status != 400:
            raise
        if len(paths) == 1:
            reason = decode_error_reason(e.server_message)
            return [error_record(paths[0], not_an_image(paths[0], reason))]
        records = []
        for path, data in zip(paths, encoded, strict=True):
            records += _predict_batch(client, [path], [data])
        return records
    url = f"{client.model_url}:predict"
    return [_record(path, row, url) for path, row in zip(paths, rows, strict=True)]


def predict_files_served(
    server: str,
    paths: Sequence[str | os.PathLike],
    model_name: str = DEFAULT_MODEL_NAME,
    version: int | None = None,
    batch_size: int = 32,
    timeout: float = 30.0,
    retries: int = 3,
    label: str | None = None,
) -> list[dict]:
    """Predicts each image file with a served model; records as `predict_files`.

    Args:
        server: TF Serving's REST address, e.g. `http://localhost:8501`, or its
            gRPC address, e.g. `grpc://localhost:8500`.
        paths: image files.
        model_name: the model's name on the server.
        version: a version to address; `None` lets the server choose (its latest).
        label: a version label to address instead (`version_labels`), e.g. `"canary"`.
        batch_size: images per request.
        timeout: seconds to wait for each request.
        retries: retries after a connection failure (with backoff).

    Returns:
        One record per file, in order: `{"file", "probability", "label",
        "class_name", "threshold"}` (multi-class: `probabilities` too, no
        `threshold`), or `{"file", "error"}` for a file that could not be read.

    Raises:
        ServingError: the server is unreachable or does not answer within
            `timeout`, the model or version is not loaded, the model is not a
            medical_cnn export, or an answer is malformed.
        UserError: a bad server URL, model name, version or timeout (as given
            on the command line).
        ValueError: a bad `batch_size` (a bug).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer. Received: {batch_size=}")
    try:
        client = connect(
            server, model_name, version=version, label=label, timeout=timeout, retries=retries
        )
    except ValueError as e:  # The URL, name, version or timeout the user gave.
        raise UserError(str(e)) from None
    check_signature(client)  # Fails early, and clearly, on a wrong server or model.
    records: list[dict | None] = [None] * len(paths)
    positions, encoded = [], []
    for i, path in enumerate(paths):
        try:
            encoded.append(read_image_file(path))
            positions.append(i)
        except FILE_ERRORS as e:
            records[i] = error_record(path, e)
    for start in range(0, len(positions), batch_size):
        chunk = positions[start : start + batch_size]
        batch = _predict_batch(
            client, [paths[i] for i in chunk], encoded[start : start + batch_size]
        )
        for i, record in zip(chunk, batch, strict=True):
            records[i] = record
    return records
