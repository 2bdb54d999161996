"""Translations: ``translate(key, lang)`` reads the project's ``langs.json``.

The file maps each key to its texts by language (``ampalibe lang`` writes a template)::

    {
        "greeting": {"en": "Hello {name}", "fr": "Bonjour {name}"},
        "bye": {"en": "Goodbye", "mg": "Veloma"}
    }

In a handler, ``lang`` is the user's language (``query.set_lang``), else ``AMPALIBE_DEFAULT_LANG``::

    @ampalibe.command("/")
    def main(sender_id, lang, **extends):
        chat.send_text(sender_id, ampalibe.translate("greeting", lang, name="Rivo"))

What a text falls back to, in order: the user's language (``fr_FR``), its base language
(``fr``), the default language, and last the key itself.  A missing or broken file, a missing
key or a wrong placeholder never raises: the key (or the unformatted text) is returned and a
warning is logged once.  The file is re-read when it changes, so ``ampalibe run --dev`` sees
edits without a restart.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from .context import current_state
from .errors import ConfigurationError

__all__ = ["translate", "langs_path"]

logger = logging.getLogger(__name__)


@dataclass
class _Loaded:
    stamp: tuple[int, int] | None  # (mtime_ns, size) of the file read; None: missing
    table: dict[str, dict[str, str]]


_files: dict[str, _Loaded] = {}
_warned: set[tuple[str, ...]] = set()
_lock = threading.Lock()  # guards _files
_warned_lock = threading.Lock()


def langs_path() -> tuple[str, str]:
    """``(path of langs.json, default language)`` for the current app.

    The file is ``AMPALIBE_LANGS_FILE`` (default ``langs.json``) relative to the app's
    ``root_path`` (the project folder for ``ampalibe.init``).  Outside any configured app, it is
    ``langs.json`` in the current folder, with ``'en'`` as the default language.
    """
    try:
        state = current_state()
    except ConfigurationError:
        return os.path.abspath("langs.json"), "en"
    return os.path.join(state.app.root_path, state.settings.langs_file), state.settings.default_lang


def translate(key: str, lang: str | None = None, **fmt: Any) -> str:
    """The text of ``key`` in ``lang``, with ``{placeholders}`` filled from ``fmt``.

    :param key: a key of ``langs.json``.
    :param lang: the language wanted (``'fr'``, ``'fr_FR'``); ``None`` means the default one
        (handlers get ``lang=None`` until the user chose a language; Ampalibe 1.1.9 returned the
        key itself for ``None``).
    :param fmt: values for ``str.format`` placeholders; a placeholder without a value stays as is.
    :returns: the text; the key itself when no text is found (a warning is logged once).

    Example::

        translate("greeting", "fr", name="Rivo")   # 'Bonjour Rivo'
        translate("greeting", "de", name="Rivo")   # no German text: 'Hello Rivo'
    """
    path, default = langs_path()
    loaded = _load(path)
    entry = loaded.table.get(key)
    text = None
    if entry is None:
        if loaded.stamp is not None:
            _warn_once(("key", path, key), "langs.json (%s) has no key %r; using the key as the text", path, key)
    else:
        own = _candidates(lang, None)
        for candidate in _candidates(lang, default):
            text = entry.get(candidate)
            if text is not None:
                if own and candidate not in own:
                    _warn_once(("fallback", path, key, str(lang)), "langs.json (%s): key %r has no %r text; "
                               "using %r", path, key, lang, candidate)
                break
        else:
            _warn_once(("lang", path, key, str(lang)), "langs.json (%s): key %r has no text in %r nor in the "
                       "default language %r; using the key as the text", path, key, lang, default)
    return _format(key if text is None else text, fmt, key)


def _candidates(lang: str | None, default: str | None) -> list[str]:
    out: list[str] = []
    for code in (lang, default):
        if not code:
            continue
        code = str(code)
        for candidate in (code, code.replace("-", "_").split("_", 1)[0]):
            if candidate not in out:
                out.append(candidate)
    return out


class _Keep(dict):
    def __missing__(self, name: str) -> str:
        return "{" + name + "}"


def _format(text: str, fmt: dict[str, Any], key: str) -> str:
    if not fmt:
        return text
    try:
        return text.format_map(_Keep(fmt))
    except (IndexError, ValueError, AttributeError, KeyError, TypeError) as exc:
        _warn_once(("format", key, text), "translation of %r cannot be formatted (%s); sent unformatted", key, exc)
        return text


def _load(path: str) -> _Loaded:
    """The parsed file, re-read only when its modification time or size changed."""
    try:
        info = os.stat(path)
        stamp: tuple[int, int] | None = (info.st_mtime_ns, info.st_size)
    except OSError:
        stamp = None
    with _lock:
        loaded = _files.get(path)
        if loaded is not None and loaded.stamp == stamp:
            return loaded
        if stamp is None:
            _warn_once(("file", path), "no translations file %s: translate() returns the keys "
                       "(create it with `ampalibe lang`)", path)
            table: dict[str, dict[str, str]] = {}
        else:
            table = _read(path, stamp, previous=loaded.table if loaded is not None else {})
        loaded = _files[path] = _Loaded(stamp, table)
        return loaded


def _read(path: str, stamp: tuple[int, int], previous: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        # Often a file caught half-saved by an editor: keep what was read before.
        _warn_once(("broken", path, *map(str, stamp)), "translations file %s cannot be read (%s); "
                   "keeping the previous translations", path, exc)
        return previous
    if not isinstance(data, dict):
        _warn_once(("shape", path, *map(str, stamp)), "translations file %s must hold an object "
                   '{"key": {"lang": "text"}}; ignoring it', path)
        return {}
    table: dict[str, dict[str, str]] = {}
    for key, texts in data.items():
        if isinstance(texts, dict):
            table[key] = {str(k): str(v) for k, v in texts.items() if v is not None}
        else:
            _warn_once(("entry", path, key), 'translations file %s: %r must map languages to texts, like '
                       '{"en": "...", "fr": "..."}; ignoring it', path, key)
    return table


def _warn_once(what: tuple[str, ...], msg: str, *args: Any) -> None:
    with _warned_lock:
        if what in _warned:
            return
        _warned.add(what)
    logger.warning(msg, *args)
