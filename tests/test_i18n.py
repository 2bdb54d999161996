"""``translate`` and langs.json: fallbacks, placeholders, reloading, and the user's ``lang`` in handlers."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask

import flask_ampalibe
from flask_ampalibe import translate
from flask_ampalibe.cli import cli
from flask_ampalibe.testing import BotTester

USER = "7007"
LANGS = {
    "greeting": {"en": "Hello {name}", "fr": "Bonjour {name}", "mg": "Salama {name}"},
    "bye": {"en": "Goodbye", "fr": "Au revoir"},
    "only_mg": {"mg": "Veloma"},
    "brace": {"en": "Use {} here"},
}


def write_langs(folder: Path, data: object, name: str = "langs.json") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def langs(tmp_path):
    """langs.json in the ``app`` fixture's root_path (tmp_path)."""
    return write_langs(tmp_path, LANGS)


@pytest.fixture
def ctx(app, ext, langs):
    with app.app_context():
        yield app


def test_text_in_the_asked_language(ctx):
    assert translate("bye", "fr") == "Au revoir"
    assert translate("bye", "en") == "Goodbye"


def test_placeholders_are_filled(ctx):
    assert translate("greeting", "mg", name="Rivo") == "Salama Rivo"
    assert translate("greeting", "fr") == "Bonjour {name}"  # no values: the text as written


def test_a_placeholder_without_value_stays(ctx):
    assert translate("greeting", "en", other="x") == "Hello {name}"


def test_default_language_then_the_key(ctx, caplog):
    with caplog.at_level(logging.WARNING, logger="flask_ampalibe.i18n"):
        assert translate("bye", "de") == "Goodbye"  # no German: the default language (en)
        assert translate("bye") == "Goodbye"  # no language: the default one
        assert translate("only_mg", "fr") == "only_mg"  # neither French nor English: the key
        assert translate("no such key", "fr") == "no such key"
        assert translate("Hi {name}!", "fr", name="Rivo") == "Hi Rivo!"  # a missing key is still formatted
    messages = [r.getMessage() for r in caplog.records]
    assert any("no 'de' text" in m for m in messages)
    assert any("'only_mg' has no text in 'fr'" in m for m in messages)
    assert any("has no key 'no such key'" in m for m in messages)


def test_regional_language_falls_back_to_its_base(ctx, caplog):
    with caplog.at_level(logging.WARNING, logger="flask_ampalibe.i18n"):
        assert translate("bye", "fr_FR") == "Au revoir"
        assert translate("bye", "fr-CA") == "Au revoir"
    assert caplog.records == []  # the base language is not a fallback worth a warning


def test_each_problem_is_logged_once(ctx, caplog):
    with caplog.at_level(logging.WARNING, logger="flask_ampalibe.i18n"):
        for _ in range(3):
            translate("missing-once", "en")
    assert len(caplog.records) == 1


def test_a_text_that_cannot_be_formatted_is_sent_as_written(ctx, caplog):
    with caplog.at_level(logging.WARNING, logger="flask_ampalibe.i18n"):
        assert translate("brace", "en", name="x") == "Use {} here"
    assert "cannot be formatted" in caplog.records[0].getMessage()


def test_missing_file_returns_keys_and_warns_once(app, ext, caplog):
    with app.app_context(), caplog.at_level(logging.WARNING, logger="flask_ampalibe.i18n"):
        assert translate("greeting", "fr", name="Rivo") == "greeting"
        assert translate("bye", "fr") == "bye"
    (record,) = caplog.records
    assert "no translations file" in record.getMessage() and "ampalibe lang" in record.getMessage()


def test_edits_are_seen_without_restart(ctx, langs):
    assert translate("bye", "fr") == "Au revoir"
    write_langs(langs.parent, {"bye": {"fr": "Salut, et à bientôt"}})
    os.utime(langs, ns=(1, 1))  # a different modification time, even on coarse clocks
    assert translate("bye", "fr") == "Salut, et à bientôt"
    langs.unlink()
    assert translate("bye", "fr") == "bye"


def test_a_half_saved_file_keeps_the_previous_texts(ctx, langs, caplog):
    assert translate("bye", "fr") == "Au revoir"
    write_langs(langs.parent, '{"bye": {"fr": "Sal')
    with caplog.at_level(logging.WARNING, logger="flask_ampalibe.i18n"):
        assert translate("bye", "fr") == "Au revoir"
    assert "cannot be read" in caplog.records[0].getMessage()


@pytest.mark.parametrize("content, key, expected", [
    ("[1, 2]", "bye", "bye"),
    ('{"bye": "Goodbye", "ok": {"en": "OK"}}', "bye", "bye"),
    ('{"bye": "Goodbye", "ok": {"en": "OK"}}', "ok", "OK"),
    ("", "bye", "bye"),
])
def test_malformed_files_never_crash(app, ext, tmp_path, content, key, expected):
    write_langs(tmp_path, content)
    with app.app_context():
        assert translate(key, "en") == expected


def test_langs_file_and_default_lang_settings(tmp_path, graph):
    app = Flask("i18n", root_path=str(tmp_path), instance_path=str(tmp_path / "i"))
    app.config.update(TESTING=True, AMPALIBE_ACCESS_TOKEN="t", AMPALIBE_APP_SECRET="s", AMPALIBE_GRAPH_URL=graph.url,
                      AMPALIBE_EXECUTOR="inline", AMPALIBE_LANGS_FILE="i18n/texts.json", AMPALIBE_DEFAULT_LANG="fr")
    flask_ampalibe.Ampalibe(app, router=flask_ampalibe.Router())
    write_langs(tmp_path, LANGS, "i18n/texts.json")
    with app.app_context():
        assert translate("bye") == "Au revoir"
        assert translate("bye", "de") == "Au revoir"
    app.extensions["ampalibe"].executor.shutdown(timeout=5)


def test_each_app_reads_its_own_file(app, ext, langs, tmp_path, graph):
    other = Flask("other", root_path=str(tmp_path / "other"), instance_path=str(tmp_path / "i2"))
    other.config.update(TESTING=True, AMPALIBE_ACCESS_TOKEN="t", AMPALIBE_APP_SECRET="s", AMPALIBE_GRAPH_URL=graph.url,
                        AMPALIBE_EXECUTOR="inline")
    flask_ampalibe.Ampalibe(other, router=flask_ampalibe.Router())
    write_langs(tmp_path / "other", {"bye": {"en": "See you"}})
    with app.app_context():
        assert translate("bye") == "Goodbye"
    with other.app_context():
        assert translate("bye") == "See you"


def test_without_any_app_langs_json_of_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_langs(tmp_path, LANGS)
    assert translate("bye", "fr") == "Au revoir"


def test_the_template_of_ampalibe_lang_is_readable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["lang"])
    assert result.exit_code == 0, result.output
    assert translate("hello_world", "fr") == "Bonjour le monde"
    assert translate("hello_world", "xx") == "Hello World"
    assert translate("greeting", "fr", name="Rivo") == "Bonjour Rivo"


# -- through the webhook: handlers get the user's language ------------------------------------------
@pytest.fixture
def bot(app, ext, graph, langs):
    @ext.router.command("/")
    def main(sender_id, cmd, lang, **extends):
        ext.chat.send_text(sender_id, translate("greeting", lang, name=cmd))

    @ext.router.command("/lang")
    def set_lang(sender_id, cmd, **extends):
        ext.query.set_lang(sender_id, cmd or None)
        ext.chat.send_text(sender_id, translate("bye", cmd))

    return BotTester(app, graph, USER)


def test_handlers_get_the_users_language(bot):
    bot.send("Rivo")
    bot.assert_replied("Hello Rivo")  # never set: the default language
    bot.send("/lang fr")
    bot.assert_replied("Au revoir")
    assert bot.query.get_lang(USER) == "fr"
    bot.send("Rivo")
    bot.assert_replied("Bonjour Rivo")
    bot.send("/lang mg")
    bot.send("Rivo")
    bot.assert_replied("Salama Rivo")
    bot.send("/lang")  # cleared: back to the default
    bot.send("Rivo")
    bot.assert_replied("Hello Rivo")


def test_another_users_language_is_their_own(bot):
    bot.query.set_lang("other", "fr")
    bot.send("Ana", user="other")
    bot.assert_replied("Bonjour Ana", user="other")
    bot.send("Ana")
    bot.assert_replied("Hello Ana")
