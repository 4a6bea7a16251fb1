"""Greedy decoding keeps byte-fallback pieces to valid UTF-8 (no `�` in a translation).

The loop is driven here by scripted logits that favour byte pieces far more
than a trained model does, so that every rule is exercised: a lead byte is
followed by exactly its continuation bytes, a continuation byte never starts a
character, `[END]` never cuts a character, a lead byte comes only with room
for its continuations, and bytes that start no character never come out.
"""

import numpy as np
import pytest
from keras import ops

from apps.translator.decoding import greedy_decode, reference_greedy_decode
from apps.translator.tokens import END_ID, PAD_ID, RESERVED_TOKENS, SPACE_MARK, join_pieces

# Four reserved tokens, three word pieces, then the 256 byte pieces (as SentencePiece lays them out).
TOKENS = [*RESERVED_TOKENS, f"{SPACE_MARK}a", "b", "."] + [f"<0x{b:02X}>" for b in range(256)]
BYTE0 = len(TOKENS) - 256


class ScriptedLayers:
    """The decoding interface of `TranslatorLayers`, with logits read from a fixed table.

    `logits[b, t]` are the logits of row `b` at output position `t`,
    whatever was decoded before: what greedy decoding picks from them is then
    fully determined by the rules under test.
    """

    def __init__(self, logits):
        self.logits = np.asarray(logits, "float32")
        self.target_vocab_size = self.logits.shape[-1]
        self.sequence_length = self.logits.shape[1]

    def encode(self, source):
        return ops.zeros((ops.shape(source)[0], 1, 1)), source != 0

    def start_caches(self, encoded, max_length):
        return ops.zeros((1,)), None

    def decode_step(self, tokens, index, source_mask, self_cache, cross_cache):
        return ops.take(self.logits, index, axis=1), self_cache


def allowed_ids(pending: int, second: tuple | None, room: int) -> np.ndarray:
    """The rules written from the UTF-8 table, one id at a time (the test's own reference).

    `second`: the range the next byte must be in when it is the second byte of a character.
    """
    allowed = np.zeros(len(TOKENS), bool)
    for i in range(4, len(TOKENS)):
        byte = i - BYTE0 if i >= BYTE0 else None
        if byte is not None and (byte in (0xC0, 0xC1) or byte >= 0xF5):
            continue
        is_continuation = byte is not None and 0x80 <= byte <= 0xBF
        if pending:
            low, high = second or (0x80, 0xBF)
            allowed[i] = is_continuation and low <= byte <= high
            continue
        needs = 0
        if byte is not None and 0xC2 <= byte <= 0xDF:
            needs = 1
        elif byte is not None and 0xE0 <= byte <= 0xEF:
            needs = 2
        elif byte is not None and 0xF0 <= byte <= 0xF4:
            needs = 3
        allowed[i] = not is_continuation and needs <= room
    allowed[END_ID] = not pending
    return allowed


def expected_decode(logits: np.ndarray) -> np.ndarray:
    """Greedy decoding under the rules, written as a plain loop over rows and positions."""
    batch, length, _ = logits.shape
    out = np.zeros((batch, length), "int32")
    seconds = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}
    for b in range(batch):
        pending, second = 0, None
        for t in range(length):
            allowed = allowed_ids(pending, second, length - 1 - t)
            choice = int(np.where(allowed, logits[b, t], -np.inf).argmax())
            out[b, t] = choice
            if choice == END_ID:
                break
            byte = choice - BYTE0 if choice >= BYTE0 else -1
            if pending:
                pending, second = pending - 1, None
            elif byte >= 0xC2:
                pending = 1 if byte <= 0xDF else 2 if byte <= 0xEF else 3
                second = seconds.get(byte)
    return out


def byte_heavy_logits(seed: int, batch: int = 16, length: int = 12) -> np.ndarray:
    """Random logits with byte pieces (lead bytes most of all) far ahead of words and `[END]`."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, length, len(TOKENS))).astype("float32")
    logits[..., BYTE0:] += 3.0
    logits[..., BYTE0 + 0xC0 :] += 2.0  # lead bytes, and the bytes that start nothing
    logits[:, -3:, END_ID] += 1.0
    return logits


def texts(ids: np.ndarray) -> list[str]:
    rows = []
    for row in ids:
        pieces = []
        for i in row:
            if i in (END_ID, PAD_ID):
                break
            pieces.append(TOKENS[i])
        rows.append(join_pieces(pieces))
    return rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_byte_pieces_always_form_valid_utf8(seed):
    logits = byte_heavy_logits(seed)
    source = np.ones((len(logits), 3), "int32")
    ids = np.asarray(greedy_decode(ScriptedLayers(logits), source, target_tokens=TOKENS))
    expected = expected_decode(logits)
    for b in range(len(ids)):  # after its [END] a row holds [PAD]
        end = list(expected[b]).index(END_ID) + 1 if END_ID in expected[b] else len(ids[b])
        np.testing.assert_array_equal(ids[b, :end], expected[b, :end])
        assert (ids[b, end:] == PAD_ID).all()
    decoded = texts(ids)
    assert all("\ufffd" not in text for text in decoded), decoded
    # The scripted logits do spell characters of 2, 3 and 4 bytes.
    assert {len(c.encode()) for text in decoded for c in text} >= {2, 3, 4}


def test_without_the_vocabulary_the_same_logits_give_broken_characters():
    logits = byte_heavy_logits(0)
    ids = np.asarray(greedy_decode(ScriptedLayers(logits), np.ones((len(logits), 3), "int32")))
    assert any("\ufffd" in text for text in texts(ids))


def test_lead_byte_only_with_room_for_its_continuations():
    # Position by position the model wants a 4-byte lead byte, then nothing in particular.
    logits = np.zeros((1, 6, len(TOKENS)), "float32")
    logits[0, :, BYTE0 + 0xF0] = 10.0
    logits[0, :, BYTE0 + 0x9F] = 5.0
    logits[0, :, BYTE0 + 0xC3] = 4.0
    logits[0, :, TOKENS.index("b")] = 3.0
    source = np.ones((1, 2), "int32")
    ids = np.asarray(greedy_decode(ScriptedLayers(logits), source, target_tokens=TOKENS))
    # F0 9F 9F 9F (one character), then no room for another 4-byte one: C3 9F, the last 2 positions.
    pieces = [TOKENS[i] for i in ids[0]]
    assert pieces == ["<0xF0>", "<0x9F>", "<0x9F>", "<0x9F>", "<0xC3>", "<0x9F>"]
    assert texts(ids) == ["\U0001f7df\u00df"]


def test_reference_decoder_follows_the_same_rules(tiny_subword_run):
    from apps.translator.translate import Translator

    translator = Translator.from_run_dir(tiny_subword_run[0])
    tokens = translator.target_vocab.tokens
    source = translator.source_vocab.encode(["Łódź is far.", "Xanthippe 😀 bought 37 kumquats."])
    source = source.to_tensor(shape=(2, translator.sequence_length)).numpy()
    cached = np.asarray(greedy_decode(translator.layers, source, target_tokens=tokens))
    reference = reference_greedy_decode(translator.model, source, target_tokens=tokens)
    np.testing.assert_array_equal(cached, reference)
