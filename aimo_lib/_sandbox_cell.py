"""One cell of model code, run as a REPL would (internal): what a sandbox child executes."""

from __future__ import annotations

import ast
import linecache
import sys
import traceback

CELL = "<cell>"  # filename of model code in tracebacks, so line numbers are the model's own


def execute(code: str, namespace: dict, display: bool = True,
            stderr_on_success: bool = True) -> str:
    """Run one cell in `namespace` (REPL-style if display); returns "ok" or "error".
    stderr_on_success=False holds back what the cell writes to sys.stderr (warnings) unless
    it fails: the seed notebook showed a successful run's stdout only."""
    if stderr_on_success:
        return _execute(code, namespace, display)
    import io

    real, sys.stderr = sys.stderr, io.StringIO()
    try:
        status = _execute(code, namespace, display)
    finally:
        held, sys.stderr = sys.stderr, real
    if status != "ok":
        real.write(held.getvalue())
        real.flush()
    return status


def _execute(code: str, namespace: dict, display: bool) -> str:
    linecache.cache[CELL] = (len(code), None, code.splitlines(True), CELL)
    try:
        tree = ast.parse(code, CELL, "exec")
    except (SyntaxError, ValueError) as exc:
        sys.stderr.write("".join(traceback.format_exception_only(type(exc), exc)))
        return "error"
    # A bare expression as the last statement is displayed, like the REPL; assignments and
    # compound statements (whose last line is indented) are not.
    bare = display and tree.body and isinstance(tree.body[-1], ast.Expr)
    last = tree.body.pop() if bare else None
    try:
        exec(compile(tree, CELL, "exec", dont_inherit=True), namespace)
        if last is not None:
            expr = ast.Expression(last.value)
            value = eval(compile(expr, CELL, "eval", dont_inherit=True), namespace)
            if value is not None:
                print(repr(value))
        return "ok"
    except SystemExit as exc:
        if exc.code in (None, 0):
            return "ok"
        sys.stderr.write(f"SystemExit: {exc.code}\n")
        return "error"
    except BaseException as exc:  # noqa: BLE001 - model code may raise anything
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != CELL:
            tb = tb.tb_next  # hide this module's frames: the model sees only its own code
        traceback.print_exception(type(exc), exc, tb)
        return "error"
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
