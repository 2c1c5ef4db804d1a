"""Safe YAML reading for config files: plain values only, no code ever runs.

The official base file writes one list as
``!!python/object/apply:eval ["[int(x * 0.1 * 640) for x in range(5, 16)]"]``; that tag is
accepted, but its expression is evaluated by a tiny arithmetic interpreter that understands only
numbers, ``+ - * / //``, ``int``/``float``/``round``, ``range`` and list comprehensions. Anything
else is refused with an error, and so is anything large: at most :data:`MAX_ITEMS` list items or
range steps, numbers of at most :data:`MAX_DIGITS` digits, arithmetic on numbers only (no list
repetition), so a hostile file cannot make the interpreter build gigabytes.
"""

from __future__ import annotations

import ast
import os
from typing import Any

import yaml

__all__ = ["ConfigError", "load_yaml"]


class ConfigError(ValueError):
    """A configuration file or override is invalid."""


MAX_ITEMS = 10_000  # a config list is a few dozen numbers
MAX_DIGITS = 30

_ALLOWED_CALLS = {"int": int, "float": float, "round": round, "range": range, "list": list}
_BIN_OPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
}


def _eval_restricted(expr: str) -> Any:
    """Evaluate a small arithmetic/list-comprehension expression without executing code."""

    def number(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"YAML expression {expr!r}: arithmetic works on numbers only, got {type(value).__name__}")
        if isinstance(value, int) and abs(value) >= 10**MAX_DIGITS:
            raise ConfigError(f"YAML expression {expr!r}: a number with more than {MAX_DIGITS} digits is refused")
        return value

    def sized(value: Any) -> Any:
        if isinstance(value, (range, list)) and len(value) > MAX_ITEMS:
            raise ConfigError(
                f"YAML expression {expr!r} builds {len(value)} items; at most {MAX_ITEMS} are allowed (a config list "
                "is short: write it out)"
            )
        return value

    def ev(node: ast.AST, env: dict[str, Any]) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body, env)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value if isinstance(node.value, bool) else number(node.value)  # a literal too has a limit
        if isinstance(node, ast.Name) and node.id in env:
            return env[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = number(ev(node.operand, env))
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
            left, right = number(ev(node.left, env)), number(ev(node.right, env))
            return number(_BIN_OPS[type(node.op)](left, right))
        if isinstance(node, (ast.List, ast.Tuple)):
            return sized([ev(e, env) for e in node.elts])
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _ALLOWED_CALLS
            and not node.keywords
        ):
            args = [ev(a, env) for a in node.args]
            if node.func.id == "range":
                args = [number(a) for a in args]
            return sized(_ALLOWED_CALLS[node.func.id](*args))
        if isinstance(node, ast.ListComp) and len(node.generators) == 1:
            gen = node.generators[0]
            if gen.ifs or gen.is_async or not isinstance(gen.target, ast.Name):
                raise ConfigError(f"unsupported comprehension in YAML expression {expr!r}")
            out = []
            for value in sized(ev(gen.iter, env)):
                out.append(ev(node.elt, {**env, gen.target.id: value}))
            return sized(out)
        raise ConfigError(
            f"refusing to evaluate YAML expression {expr!r}: only numbers, arithmetic, int/float/"
            "round/range and list comprehensions are allowed (write the value out as a plain list)"
        )

    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise ConfigError(f"invalid YAML expression {expr!r}: {e}") from None
    return ev(tree, {})


class _SafeConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader plus the one python tag the official base config uses, evaluated safely."""


def _construct_eval(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    args = loader.construct_sequence(node)
    if len(args) != 1 or not isinstance(args[0], str):
        raise ConfigError("!!python/object/apply:eval expects exactly one string argument")
    return _eval_restricted(args[0])


_SafeConfigLoader.add_constructor("tag:yaml.org,2002:python/object/apply:eval", _construct_eval)


def load_yaml(filename: str) -> dict:
    """The mapping in a YAML config file, read safely (see the module docstring)."""
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"config file not found: {filename}")
    with open(filename, encoding="utf-8") as f:
        try:
            data = yaml.load(f, Loader=_SafeConfigLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.constructor.ConstructorError as e:
            raise ConfigError(
                f"{filename}: unsupported YAML tag ({e.problem}); configs may hold plain values only"
            ) from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{filename}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{filename}: a config file must hold a mapping, got {type(data).__name__}")
    return data
