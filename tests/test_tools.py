"""The tools the assistant calls (model/tools.py): the calculator's arithmetic, the table of
inputs it refuses (each with its reason, never an exception), and the registry."""

from __future__ import annotations

import pytest

from model.tools import TOOLS, register_tool, run_tool


@pytest.mark.parametrize("expression, result", [
    ("(17 + 25) * 3", "126"), ("7 / 2", "3.5"), ("10 / 3", "3.333333333"), ("0.1 + 0.2", "0.3"),
    ("2 ** 10", "1024"), ("2 ** -2", "0.25"), ("-3 * -4", "12"), ("17 // 5", "3"), ("17 % 5", "2"),
    ("  12.5*4 ", "50"), ("((1 + 2) * (3 + 4))", "21"), ("+".join(["1"] * 90), "90"),
    ("123456789012345678901234567890 * 10", "1234567890123456789012345678900"),
])
def test_the_calculator_does_arithmetic(expression, result):
    assert run_tool("calculator", expression) == result


REFUSED = [  # (input, what the error says): names, dunders, imports, calls, ... each refused by a rule
    ("", "empty expression"),
    ("   ", "empty expression"),
    ("x", "'x' is not allowed"),
    ("x + 1", "'x' is not allowed"),
    ("__import__('os')", "'_' is not allowed"),
    ("().__class__", "'_' is not allowed"),
    ("(1).__class__.__bases__", "'_' is not allowed"),
    ("import os", "'i' is not allowed"),
    ("open('/etc/passwd')", "'o' is not allowed"),
    ("lambda: 1", "'l' is not allowed"),
    ("[x for x in range(9)]", "'[' is not allowed"),
    ("{1: 2}", "'{' is not allowed"),
    ("'1' * 5", "\"'\" is not allowed"),
    ('"abc"', "'\"' is not allowed"),
    ("1; 2", "';' is not allowed"),
    ("1 if 1 else 2", "'i' is not allowed"),
    ("a = 1", "'a' is not allowed"),
    ("1 < 2", "'<' is not allowed"),
    ("1 & 2", "'&' is not allowed"),
    ("~1", "'~' is not allowed"),
    ("1e400", "'e' is not allowed"),
    ("0x10", "'x' is not allowed"),
    ("1j", "'j' is not allowed"),
    ("\u0661\u0662\u0663", "'\u0661' is not allowed"),          # Arabic-Indic digits
    ("\uff11\uff12", "'\uff11' is not allowed"),                  # full-width digits
    ("9 ** 9 ** 9", "power too large"),
    ("2 ** 1000", "power too large"),
    ("10 ** 65", "power too large"),
    ("1" * 10_000, "longer than 200 characters"),
    ("1" * 31, "more than 30 digits"),
    ("(" * 30 + "1" + ")" * 30, "nested more than 24 deep"),
    ("1 / 0", "division by zero"),
    ("5 // 0", "division by zero"),
    ("5 % 0", "division by zero"),
    ("0 ** -1", "division by zero"),
    ("(-8) ** 0.5", "not a real number"),
    ("1 +", "not an arithmetic expression"),
    ("(1 + 2", "not an arithmetic expression"),
    ("1 2", "not an arithmetic expression"),
    ("..", "not an arithmetic expression"),
    ("99999999999999999999 ** 3 * 99999999999999999999", "more than 60 digits"),
]


@pytest.mark.parametrize("expression, reason", REFUSED)
def test_the_calculator_refuses_with_the_reason(expression, reason):
    result = run_tool("calculator", expression)
    assert result.startswith("error: ") and reason in result, result


def test_the_refusals_cover_at_least_thirty_inputs():
    assert len({e for e, _ in REFUSED}) >= 30


def test_a_user_tool_is_registered_and_its_failure_is_shown_not_raised():
    def fails(text: str) -> str:
        raise RuntimeError(f"cannot read {text}")

    register_tool("flaky", "always fails", fails)
    register_tool("shout", "upper case", str.upper)
    try:
        assert run_tool("shout", "hi") == "HI"
        assert run_tool("flaky", "x") == "error: flaky failed: RuntimeError: cannot read x"
        assert run_tool("nope", "x").startswith("error: unknown tool 'nope'; known: calculator")
        assert run_tool("shout", "a" * 5000).endswith(" ...") and len(run_tool("shout", "a" * 5000)) < 2100
        with pytest.raises(ValueError, match="tool name"):
            register_tool("Bad Name", "", str)
    finally:
        TOOLS.pop("flaky"), TOOLS.pop("shout")
