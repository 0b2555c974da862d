"""GitHub Actions expressions (``${{ … }}``), as much of the language as a runner here needs.

Literals, context look-ups (``a.b``, ``a['b']``), ``!``, ``==``, ``!=``, ``<``, ``<=``, ``>``,
``>=``, ``&&``, ``||`` and parentheses behave as GitHub documents them: ``&&`` and ``||`` give
an operand, not a boolean; strings compare without regard to case; operands of different types
compare as numbers (null is 0, '' is 0). Functions are the caller's (``fromJSON``,
``hashFiles``, …); anything else (an unknown function or context, ``*`` filters) raises
:class:`ExpressionError`, so a definition that uses more than this cannot pass unnoticed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

Function = Callable[..., Any]

TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<string>'(?:[^']|'')*')"
    r"|(?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|0x[0-9a-fA-F]+)"
    r"|(?P<op>==|!=|<=|>=|&&|\|\||[<>!()\[\].,*])"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_-]*)"
    r")"
)
INTERPOLATION = re.compile(r"\$\{\{(.*?)\}\}", re.S)


class ExpressionError(AssertionError):
    """An expression this evaluator does not understand (or GitHub would refuse)."""


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ExpressionError(f"cannot read {text!r} at {text[position:]!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


def _number(value: Any) -> float:  # noqa: PLR0911 (one return per type)
    """GitHub's conversion to a number for comparisons of different types."""
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            return 0.0
        try:
            return float(int(text, 16)) if text.lower().startswith("0x") else float(text)
        except ValueError:
            return math.nan
    return math.nan


def truthy(value: Any) -> bool:
    if value is None or value is False:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return bool(value != 0 and not math.isnan(value))
    if isinstance(value, str):
        return value != ""
    return True


def _compare(operator: str, left: Any, right: Any) -> bool:
    same_kind = type(left) is type(right) or (
        isinstance(left, (int, float))
        and isinstance(right, (int, float))
        and not isinstance(left, bool)
        and not isinstance(right, bool)
    )
    if same_kind and isinstance(left, str):
        a: Any = left.casefold()
        b: Any = right.casefold()
    elif same_kind and isinstance(left, (dict, list)):
        if operator not in ("==", "!="):
            raise ExpressionError("objects and arrays only compare for (in)equality")
        return (left is right) == (operator == "==")
    elif same_kind and left is None:
        a = b = 0.0
    else:
        a, b = _number(left), _number(right)
        if isinstance(a, float) and (math.isnan(a) or math.isnan(b)):
            return operator == "!="
    outcomes: dict[str, bool] = {
        "==": a == b,
        "!=": a != b,
        "<": a < b,
        "<=": a <= b,
        ">": a > b,
        ">=": a >= b,
    }
    return outcomes[operator]


def _member(value: Any, key: Any) -> Any:
    if isinstance(value, Mapping):
        if key in value:
            return value[key]
        folded = str(key).casefold()
        for name, item in value.items():
            if str(name).casefold() == folded:
                return item
        return None
    if isinstance(value, list) and isinstance(key, (int, float)) and not isinstance(key, bool):
        index = int(key)
        return value[index] if 0 <= index < len(value) else None
    return None


class _Parser:
    def __init__(
        self, text: str, contexts: Mapping[str, Any], functions: Mapping[str, Function]
    ) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.position = 0
        self.contexts = contexts
        self.functions = {name.casefold(): function for name, function in functions.items()}

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (expected is not None and token[1] != expected):
            raise ExpressionError(f"{self.text!r}: expected {expected or 'more'}, got {token}")
        self.position += 1
        return token

    def parse(self) -> Any:
        value = self.either()
        if self.peek() is not None:
            raise ExpressionError(f"{self.text!r}: unexpected {self.peek()}")
        return value

    # Precedence, loosest first: ||, &&, comparisons, !, member access.
    def either(self) -> Any:
        value = self.both()
        while self.peek() == ("op", "||"):
            self.take()
            right = self.both()
            value = value if truthy(value) else right
        return value

    def both(self) -> Any:
        value = self.comparison()
        while self.peek() == ("op", "&&"):
            self.take()
            right = self.comparison()
            value = right if truthy(value) else value
        return value

    def comparison(self) -> Any:
        value = self.negation()
        token = self.peek()
        while token is not None and token[1] in ("==", "!=", "<", "<=", ">", ">="):
            self.take()
            value = _compare(token[1], value, self.negation())
            token = self.peek()
        return value

    def negation(self) -> Any:
        if self.peek() == ("op", "!"):
            self.take()
            return not truthy(self.negation())
        return self.access()

    def access(self) -> Any:
        value = self.primary()
        while True:
            token = self.peek()
            if token == ("op", "."):
                self.take()
                kind, name = self.take()
                if kind != "name":
                    raise ExpressionError(f"{self.text!r}: {name!r} after '.' (filters: not here)")
                value = _member(value, name)
            elif token == ("op", "["):
                self.take()
                key = self.either()
                self.take("]")
                value = _member(value, key)
            else:
                return value

    def primary(self) -> Any:  # noqa: PLR0911 (one return per kind of token)
        kind, text = self.take()
        if kind == "string":
            return text[1:-1].replace("''", "'")
        if kind == "number":
            number = float(int(text, 16)) if text.lower().startswith("0x") else float(text)
            return int(number) if number.is_integer() else number
        if kind == "op" and text == "(":
            value = self.either()
            self.take(")")
            return value
        if kind != "name":
            raise ExpressionError(f"{self.text!r}: unexpected {text!r}")
        if text in ("true", "false"):
            return text == "true"
        if text == "null":
            return None
        if self.peek() == ("op", "("):
            return self.call(text)
        if text not in self.contexts:
            raise ExpressionError(f"{self.text!r}: unrecognized named-value {text!r}")
        return self.contexts[text]

    def call(self, name: str) -> Any:
        function = self.functions.get(name.casefold())
        if function is None:
            raise ExpressionError(f"{self.text!r}: function {name} is not simulated here")
        self.take("(")
        arguments = []
        if self.peek() != ("op", ")"):
            arguments.append(self.either())
            while self.peek() == ("op", ","):
                self.take()
                arguments.append(self.either())
        self.take(")")
        return function(*arguments)


def evaluate(text: str, contexts: Mapping[str, Any], functions: Mapping[str, Function]) -> Any:
    return _Parser(text, contexts, functions).parse()


def as_text(value: Any) -> str:
    """How GitHub writes a value into a string."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ExpressionError(f"an object or array ({value!r}) cannot be written into a string")


def interpolate(value: Any, contexts: Mapping[str, Any], functions: Mapping[str, Function]) -> Any:
    """A definition's value with its ``${{ }}`` expressions evaluated: a string that is one
    expression gives the expression's value (``matrix: ${{ fromJSON(…) }}``), any other
    string the text with each expression written in; lists and mappings item by item."""
    if isinstance(value, list):
        return [interpolate(item, contexts, functions) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item, contexts, functions) for key, item in value.items()}
    if not isinstance(value, str) or "${{" not in value:
        return value
    whole = INTERPOLATION.fullmatch(value.strip())
    if whole is not None and value.count("${{") == 1:
        return evaluate(whole.group(1), contexts, functions)
    return INTERPOLATION.sub(
        lambda match: as_text(evaluate(match.group(1), contexts, functions)), value
    )


def condition(value: Any, contexts: Mapping[str, Any], functions: Mapping[str, Function]) -> bool:
    """A step's ``if:``: with or without ``${{ }}``."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise ExpressionError(f"if: {value!r} is not an expression")
    text = value.strip()
    whole = INTERPOLATION.fullmatch(text)
    return truthy(evaluate(whole.group(1) if whole else text, contexts, functions))
