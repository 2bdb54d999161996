"""Project commands: ``create``, ``init``, ``env``, ``lang``, ``run`` and ``version``.

None of them needs a Flask app to exist, so ``flask ampalibe create`` works in an empty folder.
``run`` serves the project of the current folder (see :mod:`flask_ampalibe.cli.loader`).
"""
from __future__ import annotations

import os
import platform
import secrets
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import click

from . import loader
from .loader import ProjectError, ProjectSettings

__all__ = ["register", "create", "init", "env", "lang", "run", "version", "skeleton"]

#: Files whose text gets placeholders filled in when written.
_PLACEHOLDERS = {
    "__AMP_VERIF_TOKEN__": lambda: secrets.token_urlsafe(24),
    "__AMP_VERSION__": lambda: _version(),
}


def register(group: click.Group) -> None:
    """Attach the project commands to ``group`` (the ``ampalibe`` group)."""
    for command in (create, init, env, lang, run, version):
        group.add_command(command)


# -- the skeleton ---------------------------------------------------------------------------

def skeleton() -> dict[str, bytes]:
    """The project skeleton: relative POSIX path → content, placeholders filled in.

    Read from the package data ``flask_ampalibe/templates/project`` with
    :mod:`importlib.resources`, so it works from a wheel, an sdist or a checkout.
    """
    root = resources.files("flask_ampalibe").joinpath("templates").joinpath("project")
    files: dict[str, bytes] = {}
    for rel, resource in _walk(root, ""):
        data = resource.read_bytes()
        for marker, value in _PLACEHOLDERS.items():
            if marker.encode() in data:
                data = data.replace(marker.encode(), value().encode())
        files[rel] = data
    return dict(sorted(files.items()))


#: Template files named ``dot-X`` are written as ``.X``: a real ``.gitignore`` in the package
#: would make git ignore the template ``.env`` (and hidden files are easy to lose in packaging).
_DOT = "dot-"


def _walk(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    for child in node.iterdir():
        if child.name == "__pycache__" or child.name.endswith(".pyc"):
            continue  # pip byte-compiles the template .py files when it installs them
        name = "." + child.name[len(_DOT):] if child.name.startswith(_DOT) else child.name
        rel = f"{prefix}{name}"
        if child.is_dir():
            yield from _walk(child, rel + "/")
        else:
            yield rel, child


def _shown(rel: str) -> str:
    """How a skeleton file is named in messages (``.gitkeep`` files stand for their folder)."""
    return rel[: -len(".gitkeep")] if rel.endswith("/.gitkeep") else rel


def _write(folder: Path, files: dict[str, bytes], force: bool) -> tuple[list[str], list[str]]:
    """Write ``files`` under ``folder``; existing files are kept unless ``force``.

    :returns: (written, kept) relative paths.
    """
    written: list[str] = []
    kept: list[str] = []
    for rel, data in files.items():
        target = folder / rel
        if target.exists() and not force:
            kept.append(rel)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written.append(rel)
    return written, kept


def _next_steps(folder: str | None) -> str:
    cd = f"cd {folder}, then " if folder else ""
    return (
        f"Next: {cd}put your Page access token (AMP_ACCESS_TOKEN) and app secret (AMP_APP_SECRET) "
        "in .env, and start the bot with `ampalibe run` (or `ampalibe run --dev` while you write it)."
    )


# -- create / init / env / lang -------------------------------------------------------------

@click.command()
@click.argument("name", type=click.Path(file_okay=False, path_type=Path))
def create(name: Path) -> None:
    """Create the folder NAME with a new bot project in it.

    Refuses if NAME already exists; use `init` inside an existing folder.
    """
    if not str(name).strip() or name == Path("."):
        raise click.UsageError("NAME is the folder to create for the bot, e.g. `ampalibe create mybot` "
                               "(`ampalibe init` writes the project into the current folder).")
    if name.exists():
        raise click.ClickException(
            f"{name} already exists; choose another name, or run `ampalibe init` inside it."
        )
    files = skeleton()
    name.mkdir(parents=True)
    _write(name, files, force=True)
    click.echo(f"Created {name}/ with: {', '.join(_shown(rel) for rel in files)}")
    click.echo(_next_steps(str(name)))


@click.command()
@click.argument(
    "directory", default=".", required=False, type=click.Path(file_okay=False, path_type=Path)
)
@click.option("--force", "-f", is_flag=True, help="Overwrite files that already exist.")
def init(directory: Path, force: bool) -> None:
    """Write the project skeleton into DIRECTORY (default: here).

    Files that already exist are kept, unless --force.
    """
    folder = directory
    gitignore_existed = (folder / ".gitignore").exists()
    folder.mkdir(parents=True, exist_ok=True)
    written, kept = _write(folder, skeleton(), force)
    for rel in written:
        click.echo(f"wrote {_shown(rel)}")
    for rel in kept:
        click.echo(f"kept {_shown(rel)}: it exists (--force overwrites it)", err=True)
    if gitignore_existed and not force and not _ignores_env(folder / ".gitignore"):
        click.echo(
            "Warning: your .gitignore does not list .env, which holds your tokens; add it.", err=True
        )
    if not written:
        click.echo("Nothing written: every file of the skeleton is already here.")
        return
    click.echo(_next_steps(None if directory == Path(".") else str(directory)))


def _ignores_env(gitignore: Path) -> bool:
    lines = gitignore.read_text(encoding="utf-8", errors="replace").splitlines()
    return any(line.strip() in (".env", "/.env", ".env*", "*.env") for line in lines)


def _rewrite_one(rel: str, force: bool) -> None:
    target = Path(rel)
    if target.exists() and not force and not click.confirm(f"{rel} exists. Overwrite it?"):
        click.echo(f"Kept your {rel} as it is.")  # what was asked for: not an error
        return
    target.write_bytes(skeleton()[rel])
    click.echo(f"wrote {rel}")


@click.command()
@click.option("--force", "-f", is_flag=True, help="Overwrite without asking.")
def env(force: bool) -> None:
    """Write the .env template (every setting, commented) here.

    Asks before overwriting an existing .env. The new file has a fresh random verify token.
    """
    _rewrite_one(".env", force)


@click.command()
@click.option("--force", "-f", is_flag=True, help="Overwrite without asking.")
def lang(force: bool) -> None:
    """Write the langs.json template (translations) here.

    Asks before overwriting an existing langs.json.
    """
    _rewrite_one("langs.json", force)


# -- version --------------------------------------------------------------------------------

def _version() -> str:
    import flask_ampalibe

    found = getattr(flask_ampalibe, "__version__", None)
    if found:
        return str(found)
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        return dist_version("flask_ampalibe")
    except PackageNotFoundError:
        return "unknown"


@click.command()
def version() -> None:
    """Show the versions of flask_ampalibe, Flask, gunicorn and Python."""
    from importlib.metadata import version as dist_version

    click.echo(
        f"flask_ampalibe {_version()} (Flask {dist_version('flask')}, "
        f"gunicorn {dist_version('gunicorn')}, Python {platform.python_version()})"
    )


# -- run ------------------------------------------------------------------------------------

@click.command()
@click.option("--dev", is_flag=True,
              help="Flask's development server with reloader and debugger instead of gunicorn.")
@click.option("--host", metavar="ADDRESS",
              help="Address to listen on. Default: AMP_HOST (0.0.0.0); 127.0.0.1 with --dev.")
@click.option("--port", "-p", type=click.IntRange(0, 65535), help="Port to listen on. Default: AMP_PORT (4555).")
@click.option("--workers", "-w", type=click.IntRange(min=1),
              help="gunicorn worker processes. Default: AMP_WORKERS (2). Ignored with --dev.")
def run(dev: bool, host: str | None, port: int | None, workers: int | None) -> None:
    """Serve the bot of the current folder.

    Under gunicorn (gthread workers, settings from flask_ampalibe.gunicorn_conf or the
    project's gunicorn.conf.py), or with --dev under Flask's development server, which
    restarts when a .py file, langs.json or .env changes.
    """
    from werkzeug.serving import is_running_from_reloader

    app_path = _app_import_path()
    if app_path:  # flask --app X ampalibe run, ampalibe --app X run: that app, settings from the environment
        folder = Path.cwd()
        settings = loader.env_settings(folder)
    else:
        folder = loader.find_project()
        settings = loader.read_settings(folder)
    _require(settings, dev)
    host = host or ("127.0.0.1" if dev else settings.host)
    if port is None:
        port = click.get_current_context().meta.get(_LEADING_PORT)
    port = settings.port if port is None else port
    # The workers (and the reloaded process) build their Configuration from the environment:
    # make them agree with what this process serves and prints.
    os.environ["AMP_HOST"] = host
    os.environ["AMP_PORT"] = str(port)
    if not dev:
        # Import the bot and check its database once, in a child process, before gunicorn starts:
        # an error is one line here, not one traceback per worker after "Listening at".
        _preflight(folder, app_path)
    if not is_running_from_reloader():
        _announce(settings, host, port)
    from . import serve  # gunicorn is imported only when serving (it does not import on Windows)

    if dev:
        serve.serve_dev(folder, host, port, app_path)
    else:
        serve.serve_gunicorn(folder, host, port, workers or settings.workers, app_path)


def _app_import_path() -> str | None:
    from flask.cli import ScriptInfo

    info = click.get_current_context().find_object(ScriptInfo)
    return getattr(info, "app_import_path", None) or None


def _preflight(folder: Path, app_path: str | None) -> None:
    """Load the bot and make its database ready (``ampalibe db create``) in a child process, so
    this process (gunicorn's master) imports no bot code.

    :raises ProjectError: with the child's one-line error.
    """
    import subprocess
    import sys

    from .errors import TRACEBACK_ENV, wants_traceback

    command = [sys.executable, "-m", "flask_ampalibe.cli"]
    if app_path:
        command += ["--app", app_path]
    env = dict(os.environ)
    full = wants_traceback(click.get_current_context())
    if full:
        env[TRACEBACK_ENV] = "1"
    done = subprocess.run([*command, "db", "create", "--quiet"], cwd=folder, env=env, capture_output=True,
                          text=True)
    if done.returncode == 0:
        return
    output = (done.stderr.strip() or done.stdout.strip())
    if full:
        click.echo(output, err=True)
        raise ProjectError("the bot could not start (the traceback is above).")
    lines = output.splitlines() or ["the bot could not be loaded"]
    message = lines[-1]
    raise ProjectError(message[len("Error: "):] if message.startswith("Error: ") else message)


_LEADING_PORT = "flask_ampalibe.leading_port"


def leading_port_option() -> click.Option:
    """``-p/--port`` before the command (``ampalibe -p 5000 run``), as Ampalibe 1.1.9 wrote it;
    ``run -p`` wins over it."""
    def remember(ctx: click.Context, param: click.Parameter, value: int | None) -> None:
        if value is not None:
            ctx.meta[_LEADING_PORT] = value

    return click.Option(["--port", "-p"], type=click.IntRange(0, 65535), expose_value=False, callback=remember,
                        is_eager=True, help="Port for `run` (Ampalibe 1.1.9's `ampalibe -p 5000 run`).")


_HOW_TO = {
    "AMP_ACCESS_TOKEN": "your Page access token (App Dashboard > Messenger > Messenger API Settings)",
    "AMP_VERIF_TOKEN": "any string; give Facebook the same one when you add the webhook",
    "AMP_APP_SECRET": (
        "your app secret (App Dashboard > App settings > Basic), which every webhook is signed with; "
        "to try the bot without it use `ampalibe run --dev` or set AMP_ALLOW_UNSIGNED=1"
    ),
}


def _require(settings: ProjectSettings, dev: bool) -> None:
    """Refuse to serve without the settings a bot cannot work without, naming each."""
    if not settings.checked:
        return  # no Configuration class: the library checks its own config when the app loads
    missing = []
    if not settings.access_token:
        missing.append("AMP_ACCESS_TOKEN")
    if not settings.verif_token:
        missing.append("AMP_VERIF_TOKEN")
    if not dev and not settings.app_secret and not settings.allow_unsigned:
        missing.append("AMP_APP_SECRET")
    if missing:
        lines = [f"  {name}: {_HOW_TO[name]}" for name in missing]
        raise ProjectError(
            "Missing settings; set them in .env (or in the environment):\n" + "\n".join(lines)
        )


def _announce(settings: ProjectSettings, host: str, port: int) -> None:
    path = f"{settings.url_prefix}/"
    local = f"http://{'[' + host + ']' if ':' in host else host}:{port}{path}"
    if settings.url:
        click.echo(f"Callback URL to give Facebook: {settings.url.rstrip('/')}{path}  (serving {local})")
    else:
        click.echo(
            f"Callback URL to give Facebook: {local}  -- Facebook needs a public HTTPS address: "
            "set AMP_URL to the one that reaches this server."
        )
    if settings.verif_token:
        click.echo(f"Verify token to give Facebook: {settings.verif_token}  (AMP_VERIF_TOKEN)")
