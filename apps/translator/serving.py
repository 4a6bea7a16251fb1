"""Translating through a TF Serving server that serves a translator export.

`ServedTranslator` has the interface of `translate.Translator` (`translate`,
`source_stats`) and sends the sentences to the server's REST API
(`http://HOST:8501`) or gRPC API (`grpc://HOST:8500`) through
`apps.common.serving.connect`, so `translator translate --server URL` prints
exactly what local translation prints.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from apps.common.errors import UserError
from apps.common.serving import connect
from apps.translator.config import SERVING_TIMEOUT
from apps.translator.translate import clean_sentences, translate_in_batches

STATS_KEYS = ("num_words", "num_unknown", "max_words")


class ServedTranslator:
    """English -> Spanish translation by a TF Serving model.

    Args:
        base_url: the server's REST address, e.g. `http://localhost:8501`, or
            its gRPC address, e.g. `grpc://localhost:8500`.
        model_name: the model's name on the server (default `translator`).
        version: a version to address; `None` lets the server choose its latest.
        label: a version label to address instead (`version_labels`), e.g. `"canary"`.
        timeout: seconds to wait for each answer (`translator translate --timeout`).

    Raises:
        UserError: a bad `base_url`, `version` or `timeout` (named in the message).
        ServingError: (when translating) the server is unreachable, lacks the
            model, fails, or does not answer within `timeout`.
    """

    def __init__(
        self,
        base_url: str,
        model_name: str = "translator",
        version: int | None = None,
        timeout: float = SERVING_TIMEOUT,
        label: str | None = None,
    ):
        # The client checks its arguments (a `UserError` names the bad one).
        self.client = connect(base_url, model_name, version=version, label=label, timeout=timeout)

    def _predict(self, sentences: list[str], signature_name: str | None = None) -> list:
        return self.client.predict(sentences, signature_name=signature_name)

    def translate(self, sentences: Sequence[str], batch_size: int = 64) -> list[str]:
        return translate_in_batches(
            sentences, batch_size, lambda batch: [str(t) for t in self._predict(batch)]
        )

    def source_stats(self, sentences: Sequence[str]) -> dict[str, np.ndarray]:
        sentences = clean_sentences(sentences)
        if not sentences:
            return {k: np.zeros((0,), "int32") for k in STATS_KEYS}
        rows = self._predict(sentences, signature_name="source_stats")
        try:
            return {k: np.asarray([row[k] for row in rows], dtype="int32") for k in STATS_KEYS}
        except (KeyError, TypeError) as e:
            raise UserError(
                f"the server's 'source_stats' answer lacks {e}; is '{self.client.model_name}' "
                "a translator export?"
            ) from e
