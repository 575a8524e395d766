"""Mermaid diagrams of a saga definition and of one saga run.

(One module of over 500 lines: the four diagrams share the walk over a saga's steps and the escaping
of ids and labels, which is where Mermaid's parser is easy to break.)

`SagaMermaid` turns a `Saga` into Mermaid source text: a sequence diagram of
its success and failure paths, a class diagram of its steps, context and
responses, a state diagram of its steps (optionally marked with one run's
history) and a compact flowchart of one run for status pages::

    diagrams = SagaMermaid(OrderSaga)
    print(diagrams.sequence())
    print(diagrams.run_diagram(await storage.get_step_history(saga_id)))

Output is deterministic (the same saga gives the same text). Mermaid ids are
derived from step names with anything but ``[A-Za-z0-9_]`` replaced, and made
unique; names themselves appear only in labels, with characters Mermaid would
misread written as Mermaid entity codes (``#59;`` for ``;``).
"""

from __future__ import annotations

import dataclasses
import re
import string
import types
import typing

import pydantic

from cqrs.saga.fallback import Fallback
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler
from cqrs.saga.storage.enums import SagaStepStatus
from cqrs.saga.storage.models import SagaLogEntry

__all__ = ["SagaMermaid"]

_StepType = type[SagaStepHandler[typing.Any, typing.Any]]
_SagaType = type[Saga[typing.Any]]

_INDENT = "    "

# Characters left as they are in labels; everything else becomes an entity code.
_SAFE = frozenset(string.ascii_letters + string.digits + " _.,-!?/@+='")
# Type expressions in class members read better with these kept, and Mermaid accepts them there.
_SAFE_IN_MEMBERS = frozenset("[]|")

# Marking of one run: Mermaid class name -> style. Emitted in this order, only those used.
_STYLES: dict[str, str] = {
    "completed": "fill:#d4edda,stroke:#2e7d32,color:#1b5e20",
    "running": "fill:#dbeafe,stroke:#1d4ed8,color:#1e3a8a",
    "compensated": "fill:#fff3cd,stroke:#f0ad4e,color:#7a4f01",
    "failed": "fill:#f8d7da,stroke:#c62828,color:#7f1d1d",
    "pending": "fill:#f5f5f5,stroke:#9e9e9e,color:#616161,stroke-dasharray:4 2",
}

# Outcome of a run -> (label, class) for the end node of `run_diagram`.
_OUTCOMES: dict[str, tuple[str, str]] = {
    "completed": ("Completed", "completed"),
    "failed": ("Failed", "failed"),
    "compensation_failed": ("Compensation failed", "failed"),
    "compensating": ("Compensating", "compensated"),
    "running": ("Running", "running"),
    "pending": ("Pending", "pending"),
}


def _text(value: str, keep: frozenset[str] = frozenset()) -> str:
    """``value`` on one line, with characters outside the safe set as Mermaid entity codes."""
    return "".join(
        ch if ch in _SAFE or ch in keep else f"#{ord(ch)};" for ch in " ".join(value.split())
    )


def _slug(value: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]+", "_", value).strip("_")


class _Ids:
    """Unique Mermaid ids: ``prefix`` + the sanitised name, numbered on collision."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def make(self, prefix: str, name: str) -> str:
        base = prefix + (_slug(name) or "x")
        candidate, number = base, 1
        while candidate in self._taken:
            number += 1
            candidate = f"{base}_{number}"
        self._taken.add(candidate)
        return candidate


@dataclasses.dataclass(frozen=True)
class _Step:
    type: _StepType
    name: str  # the step's stable name, as the history records it
    id: str  # Mermaid id of the step
    comp_id: str  # Mermaid id of its compensation state
    label: str  # escaped step name


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One element of ``Saga.steps``: a step, or a primary step and its fallback."""

    number: int  # 1-based position
    steps: tuple[_Step, ...]
    fallback: Fallback | None

    @property
    def primary(self) -> _Step:
        return self.steps[0]


@dataclasses.dataclass(frozen=True)
class _Marks:
    """What one run's history says about each step and the saga as a whole."""

    act: dict[str, str]  # step name -> "completed" | "failed" | "running"
    compensation: dict[str, str]  # step name -> "compensated" | "failed"
    outcome: str  # a key of _OUTCOMES

    def step_status(self, name: str) -> str:
        """The one status a step shows in a run: its compensation's if any, else its action's."""
        return self.compensation.get(name) or self.act.get(name) or "pending"


class SagaMermaid:
    """Mermaid diagrams of a saga: its structure, its paths, and one run of it.

    ``saga`` is a `Saga` subclass (or an instance of one). Every method returns
    Mermaid source text ending in a newline, ready for a ```` ```mermaid ````
    block, a Mermaid live editor or a status endpoint.

    - `sequence`: who calls whom, on success and for each failing step.
    - `class_diagram`: the saga, its step classes, context and responses.
    - `state_diagram`: the steps as states, with failure and compensation
      transitions; given a run's history, its steps marked by outcome.
    - `run_diagram`: one run as a left-to-right flowchart, every step marked.
    """

    def __init__(self, saga: _SagaType | Saga[typing.Any]) -> None:
        saga_type = type(saga) if isinstance(saga, Saga) else saga
        if not (isinstance(saga_type, type) and issubclass(saga_type, Saga)):
            raise TypeError(f"SagaMermaid needs a Saga subclass or instance, got {saga!r}")
        if not saga_type.steps:
            raise ValueError(f"Saga {saga_type.__qualname__} has no steps to draw")
        self._saga = saga_type
        ids = _Ids()
        entries: list[_Entry] = []
        for number, entry in enumerate(saga_type.steps, start=1):
            fallback = entry if isinstance(entry, Fallback) else None
            step_types = entry.step_types if isinstance(entry, Fallback) else (entry,)
            steps = []
            for step_type in step_types:
                step_id = ids.make("step_", step_type.name)
                steps.append(
                    _Step(
                        type=step_type,
                        name=step_type.name,
                        id=step_id,
                        comp_id="comp_" + step_id[len("step_") :],
                        label=_text(step_type.name),
                    )
                )
            entries.append(_Entry(number, tuple(steps), fallback))
        self._entries = tuple(entries)

    @property
    def saga(self) -> _SagaType:
        """The saga class drawn."""
        return self._saga

    # -- sequence diagram ---------------------------------------------------------

    def sequence(self) -> str:
        """A ``sequenceDiagram`` of the saga calling its steps.

        Participants are the saga and every step, fallbacks included. One
        ``alt`` block lists the outcomes of a run: ``all steps complete`` (each
        ``act`` in order, answered with its response type; a `Fallback` as a
        nested ``alt`` where the fallback runs when the primary fails or its
        breaker is open), then one ``else`` branch per step that may fail, in
        which the steps before it are compensated in reverse order.
        """
        context = self._context_name()
        lines = ["sequenceDiagram"]
        lines.append(f"{_INDENT}participant saga as {_text(self._saga.name)}")
        for entry in self._entries:
            for step in entry.steps:
                lines.append(f"{_INDENT}participant {step.id} as {step.label}")

        body: list[str] = []
        for entry in self._entries:
            if entry.fallback is None:
                body.extend(_seq_act(entry.primary, context))
                continue
            primary, fallback = entry.steps
            body.append(f"alt {primary.label} completes")
            body.extend(_INDENT + line for line in _seq_act(primary, context))
            body.append(f"else {_text(_fallback_trigger(entry.fallback, primary.name))}")
            body.extend(_INDENT + line for line in _seq_act(fallback, context))
            body.append("end")
        body.append("Note over saga: Completed")
        lines.append(f"{_INDENT}alt all steps complete")
        lines.extend(_INDENT * 2 + line for line in body)

        for position, entry in enumerate(self._entries):
            if entry.fallback is None:
                lines.append(f"{_INDENT}else {entry.primary.label} fails")
            else:
                primary, fallback = entry.steps
                lines.append(f"{_INDENT}else {primary.label} and fallback {fallback.label} fail")
            branch: list[str] = []
            for step in entry.steps:
                branch.append(f"saga->>{step.id}: act({context})")
                branch.append(f"{step.id}--xsaga: error")
            for earlier in reversed(self._entries[:position]):
                branch.extend(_seq_compensate(earlier, context))
            branch.append("Note over saga: Failed")
            lines.extend(_INDENT * 2 + line for line in branch)
        lines.append(f"{_INDENT}end")
        return _join(lines)

    # -- class diagram ---------------------------------------------------------------

    def class_diagram(self) -> str:
        """A ``classDiagram`` of the saga, its step classes, context type and response types.

        Context and response classes list their fields with types (dataclass
        fields or pydantic model fields). Relations: the saga composes its
        steps (numbered by position) and runs on its context; each step uses
        its context and returns its response; a primary step points to its
        fallback.
        """
        saga = self._saga
        ids = _Ids()
        ids.make("", "saga")
        for entry in self._entries:
            for step in entry.steps:
                ids.make("", step.id)

        contexts: dict[type[typing.Any], str] = {}
        responses: dict[type[typing.Any], str] = {}

        def context_id(cls: type[typing.Any]) -> str:
            if cls not in contexts:
                contexts[cls] = ids.make("ctx_", cls.__name__)
            return contexts[cls]

        saga_context = context_id(saga.context_type) if saga.context_type is not None else None
        for entry in self._entries:
            for step in entry.steps:
                if step.type.context_type is not None:
                    context_id(step.type.context_type)
        for entry in self._entries:
            for step in entry.steps:
                response = step.type.response_type
                if response is not None and response not in responses:
                    responses[response] = ids.make("resp_", response.__name__)

        lines = ["classDiagram"]
        saga_members = ["<<saga>>"]
        if saga.name != saga.__name__:
            saga_members.append(f"name = {_text(saga.name)}")
        if saga.version != 1:
            saga_members.append(f"version = {saga.version}")
        if saga.deadline is not None:
            saga_members.append(f"deadline = {saga.deadline}s")
        lines.extend(_class_block("saga", saga.__name__, saga_members))

        context = self._context_name()
        for entry in self._entries:
            for step in entry.steps:
                step_type = step.type
                members = ["<<fallback>>" if step is not entry.primary else "<<step>>"]
                if step_type.name != step_type.__name__:
                    members.append(f"name = {step.label}")
                if step_type.retry is not None:
                    members.append(f"retry = {step_type.retry.attempts} attempts")
                if step_type.timeout is not None:
                    members.append(f"timeout = {step_type.timeout}s")
                step_context = _name_of(step_type.context_type) or context
                returns = _name_of(step_type.response_type)
                members.append(f"act({step_context})" + (f" {returns}" if returns else ""))
                members.append(f"compensate({step_context})")
                lines.extend(_class_block(step.id, step_type.__name__, members))

        for cls, cls_id in contexts.items():
            members = ["<<context>>", *(_member(n, t) for n, t in _fields(cls))]
            lines.extend(_class_block(cls_id, cls.__name__, members))
        for cls, cls_id in responses.items():
            members = ["<<response>>", *(_member(n, t) for n, t in _fields(cls))]
            lines.extend(_class_block(cls_id, cls.__name__, members))

        relations: list[str] = []
        if saga_context is not None:
            relations.append(f"saga --> {saga_context} : context")
        for base, base_id in contexts.items():
            for derived, derived_id in contexts.items():
                if derived is not base and issubclass(derived, base):
                    relations.append(f"{base_id} <|-- {derived_id}")
        for entry in self._entries:
            relations.append(f"saga *-- {entry.primary.id} : step {entry.number}")
            if entry.fallback is not None:
                fallback = entry.steps[1]
                relations.append(f"saga *-- {fallback.id} : step {entry.number} fallback")
                relations.append(f"{entry.primary.id} ..> {fallback.id} : fallback")
        for entry in self._entries:
            for step in entry.steps:
                uses = step.type.context_type or saga.context_type
                if uses is not None:
                    relations.append(f"{step.id} ..> {contexts[uses]} : uses")
                response = step.type.response_type
                if response is not None:
                    relations.append(f"{step.id} --> {responses[response]} : returns")
        lines.extend(_INDENT + line for line in relations)
        return _join(lines)

    # -- state diagram ---------------------------------------------------------------

    def state_diagram(self, history: typing.Iterable[SagaLogEntry] | None = None) -> str:
        """A ``stateDiagram-v2`` of the saga's steps, failures and compensations.

        ``[*]`` leads through the steps to ``Completed``. A failing step leads
        to the compensation of the step before it (``compensate <name>``
        states, in reverse order) and on to ``Failed``, or to ``Compensation
        failed`` if a compensation failed. A `Fallback` primary leads to its
        fallback when it fails (and ``[*]``/the previous step leads straight
        to it when the breaker is open).

        With ``history``, the step log of one run (`SagaLogEntry` rows, as
        ``storage.get_step_history`` returns them), the states that run
        reached are marked with ``classDef``/``class``: steps whose action
        ``completed``, ``failed`` or is ``running``, compensations that are
        ``compensated`` or ``failed``, and the end state the run reached. A
        primary whose fallback ran counts as failed.
        """
        lines = ["stateDiagram-v2"]
        for entry in self._entries:
            for step in entry.steps:
                lines.append(f'{_INDENT}state "{step.label}" as {step.id}')
        compensable = self._entries[:-1]
        for entry in compensable:
            for step in entry.steps:
                lines.append(f'{_INDENT}state "compensate {step.label}" as {step.comp_id}')
        if compensable:
            lines.append(f'{_INDENT}state "Compensation failed" as CompensationFailed')

        forward: list[str] = []
        failures: list[str] = []
        previous: tuple[str, ...] = ("[*]",)
        for position, entry in enumerate(self._entries):
            first_edge = " : completed" if position else ""
            if position:
                failed_target: tuple[str, ...] = tuple(
                    step.comp_id for step in self._entries[position - 1].steps
                )
            else:
                failed_target = ("Failed",)
            primary = entry.primary
            for source in previous:
                forward.append(f"{source} --> {primary.id}{first_edge}")
            if entry.fallback is None:
                failures.extend(f"{primary.id} --> {target} : failed" for target in failed_target)
            else:
                fallback = entry.steps[1]
                if entry.fallback.circuit_breaker is not None:
                    forward.extend(
                        f"{source} --> {fallback.id} : breaker open" for source in previous
                    )
                trigger = _exception_trigger(entry.fallback)
                forward.append(f"{primary.id} --> {fallback.id} : {_text(trigger)}")
                if entry.fallback.failure_exceptions:
                    failures.extend(
                        f"{primary.id} --> {target} : other error" for target in failed_target
                    )
                failures.extend(f"{fallback.id} --> {target} : failed" for target in failed_target)
            previous = tuple(step.id for step in entry.steps)
        forward.extend(f"{source} --> Completed : completed" for source in previous)

        compensations: list[str] = []
        for position in range(len(compensable) - 1, 0, -1):
            for later in compensable[position].steps:
                for earlier in compensable[position - 1].steps:
                    compensations.append(f"{later.comp_id} --> {earlier.comp_id}")
        if compensable:
            for step in compensable[0].steps:
                compensations.append(f"{step.comp_id} --> Failed : all compensated")
                compensations.append(
                    f"{step.comp_id} --> CompensationFailed : a compensation failed"
                )

        ends = ["Completed --> [*]", "Failed --> [*]"]
        if compensable:
            ends.append("CompensationFailed --> [*]")
        lines.extend(_INDENT + line for line in (*forward, *failures, *compensations, *ends))

        if history is not None:
            marks = self._marks(history)
            classes: dict[str, list[str]] = {}
            for entry in self._entries:
                for step in entry.steps:
                    if step.name in marks.act:
                        classes.setdefault(marks.act[step.name], []).append(step.id)
            for entry in compensable:
                for step in entry.steps:
                    if step.name in marks.compensation:
                        classes.setdefault(marks.compensation[step.name], []).append(step.comp_id)
            end_state = {
                "completed": "Completed",
                "failed": "Failed",
                "compensation_failed": "CompensationFailed",
            }.get(marks.outcome)
            if end_state is not None:
                classes.setdefault(_OUTCOMES[marks.outcome][1], []).append(end_state)
            lines.extend(_INDENT + line for line in _class_statements(classes))
        return _join(lines)

    # -- one run ----------------------------------------------------------------------

    def run_diagram(self, history: typing.Iterable[SagaLogEntry]) -> str:
        """A ``flowchart LR`` of one run, for status pages and endpoints.

        ``history`` is the run's step log (`SagaLogEntry` rows, as
        ``storage.get_step_history`` returns them). The saga's name leads
        through the steps to an end node naming the run's outcome (Completed,
        Failed, Compensation failed, Compensating, Running or Pending). Each
        step is labelled and styled with its status in this run: ``completed``,
        ``compensated``, ``failed`` (its action or its compensation failed; a
        primary whose fallback ran counts as failed), ``running``, or
        ``pending`` (not reached).
        """
        marks = self._marks(history)
        labels = {
            "completed": "completed",
            "running": "running",
            "compensated": "compensated",
            "failed": "failed",
            "pending": "not reached",
        }
        lines = ["flowchart LR", f'{_INDENT}saga(["{_text(self._saga.name)}"])']
        classes: dict[str, list[str]] = {}
        for entry in self._entries:
            for step in entry.steps:
                status = marks.step_status(step.name)
                label = labels[status]
                if step.name in marks.compensation and status == "failed":
                    label = "compensation failed"
                lines.append(f'{_INDENT}{step.id}["{step.label}<br/>{label}"]')
                classes.setdefault(status, []).append(step.id)
        outcome_label, outcome_class = _OUTCOMES[marks.outcome]
        lines.append(f'{_INDENT}outcome(["{outcome_label}"])')
        classes.setdefault(outcome_class, []).append("outcome")

        previous: tuple[str, ...] = ("saga",)
        for entry in self._entries:
            for source in previous:
                lines.append(f"{_INDENT}{source} --> {entry.primary.id}")
            if entry.fallback is not None:
                lines.append(f"{_INDENT}{entry.primary.id} -.->|fallback| {entry.steps[1].id}")
            previous = tuple(step.id for step in entry.steps)
        lines.extend(f"{_INDENT}{source} --> outcome" for source in previous)
        lines.extend(_INDENT + line for line in _class_statements(classes))
        return _join(lines)

    # -- helpers --------------------------------------------------------------------

    def _context_name(self) -> str:
        return _name_of(self._saga.context_type) or "context"

    def _marks(self, history: typing.Iterable[SagaLogEntry]) -> _Marks:
        entries = sorted(history, key=lambda e: e.seq)
        saga_ids = {e.saga_id for e in entries}
        if len(saga_ids) > 1:
            raise ValueError(
                f"history mixes {len(saga_ids)} saga runs; pass the step log of one saga"
            )
        known = {step.name for entry in self._entries for step in entry.steps}
        act: dict[str, str] = {}
        compensation: dict[str, str] = {}
        for e in entries:
            if e.step_name not in known:
                continue  # a step the current definition no longer has
            status = SagaStepStatus(e.status)
            if e.action == "act":
                act[e.step_name] = {
                    SagaStepStatus.COMPLETED: "completed",
                    SagaStepStatus.FAILED: "failed",
                }.get(status, "running")
            elif status in (SagaStepStatus.COMPENSATED, SagaStepStatus.FAILED):
                compensation[e.step_name] = (
                    "compensated" if status == SagaStepStatus.COMPENSATED else "failed"
                )
        outcome = self._outcome(act, compensation)
        for entry in self._entries:
            if entry.fallback is not None:
                primary, fallback = entry.steps
                if fallback.name in act and primary.name not in act:
                    act[primary.name] = "failed"  # the engine ran the fallback instead
        return _Marks(act, compensation, outcome)

    def _outcome(self, act: dict[str, str], compensation: dict[str, str]) -> str:
        """Where the run stands (a key of _OUTCOMES), from its recorded statuses."""
        if "failed" in act.values():
            done = [name for name, status in act.items() if status == "completed"]
            if any(name not in compensation for name in done):
                return "compensating"
            return "compensation_failed" if "failed" in compensation.values() else "failed"
        if all(
            any(act.get(step.name) == "completed" for step in entry.steps)
            for entry in self._entries
        ):
            return "completed"
        return "running" if act else "pending"


# -- rendering helpers ---------------------------------------------------------------


def _join(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def _name_of(cls: type[typing.Any] | None) -> str | None:
    return _text(cls.__name__) if cls is not None else None


def _seq_act(step: _Step, context: str) -> list[str]:
    response = _name_of(step.type.response_type) or "response"
    return [f"saga->>{step.id}: act({context})", f"{step.id}-->>saga: {response}"]


def _seq_compensate(entry: _Entry, context: str) -> list[str]:
    def calls(step: _Step) -> list[str]:
        return [f"saga->>{step.id}: compensate({context})", f"{step.id}-->>saga: compensated"]

    if entry.fallback is None:
        return calls(entry.primary)
    primary, fallback = entry.steps
    return [
        f"alt {primary.label} completed",
        *(_INDENT + line for line in calls(primary)),
        f"else {fallback.label} completed",
        *(_INDENT + line for line in calls(fallback)),
        "end",
    ]


def _exception_trigger(fallback: Fallback) -> str:
    if not fallback.failure_exceptions:
        return "fails"
    return "raises " + " or ".join(exc.__name__ for exc in fallback.failure_exceptions)


def _fallback_trigger(fallback: Fallback, primary_name: str) -> str:
    trigger = f"{primary_name} {_exception_trigger(fallback)}"
    if fallback.circuit_breaker is not None:
        trigger += " or breaker open"
    return trigger


def _class_block(class_id: str, label: str, members: list[str]) -> list[str]:
    return [
        f'{_INDENT}class {class_id}["{_text(label)}"] {{',
        *(_INDENT * 2 + member for member in members),
        f"{_INDENT}}}",
    ]


def _member(name: str, type_text: str) -> str:
    return f"{_text(name)}: {_text(type_text, _SAFE_IN_MEMBERS)}"


def _class_statements(classes: dict[str, list[str]]) -> list[str]:
    used = [name for name in _STYLES if name in classes]
    return [
        *(f"classDef {name} {_STYLES[name]}" for name in used),
        *(f"class {','.join(classes[name])} {name}" for name in used),
    ]


# -- fields and type names -----------------------------------------------------------


def _fields(cls: type[typing.Any]) -> list[tuple[str, str]]:
    """(name, type text) of a context's or response's fields, in declaration order."""
    if issubclass(cls, pydantic.BaseModel):
        return [(name, _type_name(field.annotation)) for name, field in cls.model_fields.items()]
    hints = _hints(cls)
    if dataclasses.is_dataclass(cls):
        return [(f.name, _type_name(hints.get(f.name, f.type))) for f in dataclasses.fields(cls)]
    return [
        (name, _type_name(hint))
        for name, hint in hints.items()
        if not name.startswith("_") and typing.get_origin(hint) is not typing.ClassVar
    ]


def _hints(cls: type[typing.Any]) -> dict[str, typing.Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # names only resolvable where the class was defined
        hints: dict[str, typing.Any] = {}
        for klass in reversed(cls.__mro__):
            hints.update(getattr(klass, "__annotations__", {}))
        return hints


def _type_name(tp: typing.Any) -> str:
    """A short Python-style spelling of a type annotation: ``list[str]``, ``int | None``."""
    if tp is None or tp is type(None):
        return "None"
    if isinstance(tp, str):
        return tp
    if isinstance(tp, typing.ForwardRef):
        return tp.__forward_arg__
    if tp is typing.Any:
        return "Any"
    if tp is Ellipsis:
        return "..."
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(_type_name(arg) for arg in args)
    if origin is typing.Literal:
        return f"Literal[{', '.join(repr(arg) for arg in args)}]"
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is not None:
        name = getattr(origin, "__name__", None) or str(origin).replace("typing.", "")
        if not args:
            return str(name)
        inner = ", ".join(
            "[" + ", ".join(_type_name(a) for a in arg) + "]"
            if isinstance(arg, list)
            else _type_name(arg)
            for arg in args
        )
        return f"{name}[{inner}]"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")
