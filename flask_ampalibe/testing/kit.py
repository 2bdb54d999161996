"""A bot author's test driver: :class:`BotTester` talks to the bot like Messenger does.

It posts signed webhook events through the app's real route and reads what the bot sent from a
:class:`~flask_ampalibe.testing.FakeGraph`.  With the pytest plugin (installed with
flask_ampalibe) a test is a few lines::

    def test_hello(bot_tester):
        bot = bot_tester.project("mybot")      # the folder with core.py and conf.py
        bot.send("hi")
        bot.assert_replied("Hello, Ampalibe")

``bot_tester(create_app)`` does the same for a Flask app factory (called with the test
settings, see :func:`bot_config`), ``bot_tester(app)`` for an app object.

Handlers run inline, before the webhook answers, so every check sees their replies.  A handler
that raises fails the test with its traceback (:meth:`BotTester.expecting_errors` allows it).
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import itertools
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from . import assertions
from .webhook import WebhookClient, attachment_event, message_event, page_body, postback_event, quick_reply_event

if TYPE_CHECKING:
    import re
    from datetime import datetime

    from flask import Flask

    from ..state import AmpalibeState
    from .graph import FakeGraph

__all__ = ["BotTester", "BotTesters", "bot_config", "SECRET", "USER"]

#: App secret the test settings use (and the tester signs with).
SECRET = "test-app-secret"
#: The PSID a :class:`BotTester` plays by default.
USER = "1234"
_TOKEN = "test-page-token"
_VERIFY = "test-verify-token"


def bot_config(graph: "FakeGraph", database_url: str, *, secret: str = SECRET) -> dict[str, Any]:
    """Flask config keys for a bot under test: the fake Graph API, its own database, inline handlers.

    :param database_url: e.g. ``f"sqlite:///{tmp_path / 'bot.db'}"``.

    Example::

        app = create_app(bot_config(graph, f"sqlite:///{tmp_path / 'bot.db'}"))
        bot = BotTester(app, graph)
    """
    return {
        "TESTING": True,
        "AMPALIBE_ACCESS_TOKEN": _TOKEN,
        "AMPALIBE_VERIF_TOKEN": _VERIFY,
        "AMPALIBE_APP_SECRET": secret,
        "AMPALIBE_GRAPH_URL": graph.url,
        "AMPALIBE_EXECUTOR": "inline",
        "AMPALIBE_DATABASE_URL": database_url,
    }


class _Held:
    """Stands in for the webhook's ``notify`` inside :meth:`BotTester.held`: remembers who has events."""

    def __init__(self) -> None:
        self.users: list[str] = []

    def notify(self, users: Iterable[str]) -> None:
        self.users.extend(u for u in users if u not in self.users)


class BotTester:
    """Drives one bot through its webhook route and checks its replies.

    :param app: a Flask app with the extension, configured to send to ``graph`` (see
        :func:`bot_config`).
    :param graph: the fake Graph API the bot sends to.
    :param user: the PSID this tester writes as (each method also takes ``user=``).
    :param secret: the app secret to sign with (default: the app's ``AMPALIBE_APP_SECRET``).
    :param instant_retries: skip the Messenger client's back-off sleeps, so injected Graph
        errors that are retried do not slow the test down.

    Every ``send``/``post``/``tap`` starts a new *exchange*: :attr:`replies` and the
    ``assert_*`` methods look at what the bot sent to the user since then.
    """

    def __init__(self, app: "Flask", graph: "FakeGraph", user: str = USER, *, secret: str | None = None,
                 instant_retries: bool = True) -> None:
        state = app.extensions.get("ampalibe")
        if state is None:
            raise RuntimeError(
                f"The app {app.name!r} does not have flask_ampalibe set up: call Ampalibe(app) "
                "(or register ampalibe.bp) before testing it."
            )
        if state.settings.graph_url != graph.url:
            raise RuntimeError(
                f"The app {app.name!r} sends to {state.settings.graph_url}, not to the fake Graph API "
                f"({graph.url}); set it up with bot_config(graph, ...), or use the bot_tester fixture."
            )
        self.app = app
        self.graph = graph
        self.user = str(user)
        self.secret = secret if secret is not None else state.settings.app_secret
        self.hook = WebhookClient(app.test_client(), self.secret, (state.settings.url_prefix or "") + "/")
        if instant_retries:
            state.chat.sleep = lambda seconds: None
        #: Raise when a handler fails (with its traceback); see :meth:`expecting_errors`.
        self.raise_errors = True
        #: Tracebacks of the handlers that failed during the last exchange.
        self.errors: list[str] = []
        self.last_body: bytes | None = None
        self.last_response: Any = None
        self._since = len(graph.requests)

    # -- the app's objects --------------------------------------------------------------------
    @property
    def state(self) -> "AmpalibeState":
        """The app's ``app.extensions["ampalibe"]``."""
        return self.app.extensions["ampalibe"]

    @property
    def query(self) -> Any:
        """The app's user-state :class:`~flask_ampalibe.Model` (``set_lang``, ``get_temp``, …)."""
        return self.state.query

    # -- posting events ---------------------------------------------------------------------
    def post(self, *items: dict, standby: Sequence[dict] = ()) -> Any:
        """Post ``items`` as one signed webhook body (a batch, handled oldest first per user)."""
        return self.post_body(page_body(*items, standby=tuple(standby)))

    def post_body(self, body: "dict | bytes") -> Any:
        """Post a whole webhook body and check Meta would be answered 200."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self._since = len(self.graph.requests)
        failed_before = self._last_failed_id()
        response = self.hook.post_body(raw)
        self.last_body, self.last_response = raw, response
        if response.status_code != 200:
            raise AssertionError(f"the webhook answered {response.status_code}: {response.get_data(as_text=True)!r}")
        self._collect_errors(failed_before)
        return response

    def post_each(self, *items: dict) -> None:
        """Post each item in its own request, in the order given (to test out-of-order arrival)."""
        for item in items:
            self.post(item)

    def redeliver(self) -> Any:
        """Post the last body again, byte for byte, as Meta does when it did not get a 200 in time."""
        if self.last_body is None:
            raise RuntimeError("nothing was posted yet, so nothing can be redelivered")
        return self.post_body(self.last_body)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Record the events posted inside the block, and handle them all when it ends.

        As when Meta delivers an older event after a newer one: both are in the inbox before
        either is handled, and each user's events run oldest first::

            with bot.held():
                bot.post(message_event(bot.user, "second", timestamp=2000))
                bot.post(message_event(bot.user, "first", timestamp=1000))
        """
        state = self.state
        executor, webhook, held = state.executor, state.webhook, _Held()
        notify, webhook.notify = webhook.notify, held.notify  # what the webhook route calls
        try:
            yield
        finally:
            webhook.notify = notify
        since = len(self.graph.requests)
        failed_before = self._last_failed_id()
        for user_id in held.users:
            executor.drain(user_id)
        self._since = since
        self._collect_errors(failed_before)

    def send(self, text: str, *, user: str | None = None, **kw: Any) -> Any:
        """The user writes ``text``."""
        return self.post(message_event(user or self.user, text, **kw))

    def quick_reply(self, payload: Any, text: str = "", *, user: str | None = None) -> Any:
        """The user taps a quick reply carrying ``payload`` (a string or a ``Payload``)."""
        return self.post(quick_reply_event(user or self.user, payload, text))

    def postback(self, payload: Any, title: str = "Button", *, user: str | None = None) -> Any:
        """The user taps a postback button (or Get Started, or a menu item) carrying ``payload``."""
        return self.post(postback_event(user or self.user, payload, title))

    def attachments(self, urls: list[str], kind: str = "image", *, user: str | None = None) -> Any:
        """The user sends files (their URLs)."""
        return self.post(attachment_event(user or self.user, urls, kind))

    def tap_quick_reply(self, title: str, *, user: str | None = None) -> Any:
        """Tap the quick reply ``title`` of the last message that offered quick replies."""
        user = user or self.user
        sent = assertions.messages(self.graph, user)
        offer = next((m for m in reversed(sent) if m.get("quick_replies")), None)
        choices = {q.get("title"): q for q in (offer or {}).get("quick_replies", ())}
        if title not in choices:
            raise AssertionError(f"no quick reply {title!r} to tap; the bot sent:\n{assertions.describe(sent[-3:])}")
        return self.quick_reply(choices[title]["payload"], title, user=user)

    def tap_button(self, title: str, card: int | None = None, *, user: str | None = None) -> Any:
        """Tap the postback button ``title`` of the last template (of card ``card`` only, if given)."""
        user = user or self.user
        sent = assertions.messages(self.graph, user)
        for message in reversed(sent):
            buttons = assertions._buttons(message, card)
            if buttons is None:
                continue
            button = next((b for b in buttons if b.get("title") == title), None)
            if button is None:
                break
            if button.get("type") != "postback":
                raise AssertionError(f"button {title!r} is a {button.get('type')} button: tapping it posts nothing")
            return self.postback(button["payload"], title, user=user)
        raise AssertionError(f"no button {title!r} to tap; the bot sent:\n{assertions.describe(sent[-3:])}")

    # -- what the bot sent ----------------------------------------------------------------------
    def replies_to(self, user: str) -> list[dict]:
        """The messages sent to ``user`` during the last exchange."""
        return assertions.messages(self.graph, user, self._since)

    @property
    def replies(self) -> list[dict]:
        """The messages sent to :attr:`user` during the last exchange."""
        return self.replies_to(self.user)

    @property
    def texts(self) -> list[str]:
        """The texts of :attr:`replies`."""
        return [t for t in map(assertions.text_of, self.replies) if t is not None]

    def assert_replied(self, *texts: "str | re.Pattern[str]", user: str | None = None) -> None:
        """The bot answered the last event with exactly these texts, in order (any reply if none given)."""
        user = user or self.user
        assertions.check_replied(self.replies_to(user), user, texts)

    def assert_no_reply(self, *, user: str | None = None) -> None:
        """The bot sent no message in answer to the last event."""
        user = user or self.user
        assertions.check_no_reply(self.replies_to(user), user)

    def assert_quick_replies(self, titles: Sequence[str], *, user: str | None = None) -> None:
        """The bot's answer offered exactly these quick replies."""
        user = user or self.user
        assertions.check_quick_replies(self.replies_to(user), user, titles)

    def assert_buttons(self, titles: Sequence[str], card: int | None = None, *, user: str | None = None) -> None:
        """The bot's last template has exactly these buttons (of card ``card``, if given)."""
        user = user or self.user
        assertions.check_buttons(self.replies_to(user), user, titles, card)

    def assert_attachment(self, kind: str | None = None, url: str | None = None, *,
                          user: str | None = None) -> dict:
        """The bot's answer included a file (``image``, …), from ``url`` if given; returns it."""
        user = user or self.user
        return assertions.check_attachment(self.replies_to(user), user, kind, url)

    # -- failures -------------------------------------------------------------------------------
    def fail_next_send(self, code: int | None = 2, *, status: int = 500, subcode: int | None = None,
                       message: str = "fake Graph error", count: int = 1) -> None:
        """Make Graph refuse the next ``count`` Send API calls.

        :param code: the Graph error code: ``551`` the user cannot be reached, ``10`` with
            subcode ``2018278`` outside the 24-hour window, ``613``/``2`` temporary (the client
            retries those); ``None`` answers ``status`` with an empty body.
        """
        error = None
        if code is not None:
            error = {"code": code, "message": message}
            if subcode is not None:
                error["error_subcode"] = subcode
        self.graph.fail_next(status, error=error, count=count, match=lambda r: r.path.endswith("/messages"))

    @contextlib.contextmanager
    def expecting_errors(self) -> Iterator[list[str]]:
        """Let handlers fail inside the block; yields the list of their tracebacks."""
        found: list[str] = []
        previous, self.raise_errors = self.raise_errors, False
        try:
            yield found
        finally:
            self.raise_errors = previous
        found.extend(self.errors)

    def _last_failed_id(self) -> int:
        failed = self.state.inbox.failed(limit=1)
        return failed[0]["id"] if failed else 0

    def _collect_errors(self, after_id: int) -> None:
        fresh = [f for f in self.state.inbox.failed() if f["id"] > after_id]
        self.errors = [f["error"] or "" for f in reversed(fresh)]
        if self.errors and self.raise_errors:
            raise AssertionError("a handler raised (use bot.expecting_errors() if that is expected):\n"
                                 + "\n".join(self.errors))

    # -- scheduled jobs ---------------------------------------------------------------------------
    def run_jobs(self, at: "datetime | float") -> list[str]:
        """Run the ``@schedule`` jobs due at ``at`` (an aware datetime); returns their names."""
        from ..scheduler import scheduler_for

        self._since = len(self.graph.requests)
        return scheduler_for(self.app).tick(at)


class BotTesters:
    """Makes :class:`BotTester` objects for a test and undoes everything afterwards.

    This is what the ``bot_tester`` pytest fixture gives; outside pytest use it as a context
    manager::

        with FakeGraph() as graph, BotTesters(graph, tmpdir) as make:
            bot = make.project("mybot")

    :param graph: the fake Graph API the bots send to.
    :param workdir: a scratch folder for the bots' databases.
    """

    def __init__(self, graph: "FakeGraph", workdir: "str | os.PathLike[str]") -> None:
        self.graph = graph
        self.workdir = Path(workdir)
        self._undo: list[Callable[[], None]] = []
        self._count = itertools.count(1)

    def __enter__(self) -> "BotTesters":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _database_url(self) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.workdir / f'bot{next(self._count)}.db'}"

    def config(self) -> dict[str, Any]:
        """Fresh test settings (see :func:`bot_config`), with a new database."""
        return bot_config(self.graph, self._database_url())

    def __call__(self, app: "Flask | Callable[..., Flask]", user: str = USER) -> BotTester:
        """A tester for a Flask app, or for the app an app factory returns.

        A factory that takes an argument is called with the test settings (the Flask tutorial's
        ``create_app(test_config=None)`` style).  An app already set up for another Graph API is
        set up again for the test, with its handlers, and put back afterwards.
        """
        from flask import Flask

        if not isinstance(app, Flask):
            factory = app
            takes_config = any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
                               for p in inspect.signature(factory).parameters.values())
            app = factory(self.config()) if takes_config else factory()
            if "ampalibe" in app.extensions:
                self._undo.append(lambda: app.extensions["ampalibe"].executor.shutdown(timeout=5))
        self._retarget(app)
        return BotTester(app, self.graph, user)

    def project(self, folder: "str | os.PathLike[str]", module: str = "core", user: str = USER,
                env: dict[str, str] | None = None) -> BotTester:
        """Import a project written the spec's way (``core.py`` + ``conf.py``) and test its bot.

        The settings go through the environment variables the scaffolded ``conf.py`` reads
        (``AMP_GRAPH_URL``, ``AMP_APP_SECRET``, ``DATABASE_URL``, …), so the project's ``.env``
        and its real database are left alone.  The current folder is the project's while the
        test runs; environment, ``sys.path`` and imported project modules are restored after.

        :param env: more environment variables for the project.
        """
        from ..extension import default_app, reset_default

        folder = Path(folder).resolve()
        database_url = self._database_url()
        settings = {
            "AMP_ACCESS_TOKEN": _TOKEN, "AMP_VERIF_TOKEN": _VERIFY, "AMP_APP_SECRET": SECRET,
            "AMP_GRAPH_URL": self.graph.url, "DATABASE_URL": database_url,
            "AMPALIBE_GRAPH_URL": self.graph.url, "AMPALIBE_EXECUTOR": "inline",
            "AMPALIBE_DATABASE_URL": database_url, "AMPALIBE_APP_SECRET": SECRET,
        }
        settings.update(env or {})
        saved_env, saved_path, saved_cwd = dict(os.environ), list(sys.path), os.getcwd()

        def undo() -> None:
            reset_default()
            _forget_modules(folder, module)
            for key in set(os.environ) - set(saved_env):  # what .env files and the test added
                del os.environ[key]
            for key, value in saved_env.items():
                if os.environ.get(key) != value:
                    os.environ[key] = value
            sys.path[:] = saved_path
            os.chdir(saved_cwd)

        self._undo.append(undo)
        reset_default()
        _forget_modules(folder, module)
        os.environ.update(settings)
        sys.path.insert(0, str(folder))
        os.chdir(folder)
        core = importlib.import_module(module)
        app = getattr(core, "app", None)
        from flask import Flask

        if not isinstance(app, Flask) or "ampalibe" not in app.extensions:
            from ..cli.loader import init_if_needed

            init_if_needed(folder)  # an Ampalibe 1.1.9 core.py calls no init
            app = default_app()
        if "ampalibe" not in app.extensions:
            raise RuntimeError(f"{folder / (module + '.py')} sets up no bot: it should call "
                               "ampalibe.init(Configuration()), or define a Flask app `app` with Ampalibe(app).")
        if app.extensions["ampalibe"].settings.graph_url != self.graph.url and app is default_app():
            raise RuntimeError(
                f"{folder / 'conf.py'} does not take GRAPH_URL from the AMP_GRAPH_URL environment variable, "
                "so the bot would send to the real Graph API; read it like the scaffolded conf.py does."
            )
        self._retarget(app)
        return BotTester(app, self.graph, user)

    def _retarget(self, app: "Flask") -> None:
        from ..extension import Ampalibe, default_app

        state = app.extensions.get("ampalibe")
        if state is None or state.settings.graph_url == self.graph.url:
            return
        if app is default_app():
            raise RuntimeError(
                "The app of ampalibe.init(...) is already set up for another Graph API; "
                "test a project with bot_tester.project(folder), which sets it up for the test."
            )
        saved_config = {k: app.config[k] for k in self.config() if k in app.config}
        test_config = self.config()
        del app.extensions["ampalibe"]
        app.config.update(test_config)
        Ampalibe(app, router=state.router)

        def undo() -> None:
            app.extensions["ampalibe"].executor.shutdown(timeout=5)
            for key in test_config:
                app.config.pop(key, None)
            app.config.update(saved_config)
            app.extensions["ampalibe"] = state

        self._undo.append(undo)

    def close(self) -> None:
        """Undo every change, newest first."""
        while self._undo:
            self._undo.pop()()


def _forget_modules(folder: Path, main: str) -> None:
    sys.modules.pop(main, None)
    for name, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None)
        if path and Path(path).resolve().is_relative_to(folder):
            del sys.modules[name]
