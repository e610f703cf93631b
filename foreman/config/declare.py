"""How a setting is declared once, and everything derived from that declaration.

A settings class declares each setting as one of its fields::

    @dataclass(frozen=True, repr=False)
    @declared_settings
    class Config:
        poll_interval: float = setting(default="30s", read=..., metavar="DURATION", help=...)

From that one declaration follow the ``FOREMAN_POLL_INTERVAL`` variable, the
``--poll-interval`` flag and its --help paragraph, the field's default (what
the default text reads to, so ``Config()`` equals loading an empty
environment), how loading fills the field, and how the repr shows it.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from foreman.config.readers import Reader

_C = TypeVar("_C")

PREFIX = "FOREMAN_"
_KEY = "foreman.setting"  # where a field's metadata holds the setting declared on it


@dataclass(frozen=True)
class Setting:
    """One configurable value: its name, how it is read, its default, its help, its secrecy.

    ``fills`` lists the fields of the settings class that the value goes
    into: usually just the field the setting is declared on, and then
    ``read`` returns that field's value. A setting that fills several fields
    (FOREMAN_LISTEN: ``listen_host`` and ``listen_port``) reads to a tuple
    with one value per field. A field already filled by an earlier setting is
    added to rather than replaced (FOREMAN_TOKENS_FILE's tokens join
    FOREMAN_TOKENS'), each value kept once, in order.
    """

    name: str  # FOREMAN_<NAME> and --<name>
    default: str | None  # as text, as --help and README show it; None = unset
    read: Reader[Any]
    help: str
    metavar: str = "VALUE"
    # How the repr shows a secret value instead of the value; None = not secret.
    redact: Callable[[Any], str] | None = None
    fills: tuple[str, ...] = ()

    @property
    def env(self) -> str:
        return PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def secret(self) -> bool:
        return self.redact is not None


def setting(
    *,
    default: str | None,
    read: Reader[Any],
    help: str,
    metavar: str = "VALUE",
    redact: Callable[[Any], str] | None = None,
    name: str | None = None,
    fills: tuple[str, ...] = (),
) -> Any:
    """Declare the field this is assigned to as a setting (see ``Setting``).

    ``name`` and ``fills`` default to the field's own name. Typed ``Any`` so a
    field may be annotated with the type its reader returns.
    """
    return Setting(name or "", default, read, help, metavar, redact, fills)


@dataclass(frozen=True)
class _FilledBy:
    names: tuple[str, ...]


def filled_by(*names: str) -> Any:
    """Declare a field that settings declared on other fields fill too (each adds to it)."""
    return _FilledBy(names)


def declared_settings(cls: type[_C]) -> type[_C]:
    """Turn the ``setting()`` declarations of a class body into dataclass fields.

    Apply beneath ``@dataclass``. Every annotated field must be declared with
    ``setting()`` or ``filled_by()``; anything else is a mistake caught here,
    at import.
    """
    where = cls.__name__
    annotated = list(cls.__dict__.get("__annotations__", {}))
    declared: list[Setting] = []
    for field_name in annotated:
        value = cls.__dict__.get(field_name)
        if isinstance(value, Setting):
            declared.append(
                dataclasses.replace(value, name=value.name or field_name, fills=value.fills or (field_name,))
            )
            if declared[-1].fills[0] != field_name:
                raise TypeError(f"{where}.{field_name}: a setting fills its own field first")
        elif not isinstance(value, _FilledBy):
            raise TypeError(f"{where}.{field_name} is not declared with setting() or filled_by()")
    filled = [f for s in declared for f in s.fills]
    if unknown := set(filled) - set(annotated):
        raise TypeError(f"{where}: settings fill fields the class does not have: {sorted(unknown)}")
    owner = {s.fills[0]: s for s in declared}
    for field_name in annotated:
        value = cls.__dict__[field_name]
        if not isinstance(value, _FilledBy):
            continue
        for name in value.names:
            if not any(s.name == name and field_name in s.fills for s in declared):
                raise TypeError(f"{where}.{field_name}: no setting {name!r} fills it")
    for s in declared:
        for field_name in s.fills[1:]:
            # A secret may only reach fields that are shown as secrets.
            if s.secret and not (field_name in owner and owner[field_name].secret):
                raise TypeError(f"{where}.{field_name}: filled by secret {s.name!r} but not redacted")
    defaults = _read_all(declared, lambda s: (s.default or "", s.env))
    for field_name in annotated:
        metadata = {_KEY: owner[field_name]} if field_name in owner else {}
        setattr(cls, field_name, dataclasses.field(default=defaults[field_name], metadata=metadata))
    return cls


def settings_of(cls: type) -> tuple[Setting, ...]:
    """The settings declared on a settings class, in declaration order."""
    return tuple(f.metadata[_KEY] for f in dataclasses.fields(cls) if _KEY in f.metadata)


def load_settings(cls: type[_C], environ: Mapping[str, str], args: argparse.Namespace | None = None) -> _C:
    """An instance of `cls` from flags, then environment, then defaults.

    Each setting takes its flag's value if given (not None), else its
    variable if set and non-empty, else its default. Raises the reader's
    ConfigError on the first bad value, in declaration order.
    """

    def pick(s: Setting) -> tuple[str, str]:
        flag_value = getattr(args, s.name, None) if args is not None else None
        if flag_value is not None:
            return str(flag_value), f"{s.flag} ({s.env})"
        env_value = environ.get(s.env)
        if env_value:
            return env_value, s.env
        return s.default or "", s.env

    return cls(**_read_all(settings_of(cls), pick))


def _read_all(settings: Iterable[Setting], pick: Callable[[Setting], tuple[str, str]]) -> dict[str, Any]:
    # Field values by name, from each setting's text as `pick` finds it.
    values: dict[str, Any] = {}
    for s in settings:
        value = s.read(*pick(s))
        for field_name, part in zip(s.fills, value if len(s.fills) > 1 else (value,), strict=True):
            if field_name in values:
                if not isinstance(part, tuple):
                    raise TypeError(f"{s.name} adds to {field_name}, which is not a tuple")
                part = tuple(dict.fromkeys(values[field_name] + part))
            values[field_name] = part
    return values


def add_setting_arguments(parser: argparse.ArgumentParser, settings: tuple[Setting, ...]) -> None:
    """Add one option per setting, so --help documents every variable.

    Options default to None so loading can tell "not given" from any value;
    no ``choices=`` either, so every bad value gets the same one-line error.
    """
    for s in settings:
        where = f"default {s.default}" if s.default is not None else "unset by default"
        text = f"{s.help} (env {s.env}, {where})"
        # argparse %-formats help strings.
        parser.add_argument(s.flag, dest=s.name, default=None, metavar=s.metavar, help=text.replace("%", "%%"))


def redacted_repr(instance: Any) -> str:
    """The dataclass repr, with each secret shown the way its setting says."""
    shown = []
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        declared: Setting | None = f.metadata.get(_KEY)
        text = declared.redact(value) if declared is not None and declared.redact else repr(value)
        shown.append(f"{f.name}={text}")
    return f"{type(instance).__name__}({', '.join(shown)})"


def hidden(value: object) -> str:
    """Redaction for one secret: whether it is set, never what it is."""
    return "<hidden>" if value else "None"


def hidden_each(values: tuple[object, ...]) -> str:
    """Redaction for a list of secrets: how many, never which."""
    return f"<{len(values)} hidden>"
