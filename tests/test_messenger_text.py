"""Long texts: split into several messages at word boundaries, never inside a character."""
from __future__ import annotations

import unicodedata

import pytest

from flask_ampalibe.messenger import Messenger, split_text
from flask_ampalibe.testing.graph import FakeGraph

USER = "1234"


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@pytest.fixture
def chat(graph: FakeGraph) -> Messenger:
    messenger = Messenger("token", graph_url=graph.url, timeout=5)
    yield messenger
    messenger.close()


def test_short_text_is_one_message() -> None:
    assert split_text("Hello world") == ["Hello world"]
    assert split_text("x" * 1999) == ["x" * 1999]
    assert split_text("") == [""]


def test_split_on_word_boundaries() -> None:
    words = [f"w{i:04d}" for i in range(900)]  # 5-character words: 5399 characters
    text = " ".join(words)
    pieces = split_text(text)
    assert len(pieces) == 3
    assert all(utf16(p) < 2000 for p in pieces)
    assert " ".join(pieces) == text  # only the spaces at the cuts are dropped
    assert all(p.split(" ")[0] in words and p.split(" ")[-1] in words for p in pieces)  # no word cut


def test_split_prefers_a_paragraph_break_in_the_second_half() -> None:
    first = "a " * 800 + "end of paragraph."
    second = "b " * 600
    pieces = split_text(first + "\n" + second)
    assert pieces[0] == first
    assert pieces[1] == second


def test_a_5000_character_word_is_cut() -> None:
    pieces = split_text("x" * 5000)
    assert [len(p) for p in pieces] == [1999, 1999, 1002]
    assert "".join(pieces) == "x" * 5000


def test_long_word_between_short_words() -> None:
    text = "start " + "y" * 4500 + " end"
    pieces = split_text(text)
    assert pieces[0] == "start"  # the long word is not glued to the short one and then cut
    assert "".join(pieces[1:-1]) + pieces[-1].removesuffix(" end") == "y" * 4500 or pieces[-1].endswith("end")
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")
    assert all(utf16(p) < 2000 for p in pieces)


@pytest.mark.parametrize("unit", [
    "\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466",  # family: ZWJ sequence
    "\U0001F44D\U0001F3FD",  # thumbs up with a skin tone
    "\U0001F1F2\U0001F1EC",  # flag: two regional indicators
    "e\u0301",  # e + combining acute accent
    "\u2764\uFE0F",  # heart + variation selector
    "\U0001F600",  # one astral code point (two UTF-16 units)
])
def test_emoji_and_combined_characters_are_never_broken(unit: str) -> None:
    text = unit * 1500
    pieces = split_text(text)
    assert len(pieces) > 1
    assert "".join(pieces) == text
    for piece in pieces:
        assert utf16(piece) < 2000
        assert piece == unit * (len(piece) // len(unit))  # whole sequences only


def test_regional_indicator_pairs_stay_aligned() -> None:
    flags = "\U0001F1EB\U0001F1F7" * 1200  # France flags back to back
    for piece in split_text(flags):
        assert len(piece) % 2 == 0


def test_text_with_emoji_and_spaces() -> None:
    text = ("Salut \U0001F44B\U0001F3FE ça va ? " * 300).strip()
    pieces = split_text(text)
    assert all(utf16(p) < 2000 for p in pieces)
    assert " ".join(pieces) == text
    for piece in pieces:
        assert unicodedata.category(piece[0]) not in ("Mn", "Sk")  # no piece starts with a modifier


def test_send_text_sends_the_pieces_in_order(chat: Messenger, graph: FakeGraph) -> None:
    text = " ".join(f"word{i}" for i in range(600))  # 4289 characters
    res = chat.send_text(USER, text)
    assert res.status_code == 200
    texts = graph.sent_texts(USER)
    assert len(texts) == 3 and " ".join(texts) == text
    assert all(len(t) < 2000 for t in texts)


def test_send_message_splits_like_send_text(chat: Messenger, graph: FakeGraph) -> None:
    chat.send_message(USER, "z" * 5000)
    assert [len(t) for t in graph.sent_texts(USER)] == [1999, 1999, 1002]


def test_send_text_stops_at_the_first_refused_piece(chat: Messenger, graph: FakeGraph) -> None:
    graph.fail_next(status=400, error={"code": 551, "message": "This person isn't available right now."})
    res = chat.send_text(USER, "q" * 5000)
    assert res.status_code == 400
    assert len(graph.requests) == 1  # the next pieces were not sent after the first failed


def test_send_text_accepts_non_strings(chat: Messenger, graph: FakeGraph) -> None:
    chat.send_text(USER, 42)
    assert graph.sent_texts(USER) == ["42"]
