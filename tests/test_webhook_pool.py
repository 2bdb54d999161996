"""The webhook has database connections of its own: an ack never queues for one behind the handlers.

Hundreds of plain handlers in flight each borrow connections of the main pool (and on SQLite hold
one while they wait for the write lock); if the webhook drew from the same pool, every ack would
wait behind them (the slow-handler bench showed acks stalled for seconds, issue 15).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
from flask import Flask

import flask_ampalibe
from flask_ampalibe.engine import make_engine
from flask_ampalibe.testing import FakeGraph, WebhookClient

from conftest import SECRET, TOKEN, VERIFY


@pytest.fixture
def threaded(database_url: str, tmp_path: Path, graph: FakeGraph) -> Iterator[tuple[Flask, WebhookClient]]:
    """An app whose handlers run in the thread executor and reply ``got <text>``, on each database."""
    app = Flask("pooltest", instance_path=str(tmp_path / "instance"), root_path=str(tmp_path))
    app.config.update(TESTING=True, AMPALIBE_ACCESS_TOKEN=TOKEN, AMPALIBE_VERIF_TOKEN=VERIFY,
                      AMPALIBE_APP_SECRET=SECRET, AMPALIBE_GRAPH_URL=graph.url, AMPALIBE_EXECUTOR="thread",
                      AMPALIBE_DATABASE_URL=database_url)
    ext = flask_ampalibe.Ampalibe(app, router=flask_ampalibe.Router())

    @ext.command("/")
    def main(sender_id: str, cmd: str, **extends: Any) -> None:
        app.extensions["ampalibe"].chat.send_message(sender_id, "got " + cmd)

    yield app, WebhookClient(app.test_client(), SECRET)
    state = app.extensions["ampalibe"]
    state.shutdown(timeout=5)
    state.store.engine.dispose()
    state.inbox.webhook_engine.dispose()


def test_the_webhook_answers_while_the_handlers_hold_every_connection_of_the_main_pool(threaded, graph):
    app, hook = threaded
    assert hook.send_text("u1", "first").status_code == 200
    graph.wait_for(1)  # the tables exist and the executor runs
    engine = app.extensions["ampalibe"].store.engine
    size = app.extensions["ampalibe"].settings.db_pool_size
    held = [engine.connect() for _ in range(2 * size)]  # the main pool is empty now (size kept, as many extra)
    answers: list[int] = []
    try:
        post = threading.Thread(target=lambda: answers.append(hook.send_text("u2", "second").status_code))
        post.start()
        post.join(60)  # without a pool of its own the post would wait for one of ``held``
        assert not post.is_alive() and answers == [200]
    finally:
        for conn in held:
            conn.close()
    post.join()
    graph.wait_for(2)  # recorded, then handled once connections are free again
    assert graph.sent_texts("u2") == ["got second"]


def test_the_handlers_pool_is_the_setting_and_the_bots_own_sql_has_connections_of_its_own(threaded, graph):
    # The handlers' pool is small (it bounds how many work on the database at once); a Model
    # method holding a DB-API connection, or a thread keeping ``self.db``, must not need one of it.
    app, hook = threaded
    assert hook.send_text("u1", "first").status_code == 200
    graph.wait_for(1)
    state = app.extensions["ampalibe"]
    engine = state.store.engine
    assert engine.pool.size() == state.settings.db_pool_size == 2

    class Users(flask_ampalibe.Model):
        @flask_ampalibe.Model.verif_db
        def count(self) -> int:
            self.cursor.execute("SELECT COUNT(*) FROM amp_user")
            found = self.cursor.fetchall()[0][0]
            self.db.commit()
            return int(found) + (self.get_temp("u1", "missing") or 0)  # the store, meanwhile

    held = [engine.connect() for _ in range(2 * state.settings.db_pool_size)]  # the handlers' pool is empty
    answers: list[int] = []
    try:
        query = Users(store=state.store)
        reader = threading.Thread(target=lambda: answers.append(query.count()))
        reader.start()
        reader.join(1)
        assert reader.is_alive()  # get_temp waits for a handlers' connection, the raw SQL did not
        held.pop().close()
        reader.join(60)
        assert not reader.is_alive() and answers == [1]
    finally:
        for conn in held:
            conn.close()


def test_an_in_memory_database_has_one_engine(tmp_path):
    url = "sqlite://"
    assert make_engine(url, webhook=True) is make_engine(url)
    on_file = f"sqlite:///{tmp_path / 'two.db'}"
    assert make_engine(on_file, webhook=True) is not make_engine(on_file)
    assert make_engine(on_file, webhook=True) is make_engine(on_file, webhook=True)
