"""Mermaid diagrams of sagas: exact output, fallbacks, run marking, ids, real-parser validity."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import shutil
import subprocess
import typing
import uuid
from pathlib import Path

import pydantic
import pytest

from cqrs.response import Response
from cqrs.saga.fallback import Fallback
from cqrs.saga.mermaid import SagaMermaid
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStepStatus
from cqrs.saga.storage.models import SagaLogEntry

# -- a small saga, one with a fallback, one with awkward names -----------------------


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    amount: float
    reservation_id: str | None = None
    payment_id: str | None = None


class Reserved(Response):
    reservation_id: str


class Charged(Response):
    payment_id: str
    amount: float


class ReserveInventory(SagaStepHandler[OrderContext, Reserved]):
    name = "reserve-inventory"

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Reserved]:
        return self._generate_step_result(Reserved(reservation_id="r-1"))


class ChargeCard(SagaStepHandler[OrderContext, Charged]):
    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Charged]:
        return self._generate_step_result(Charged(payment_id="p-1", amount=context.amount))


class ChargeCardOffline(SagaStepHandler[OrderContext, Charged]):
    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Charged]:
        return self._generate_step_result(Charged(payment_id="offline-1", amount=context.amount))


class ClosedBreaker:
    def is_open(self, step_name: str) -> bool:
        return False

    async def call(
        self, step_name: str, func: typing.Callable[[], typing.Awaitable[typing.Any]]
    ) -> typing.Any:
        return await func()


class OrderSaga(Saga[OrderContext]):
    steps = [ReserveInventory, ChargeCard]


class FallbackOrderSaga(Saga[OrderContext]):
    steps = [
        ReserveInventory,
        Fallback(
            ChargeCard,
            ChargeCardOffline,
            failure_exceptions=(ConnectionError,),
            circuit_breaker=ClosedBreaker(),
        ),
    ]


AWKWARD_NAMES = [
    'pay; "card" #1 <b>x</b> {a} [b] |c| %%d `e` & $f*',
    "end",
    "a-->b: c",
    "réservé ✓",
    "1st step",
    "a b",
    "a-b",
    "class",
    "it's 100%",
]


class _AwkwardStep(SagaStepHandler[OrderContext, Reserved]):
    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Reserved]:
        return self._generate_step_result(Reserved(reservation_id="r"))


def _awkward_step(number: int) -> type[_AwkwardStep]:
    return type(f"Awkward{number}", (_AwkwardStep,), {"name": AWKWARD_NAMES[number]})


_AWKWARD = [_awkward_step(number) for number in range(len(AWKWARD_NAMES))]


class AwkwardSaga(Saga[OrderContext]):
    name = "awkward saga; #1"
    steps = [
        Fallback(_AWKWARD[0], _AWKWARD[1], circuit_breaker=ClosedBreaker()),
        *_AWKWARD[2:5],
        Fallback(_AWKWARD[5], _AWKWARD[6]),
        *_AWKWARD[7:],
    ]


class LoneSaga(Saga):  # type: ignore[type-arg]  # no context type declared
    steps = [ChargeCard]


SAGA_ID = uuid.UUID(int=1)


def history(*rows: tuple[str, str, str], saga_id: uuid.UUID = SAGA_ID) -> list[SagaLogEntry]:
    """Step log rows (step name, "act"/"compensate", status) in the order written."""
    return [
        SagaLogEntry(
            saga_id=saga_id,
            step_name=step,
            action=typing.cast(typing.Literal["act", "compensate"], action),
            status=SagaStepStatus(status),
            timestamp=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
            seq=seq,
        )
        for seq, (step, action, status) in enumerate(rows, start=1)
    ]


FAILED_RUN = history(
    ("reserve-inventory", "act", "completed"),
    ("ChargeCard", "act", "failed"),
    ("reserve-inventory", "compensate", "compensated"),
)
FALLBACK_RUN = history(
    ("reserve-inventory", "act", "completed"),
    ("ChargeCardOffline", "act", "completed"),
)


# -- exact output for the 2-step saga ---------------------------------------------------

ORDER_SEQUENCE = """\
sequenceDiagram
    participant saga as OrderSaga
    participant step_reserve_inventory as reserve-inventory
    participant step_ChargeCard as ChargeCard
    alt all steps complete
        saga->>step_reserve_inventory: act(OrderContext)
        step_reserve_inventory-->>saga: Reserved
        saga->>step_ChargeCard: act(OrderContext)
        step_ChargeCard-->>saga: Charged
        Note over saga: Completed
    else reserve-inventory fails
        saga->>step_reserve_inventory: act(OrderContext)
        step_reserve_inventory--xsaga: error
        Note over saga: Failed
    else ChargeCard fails
        saga->>step_ChargeCard: act(OrderContext)
        step_ChargeCard--xsaga: error
        saga->>step_reserve_inventory: compensate(OrderContext)
        step_reserve_inventory-->>saga: compensated
        Note over saga: Failed
    end
"""

ORDER_CLASSES = """\
classDiagram
    class saga["OrderSaga"] {
        <<saga>>
    }
    class step_reserve_inventory["ReserveInventory"] {
        <<step>>
        name = reserve-inventory
        act(OrderContext) Reserved
        compensate(OrderContext)
    }
    class step_ChargeCard["ChargeCard"] {
        <<step>>
        act(OrderContext) Charged
        compensate(OrderContext)
    }
    class ctx_OrderContext["OrderContext"] {
        <<context>>
        order_id: str
        amount: float
        reservation_id: str | None
        payment_id: str | None
    }
    class resp_Reserved["Reserved"] {
        <<response>>
        reservation_id: str
    }
    class resp_Charged["Charged"] {
        <<response>>
        payment_id: str
        amount: float
    }
    saga --> ctx_OrderContext : context
    saga *-- step_reserve_inventory : step 1
    saga *-- step_ChargeCard : step 2
    step_reserve_inventory ..> ctx_OrderContext : uses
    step_reserve_inventory --> resp_Reserved : returns
    step_ChargeCard ..> ctx_OrderContext : uses
    step_ChargeCard --> resp_Charged : returns
"""

ORDER_STATES = """\
stateDiagram-v2
    state "reserve-inventory" as step_reserve_inventory
    state "ChargeCard" as step_ChargeCard
    state "compensate reserve-inventory" as comp_reserve_inventory
    state "Compensation failed" as CompensationFailed
    [*] --> step_reserve_inventory
    step_reserve_inventory --> step_ChargeCard : completed
    step_ChargeCard --> Completed : completed
    step_reserve_inventory --> Failed : failed
    step_ChargeCard --> comp_reserve_inventory : failed
    comp_reserve_inventory --> Failed : all compensated
    comp_reserve_inventory --> CompensationFailed : a compensation failed
    Completed --> [*]
    Failed --> [*]
    CompensationFailed --> [*]
"""

ORDER_FAILED_RUN_MARKS = """\
    classDef completed fill:#d4edda,stroke:#2e7d32,color:#1b5e20
    classDef compensated fill:#fff3cd,stroke:#f0ad4e,color:#7a4f01
    classDef failed fill:#f8d7da,stroke:#c62828,color:#7f1d1d
    class step_reserve_inventory completed
    class comp_reserve_inventory compensated
    class step_ChargeCard,Failed failed
"""

ORDER_FAILED_RUN = """\
flowchart LR
    saga(["OrderSaga"])
    step_reserve_inventory["reserve-inventory<br/>compensated"]
    step_ChargeCard["ChargeCard<br/>failed"]
    outcome(["Failed"])
    saga --> step_reserve_inventory
    step_reserve_inventory --> step_ChargeCard
    step_ChargeCard --> outcome
    classDef compensated fill:#fff3cd,stroke:#f0ad4e,color:#7a4f01
    classDef failed fill:#f8d7da,stroke:#c62828,color:#7f1d1d
    class step_reserve_inventory compensated
    class step_ChargeCard,outcome failed
"""


def test_sequence_exact() -> None:
    assert SagaMermaid(OrderSaga).sequence() == ORDER_SEQUENCE


def test_class_diagram_exact() -> None:
    assert SagaMermaid(OrderSaga).class_diagram() == ORDER_CLASSES


def test_state_diagram_exact() -> None:
    assert SagaMermaid(OrderSaga).state_diagram() == ORDER_STATES


def test_state_diagram_with_history_exact() -> None:
    assert SagaMermaid(OrderSaga).state_diagram(FAILED_RUN) == ORDER_STATES + ORDER_FAILED_RUN_MARKS


def test_run_diagram_exact() -> None:
    assert SagaMermaid(OrderSaga).run_diagram(FAILED_RUN) == ORDER_FAILED_RUN


def test_saga_instance_draws_like_its_class() -> None:
    assert SagaMermaid(OrderSaga()).sequence() == ORDER_SEQUENCE
    assert SagaMermaid(OrderSaga()).saga is OrderSaga


def test_rejects_what_is_not_a_saga() -> None:
    with pytest.raises(TypeError, match="Saga subclass or instance"):
        SagaMermaid(ChargeCard)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no steps"):
        SagaMermaid(Saga)


# -- fallbacks ---------------------------------------------------------------------------


def test_fallback_in_sequence() -> None:
    text = SagaMermaid(FallbackOrderSaga).sequence()
    assert "    participant step_ChargeCard as ChargeCard\n" in text
    assert "    participant step_ChargeCardOffline as ChargeCardOffline\n" in text
    assert (
        "        alt ChargeCard completes\n"
        "            saga->>step_ChargeCard: act(OrderContext)\n"
        "            step_ChargeCard-->>saga: Charged\n"
        "        else ChargeCard raises ConnectionError or breaker open\n"
        "            saga->>step_ChargeCardOffline: act(OrderContext)\n"
        "            step_ChargeCardOffline-->>saga: Charged\n"
        "        end\n"
    ) in text
    assert "    else ChargeCard and fallback ChargeCardOffline fail\n" in text


def test_fallback_compensation_names_whichever_ran() -> None:
    class Ship(SagaStepHandler[OrderContext, Reserved]):
        async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Reserved]:
            return self._generate_step_result(Reserved(reservation_id="s"))

    class ShippingSaga(Saga[OrderContext]):
        steps = [Fallback(ChargeCard, ChargeCardOffline), Ship]

    text = SagaMermaid(ShippingSaga).sequence()
    assert (
        "    else Ship fails\n"
        "        saga->>step_Ship: act(OrderContext)\n"
        "        step_Ship--xsaga: error\n"
        "        alt ChargeCard completed\n"
        "            saga->>step_ChargeCard: compensate(OrderContext)\n"
        "            step_ChargeCard-->>saga: compensated\n"
        "        else ChargeCardOffline completed\n"
        "            saga->>step_ChargeCardOffline: compensate(OrderContext)\n"
        "            step_ChargeCardOffline-->>saga: compensated\n"
        "        end\n"
        "        Note over saga: Failed\n"
    ) in text
    states = SagaMermaid(ShippingSaga).state_diagram()
    assert "    step_ChargeCard --> step_ChargeCardOffline : fails\n" in states
    assert "    step_Ship --> comp_ChargeCard : failed\n" in states
    assert "    step_Ship --> comp_ChargeCardOffline : failed\n" in states
    assert "other error" not in states  # with no failure_exceptions every error falls back
    assert "breaker open" not in states


def test_fallback_in_class_diagram() -> None:
    text = SagaMermaid(FallbackOrderSaga).class_diagram()
    assert '    class step_ChargeCard["ChargeCard"] {\n        <<step>>\n' in text
    assert '    class step_ChargeCardOffline["ChargeCardOffline"] {\n        <<fallback>>\n' in text
    assert "    saga *-- step_ChargeCard : step 2\n" in text
    assert "    saga *-- step_ChargeCardOffline : step 2 fallback\n" in text
    assert "    step_ChargeCard ..> step_ChargeCardOffline : fallback\n" in text
    assert "    step_ChargeCardOffline --> resp_Charged : returns\n" in text
    assert text.count('class resp_Charged["Charged"]') == 1  # shared response drawn once


def test_fallback_in_state_diagram() -> None:
    text = SagaMermaid(FallbackOrderSaga).state_diagram()
    for line in (
        "step_reserve_inventory --> step_ChargeCard : completed",
        "step_reserve_inventory --> step_ChargeCardOffline : breaker open",
        "step_ChargeCard --> step_ChargeCardOffline : raises ConnectionError",
        "step_ChargeCard --> Completed : completed",
        "step_ChargeCardOffline --> Completed : completed",
        "step_ChargeCard --> comp_reserve_inventory : other error",
        "step_ChargeCardOffline --> comp_reserve_inventory : failed",
    ):
        assert f"    {line}\n" in text


def test_fallback_run_marks_primary_failed_and_fallback_completed() -> None:
    diagrams = SagaMermaid(FallbackOrderSaga)
    states = diagrams.state_diagram(FALLBACK_RUN)
    assert "    class step_reserve_inventory,step_ChargeCardOffline,Completed completed\n" in states
    assert "    class step_ChargeCard failed\n" in states
    run = diagrams.run_diagram(FALLBACK_RUN)
    assert '    step_ChargeCard["ChargeCard<br/>failed"]\n' in run
    assert '    step_ChargeCardOffline["ChargeCardOffline<br/>completed"]\n' in run
    assert "    step_ChargeCard -.->|fallback| step_ChargeCardOffline\n" in run
    assert '    outcome(["Completed"])\n' in run
    assert "    class step_reserve_inventory,step_ChargeCardOffline,outcome completed\n" in run


# -- marking one run ---------------------------------------------------------------------


def _classes(text: str) -> dict[str, set[str]]:
    """``class a,b name`` statements as {name: {a, b}}."""
    found: dict[str, set[str]] = {}
    for ids, name in re.findall(r"^    class ([\w,]+) (\w+)$", text, flags=re.MULTILINE):
        found.setdefault(name, set()).update(ids.split(","))
    return found


@pytest.mark.parametrize(
    ("rows", "states", "run", "outcome"),
    [
        pytest.param(
            [],
            {},
            {"pending": {"step_reserve_inventory", "step_ChargeCard", "outcome"}},
            "Pending",
            id="not started",
        ),
        pytest.param(
            [("reserve-inventory", "act", "completed")],
            {"completed": {"step_reserve_inventory"}},
            {
                "completed": {"step_reserve_inventory"},
                "running": {"outcome"},
                "pending": {"step_ChargeCard"},
            },
            "Running",
            id="running",
        ),
        pytest.param(
            [("reserve-inventory", "act", "completed"), ("ChargeCard", "act", "completed")],
            {"completed": {"step_reserve_inventory", "step_ChargeCard", "Completed"}},
            {"completed": {"step_reserve_inventory", "step_ChargeCard", "outcome"}},
            "Completed",
            id="completed",
        ),
        pytest.param(
            [("reserve-inventory", "act", "failed")],
            {"failed": {"step_reserve_inventory", "Failed"}},
            {"failed": {"step_reserve_inventory", "outcome"}, "pending": {"step_ChargeCard"}},
            "Failed",
            id="first step failed",
        ),
        pytest.param(
            [("reserve-inventory", "act", "completed"), ("ChargeCard", "act", "failed")],
            {"completed": {"step_reserve_inventory"}, "failed": {"step_ChargeCard"}},
            {
                "completed": {"step_reserve_inventory"},
                "compensated": {"outcome"},
                "failed": {"step_ChargeCard"},
            },
            "Compensating",
            id="compensating",
        ),
        pytest.param(
            [
                ("reserve-inventory", "act", "completed"),
                ("ChargeCard", "act", "failed"),
                ("reserve-inventory", "compensate", "failed"),
            ],
            {
                "completed": {"step_reserve_inventory"},
                "failed": {"step_ChargeCard", "comp_reserve_inventory", "CompensationFailed"},
            },
            {"failed": {"step_reserve_inventory", "step_ChargeCard", "outcome"}},
            "Compensation failed",
            id="compensation failed",
        ),
    ],
)
def test_history_marking(
    rows: list[tuple[str, str, str]],
    states: dict[str, set[str]],
    run: dict[str, set[str]],
    outcome: str,
) -> None:
    diagrams = SagaMermaid(OrderSaga)
    log = history(*rows)
    assert _classes(diagrams.state_diagram(log)) == states
    run_text = diagrams.run_diagram(log)
    assert _classes(run_text) == run
    assert f'    outcome(["{outcome}"])\n' in run_text


def test_run_diagram_labels_a_failed_compensation() -> None:
    log = history(
        ("reserve-inventory", "act", "completed"),
        ("ChargeCard", "act", "failed"),
        ("reserve-inventory", "compensate", "failed"),
    )
    text = SagaMermaid(OrderSaga).run_diagram(log)
    assert '    step_reserve_inventory["reserve-inventory<br/>compensation failed"]\n' in text


def test_history_uses_the_latest_entry_and_ignores_unknown_steps() -> None:
    log = history(
        ("reserve-inventory", "act", "completed"),
        ("ChargeCard", "act", "failed"),
        ("reserve-inventory", "compensate", "failed"),
        ("reserve-inventory", "compensate", "compensated"),  # a recovery retry succeeded
        ("renamed-step", "act", "completed"),
    )
    assert list(reversed(log)) != log
    for rows in (log, list(reversed(log))):  # ordered by seq, not by list position
        assert SagaMermaid(OrderSaga).run_diagram(rows) == ORDER_FAILED_RUN


def test_history_of_several_runs_is_refused() -> None:
    log = FAILED_RUN + history(("ChargeCard", "act", "completed"), saga_id=uuid.UUID(int=2))
    with pytest.raises(ValueError, match="one saga"):
        SagaMermaid(OrderSaga).run_diagram(log)


def test_one_step_saga_without_context_type_and_a_running_step() -> None:
    diagrams = SagaMermaid(LoneSaga)
    assert "        saga->>step_ChargeCard: act(context)\n" in diagrams.sequence()
    classes = diagrams.class_diagram()
    assert " : context\n" not in classes  # the saga declares no context type
    assert "    step_ChargeCard ..> ctx_OrderContext : uses\n" in classes  # the step does
    running = history(("ChargeCard", "act", "started"))
    states = diagrams.state_diagram(running)
    assert "compensate" not in states and "CompensationFailed" not in states
    assert "    step_ChargeCard --> Failed : failed\n" in states
    assert _classes(states) == {"running": {"step_ChargeCard"}}
    run = diagrams.run_diagram(running)
    assert '    step_ChargeCard["ChargeCard<br/>running"]\n' in run
    assert _classes(run) == {"running": {"step_ChargeCard", "outcome"}}


# -- ids and labels ----------------------------------------------------------------------

_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL = re.compile(r"^[A-Za-z0-9 _.,!?/@+='#;-]*$")  # entity codes use only '#', digits, ';'


def _decode(label: str) -> str:
    return re.sub(r"#(\d+);", lambda match: chr(int(match.group(1))), label)


def test_ids_are_sanitised_and_names_kept_in_labels() -> None:
    diagrams = SagaMermaid(AwkwardSaga)
    states = diagrams.state_diagram()
    declared = re.findall(r'^    state "(.*)" as (\S+)$', states, flags=re.MULTILINE)
    steps = {ident: label for label, ident in declared if ident.startswith("step_")}
    assert len(steps) == len(AWKWARD_NAMES)
    assert all(_ID.match(ident) for ident, _ in steps.items())
    assert all(_LABEL.match(label) for label in steps.values())
    assert sorted(_decode(label) for label in steps.values()) == sorted(AWKWARD_NAMES)
    assert steps["step_a_b"] == "a b"
    assert steps["step_a_b_2"] == "a-b"  # same slug, numbered
    assert steps["step_end"] == "end"  # a Mermaid keyword, safe behind the prefix
    assert steps["step_1st_step"] == "1st step"

    sequence = diagrams.sequence()
    participants = re.findall(r"^    participant (\S+) as (.*)$", sequence, flags=re.MULTILINE)
    assert participants[0] == ("saga", "awkward saga#59; #35;1")
    assert dict(participants[1:]) == steps
    run = diagrams.run_diagram([])
    nodes = dict(re.findall(r'^    (step_\w+)\["(.*)<br/>not reached"\]$', run, flags=re.MULTILINE))
    assert nodes == steps

    for text in (sequence, diagrams.class_diagram(), states, run):
        for forbidden in ('"card"', "<b>", "{a}", "%%", "`", "réservé", "a-->b"):
            assert forbidden not in text


def test_field_types_are_spelled_like_python() -> None:
    class Settings(pydantic.BaseModel):
        tags: dict[str, typing.Any] = {}
        mode: typing.Literal["fast", "safe"] = "fast"
        sizes: tuple[int, ...] = ()
        limit: typing.Optional[typing.List[int]] = None  # noqa: UP006, UP045
        hook: typing.Callable[[int], str] | None = None
        weight: typing.Annotated[float, "kg"] = 0.0

    class Configure(SagaStepHandler[Settings, Response]):
        async def act(self, context: Settings) -> SagaStepResult[Settings, Response]:
            return self._generate_step_result(Response())

    class SettingsSaga(Saga[Settings]):
        steps = [Configure]

    text = SagaMermaid(SettingsSaga).class_diagram()
    assert (
        '    class ctx_Settings["Settings"] {\n'
        "        <<context>>\n"
        "        tags: dict[str, Any]\n"
        "        mode: Literal['fast', 'safe']\n"
        "        sizes: tuple[int, ...]\n"
        "        limit: list[int] | None\n"
        "        hook: Callable[[int], str] | None\n"
        "        weight: float\n"
        "    }\n"
    ) in text
    assert '    class resp_Response["Response"] {\n        <<response>>\n    }\n' in text


# -- validity: the real Mermaid parser and renderer ------------------------------------------

CHECKER = Path(__file__).parent / "mermaid_check"
MIN_NODE = (20, 19)


def all_diagrams() -> dict[str, str]:
    """Every kind of diagram, for every test saga, with and without a run's history."""
    runs = {
        "failed": FAILED_RUN,
        "fallback": FALLBACK_RUN,
        "awkward": history(
            (AWKWARD_NAMES[1], "act", "completed"),
            (AWKWARD_NAMES[2], "act", "completed"),
            (AWKWARD_NAMES[3], "act", "failed"),
            (AWKWARD_NAMES[2], "compensate", "compensated"),
            (AWKWARD_NAMES[1], "compensate", "failed"),
        ),
    }
    diagrams: dict[str, str] = {}
    for key, saga, run in (
        ("order", OrderSaga, runs["failed"]),
        ("fallback", FallbackOrderSaga, runs["fallback"]),
        ("awkward", AwkwardSaga, runs["awkward"]),
        ("lone", LoneSaga, history(("ChargeCard", "act", "started"))),
    ):
        mermaid = SagaMermaid(saga)
        diagrams[f"{key}.sequence"] = mermaid.sequence()
        diagrams[f"{key}.class_diagram"] = mermaid.class_diagram()
        diagrams[f"{key}.state_diagram"] = mermaid.state_diagram()
        diagrams[f"{key}.state_diagram_run"] = mermaid.state_diagram(run)
        diagrams[f"{key}.run_diagram"] = mermaid.run_diagram(run)
        diagrams[f"{key}.run_diagram_pending"] = mermaid.run_diagram([])
    return diagrams


DIAGRAM_TYPES = {
    "sequence": "sequence",
    "class_diagram": "classDiagram",
    "state_diagram": "stateDiagram",
    "state_diagram_run": "stateDiagram",
    "run_diagram": "flowchart-v2",
    "run_diagram_pending": "flowchart-v2",
}


def _node_version(node: str) -> tuple[int, ...]:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
    return tuple(int(part) for part in re.findall(r"\d+", out)[:2])


@pytest.fixture(scope="module")
def mermaid_results() -> dict[str, typing.Any]:
    """Run tests/mermaid_check/check.mjs (mermaid + jsdom in Node) over `all_diagrams`.

    Skips unless ``node`` (>= 20.19) is on PATH and the checker's npm packages are
    installed: ``npm install --prefix tests/mermaid_check`` (node_modules is git-ignored),
    or set ``CQRS_MERMAID_NPM_INSTALL=1`` to let this fixture run that install.
    """
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; the Mermaid validity check needs Node.js >= 20.19")
    if _node_version(node) < MIN_NODE:
        pytest.skip(f"node {_node_version(node)} is older than {MIN_NODE} (needed by jsdom)")
    installed = all(
        (CHECKER / "node_modules" / pkg / "package.json").exists() for pkg in ("mermaid", "jsdom")
    )
    if not installed and os.environ.get("CQRS_MERMAID_NPM_INSTALL") == "1":
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed, so the Mermaid checker cannot be installed")
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(CHECKER)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            pytest.skip(f"npm install for the Mermaid checker failed: {done.stderr[-2000:]}")
        installed = True
    if not installed:
        pytest.skip(
            "Mermaid checker not installed: run `npm install --prefix tests/mermaid_check` "
            "(or set CQRS_MERMAID_NPM_INSTALL=1) to check diagrams with the real Mermaid parser"
        )
    done = subprocess.run(
        [node, str(CHECKER / "check.mjs")],
        input=json.dumps(all_diagrams()),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in (0, 1), f"Mermaid checker could not run:\n{done.stderr}"
    output: dict[str, typing.Any] = json.loads(done.stdout)
    assert output["mermaid"].startswith("11.")
    results: dict[str, typing.Any] = output["results"]
    return results


def _node_classes(result: dict[str, typing.Any]) -> dict[str, set[str]]:
    """Rendered node text -> the Mermaid classes on that node (run marking only)."""
    marks = {"completed", "running", "compensated", "failed", "pending"}
    return {node["text"]: set(node["classes"]) & marks for node in result["nodes"] if node["text"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(all_diagrams()))
def test_mermaid_parses_and_renders(name: str, mermaid_results: dict[str, typing.Any]) -> None:
    result = mermaid_results[name]
    assert result["ok"], f"{name}: Mermaid {result['stage']} failed: {result['error']}"
    assert result["diagramType"] == DIAGRAM_TYPES[name.split(".")[1]]


@pytest.mark.slow
def test_mermaid_applies_the_run_marking(mermaid_results: dict[str, typing.Any]) -> None:
    states = _node_classes(mermaid_results["order.state_diagram_run"])
    assert states["reserve-inventory"] == {"completed"}
    assert states["compensate reserve-inventory"] == {"compensated"}
    assert states["ChargeCard"] == {"failed"}
    assert states["Failed"] == {"failed"}
    assert states["Completed"] == set()
    run = _node_classes(mermaid_results["order.run_diagram"])
    assert run == {
        "OrderSaga": set(),
        "reserve-inventory compensated": {"compensated"},
        "ChargeCard failed": {"failed"},
        "Failed": {"failed"},
    }
    assert _node_classes(mermaid_results["lone.state_diagram_run"])["ChargeCard"] == {"running"}
    fallback = _node_classes(mermaid_results["fallback.run_diagram"])
    assert fallback["ChargeCard failed"] == {"failed"}
    assert fallback["ChargeCardOffline completed"] == {"completed"}
    assert fallback["Completed"] == {"completed"}


@pytest.mark.slow
def test_mermaid_shows_awkward_names_verbatim(mermaid_results: dict[str, typing.Any]) -> None:
    states = _node_classes(mermaid_results["awkward.state_diagram_run"])
    for name in AWKWARD_NAMES:
        assert name in states
        assert (f"compensate {name}" in states) == (name != AWKWARD_NAMES[-1])  # not the last
    assert states[AWKWARD_NAMES[1]] == {"completed"}  # the fallback that ran
    assert states[AWKWARD_NAMES[0]] == {"failed"}  # its primary
    assert states[f"compensate {AWKWARD_NAMES[2]}"] == {"compensated"}
    assert states[f"compensate {AWKWARD_NAMES[1]}"] == {"failed"}
    assert states["Compensation failed"] == {"failed"}
    classes = [node["text"] for node in mermaid_results["awkward.class_diagram"]["nodes"]]
    for name in AWKWARD_NAMES:
        assert sum(f" name = {name} act(OrderContext) : Reserved " in text for text in classes) == 1
    run = _node_classes(mermaid_results["awkward.run_diagram"])
    assert run["awkward saga; #1"] == set()
    assert run[f"{AWKWARD_NAMES[0]} failed"] == {"failed"}
    assert run[f"{AWKWARD_NAMES[1]} compensation failed"] == {"failed"}
    assert run[f"{AWKWARD_NAMES[3]} failed"] == {"failed"}
    assert run[f"{AWKWARD_NAMES[4]} not reached"] == {"pending"}
