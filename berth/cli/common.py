"""What every `berth` verb module shares: running one service call, and printing JSON."""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import re
import socket
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

# What a verb needs only once it runs is imported there: `berth --help` and every verb's start
# load no database, settings or service module (bench/findings.md, "The CLI's start").
if TYPE_CHECKING:
    from rich.console import Console, Group, RenderableType

    from berth.config import Settings
    from berth.domain.errors import RegistryError
    from berth.metadata.revisions import OlderSchema
    from berth.state import Services


# Control characters but tab and line feed (C0, DEL, C1): what a terminal takes for commands.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown_safely(text: str) -> str:
    """`text` with each control character but tab and line feed written out (`\\x1b`): what is
    printed comes from pushers too (an image config's platform, a package's version), and a
    terminal would obey an escape sequence in it (set the clipboard, clear or rewrite lines)."""
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


def _make_console(stderr: bool) -> Console:
    from rich.console import Console
    from rich.segment import Segment
    from rich.text import Text

    class _Console(Console):
        """Rich's console, leaving each line of prose (strings, Text) whole when it prints to
        no terminal: a file or a script gets a message on one line, not cut at Rich's 80
        columns mid-sentence. Tables, their titles included, still fit the width (COLUMNS,
        else 80). The text it prints never carries control characters (`shown_safely`):
        only Rich's own styles and cursor moves reach the terminal."""

        def _render_buffer(self, buffer: Iterable[Segment]) -> str:
            return super()._render_buffer(
                segment
                if segment.control
                else Segment(shown_safely(segment.text), segment.style, segment.control)
                for segment in buffer
            )

        def print(self, *objects: Any, soft_wrap: bool | None = None, **options: Any) -> None:
            if soft_wrap is None:
                prose = all(isinstance(item, str | Text) for item in objects)
                soft_wrap = self.soft_wrap or (prose and not self.is_terminal)
            super().print(*objects, soft_wrap=soft_wrap, **options)

    return _Console(stderr=stderr)


class _OnFirstUse:
    """Standard output's (or error's) console, made when first used: Rich's console is a
    tenth of a start that `berth --help` and most failures never print with."""

    def __init__(self, stderr: bool = False) -> None:
        self._stderr = stderr

    @cached_property
    def _console(self) -> Console:
        return _make_console(self._stderr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._console, name)


console: Console = _OnFirstUse()  # type: ignore[assignment]
errors: Console = _OnFirstUse(stderr=True)  # type: ignore[assignment]


def errors_console() -> Console:
    """Standard error's console itself, for what keeps a console (Rich's Progress): `errors`
    only passes on what is asked of it."""
    return errors._console  # type: ignore[attr-defined,no-any-return]


T = TypeVar("T")
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ProjectArg = Annotated[str, typer.Argument(metavar="PROJECT")]
UserArg = Annotated[str, typer.Argument(metavar="USER")]
TagArg = Annotated[str, typer.Argument(metavar="TAG")]
KeyIdArg = Annotated[str, typer.Argument(metavar="KEY_ID", help="The access key ID.")]


# Exit codes: 1 a refusal, 2 a bad setting or flag (as for a mistyped flag), 3 exists already.
BAD_SETTING = 2


class Options:
    """What the options before the verb say (`berth --data-dir DIR --verbose VERB ...`)."""

    data_dir: Path | None = None
    verbose: bool = False


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: MESSAGE` on standard error (as text: brackets are not markup) and exit."""
    from rich.text import Text

    errors.print(Text.assemble(("error: ", "red"), message), soft_wrap=True)
    raise typer.Exit(code)


def settings_or_exit(**overrides: Any) -> Settings:
    """The settings (with the options before the verb), or exit naming the bad value."""
    from berth.config_loading import SettingsError, load_settings

    if overrides.get("data_dir") is None:
        overrides["data_dir"] = Options.data_dir
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        fail(str(exc), BAD_SETTING)


def existing_settings() -> Settings:
    """The settings of data that exists: an admin verb never creates a data directory or a
    database (run from the wrong directory, it would start a new, empty registry)."""
    settings = settings_or_exit()  # a bad setting is named before the database layer loads
    from rich.text import Text

    from berth.data_location import missing_data, shown_database

    missing = missing_data(settings)
    if missing is not None:
        # A server not reached is an outage (1); one that refused the credentials or the
        # database's name, a setting (2).
        fail(missing.refusal(settings, Options.data_dir), BAD_SETTING if missing.refused else 1)
    if Options.verbose:
        errors.print(
            Text(
                f"Using {shown_database(settings)}, data directory {settings.data_dir.absolute()}"
            ),
            soft_wrap=True,
        )
    return settings


def _not_migrated(older: OlderSchema) -> str:
    return (
        f"{older}, and only `berth serve` migrates it (a server of the older version may "
        "still be serving on it, and could not once it is migrated). To upgrade: stop every "
        f"server that uses this database, back the database up, then start this version's "
        f'`{pasteable("serve")}` (README, "Upgrading"); until then, use the older '
        "version's berth"
    )


class _UnusableStore(Exception):
    """The blob store a verb needs cannot be used as configured (checked before it starts)."""


async def _check_store(services: Services) -> None:
    try:
        await services.store.check()
    except OSError as exc:
        raise _UnusableStore(str(exc)) from None


def run_service(work: Callable[[Services], Awaitable[T]], *, uses_store: bool = False) -> T:
    """Run one service call against the configured database, whose schema must be this
    Berth's. A refusal prints its message and exits 1 (2 for a value out of range or not one
    of the choices, as for a bad flag; 3 when the thing exists already). A verb that
    `uses_store` is refused (2) before it changes anything when the blob store cannot be
    used, as `berth serve` is: half done (rows deleted, files left) it would have to be
    undone. So is (2) a schema older than this Berth's: a verb never migrates it, since an
    older server may still serve on it (README, "Upgrading")."""
    import asyncio

    from berth.config_loading import SettingsError
    from berth.data_location import shown_database
    from berth.domain.errors import RegistryError
    from berth.metadata.revisions import NewerSchema, OlderSchema, require_current
    from berth.services.install import key_fingerprint, storage_location
    from berth.services.start_up import existing_keys, refuse_other_keys, refuse_other_storage
    from berth.state import Services, unresolved_endpoint
    from berth.storage.base import failures_said_by_caller

    settings = existing_settings()
    try:
        with _privileges_said(settings):
            require_current(settings.resolved_database_url)
    except NewerSchema as exc:
        fail(f"{shown_database(settings)}: {exc}")
    except OlderSchema as exc:
        fail(f"{shown_database(settings)}: {_not_migrated(exc)}", BAD_SETTING)

    if uses_store and (unresolved := unresolved_endpoint(settings)) is not None:
        # A typo in s3_endpoint, said at once as `berth serve` says it, not after the S3
        # client's retries.
        fail(unresolved.reason, BAD_SETTING)

    try:
        keyring = existing_keys(settings)
    except SettingsError as exc:
        fail(str(exc), BAD_SETTING)

    async def main() -> T:
        services = Services.build(settings, keyring)
        try:
            refuse_other_keys(settings, keyring, await key_fingerprint(services.db))
            if uses_store:
                # On another store than the install's, a check or collection would find
                # every blob missing, or another install's blobs unreferenced.
                refuse_other_storage(settings, await storage_location(services.db))
                await _check_store(services)
            return await work(services)
        finally:
            await services.close()

    try:
        # A verb says each failure of the store it meets (below, or as a failed GC run).
        with failures_said_by_caller(), _privileges_said(settings):
            return asyncio.run(main())
    except _UnusableStore as exc:
        fail(f"the blob store cannot be used: {exc}", BAD_SETTING)
    except SettingsError as exc:
        fail(str(exc), BAD_SETTING)
    except RegistryError as exc:
        # str(): what the operator is told, which may say more than a client's message (the
        # blob store's address).
        fail(
            str(exc),
            _exit_code(exc),
        )


@contextlib.contextmanager
def _privileges_said(settings: Settings) -> Iterator[None]:
    """A database user that may not use Berth's tables: said with their owner (exit 2)."""
    from sqlalchemy.exc import DBAPIError

    try:
        yield
    except DBAPIError as exc:
        # Here: the refusal's module loads Alembic, which a verb's start otherwise does not.
        from berth.table_privileges import lacks_privilege, no_privilege

        if not lacks_privilege(exc):
            raise
        fail(no_privilege(settings, exc), BAD_SETTING)


def _exit_code(refusal: RegistryError) -> int:
    """3 for what exists already, 2 for a value out of range, 1 for any other refusal (the
    state of something, a disabled webhook say, is not "exists")."""
    from berth.domain.errors import Conflict, InvalidValue, StateRefusal

    if isinstance(refusal, Conflict) and not isinstance(refusal, StateRefusal):
        return 3
    return BAD_SETTING if isinstance(refusal, InvalidValue) else 1


# Never broken whatever the terminal's width: the value a user copies into the next command
# (other columns fold, keeping every character).
ID_COLUMNS = {"access_key_id"}
# Empty times the console also says "never" for; any other empty value is a dash.
NEVER_COLUMNS = {"last_used_at", "expires_at", "last_gc_at", "finished_at"}


def is_time_column(column: str) -> bool:
    """Columns that hold times, known by name: a value that merely looks like a date (a
    description starting with one) is text."""
    return column in ("at", "since") or column.endswith("_at")


def when(value: str | None, empty: str = "never") -> str:
    """An ISO time as the CLI prints times: to the minute, in the local time zone, named."""
    if not value:
        return empty
    moment = dt.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)  # the database keeps UTC
    return moment.astimezone().strftime("%Y-%m-%d %H:%M %Z")


def cell(value: Any, column: str = "") -> str:
    """One value in a table: times to the minute with their zone, yes/no, and empty values as
    the console says them ("never" for a time that has not come, else a dash)."""
    if value is None or value == "":
        return "never" if column in NEVER_COLUMNS else "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str) and is_time_column(column):
        try:
            return when(value)
        except ValueError:  # not a time after all: shown as it is
            return value
    return str(value)


# The narrowest a folding column is read at; a table whose columns need more than the
# terminal's width is shown as one record per row instead (Rich would cut columns off).
MIN_FOLD_WIDTH = 8
TIME_WIDTH = len("2026-12-01")  # a time breaks only between the date and the time


def data_table(
    rows: list[dict[str, Any]],
    columns: list[str],
    title: str,
    headers: dict[str, str] | None = None,
    ids: frozenset[str] = frozenset(),
) -> RenderableType:
    """`rows` as a table that fits the terminal: ID columns (ID_COLUMNS and `ids`, what the
    next command takes) are never cut, times break only between the date and the time, other
    columns fold. When the columns cannot fit so, one record per row, every value whole.
    `headers` names columns otherwise named after their key."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    never_broken = ID_COLUMNS | ids
    named = {column: _header(column, headers) for column in columns}
    values = {column: [cell(row[column], column) for row in rows] for column in columns}
    floors = [
        max(map(len, values[column]), default=0)
        if column in never_broken
        else TIME_WIDTH
        if is_time_column(column)
        else MIN_FOLD_WIDTH
        for column in columns
    ]
    if not rows:  # only the headers to fit: the empty table every other empty list prints
        floors = [len(named[column]) for column in columns]
    if sum(floors) + len(columns) - 1 > console.width:
        return _records(rows, columns, title, named)
    shown = Table(title=title, box=box.SIMPLE_HEAD, padding=0, show_edge=False)
    for column, floor in zip(columns, floors, strict=True):
        if column in never_broken:
            shown.add_column(named[column], no_wrap=True, min_width=floor)
        elif is_time_column(column):
            shown.add_column(named[column], min_width=floor)
        else:
            shown.add_column(named[column], overflow="fold")
    for row in rows:
        shown.add_row(*(Text(cell(row[c], c)) for c in columns))
    return shown


def _header(column: str, headers: dict[str, str] | None) -> str:
    header = column.replace("_", " ").removesuffix(" at") if column != "at" else "at"
    return (headers or {}).get(column, header)


def _records(
    rows: list[dict[str, Any]], columns: list[str], title: str, named: dict[str, str]
) -> Group:
    """Each row as `header: value` lines, a blank line between rows."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[RenderableType] = [Text(title, style="table.title")]
    for row in rows:
        record = Table.grid(padding=(0, 1))
        record.add_column(no_wrap=True)
        record.add_column(overflow="fold")
        for column in columns:
            record.add_row(f"{named[column]}:", Text(cell(row[column], column)))
        parts += [Text(""), record]
    if not rows:
        parts.append(Text("none"))
    return Group(*parts)


def done(json_output: bool, value: dict[str, Any], message: str) -> None:
    """What a verb that changes something prints: `value` as JSON, or `message`."""
    if json_output:
        print_json(value)
    else:
        console.print(message)


YesFlag = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def _terminal_to_ask_on(deleting: str) -> None:
    """Exit (2, as for a missing flag) when standard input is no terminal: a script or a pipe
    cannot be asked, and an answer piped in ahead is no confirmation of what is asked."""
    if not sys.stdin.isatty():
        fail(
            f"no terminal to ask on whether to {deleting}: to do it without asking, give --yes",
            BAD_SETTING,
        )


def _answer(question: str) -> str:
    """A line typed on the terminal after `question`, which goes to standard error (Click's
    prompt leaves a space on standard output, in front of the JSON)."""
    sys.stderr.write(f"{question} ")
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not line:  # end of input (Ctrl-D): no answer
        sys.stderr.write("\n")
        fail("no answer: nothing was deleted")
    return line.strip()


def confirm_deletion(
    deleting: str,
    yes: bool,
    told: Callable[[], str] | None = None,
    *,
    present: Callable[[Services], Awaitable[object]] | None = None,
) -> None:
    """Unless `yes`, ask on the terminal whether to `deleting` ("delete user bob"); anything
    but yes exits 1. First `present` reads what is to go and `told` says what to print (what
    the deletion takes): each refuses as the deletion would when it is not there (exit 1, a
    name mistyped), so nothing absent is asked about, nor is --yes asked for without a
    terminal. The question goes to standard error, whatever --json says: standard output
    holds only the verb's output (its JSON)."""
    if yes:
        return
    if present is not None:
        run_service(present)
    said = None if told is None else told()
    _terminal_to_ask_on(deleting)
    if said is not None:
        from rich.text import Text

        errors.print(Text(said), soft_wrap=True)
    if _answer(f"{deleting[0].upper()}{deleting[1:]}? [y/N]:").lower() not in ("y", "yes"):
        fail("not confirmed: nothing was deleted")


def ask_on_terminal(deleting: str, question: str) -> str:
    """An answer typed on the terminal to `question` (asked on standard error) before a verb
    will `deleting`; without a terminal, exit naming --yes."""
    _terminal_to_ask_on(deleting)
    return _answer(f"{question}:")


def read_password(stdin: bool, prompt: str = "Password") -> str:
    """A password from standard input's first line (--password-stdin), else asked for twice
    without echo."""
    if stdin:
        return sys.stdin.readline().rstrip("\n")
    if not sys.stdin.isatty():  # nowhere to ask without echo (a pipe, a script)
        fail(
            "no terminal to ask for the password on: give it on standard input with --password-stdin",
            BAD_SETTING,
        )
    return str(typer.prompt(prompt, hide_input=True, confirmation_prompt=True))


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def cli_actor() -> str:
    """Who runs an admin verb, as the audit log and GC history name them."""
    return f"cli:{getpass.getuser()}"[:64]


def short_digest(digest: str | None) -> str:
    """A digest as the CLI's tables show it: its first 12 hex digits (what `berth image
    delete` and `image history --digest` take, as they take it whole)."""
    return digest.split(":", 1)[-1][:12] if digest else ""


def pasteable(*words: str) -> str:
    """A `berth` command to print for the user to paste: it runs as printed from where this
    one ran, on the same data (with this one's --data-dir, when it was given one)."""
    from berth.invocation import pasteable_command

    return pasteable_command(*words, data_dir=Options.data_dir)


# Where an admin verb comes from, in the audit log's "client" (an address for HTTP callers).
CLI_CLIENT = f"cli on {socket.gethostname()}"[:64]


def listing(
    items: list[Any], total: int | None = None, *, page: int = 1, per_page: int | None = None
) -> dict[str, Any]:
    """What every list verb prints with --json, the Management API's page: `items` (this
    page's), `page` (from 1), `per_page` (the most a page holds: --per-page or --limit; None
    where the verb lists everything at once) and `total` (items on every page together: more
    than `items` holds when a limit cut the listing short)."""
    return {
        "items": items,
        "page": page,
        "per_page": per_page,
        "total": len(items) if total is None else total,
    }


def show_rows(
    json_output: bool,
    rows: list[dict[str, Any]],
    columns: list[str],
    title: str,
    *,
    total: int | None = None,
    per_page: int | None = None,
    ids: frozenset[str] = frozenset(),
) -> None:
    """What a verb that lists things prints: the rows as a listing in JSON (`total` and
    `per_page` as `listing` takes them), or a table of `columns` (`ids` as data_table takes
    them)."""
    if json_output:
        print_json(listing(rows, total, per_page=per_page))
    else:
        console.print(data_table(rows, columns, title, ids=ids))


def split_repo(value: str) -> tuple[str, str]:
    """A PROJECT/REPOSITORY argument (the repository part may hold more slashes)."""
    project, _, repository = value.partition("/")
    if not project or not repository:
        raise typer.BadParameter(f"expected PROJECT/REPOSITORY, got {value!r}")
    return project, repository


def split_image(value: str) -> tuple[str, str, str]:
    """A PROJECT/REPO[/IMAGE] argument -> (project, repository, image; "" for the repository's
    own). An image name no image can have is refused, as the API refuses it: not taken for an
    image with nothing in it."""
    from berth.domain.names import IMAGE_NAME_RULE, NAME_RE

    project, repository = split_repo(value)
    repository, _, image = repository.partition("/")
    if image and not NAME_RE.fullmatch(image):
        raise typer.BadParameter(f"invalid image name {image!r} in {value!r}: {IMAGE_NAME_RULE}")
    return project, repository, image
