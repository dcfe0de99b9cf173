"""Streamed text from the real SmolLM2 tokenizer: whole characters only, stop strings never shown."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.serving.detokenizer import BytePieces, IncrementalDetokenizer

CHAT_PROMPT = "<|im_start|>user\nSay something.<|im_end|>\n<|im_start|>assistant\n"
FFFD = "\ufffd"
TEXTS = {
    "ascii": "Hello, world! How are you today? I'm fine: 42 + 7 = 49.",
    "emoji": "I love 🦀 and 👨‍👩‍👧 family 😀😀 ok🎉",
    "cjk": "你好，世界。日本語のテキスト、한국어도",
    "mixed": " Line one\n\n  indented 🍕 pizza\n中文\tTab\r\nend 😀\n",
}
FOX = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(params=["window", "bytes"])
def new_detok(request):
    """IncrementalDetokenizer on either path: decoded windows (any tokenizer), or the byte-level
    tokenizer's pieces (what the engine uses for SmolLM2)."""
    def make(tokenizer, prompt, stop=(), skip_special_tokens=True, include_stop=False):
        pieces = BytePieces.of(tokenizer, skip_special_tokens) if request.param == "bytes" else None
        assert pieces is not None or request.param == "window"
        return IncrementalDetokenizer(tokenizer, prompt, stop, skip_special_tokens, include_stop, pieces)
    return make


def stream(
    new_detok,
    tokenizer,
    output_ids: list[int],
    stop: tuple[str, ...] = (),
    chunk: int = 1,
    skip_special_tokens: bool = True,
) -> tuple[list[str], IncrementalDetokenizer]:
    """Feed output_ids `chunk` at a time; return every delta (the flush last) and the detokenizer."""
    prompt = tokenizer.encode(CHAT_PROMPT)
    detok = new_detok(tokenizer, prompt, stop, skip_special_tokens)
    deltas = [detok.add_tokens(output_ids[i : i + chunk]) for i in range(0, len(output_ids), chunk)]
    deltas.append(detok.flush())
    return deltas, detok


@pytest.mark.parametrize("name", sorted(TEXTS))
@pytest.mark.parametrize("chunk", [1, 3])
def test_deltas_concatenate_to_decode(new_detok, smol_tokenizer, name: str, chunk: int) -> None:
    ids = smol_tokenizer.encode(TEXTS[name])
    deltas, detok = stream(new_detok, smol_tokenizer, ids, chunk=chunk)
    assert "".join(deltas) == smol_tokenizer.decode(ids, skip_special_tokens=True) == TEXTS[name]
    assert detok.text == TEXTS[name] and not detok.stopped
    assert not any(FFFD in d for d in deltas)


def test_split_characters_are_really_split(smol_tokenizer) -> None:
    """Guard for the test above: these texts do put one character over several tokens."""
    for name in ("emoji", "cjk"):
        ids = smol_tokenizer.encode(TEXTS[name])
        assert any(FFFD in smol_tokenizer.decode([i]) for i in ids)


def test_text_is_shown_as_soon_as_it_is_whole(new_detok, smol_tokenizer) -> None:
    ids = smol_tokenizer.encode(FOX)
    deltas, _ = stream(new_detok, smol_tokenizer, ids)
    assert deltas[:3] == ["The", " quick", " brown"]  # no lag without stop strings
    assert deltas[-1] == ""  # nothing left for flush


def test_special_tokens_skipped_or_shown(new_detok, smol_tokenizer) -> None:
    ids = smol_tokenizer.encode("Hi there") + [2]  # 2 is <|im_end|>
    assert "".join(stream(new_detok, smol_tokenizer, ids)[0]) == "Hi there"
    shown = "".join(stream(new_detok, smol_tokenizer, ids, skip_special_tokens=False)[0])
    assert shown == smol_tokenizer.decode(ids, skip_special_tokens=False) == "Hi there<|im_end|>"


def test_prompt_ending_inside_a_character(new_detok, smol_tokenizer) -> None:
    prompt = smol_tokenizer.encode("abc 世")[:-1]  # cut inside the last character
    ids = smol_tokenizer.encode(" next 😀")
    detok = new_detok(smol_tokenizer, prompt)
    text = "".join(detok.add_tokens([i]) for i in ids) + detok.flush()
    assert text == smol_tokenizer.decode(ids)


def token_spans(tokenizer, ids: list[int]) -> list[tuple[int, int]]:
    """Character span of each token in decode(ids) (whole-character tokens only)."""
    spans, start = [], 0
    for n in range(1, len(ids) + 1):
        end = len(tokenizer.decode(ids[:n]))
        spans.append((start, end))
        start = end
    return spans


@pytest.mark.parametrize(
    ("stop", "starts_mid_token", "min_tokens"),
    [
        ("ick bro", True, 2),  # begins inside " quick"
        ("own fox jum", True, 3),  # inside " brown", through " fox", into " jumps"
        (" fox jumps over", False, 3),
        ("dog.", True, 2),
    ],
)
def test_stop_string_split_over_tokens(
    new_detok, smol_tokenizer, stop: str, starts_mid_token: bool, min_tokens: int
) -> None:
    ids = smol_tokenizer.encode(FOX)
    at = FOX.index(stop)
    spans = token_spans(smol_tokenizer, ids)
    touched = [s for s in spans if s[0] < at + len(stop) and s[1] > at]
    assert len(touched) >= min_tokens and (touched[0][0] < at) == starts_mid_token
    deltas, detok = stream(new_detok, smol_tokenizer, ids, stop=(stop,))
    assert "".join(deltas) == detok.text == FOX[:at]
    assert detok.stopped and detok.stop_string == stop
    assert detok.add_tokens(smol_tokenizer.encode(" more")) == "" and detok.flush() == ""


def test_stop_string_never_shown_while_streaming(new_detok, smol_tokenizer) -> None:
    stop = "jumps over"
    ids = smol_tokenizer.encode(FOX)
    detok = new_detok(smol_tokenizer, [], (stop,))
    for i in ids:
        detok.add_tokens([i])
        assert not any(detok.text.endswith(stop[:n]) for n in range(4, len(stop) + 1))
    assert detok.text == "The quick brown fox "


def test_first_stop_string_to_complete_wins(new_detok, smol_tokenizer) -> None:
    """Generation ends as soon as any stop string is whole, even if a longer one began earlier."""
    ids = smol_tokenizer.encode(FOX)
    deltas, detok = stream(new_detok, smol_tokenizer, ids, stop=("lazy", "brown", "quick brown fox jumps"))
    assert "".join(deltas) == "The quick " and detok.stop_string == "brown"


def test_of_stops_completed_by_one_token_the_earliest_wins(new_detok, smol_tokenizer) -> None:
    ids = smol_tokenizer.encode(FOX)
    deltas, detok = stream(new_detok, smol_tokenizer, ids, stop=("fox", "n fox"))
    assert "".join(deltas) == "The quick brow" and detok.stop_string == "n fox"


@pytest.mark.parametrize("stop", ["界。日", "👩‍👧", "🦀 and"])
def test_stop_string_across_split_characters(new_detok, smol_tokenizer, stop: str) -> None:
    text = TEXTS["cjk"] + TEXTS["emoji"]
    deltas, detok = stream(new_detok, smol_tokenizer, smol_tokenizer.encode(text), stop=(stop,))
    assert "".join(deltas) == text[: text.index(stop)] and detok.stop_string == stop
    assert not any(FFFD in d for d in deltas)


def test_flush_releases_held_text(new_detok, smol_tokenizer) -> None:
    ids = smol_tokenizer.encode("The lazy do")
    detok = new_detok(smol_tokenizer, [], ("dog.", "xyz"))
    streamed = "".join(detok.add_tokens([i]) for i in ids)
    assert streamed == "The lazy "  # "do" could still become "dog."
    assert detok.flush() == "do" and detok.text == "The lazy do" and not detok.stopped


def test_hold_back_is_bounded(new_detok, smol_tokenizer) -> None:
    stop = ("abcdefgh",)
    text = "a ab abc abcd abcdefg then more words follow here"
    ids = smol_tokenizer.encode(text)
    detok = new_detok(smol_tokenizer, [], stop)
    for n, i in enumerate(ids, 1):
        detok.add_tokens([i])
        held = len(smol_tokenizer.decode(ids[:n])) - len(detok.text)
        assert 0 <= held <= len(stop[0]) - 1
    detok.flush()
    assert detok.text == text


ALPHABET = list("ab xyZ.,!\n\t") + list("😀🦀🍕👍") + list("世界日本語の한") + ["é", "ß", "\u200d"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), text=st.text(alphabet=ALPHABET, min_size=1, max_size=40))
def test_property_stream_equals_decode_truncated_at_stop(new_detok, smol_tokenizer, data, text: str) -> None:
    ids = smol_tokenizer.encode(text)
    decoded = smol_tokenizer.decode(ids)
    stops: tuple[str, ...] = ()
    if data.draw(st.booleans()):  # a stop string cut from inside the text
        start = data.draw(st.integers(0, len(text) - 1))
        end = data.draw(st.integers(start + 1, min(len(text), start + 6)))
        stops = (text[start:end],)
    chunk = data.draw(st.integers(1, 3))
    deltas, detok = stream(new_detok, smol_tokenizer, ids, stop=stops, chunk=chunk)
    hits = [decoded.find(s) for s in stops if s in decoded]
    expected = decoded[: min(hits)] if hits else decoded
    assert "".join(deltas) == detok.text == expected
    assert detok.stopped == bool(hits)
    assert not any(FFFD in d for d in deltas)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_byte_pieces_stream_any_ids_as_decode(smol_tokenizer, data) -> None:
    """Any ids at all, as a random-weight model draws them: bytes that make no character, special
    tokens, ids past the vocabulary. The byte-level stream still joins into decode's text exactly,
    with special tokens skipped or shown; only bytes of a character still to come are held."""
    vocab = len(smol_tokenizer)
    skip = data.draw(st.booleans())
    ids = data.draw(st.lists(st.one_of(st.integers(0, vocab + 8), st.integers(0, 20)), min_size=1, max_size=24))
    chunk = data.draw(st.integers(1, 3))
    detok = IncrementalDetokenizer(smol_tokenizer, [], (), skip, pieces=BytePieces.of(smol_tokenizer, skip))
    deltas = [detok.add_tokens(ids[i:i + chunk]) for i in range(0, len(ids), chunk)]
    expected = smol_tokenizer.backend_tokenizer.decode(ids, skip_special_tokens=skip)
    assert "".join(deltas) + detok.flush() == detok.text == expected
    assert expected == smol_tokenizer.decode(ids, skip_special_tokens=skip)


def test_byte_pieces_only_for_a_lone_byte_level_decoder(smol_tokenizer, tmp_path) -> None:
    from benchmarks.synthetic_model import word_tokenizer

    assert BytePieces.of(smol_tokenizer, True) is not None
    assert BytePieces.of(word_tokenizer(64, 63), True) is None  # no ByteLevel decoder: the window path
    smol_tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    cleaning = AutoTokenizer.from_pretrained(tmp_path, clean_up_tokenization_spaces=True)
    assert BytePieces.of(cleaning, True) is None  # asked to clean up spaces after the decoder: the window path
    with pytest.raises(ValueError, match="skip_special_tokens"):
        IncrementalDetokenizer(smol_tokenizer, [], (), False, pieces=BytePieces.of(smol_tokenizer, True))
