"""The translator's typed configuration and its named presets.

One flat dataclass holds everything a run needs (data, model, training); the
resolved config is saved as `config.json` beside the model, so that `evaluate`,
`translate` and `export` rebuild exactly the same tokenisation.

Presets:

- `tiny`: a few thousand weights, for tests (seconds on a CPU).
- `tiny-subword`: `tiny` with a shared subword vocabulary and tied
  embeddings, for tests of the subword path.
- `default`: the best quality this project reaches on a 2-core CPU within
  60 minutes of training (subword pieces in one English+Spanish vocabulary
  with tied embeddings, small post-norm Transformer, length buckets, warm-up +
  cosine learning rate, label smoothing).
- `large`: a Transformer-base-like model for a GPU.
- `keras-io-reference`: the hyperparameters of the keras-io example
  "English-to-Spanish translation with a sequence-to-sequence Transformer"
  (vocabulary 15000, length 20, embedding 256, feed-forward 2048, 8 heads of
  key_dim 256, one encoder and one decoder layer, batch 64, RMSprop, dropout
  0.5 before the output layer, every batch padded to the full length), so
  that speed and quality compare like with like. Unlike the example, it keeps
  case and punctuation and masks padding in the loss.
"""

from __future__ import annotations

import dataclasses

from apps.common.config import get_preset
from apps.common.rundir import CONFIG_FILE, MODEL_FILE  # noqa: F401  (the run directory's names)

OPTIMIZERS = ("adam", "adamw", "rmsprop")
# "word": words and punctuation marks, `tf.strings` regexes and a lookup table
# (vectorization.py; unknown words become [UNK]). "subword": SentencePiece
# pieces learned from the training split, with byte fallback (subword.py).
TOKENIZERS = ("word", "subword")
# The app's name in run directories (`config.json`'s "app") and on TF Serving.
APP_NAME = "translator"
# Seconds the TF Serving client waits for each answer (`translate --server --timeout`).
SERVING_TIMEOUT = 60.0
# File names in a run directory; a prepared-data folder holds the same vocabulary files.
SOURCE_VOCAB_FILE = "vocab_source.txt"
TARGET_VOCAB_FILE = "vocab_target.txt"
# Subword runs also hold the SentencePiece models (the vocabulary files above
# then list their pieces). With a shared vocabulary both files hold one model.
SOURCE_SUBWORD_FILE = "subword_source.model"
TARGET_SUBWORD_FILE = "subword_target.model"
# Pieces every subword vocabulary holds besides the learned ones: the 4
# reserved tokens and the 256 byte-fallback pieces <0x00> ... <0xFF>.
SUBWORD_FIXED_PIECES = 4 + 256
# The fields that decide tokenisation and which pairs are used: training from
# prepared arrays needs the values they were prepared with.
DATA_FIELDS = (
    "tokenizer",
    "shared_vocab",
    "sequence_length",
    "source_vocab_size",
    "target_vocab_size",
    "min_count",
    "max_train_pairs",
    "copy_augmentation",
)
# Where a run directory keeps the prepared data that `train --data` tokenised.
PREPARED_DIR = "data"
# The run's inputs, recorded so that config.json says how to reproduce it; not
# compared when a run resumes (a resumed run may read a copy, or run elsewhere).
RUN_FIELDS = ("data_path", "data_sha256", "distribute")


@dataclasses.dataclass
class TranslatorConfig:
    """Everything that defines a translator run.

    Args:
        tokenizer: `"word"` (words and punctuation marks; unknown words
            become `[UNK]`) or `"subword"` (SentencePiece pieces learned from
            the training split, with byte fallback: no `[UNK]`). Run
            directories written before this field existed are word-level.
        shared_vocab: subword only: one vocabulary for English and Spanish,
            and one embedding matrix for the source embedding, the target
            embedding and the output projection (tied). Names and numbers
            then have the same ids on both sides.
        sequence_length: most tokens per sentence on each side. Source
            sentences are truncated to it; targets count their end token
            (so a translation has at most `sequence_length - 1` words), and
            training pairs longer than that are left out.
        source_vocab_size: most English vocabulary entries, reserved tokens
            included (fewer when the training split has fewer words). For
            subwords, the size of the SentencePiece vocabulary (byte pieces
            included; smaller when the corpus is too small for it); with
            `shared_vocab`, of the one vocabulary, and `target_vocab_size`
            must be equal.
        target_vocab_size: most Spanish vocabulary entries, likewise.
        min_count: a word enters a vocabulary only if seen this often in the
            training split (word tokenizer only).
        max_train_pairs: use only the first N training pairs (quick runs).
        copy_augmentation: subword only: the share of the training pairs
            holding a name or a number (written identically on both sides)
            whose names and numbers are replaced by random ones on both
            sides (`augment.py`), so that the model learns to copy what it
            has never seen. Fixed at preparation (seeded, not by `seed`).
        embed_dim: model width.
        intermediate_dim: feed-forward width.
        num_heads: attention heads.
        key_dim: width of each head; `None` means `embed_dim // num_heads`.
        num_encoder_layers: Transformer encoder blocks.
        num_decoder_layers: Transformer decoder blocks.
        dropout: dropout inside the encoder and decoder blocks.
        output_dropout: dropout before the output projection (keras-io uses 0.5).
        normalize_first: pre-norm blocks if True, post-norm (Vaswani) if False.
        batch_size: pairs per training step.
        bucket_by_length: batch sentences of similar length together and pad
            each batch to its bucket (much less padding); if False every batch
            is padded to `sequence_length` (as the keras-io example does).
        epochs: passes over the training split.
        optimizer: one of `adam`, `adamw`, `rmsprop`.
        learning_rate: peak learning rate.
        warmup_steps: linear warm-up steps from 0 to `learning_rate`; 0 keeps
            the rate constant (no schedule).
        cosine_decay: after warm-up, decay along a cosine to
            `final_learning_rate_fraction * learning_rate` by the last step.
        final_learning_rate_fraction: see `cosine_decay`.
        weight_decay: decoupled weight decay (only for `adamw`).
        label_smoothing: label smoothing of the token cross-entropy.
        clipnorm: gradient clipping by global norm; `None` disables it.
        jit_compile: compile the TensorFlow train and validation steps with
            XLA (one program per length bucket, ~16 compilations of a few
            seconds each per run). On in `default` and `large`: a `default`
            step measured 1.7x faster without oneDNN (the slow CPU path) and
            1.1x with it (`benchmarks/translator_training.py`). JAX always
            compiles its train step (un-jitted, it runs op by op, tens of
            times slower).
        patience: epochs without `val_loss` improvement before stopping.
        time_budget_minutes: stop training (after the current batch, then
            validate and keep the best model) once this much time has passed.
        eval_sentences: validation sources decoded after training for the
            BLEU/chrF in `metrics.json` (0 skips it).
        seed: seeds weights, shuffling and dropout.
        data_path: the corpus (`--data`) or the prepared folder (`--prepared`)
            the run was trained from; `None` for pairs passed in memory or the
            downloaded corpus (recorded by `train`).
        data_sha256: the corpus's sha256, or that of the prepared folder's
            `manifest.json` (which holds every file's); `None` if not known.
        distribute: the `--distribute` strategy (recorded by `train`).
    """

    # Data and tokenisation. `tokenizer` defaults to "word" so that a config.json
    # written before the field existed reads as what it was.
    tokenizer: str = "word"
    shared_vocab: bool = False
    sequence_length: int = 24
    source_vocab_size: int = 12000
    target_vocab_size: int = 16000
    min_count: int = 1
    max_train_pairs: int | None = None
    copy_augmentation: float = 0.0
    # Model.
    embed_dim: int = 256
    intermediate_dim: int = 1024
    num_heads: int = 4
    key_dim: int | None = None
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    dropout: float = 0.1
    output_dropout: float = 0.0
    normalize_first: bool = False
    # Training.
    batch_size: int = 64
    bucket_by_length: bool = True
    epochs: int = 6
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    warmup_steps: int = 1000
    cosine_decay: bool = True
    final_learning_rate_fraction: float = 0.05
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    clipnorm: float | None = 1.0
    jit_compile: bool = False
    patience: int = 3
    time_budget_minutes: float | None = None
    eval_sentences: int = 1000
    seed: int = 1234
    # Inputs (recorded by `train`, see RUN_FIELDS).
    data_path: str | None = None
    data_sha256: str | None = None
    distribute: str = "none"

    def __post_init__(self):
        positive = (
            "sequence_length",
            "source_vocab_size",
            "target_vocab_size",
            "min_count",
            "embed_dim",
            "intermediate_dim",
            "num_heads",
            "num_encoder_layers",
            "num_decoder_layers",
            "batch_size",
            "epochs",
            "patience",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(
                f"tokenizer must be one of {', '.join(TOKENIZERS)}. "
                f"Received: tokenizer={self.tokenizer!r}"
            )
        if not isinstance(self.shared_vocab, bool):
            raise ValueError(
                f"shared_vocab must be True or False. Received: shared_vocab={self.shared_vocab!r}"
            )
        if self.shared_vocab and self.tokenizer != "subword":
            raise ValueError(
                "shared_vocab needs tokenizer='subword' (a word vocabulary is per language). "
                f"Received: tokenizer={self.tokenizer!r}, shared_vocab=True"
            )
        if self.shared_vocab and self.source_vocab_size != self.target_vocab_size:
            raise ValueError(
                "shared_vocab uses one vocabulary for both languages: source_vocab_size and "
                "target_vocab_size must be equal. Received: "
                f"source_vocab_size={self.source_vocab_size}, "
                f"target_vocab_size={self.target_vocab_size}"
            )
        if (
            isinstance(self.copy_augmentation, bool)
            or not isinstance(self.copy_augmentation, (int, float))
            or not 0.0 <= self.copy_augmentation <= 1.0
        ):
            raise ValueError(
                "copy_augmentation must be a fraction in [0, 1]. "
                f"Received: copy_augmentation={self.copy_augmentation!r}"
            )
        if self.copy_augmentation and self.tokenizer != "subword":
            raise ValueError(
                "copy_augmentation needs tokenizer='subword' (random names are unknown words to a "
                f"word vocabulary). Received: tokenizer={self.tokenizer!r}, "
                f"copy_augmentation={self.copy_augmentation}"
            )
        if self.sequence_length < 2:
            raise ValueError(
                "sequence_length must be at least 2 (one word and the end token). "
                f"Received: sequence_length={self.sequence_length}"
            )
        for name in ("source_vocab_size", "target_vocab_size"):
            if getattr(self, name) < 5:
                raise ValueError(
                    f"{name} must leave room for the 4 reserved tokens and one word. "
                    f"Received: {name}={getattr(self, name)}"
                )
        if self.tokenizer == "subword":
            for name in ("source_vocab_size", "target_vocab_size"):
                if getattr(self, name) <= SUBWORD_FIXED_PIECES:
                    raise ValueError(
                        f"A subword {name} must exceed the {SUBWORD_FIXED_PIECES} fixed pieces "
                        "(4 reserved tokens, 256 bytes) and leave room for the characters and "
                        f"pieces of the corpus. Received: {name}={getattr(self, name)}"
                    )
        for name in ("max_train_pairs", "key_dim"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(
                    f"{name} must be None or a positive integer. Received: {name}={value!r}"
                )
        if self.key_dim is None and self.embed_dim % self.num_heads:
            raise ValueError(
                "embed_dim must be divisible by num_heads when key_dim is None. "
                f"Received: embed_dim={self.embed_dim}, num_heads={self.num_heads}"
            )
        for name in (
            "dropout",
            "output_dropout",
            "label_smoothing",
            "final_learning_rate_fraction",
        ):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1). Received: {name}={value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}. Received: optimizer={self.optimizer!r}"
            )
        if self.learning_rate <= 0:
            raise ValueError(
                f"learning_rate must be positive. Received: learning_rate={self.learning_rate}"
            )
        for name in ("warmup_steps", "eval_sentences"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"{name} must be a non-negative integer. Received: {name}={value!r}"
                )
        if self.weight_decay < 0:
            raise ValueError(
                f"weight_decay must be >= 0. Received: weight_decay={self.weight_decay}"
            )
        if self.clipnorm is not None and self.clipnorm <= 0:
            raise ValueError(
                f"clipnorm must be None or positive. Received: clipnorm={self.clipnorm}"
            )
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int)
            or not 0 <= self.seed < 2**32
        ):
            raise ValueError(
                f"seed must be an integer in [0, 2**32 - 1]. Received: seed={self.seed!r}"
            )
        if self.time_budget_minutes is not None and not self.time_budget_minutes > 0:
            raise ValueError(
                "time_budget_minutes must be None or positive. "
                f"Received: time_budget_minutes={self.time_budget_minutes}"
            )

    @property
    def head_dim(self) -> int:
        """The width of one attention head."""
        return self.key_dim if self.key_dim is not None else self.embed_dim // self.num_heads


def tiny() -> TranslatorConfig:
    """A model small enough to train in seconds, for tests."""
    return TranslatorConfig(
        sequence_length=10,
        source_vocab_size=300,
        target_vocab_size=300,
        embed_dim=32,
        intermediate_dim=64,
        num_heads=2,
        num_encoder_layers=1,
        num_decoder_layers=1,
        dropout=0.0,
        batch_size=32,
        epochs=2,
        learning_rate=3e-3,
        warmup_steps=20,
        label_smoothing=0.0,
        patience=2,
        eval_sentences=50,
    )


def tiny_subword() -> TranslatorConfig:
    """`tiny` with a shared subword vocabulary and tied embeddings, for tests."""
    return dataclasses.replace(
        tiny(),
        tokenizer="subword",
        shared_vocab=True,
        sequence_length=20,
        source_vocab_size=1000,
        target_vocab_size=1000,
    )


def default() -> TranslatorConfig:
    """The best quality this project reaches with <= 60 minutes on a 2-core CPU.

    Subword pieces: 8k pieces shared by English and Spanish, with tied
    embeddings, give 8.9 English / 8.8 Spanish pieces per test sentence (7.4
    word-level tokens), so 24 positions hold 98.9 % of the training pairs
    (after copy augmentation, whose random names take more pieces; 99.4 %
    before). 40 positions (all but 47 pairs) measured level on every slice
    (test, rare-word and long-sentence BLEU within 0.5) but decode a batch of
    64 27 % slower, since a batch runs until its longest output ends and a rare
    runaway output then runs to 40 (`apps/translator/README.md`). 8k rather
    than 16k because the logits are half of a step's arithmetic: a step is 25 %
    shorter, which buys a seventh epoch within the budget on the slow CPU (XLA:
    1.7x faster there). Half the training pairs holding a name or a number get
    random ones (`copy_augmentation`), so that unseen names and numbers are
    copied.
    Measured in `apps/translator/README.md` ("The default preset").
    """
    return TranslatorConfig(
        tokenizer="subword",
        shared_vocab=True,
        source_vocab_size=8000,
        target_vocab_size=8000,
        copy_augmentation=0.5,
        epochs=7,
        jit_compile=True,
        time_budget_minutes=58.0,
    )


def large() -> TranslatorConfig:
    """A Transformer-base-sized model (Vaswani et al. 2017) for a GPU."""
    return TranslatorConfig(
        source_vocab_size=16000,
        target_vocab_size=30000,
        embed_dim=512,
        intermediate_dim=2048,
        num_heads=8,
        num_encoder_layers=6,
        num_decoder_layers=6,
        dropout=0.1,
        batch_size=256,
        epochs=40,
        jit_compile=True,
        learning_rate=7e-4,
        warmup_steps=4000,
        patience=5,
        eval_sentences=2000,
    )


def keras_io_reference() -> TranslatorConfig:
    """The keras-io English-to-Spanish Transformer example's hyperparameters."""
    return TranslatorConfig(
        sequence_length=20,
        source_vocab_size=15000,
        target_vocab_size=15000,
        embed_dim=256,
        intermediate_dim=2048,
        num_heads=8,
        key_dim=256,
        num_encoder_layers=1,
        num_decoder_layers=1,
        dropout=0.0,
        output_dropout=0.5,
        batch_size=64,
        bucket_by_length=False,
        epochs=30,
        optimizer="rmsprop",
        learning_rate=1e-3,
        warmup_steps=0,
        cosine_decay=False,
        label_smoothing=0.0,
        clipnorm=None,
        patience=3,
    )


def vocabulary_files(config: TranslatorConfig) -> list[str]:
    """The files of a run directory (or prepared folder) that hold `config`'s vocabularies."""
    files = [SOURCE_VOCAB_FILE, TARGET_VOCAB_FILE]
    if config.tokenizer == "subword":
        files += [SOURCE_SUBWORD_FILE, TARGET_SUBWORD_FILE]
    return files


PRESETS = {
    "tiny": tiny,
    "tiny-subword": tiny_subword,
    "default": default,
    "large": large,
    "keras-io-reference": keras_io_reference,
}


def get_config(name: str) -> TranslatorConfig:
    """Returns a fresh config of the preset called `name` (ValueError lists the known ones)."""
    return get_preset(PRESETS, name)
