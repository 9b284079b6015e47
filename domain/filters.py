"""Validation and normalisation of the `sql_filter` part of READ scopes.

A filter is ClickHouse SQL that Tinybird appends to a WHERE clause, so it must be exactly one
boolean expression over columns and literals. Anything that could change the query's shape
(a second statement, a subquery, a comment hiding the rest of a line, DDL/DML, a function call)
is refused with `FilterError`. Accepted filters are stored in sqlglot's normalised spelling, so
that two spellings of one filter compare equal.
"""

from __future__ import annotations

import re

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from tokentrail.domain.errors import FilterError

MAX_FILTER_LENGTH = 2048
DIALECT = "clickhouse"

# Nodes that may appear anywhere in a filter.
_VALUE_NODES: tuple[type[exp.Expr], ...] = (
    exp.Column,
    exp.Identifier,
    exp.Literal,
    exp.Boolean,
    exp.Null,
    exp.Neg,
    exp.Paren,
    exp.Tuple,
    exp.Add,
    exp.Sub,
    exp.Mul,
    exp.Div,
    exp.Mod,
)
_PREDICATE_NODES: tuple[type[exp.Expr], ...] = (
    exp.And,
    exp.Or,
    exp.Not,
    exp.EQ,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.In,
    exp.Like,
    exp.ILike,
    exp.Is,
    exp.Between,
)
_ALLOWED = _VALUE_NODES + _PREDICATE_NODES
_BOOLEAN_ROOTS = _PREDICATE_NODES + (exp.Boolean,)


def normalize_filter(sql: str) -> str:
    """Return the canonical spelling of `sql`, or raise FilterError saying what is wrong."""
    if not isinstance(sql, str):
        raise FilterError("sql_filter must be a string")
    text = sql.strip()
    if not text:
        return ""
    if len(text) > MAX_FILTER_LENGTH:  # before parsing: a bound on the work a request can ask for
        raise FilterError(f"sql_filter is longer than {MAX_FILTER_LENGTH} characters")
    if "\x00" in text:
        raise FilterError("sql_filter contains a NUL character")
    try:
        tokens = sqlglot.tokenize(text, read=DIALECT)
        statements = sqlglot.parse(text, read=DIALECT)
    except (SqlglotError, ValueError, RecursionError) as error:
        reason = _first_line(error)
        if reason.startswith("Error tokenizing"):
            # sqlglot quotes only part of the input there: name the whole filter instead.
            cause = "a quote is not closed" if text.count("'") % 2 else "a character or word SQL cannot read"
            reason = f"{cause} in {text[:200]!r}"
        raise FilterError(f"sql_filter is not valid SQL: {reason}") from None
    if any(token.comments for token in tokens):
        raise FilterError("sql_filter must not contain comments")
    trees = [s for s in statements if s is not None]
    if len(trees) != 1:
        raise FilterError("sql_filter must be a single expression, not several statements")
    (tree,) = trees
    _check_tree(tree)
    if not isinstance(_unwrap_parens(tree), _BOOLEAN_ROOTS):
        raise FilterError("sql_filter must be a boolean expression (a comparison or a condition)")
    normal = tree.sql(dialect=DIALECT)
    # The normalised text is what gets stored, so it is what must fit: `a=1+1` grows to `a = 1 + 1`.
    if len(normal) > MAX_FILTER_LENGTH:
        raise FilterError(f"sql_filter is longer than {MAX_FILTER_LENGTH} characters once normalised")
    return normal


def _check_tree(tree: exp.Expr) -> None:
    for node in tree.walk():
        if node.comments:
            raise FilterError("sql_filter must not contain comments")
        if isinstance(node, (exp.Select, exp.Subquery, exp.Query)):
            raise FilterError("sql_filter must not contain subqueries")
        if isinstance(node, exp.Func) and not isinstance(node, _ALLOWED):
            raise FilterError(f"sql_filter may use only columns, literals and operators, not {node.key.upper()}")
        if not isinstance(node, _ALLOWED):
            raise FilterError(
                f"sql_filter may use only columns, literals and operators, not {type(node).__name__.upper()}"
            )
        if isinstance(node, exp.Column) and (node.table or node.args.get("db")):
            raise FilterError("sql_filter columns must not name a table")
        if isinstance(node, exp.Identifier) and not isinstance(node.parent, exp.Column):
            raise FilterError("sql_filter identifiers may only name columns")
        if isinstance(node, exp.In):
            _check_in(node)


def _check_in(node: exp.In) -> None:
    """In ClickHouse the right side of IN may name a table (`x IN t`, `x GLOBAL IN "t"`): a
    subquery in disguise. Only a list of constants is allowed there."""
    if node.args.get("is_global"):
        raise FilterError("sql_filter must not use GLOBAL IN")
    if node.args.get("query") is not None:
        raise FilterError("sql_filter must not contain subqueries")
    if node.args.get("field") is not None:
        raise FilterError("the right side of IN must be a list of constants, not a table")
    for item in node.expressions:
        if any(isinstance(n, exp.Column) for n in item.walk()):
            raise FilterError("the right side of IN must be a list of constants, not columns")


def _unwrap_parens(tree: exp.Expr) -> exp.Expr:
    while isinstance(tree, exp.Paren):
        tree = tree.this
    return tree


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    text = re.sub(r"<class '[\w.]+\.(\w+)'>", r"\1", lines[0]) if lines else type(error).__name__
    return text[:200]
