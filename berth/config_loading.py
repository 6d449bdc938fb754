"""Loading the settings (defaults, then a TOML file, then BERTH_<NAME> environment variables,
then flags): each bad value said where it was given and why in plain words, each name that is
no setting refused with the closest one."""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from berth.config import CONFIG_FILE_ENV, Settings, config_file
from berth.database_urls import without_password

# BERTH_* variables that are not settings: the config file's path, and the test suite's.
NOT_SETTINGS_ENV = frozenset(
    {CONFIG_FILE_ENV, "BERTH_FUZZ_SEED", "BERTH_FUZZ_EXAMPLES", "BERTH_REQUIRE_POSTGRES"}
)


class SettingsError(ValueError):
    """A setting whose value cannot work, said as the user wrote it (flag, variable or file)."""


def setting_source(name: str, flags: Collection[str] = ()) -> str:
    """Where a setting's value came from, as the user would write it."""
    if name in flags:
        return f"--{name.replace('_', '-')}"
    variable = f"BERTH_{name.upper()}"
    if any(key.upper() == variable for key in os.environ):
        return variable
    if _file_sets(name):
        return f"{name} in {config_file()}"
    return f"{name}, the default"


def _file_sets(name: str) -> bool:
    """Whether the config file gives `name` (an unreadable file: as if it did, since a value
    that is not the default came from somewhere)."""
    try:
        with config_file().open("rb") as handle:
            return name in tomllib.load(handle)
    except FileNotFoundError:
        return False
    except (OSError, tomllib.TOMLDecodeError):
        return True


SECRET_SETTINGS = {"admin_password", "s3_secret_access_key"}  # never printed back


# Pydantic's words for a few common problems, said plainly.
_PROBLEMS = {
    "int_parsing": "is not a whole number",
    "int_from_float": "is not a whole number",
    "float_parsing": "is not a number",
    "bool_parsing": "is not true or false",
    "path_type": "is not a path",
    "byte_size": "is not a size: a number of bytes with an optional unit, e.g. 10GiB or 500MB",
    "byte_size_unit": "has an unknown unit: use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB",
}


# What a value of a setting with a pattern looks like, instead of the regular expression.
_PATTERNS = {
    "currency": "must be 3 capital letters, e.g. USD",
    "node_name": "may hold only letters, digits and . _ : - [ ]",
}


def _number(limit: Any) -> str:
    """A limit as a person writes it: 60, not 60.0."""
    return f"{limit:g}" if isinstance(limit, float) else str(limit)


def _problem(name: str, error: Any) -> str:
    context = error.get("ctx") or {}
    if error["type"] == "string_pattern_mismatch":
        return _PATTERNS.get(name, "is not in the expected form")
    if error["type"] in _PROBLEMS:
        return str(_PROBLEMS[error["type"]])
    if error["type"] == "string_too_short":
        return f"is too short: at least {context.get('min_length')} characters"
    if error["type"] in ("greater_than_equal", "greater_than"):
        limit = context.get("ge", context.get("gt"))
        return f"must be {'at least' if 'ge' in context else 'more than'} {_number(limit)}"
    if error["type"] in ("less_than_equal", "less_than"):
        limit = context.get("le", context.get("lt"))
        return f"must be {'at most' if 'le' in context else 'less than'} {_number(limit)}"
    if error["type"] == "literal_error":
        return f"must be one of {context.get('expected')}"
    if error["type"] == "value_error":
        return str(context.get("error", error["msg"]))
    message = str(error["msg"]).removeprefix("Input ")  # the value is shown before it
    return message[0].lower() + message[1:]


def _unknown_settings() -> list[str]:
    """Each name in the config file and each BERTH_* variable that is no setting (a typo,
    or a setting of another version), said with the closest setting: otherwise ignored
    without a word, it would leave its setting at the default."""
    names = list(Settings.model_fields)
    variables = [f"BERTH_{name.upper()}" for name in names]
    allowed = {*variables, *NOT_SETTINGS_ENV}
    path = config_file()
    try:
        with path.open("rb") as handle:
            in_file = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError):  # none, or said when the settings are read
        in_file = {}
    unknown = [
        f"{name} in {path} is not a setting{_closest(name, names)}"
        for name in in_file
        if name not in Settings.model_fields
    ]
    unknown += [
        f"the environment variable {variable} is not a setting"
        f"{_closest(variable.upper(), variables)}; unset it"
        for variable in os.environ
        if variable.upper().startswith("BERTH_") and variable.upper() not in allowed
    ]
    return unknown


def _closest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _named_config_refused() -> str | None:
    """Why the config file BERTH_CONFIG names is refused, or None when it is there (or the
    variable is unset: only the working directory's berth.toml may be absent). Ignored, a
    typo or a mount gone would bring a node up on the defaults: a new data directory,
    database and administrator. /dev/null names no file on purpose: the defaults."""
    named = os.environ.get(CONFIG_FILE_ENV)
    if named is None:
        return None
    fix = (
        f"correct {CONFIG_FILE_ENV}, or set it to {os.devnull} to use no config file (the "
        "defaults and BERTH_* variables)"
    )
    if not named.strip():
        return f"{CONFIG_FILE_ENV} is set but empty: {fix}"
    path = config_file()
    if path.is_file() or path == Path(os.devnull):
        return None
    what = (
        "is a directory"
        if path.is_dir()
        else "is not a file"
        if path.exists()
        else "does not exist"
    )
    return f"the config file {path} named by {CONFIG_FILE_ENV} {what}: {fix}"


def load_settings(**overrides: Any) -> Settings:
    """The settings, or SettingsError naming each bad value, where it was given and why, and
    each name that is no setting."""
    given = {k: v for k, v in overrides.items() if v is not None}
    refused = _named_config_refused()
    if refused is not None:
        raise SettingsError(refused)
    unknown = _unknown_settings()
    if unknown:
        raise SettingsError("; ".join(unknown))
    try:
        return Settings(**given)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{config_file()} is not valid TOML: {exc}") from None
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "?"
            if error["input"] is None:  # a setting another one needs, left unset
                problems.append(f"{name} {_problem(name, error)}")
                continue
            source = setting_source(name, set(given))
            shown = "(hidden)" if name in SECRET_SETTINGS else repr(error["input"])
            if name == "database_url":
                shown = repr(without_password(str(error["input"])))
            problems.append(f"{source}: {shown} {_problem(name, error)}")
        raise SettingsError("; ".join(problems)) from None
