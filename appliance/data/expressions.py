"""A safe evaluator for the expressions of ``preproc.json``.

Users write ``log(partonE)``, ``0<=nLeptons<=2`` or ``partonPt>200``. The original evaluated them with
Python's ``eval``; here they are parsed with :mod:`ast` and only arithmetic, comparisons, boolean logic,
numbers, branch names and a fixed set of NumPy functions are accepted. Evaluation runs on whole arrays
(NumPy or awkward), so a cut on a chunk of events is one vectorised operation.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Any

import numpy as np

from servicecore.errors import BadInputError

MAX_LENGTH = 2000
MAX_NODES = 200

FUNCTIONS: dict[str, Callable[..., Any]] = {
    name: getattr(np, name)
    for name in (
        "abs",
        "sqrt",
        "cbrt",
        "exp",
        "expm1",
        "log",
        "log10",
        "log2",
        "log1p",
        "sin",
        "cos",
        "tan",
        "arcsin",
        "arccos",
        "arctan",
        "arctan2",
        "sinh",
        "cosh",
        "tanh",
        "arcsinh",
        "arccosh",
        "arctanh",
        "floor",
        "ceil",
        "hypot",
        "minimum",
        "maximum",
        "sign",
    )
}
CONSTANTS = {"pi": np.pi, "e": np.e}

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_COMPARE = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.invert}


class Expression:
    """A parsed, validated expression over branch names."""

    def __init__(self, text: str, *, where: str = "expression") -> None:
        if not isinstance(text, str) or not text.strip():
            raise BadInputError(f"{where}: expected a non-empty expression string, got {text!r}")
        if len(text) > MAX_LENGTH:
            raise BadInputError(f"{where}: expression longer than {MAX_LENGTH} characters")
        self.text = text
        self.where = where
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as err:
            raise BadInputError(f"{where}: cannot parse {text!r}: {err.msg}") from None
        nodes = list(ast.walk(tree))
        if len(nodes) > MAX_NODES:
            raise BadInputError(f"{where}: expression {text!r} is too complex")
        self._tree = tree.body
        self.names: frozenset[str] = frozenset(self._validate(tree.body))

    def _validate(self, node: ast.AST) -> set[str]:
        names: set[str] = set()
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return self._validate(node.left) | self._validate(node.right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return self._validate(node.operand)
        if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
            for child in [node.left, *node.comparators]:
                names |= self._validate(child)
            return names
        if isinstance(node, ast.BoolOp):
            for child in node.values:
                names |= self._validate(child)
            return names
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, int | float)
            and not isinstance(node.value, complex)
        ):
            return names
        if isinstance(node, ast.Name):
            if node.id in FUNCTIONS:
                raise BadInputError(f"{self.where}: {node.id!r} is a function; call it as {node.id}(...)")
            return names if node.id in CONSTANTS else {node.id}
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                func = ast.unparse(node.func)
                raise BadInputError(
                    f"{self.where}: function {func!r} is not allowed in {self.text!r}; "
                    f"allowed: {', '.join(sorted(FUNCTIONS))}"
                )
            if node.keywords:
                raise BadInputError(f"{self.where}: keyword arguments are not allowed in {self.text!r}")
            for child in node.args:
                names |= self._validate(child)
            return names
        raise BadInputError(
            f"{self.where}: {ast.unparse(node)!r} is not allowed in {self.text!r} "
            "(only arithmetic, comparisons, and/or/not, numbers, branch names and math functions)"
        )

    def evaluate(self, resolve: Callable[[str], Any]) -> Any:
        """Evaluate on arrays; ``resolve(name)`` returns the array of a branch."""
        with np.errstate(all="ignore"):
            return self._eval(self._tree, resolve)

    def _eval(self, node: ast.AST, resolve: Callable[[str], Any]) -> Any:
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](self._eval(node.left, resolve), self._eval(node.right, resolve))
        if isinstance(node, ast.UnaryOp):
            value = self._eval(node.operand, resolve)
            if isinstance(node.op, ast.Not):
                return np.logical_not(value)
            return _UNARY[type(node.op)](value)
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, resolve)
            result = None
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = self._eval(comparator, resolve)
                step = _COMPARE[type(op)](left, right)
                result = step if result is None else np.logical_and(result, step)
                left = right
            return result
        if isinstance(node, ast.BoolOp):
            combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            result = self._eval(node.values[0], resolve)
            for child in node.values[1:]:
                result = combine(result, self._eval(child, resolve))
            return result
        if isinstance(node, ast.Constant):
            # Numbers become float64 so that e.g. 9**9**9 overflows to inf instead of building a huge int.
            return np.float64(node.value)
        if isinstance(node, ast.Name):
            if node.id in CONSTANTS:
                return CONSTANTS[node.id]
            return resolve(node.id)
        if isinstance(node, ast.Call):
            return FUNCTIONS[node.func.id](*(self._eval(arg, resolve) for arg in node.args))
        raise AssertionError(f"unvalidated node {node!r}")

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"
