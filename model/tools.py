"""Tools the assistant can call, plain Python and no network: a registry, and the calculator
(issue 25; the warehouse search registers itself from the pipeline side).

    from model.tools import run_tool, register_tool
    run_tool("calculator", "(17 + 25) * 3")            # "126"
    run_tool("calculator", "__import__('os')")         # "error: ..." (never an exception)
    register_tool("echo", "repeats its input", lambda text: text)

The model writes a tool's input, so it is untrusted text: `run_tool` returns a result or an
error string the model sees, and never raises. The calculator reads + - * / // % ** and
parentheses over decimal numbers: the text is parsed with `ast` and only those nodes are
evaluated (no `eval`); anything else, and inputs too long, too deep, with too many digits or a
power too large, is refused with the reason.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

MAX_INPUT_CHARS = 200
MAX_DEPTH = 24               # nested parentheses
MAX_DIGITS = 30              # of a number written in the input
MAX_RESULT_DIGITS = 60       # of an integer result
MAX_EXPONENT = 64
MAX_RESULT_CHARS = 2000      # what any tool may put into the context
ALLOWED_TEXT = re.compile(r"[0-9+\-*/%().\s]*")
BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class Refused(ValueError):
    """An input the calculator does not evaluate; the message says why."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    run: Callable[[str], str]


TOOLS: dict[str, Tool] = {}


def register_tool(name: str, description: str, run: Callable[[str], str]) -> Tool:
    """Add (or replace) a tool: a name the model writes, what it does, a function of one string."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", name):
        raise ValueError(f"tool name {name!r}: lowercase letters, digits and _, starting with a letter")
    TOOLS[name] = Tool(name, description, run)
    return TOOLS[name]


def run_tool(name: str, argument: str) -> str:
    """The tool's result as text for the context, or "error: ..." (unknown tool, a failure)."""
    tool = TOOLS.get(name)
    if tool is None:
        return f"error: unknown tool {name!r}; known: {', '.join(sorted(TOOLS))}"
    try:
        result = str(tool.run(argument))
    except Refused as exc:
        return f"error: {exc}"
    except Exception as exc:  # noqa: BLE001 - a tool's failure is shown to the model, not raised to the user
        return f"error: {name} failed: {type(exc).__name__}: {exc}"[:MAX_RESULT_CHARS]
    return result if len(result) <= MAX_RESULT_CHARS else result[:MAX_RESULT_CHARS] + " ..."


def calculator(expression: str) -> str:
    """Evaluate arithmetic on decimal numbers; Refused for anything else."""
    if not isinstance(expression, str):
        raise Refused("the input is not text")
    text = expression.strip()
    if not text:
        raise Refused("empty expression")
    if len(text) > MAX_INPUT_CHARS:
        raise Refused(f"expression longer than {MAX_INPUT_CHARS} characters")
    if not ALLOWED_TEXT.fullmatch(text):
        bad = next(c for c in text if not ALLOWED_TEXT.fullmatch(c))
        raise Refused(f"{bad!r} is not allowed: only digits, '.', + - * / // % ** and parentheses")
    if max((len(d) for d in re.findall(r"\d+", text)), default=0) > MAX_DIGITS:
        raise Refused(f"a number of more than {MAX_DIGITS} digits")
    if _paren_depth(text) > MAX_DEPTH:
        raise Refused(f"parentheses nested more than {MAX_DEPTH} deep")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise Refused("not an arithmetic expression") from None
    return _format(_evaluate(tree.body))


def _paren_depth(text: str) -> int:
    depth = deepest = 0
    for char in text:
        depth += (char == "(") - (char == ")")
        deepest = max(deepest, depth)
    return deepest


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and _power_too_large(left, right):
            raise Refused(f"power too large (exponent at most {MAX_EXPONENT}, "
                          f"result at most {MAX_RESULT_DIGITS} digits)")
        try:
            value = BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise Refused("division by zero") from None
        except OverflowError:
            raise Refused("the result is too large") from None
        if isinstance(value, complex):
            raise Refused("the result is not a real number")
        if isinstance(value, int) and abs(value) >= 10 ** MAX_RESULT_DIGITS:
            raise Refused(f"the result has more than {MAX_RESULT_DIGITS} digits")
        return value
    raise Refused(f"{type(node).__name__} is not arithmetic")


def _power_too_large(base: int | float, exponent: int | float) -> bool:
    """Decided before computing: 9 ** 9 ** 9 must never be evaluated."""
    digits = abs(exponent) * math.log10(abs(base)) if abs(base) > 1 else 0.0
    return abs(exponent) > MAX_EXPONENT or digits > MAX_RESULT_DIGITS


def _format(value: int | float) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Refused("the result is not a finite number")
        if value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.10g}"
    return str(value)


register_tool("calculator", "arithmetic on decimal numbers: + - * / // % ** and parentheses, e.g. (17 + 25) * 3",
              calculator)
