"""Option values converted without pydantic.

Typer (0.2x) converts every option value with a pydantic TypeAdapter, and the
first one imports pydantic (~0.1-0.5 s): even `udx export list --help` paid it,
for the global options. The types udx uses (str, Path, int/float with bounds,
Enums and lists of them) are converted here instead; any other annotation keeps
Typer's own conversion. This reaches into Typer's private `_runtime_param`
slot; when Typer changes it, `install` does nothing and Typer converts as before.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

try:
    from typer._click.exceptions import BadParameter
    from typer._coercion import RuntimeParam
except ImportError:  # pragma: no cover - another Typer layout: keep its conversion
    RuntimeParam = None  # type: ignore[assignment,misc]

_SCALARS = (str, Path, int, float, bool)
_TRUE = ("1", "true", "yes", "on", "y", "t")
_FALSE = ("0", "false", "no", "off", "n", "f")


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum)


def _leaf(annotation: Any) -> Any | None:
    """The element type udx converts itself, or None."""
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation) or (None,)
    if annotation in _SCALARS or _is_enum(annotation):
        return annotation
    return None


def convert(value: Any, leaf: Any, info: Any) -> Any:
    """One value of the command line (a str) to `leaf`; BadParameter when it is not one."""
    if isinstance(value, leaf):
        return value
    text = str(value)
    if _is_enum(leaf):
        wanted = text if getattr(info, "case_sensitive", True) else text.lower()
        for member in leaf:
            name = str(member.value)
            if name == wanted or (not info.case_sensitive and name.lower() == wanted):
                return member
        choices = ", ".join(str(m.value) for m in leaf)
        shown = repr(text) if text else "'' (empty)"
        raise BadParameter(f"{shown} is not one of: {choices}")
    if leaf is str:
        return text
    if leaf is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise BadParameter(f"{text!r} is not a boolean (true or false)")
    if leaf is Path:
        return Path(text)
    try:
        number = leaf(text)
    except ValueError:
        kind = "an integer" if leaf is int else "a number"
        raise BadParameter(f"{text!r} is not {kind}") from None
    low, high = getattr(info, "min", None), getattr(info, "max", None)
    if getattr(info, "clamp", False):
        number = max(low, number) if low is not None else number
        return min(high, number) if high is not None else number
    if (low is not None and number < low) or (high is not None and number > high):
        span = (
            f"between {low} and {high}"
            if low is not None and high is not None
            else (f"at least {low}" if low is not None else f"at most {high}")
        )
        raise BadParameter(f"{number} is not {span}")
    return number


if RuntimeParam is not None:

    @dataclass(frozen=True)
    class _PlainRuntimeParam(RuntimeParam):
        leaf: Any = None

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                if isinstance(value, (list, tuple)):
                    return [convert(v, self.leaf, self.parameter_info) for v in value]
                return convert(value, self.leaf, self.parameter_info)
            except BadParameter as err:
                err.ctx, err.param = ctx, param
                raise


def _plain(desc: Any) -> Any | None:
    """The plain conversion for a parameter's type descriptor, or None."""
    leaf = _leaf(desc.annotation)
    if leaf is None or desc.file_annotation is not None:
        return None
    if getattr(desc.parameter_info, "parser", None) is not None:
        return None
    return _PlainRuntimeParam(
        parameter_info=desc.parameter_info, annotation=desc.annotation, leaf=leaf
    )


_installed = False


def install() -> None:
    """Convert udx's parameter types without pydantic from now on (idempotent)."""
    global _installed
    if _installed or RuntimeParam is None:
        return
    try:
        from typer.core import _TyperParameter
    except ImportError:  # pragma: no cover
        return
    typer_runtime_param = _TyperParameter.get_runtime_param

    def get_runtime_param(self: Any) -> Any:
        if getattr(self, "_runtime_param", None) is None:
            desc = getattr(self, "type_descriptor", None)
            plain = _plain(desc) if desc is not None else None
            if plain is not None:
                self._runtime_param = plain
                return plain
        return typer_runtime_param(self)

    _TyperParameter.get_runtime_param = get_runtime_param  # type: ignore[method-assign]
    _plain_argument_help()
    _installed = True


def _plain_argument_help() -> None:
    """Arguments as man pages write them: `EXPORT_ID`, not Typer's `{EXPORT_ID}`
    for a required one, and no `<str>` after a name that already says what it is."""
    try:
        from typer.core import TyperArgument
    except ImportError:  # pragma: no cover
        return
    usage_name = TyperArgument._usage_display_name
    type_label = TyperArgument.display_type_rich

    def _usage_display_name(self: Any) -> str:
        if self.required and self.metavar is not None and self.nargs == 1:
            return str(self.metavar)
        return str(usage_name(self))

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return None if self.metavar is not None else type_label(self, ctx)

    TyperArgument._usage_display_name = _usage_display_name  # type: ignore[method-assign]
    TyperArgument.display_type_rich = display_type_rich  # type: ignore[method-assign]
