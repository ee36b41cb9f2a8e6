"""``Upstash-Retry-Delay``: the delay before a retry, in milliseconds, as a small arithmetic
expression over ``retried`` (docs/upstash-protocol.md §5), e.g. ``pow(2, retried) * 1000``.

Parsed with ``ast`` and evaluated by walking the tree: only numbers, ``retried``, ``+ - * /``,
unary minus and the functions below are accepted; nothing is ever passed to ``eval``. Numbers
are floats, so ``pow``/``exp`` overflow (an error, capped below) instead of growing big ints.

>>> retry_delay_ms(parse_delay("min(60000, pow(2, retried) * 1000)"), retried=3)
8000
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable

from stepstream.errors import BadRequest

MAX_TEXT = 200
MAX_DELAY_MS = 86_400_000  # a day: QStash's own cap on its default backoff
FUNCTIONS: dict[str, tuple[range, Callable[..., float]]] = {
    "pow": (range(2, 3), math.pow),
    "exp": (range(1, 2), math.exp),
    "sqrt": (range(1, 2), math.sqrt),
    "abs": (range(1, 2), abs),
    "floor": (range(1, 2), lambda x: float(math.floor(x))),
    "ceil": (range(1, 2), lambda x: float(math.ceil(x))),
    "min": (range(1, 17), min),
    "max": (range(1, 17), max),
}
OPERATORS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


def parse_delay(text: str) -> ast.expr:
    """The checked tree of a retry-delay expression; ``BadRequest`` naming what is wrong."""
    if len(text) > MAX_TEXT:
        raise BadRequest(f"Upstash-Retry-Delay is over {MAX_TEXT} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise BadRequest(f"Upstash-Retry-Delay {text[:80]!r} is not an expression") from None
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        _check(node, text, called)
    return tree


def _check(node: ast.AST, text: str, called: set[int]) -> None:
    """Refuse ``node`` unless the grammar has it (``called``: the ids of call targets)."""
    problem = None
    if isinstance(node, ast.Constant):
        if type(node.value) not in (int, float):
            problem = f"the constant {node.value!r:.40}"
    elif isinstance(node, ast.Name):
        if node.id != "retried" and id(node) not in called:
            problem = f"the name {node.id!r:.40} (only retried is known)"
    elif isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in FUNCTIONS or node.keywords:
            problem = "a call of anything but " + ", ".join(FUNCTIONS)
        elif len(node.args) not in FUNCTIONS[name][0]:
            problem = f"{name} with {len(node.args)} arguments"
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in OPERATORS:
            problem = f"the operator {type(node.op).__name__} (+ - * / are known)"
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, ast.USub | ast.UAdd):
            problem = f"the operator {type(node.op).__name__}"
    elif not isinstance(node, ast.operator | ast.unaryop | ast.expr_context):
        problem = f"a {type(node).__name__}"
    if problem is not None:
        raise BadRequest(f"Upstash-Retry-Delay {text[:80]!r} uses {problem}")


def retry_delay_ms(tree: ast.expr, retried: int) -> int:
    """The delay in ms for the retry after ``retried`` earlier retries: from 0 to a day (an
    overflow or a division by zero is the day)."""
    try:
        value = _value(tree, float(retried))
    except (ArithmeticError, ValueError):
        return MAX_DELAY_MS
    if math.isnan(value):
        return 0
    return int(min(max(value, 0.0), MAX_DELAY_MS))


def _value(node: ast.expr, retried: float) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.Name):
        return retried
    if isinstance(node, ast.UnaryOp):
        operand = _value(node.operand, retried)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        operator = OPERATORS[type(node.op)]
        return operator(_value(node.left, retried), _value(node.right, retried))
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    function = FUNCTIONS[node.func.id][1]
    return float(function(*(_value(arg, retried) for arg in node.args)))
