"""``@app.task(validate=True)``: a task's arguments and result checked against its type hints.

Type hints are a promise the function makes to itself; a task's arguments come from
other processes, and on a worker from the broker, where anyone holding credentials can
write anything. With ``validate=True`` the hints are enforced with pydantic, at both
ends:

- **send** (``delay``, ``apply_async``, signatures as they are sent, retries): the call's
  arguments are validated and sent in their JSON form (``TypeAdapter.dump_python(...,
  mode="json")``), so pydantic models and dates travel as plain data; a call that does
  not fit raises ``celeriac.ValidationError`` and sends nothing. Partial arguments bound
  into a later workflow step or a link travel in their JSON form (``plain``) until that
  step is sent and validated.
- **receive** (the worker, before the task runs): the message's arguments are validated
  again and converted into the annotated types (a dict back into its model); a message
  that does not fit is dead-lettered with the field path in its reason, and nothing runs.
- **result**: the worker validates the return value against the return annotation and
  stores its JSON form; the caller's ``AsyncResult.get()`` converts it back through the
  same annotation (the caller knows the task by name, the result names its task), so a
  task annotated ``-> Receipt`` gives the caller a ``Receipt``.

One ``TypeAdapter`` over all the parameters (a ``TypedDict`` of them; ``*args`` as a
tuple, ``**kwargs`` as a dict) and one over the return annotation are built per task the
first time they are needed, not at declaration: building them resolves the hints, which
may name models defined after the task. Validation is lax (pydantic's default), as JSON
needs: ``"2026-12-06"`` becomes a ``date``, ``"3"`` an ``int``.

pydantic is an optional extra (``celeriac[validation]``): this module imports it only
when a validator is built, and ``require_pydantic`` says what to install when a task
asks for ``validate=True`` without it.
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from celeriac.errors import ConfigurationError, ValidationError

if TYPE_CHECKING:
    from pydantic import TypeAdapter
    from pydantic import ValidationError as PydanticValidationError

# How many of pydantic's errors a ValidationError's text lists (all are in ``.errors``).
SHOWN_ERRORS = 5


def require_pydantic() -> None:
    """ConfigurationError, at declaration, for ``validate=True`` without pydantic."""
    try:
        importlib.import_module("pydantic")
    except ImportError:
        raise ConfigurationError(
            "validate=True needs pydantic, which is not installed: "
            "pip install 'celeriac[validation]'") from None


class Validator:
    """A task's arguments and result checked against its hints: one per task, built lazily.

    ``signature`` is the task's call signature (without ``self`` for a bound task).
    """

    def __init__(self, task_name: str, fn: Callable[..., Any],
                 signature: inspect.Signature) -> None:
        from pydantic import TypeAdapter
        from pydantic.errors import PydanticSchemaGenerationError, PydanticUserError

        # pydantic needs typing_extensions' TypedDict before Python 3.12 (one of its
        # own dependencies); Any: mypy cannot follow a TypedDict made at run time.
        from typing_extensions import TypedDict

        make_typed_dict: Any = TypedDict

        self.task_name = task_name
        self.signature = signature
        try:
            hints = _hints(fn, signature)
        except Exception as exc:  # a hint naming something not defined (yet)
            raise ConfigurationError(f"{task_name}: validate=True cannot read the type "
                                     f"hints of its function: {exc}") from exc
        fields: dict[str, Any] = {}
        # Where each argument of a call goes back to after validation (the caller's own
        # split between positional and keyword arguments is kept).
        self._positional: list[str] = []
        self._named: set[str] = set()
        self._var_args = self._var_kwargs = ""
        for param in signature.parameters.values():
            hint = hints.get(param.name, Any)
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                hint = tuple[hint, ...]  # type: ignore[valid-type]
                self._var_args = param.name
            elif param.kind is inspect.Parameter.VAR_KEYWORD:
                hint = dict[str, hint]  # type: ignore[valid-type]
                self._var_kwargs = param.name
            else:
                self._named.add(param.name)
                if param.kind is not inspect.Parameter.KEYWORD_ONLY:
                    self._positional.append(param.name)
            # Which parameters must be given is the signature's check (check_arguments);
            # a parameter left to its default is not validated (pydantic's rule too).
            fields[param.name] = typing.NotRequired[hint]
        self.returns = "return" in hints
        try:
            arguments = make_typed_dict(f"{task_name} arguments", fields)
            self._arguments: TypeAdapter[dict[str, Any]] = TypeAdapter(arguments)
            self._result: TypeAdapter[Any] = TypeAdapter(hints.get("return", Any))
        except (PydanticSchemaGenerationError, PydanticUserError) as exc:
            raise ConfigurationError(f"{task_name}: validate=True cannot check its type "
                                     f"hints with pydantic: {exc}") from exc

    def _validated(self, args: Sequence[Any], kwargs: Mapping[str, Any],
                   ) -> dict[str, Any]:
        from pydantic import ValidationError as PydanticValidationError

        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:  # (check_arguments ran first wherever this is used)
            raise TypeError(f"{self.task_name}{self.signature}: {exc}") from None
        try:
            values = self._arguments.validate_python(dict(bound.arguments))
        except PydanticValidationError as exc:
            raise _error(self.task_name, "invalid arguments", exc) from None
        return values

    def _split(self, values: dict[str, Any], given: int, keywords: Mapping[str, Any],
               ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Validated values as the call gave them: ``given`` positional arguments, then
        the ``keywords``'s names."""
        positional = self._positional
        args = [values[name] for name in positional[:given]]
        if given > len(positional):  # the rest went to *args
            args.extend(values[self._var_args])
        named = self._named
        return tuple(args), {key: values[key] if key in named else values[self._var_kwargs][key]
                             for key in keywords}

    def arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any],
                  ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments converted into their annotated types (what the function gets);
        ValidationError naming each field that does not fit."""
        return self._split(self._validated(args, kwargs), len(args), kwargs)

    def for_message(self, args: Sequence[Any], kwargs: Mapping[str, Any],
                    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments validated and in their JSON form, to send (models as dicts)."""
        values = _dump(self._arguments, self._validated(args, kwargs), self.task_name,
                       "arguments")
        return self._split(values, len(args), kwargs)

    def result_to_store(self, value: Any) -> Any:
        """A return value checked against the return annotation, in its JSON form."""
        from pydantic import ValidationError as PydanticValidationError

        try:
            checked = self._result.validate_python(value) if self.returns else value
        except PydanticValidationError as exc:
            raise _error(self.task_name, "invalid result", exc, "result") from None
        return _dump(self._result, checked, self.task_name, "result")

    def result_from_store(self, value: Any) -> Any:
        """A stored result as the caller expects it: converted by the return annotation
        (a dict back into its model); as stored when the function has none."""
        if not self.returns:
            return value
        from pydantic import ValidationError as PydanticValidationError

        try:
            return self._result.validate_python(value)
        except PydanticValidationError as exc:
            raise _error(self.task_name, "its stored result does not fit its return "
                         "annotation", exc, "result") from None


def plain(value: Any) -> Any:
    """``value`` in its JSON form (models as dicts, dates as text), by its runtime types:
    for partial arguments (a chain step's, a link's) that cannot be validated yet."""
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(value)


def _dump(adapter: TypeAdapter[Any], value: Any, task_name: str, what: str) -> Any:
    """``adapter.dump_python(value, mode="json")``; a value with no JSON form (bytes that
    are not UTF-8, an object pydantic does not know) is a ValidationError too."""
    from pydantic_core import PydanticSerializationError

    try:
        return adapter.dump_python(value, mode="json")
    except (PydanticSerializationError, ValueError) as exc:  # (UnicodeDecodeError)
        raise ValidationError(f"{task_name}: its {what} have no JSON form: {exc}"
                              if what == "arguments" else
                              f"{task_name}: its {what} has no JSON form: {exc}") from None


def _hints(fn: Callable[..., Any], signature: inspect.Signature) -> dict[str, Any]:
    """The resolved hints of the parameters in ``signature`` and of the return value.

    Only those: a bound task's ``self: Task`` is often imported for type checkers alone
    (``if TYPE_CHECKING:``), and need not resolve at run time.
    """
    annotations = getattr(fn, "__annotations__", None) or {}
    wanted = {name: annotations[name] for name in (*signature.parameters, "return")
              if name in annotations}
    holder = types.SimpleNamespace(__annotations__=wanted)
    globalns = getattr(inspect.unwrap(fn), "__globals__", {})
    return typing.get_type_hints(holder, globalns=globalns, include_extras=True)


def _error(task_name: str, what: str, exc: PydanticValidationError,
           root: str | None = None) -> ValidationError:
    """celeriac's ValidationError from pydantic's: one line, each field path first."""
    errors = exc.errors(include_url=False, include_context=False)
    problems = []
    for error in errors:
        path = ".".join(str(part) for part in error["loc"]) or root or "value"
        if root is not None and error["loc"]:
            path = f"{root}.{path}"
        # The input's type, never its value: arguments may be personal data, and this
        # text goes into log lines and dead-letter reasons.
        given = "" if error["type"] == "missing" else \
            f" ({type(error['input']).__name__} given)"
        problems.append(f"{path}: {error['msg']}{given}")
    shown = "; ".join(problems[:SHOWN_ERRORS])
    if len(problems) > SHOWN_ERRORS:
        shown += f"; and {len(problems) - SHOWN_ERRORS} more"
    paths = tuple(problem.partition(": ")[0] for problem in problems)
    return ValidationError(f"{task_name}: {what}: {shown}", paths=paths,
                           errors=[{key: value for key, value in error.items()
                                    if key != "input"} for error in errors])
