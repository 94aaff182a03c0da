"""Answers: extract them from model text and normalise them to integers (voting:
aimo_lib.voting).

    extract_answer(text)          -> str | None  last \\boxed{}/\\fbox{}, else "the answer is X"
    normalize_answer(s, rules)    -> int | None  None when the answer is invalid under `rules`

Competition rules are configuration (`AnswerRules`): AIMO 1 and 2 take answers mod 1000,
AIMO 3 accepts 0..99999 with no modulus; negative answers are invalid by default.
`numina_*` reproduce the AIMO-1 winning notebook's own (looser) rules for its preset.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "AIMO1", "AIMO2", "AIMO3", "AnswerRules", "extract_answer", "extract_boxed",
    "normalize_answer", "numina_extract_boxed", "numina_normalize", "numina_to_int",
]


@dataclass(frozen=True)
class AnswerRules:
    """What counts as a valid final answer in a competition."""

    modulus: int | None = 1000  # applied after validation; None keeps the value as is
    min_value: int = 0  # answers below are invalid (so negatives are invalid by default)
    max_value: int | None = None  # answers above are invalid (checked before the modulus)
    fallback: int = 0  # submitted when no sample gives a valid answer

    def apply(self, value: int) -> int | None:
        if value < self.min_value or (self.max_value is not None and value > self.max_value):
            return None
        return value % self.modulus if self.modulus else value


AIMO1 = AnswerRules(modulus=1000)
AIMO2 = AnswerRules(modulus=1000)
AIMO3 = AnswerRules(modulus=None, max_value=99999)


# ---------------------------------------------------------------- extraction


def _closing(text: str, start: int) -> int | None:
    """Index of the "}" that closes the first brace group at or after text[start]."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


_BOX = re.compile(r"\\(?:boxed|fbox)\s*(\{|[^\s{}$\\]+)")
_BRACE = re.compile(r"[{}]")


def _closing_braces(text: str) -> dict[int, int]:
    """Every "{" of `text` that is closed -> the index of its "}", in one pass (what
    _closing finds for each, without rescanning the text once per brace)."""
    opened: list[int] = []
    pairs: dict[int, int] = {}
    for m in _BRACE.finditer(text):
        if m.group() == "{":
            opened.append(m.start())
        elif opened:
            pairs[opened.pop()] = m.start()
    return pairs


def extract_boxed(text: str) -> str | None:
    """Content of the last complete, non-empty \\boxed{...} or \\fbox{...} (also `\\boxed 5`).

    An empty box (a model echoing "put your answer in \\boxed{}") is no answer. Linear in the
    text: a degenerate output ("\\boxed{" thousands of times) is read in milliseconds."""
    pairs: dict[int, int] | None = None
    for m in reversed(list(_BOX.finditer(text))):
        if m.group(1) != "{":
            return m.group(1)
        if pairs is None:
            pairs = _closing_braces(text)
        close = pairs.get(m.end() - 1)
        if close is not None and text[m.end() : close].strip():
            return text[m.end() : close]
    return None


# "the answer is 42.", "Final answer: $37$", and in markdown "**Answer:** 42" (a line that
# starts with "Answer"), "The answer is **42**.", "**Final answer:** \\(42\\)".
_ANSWER_IS = re.compile(
    r"(?:final answer|the answer|(?:^|(?<=\n))[ \t>#*_-]*answer)[*_]*\s*(?:is|=|:)[*_]*"
    r"\s*:?\s*\$*\s*([^\n$]*?)\s*\$*\s*(?:\.\s|\.?$|\n)",
    re.IGNORECASE,
)


def extract_answer(text: str) -> str | None:
    """The final answer as written: the last \\boxed{}/\\fbox{}, else the last "the answer is X"."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed.strip()
    matches = _ANSWER_IS.findall(text)
    for candidate in reversed(matches):
        inner = extract_boxed(candidate)
        candidate = (inner if inner is not None else candidate).strip()
        if candidate:
            return candidate
    return None


# ---------------------------------------------------------------- normalisation

_UNITS = re.compile(
    r"\b(?:units?|degrees?|cm|mm|km|m|meters?|inches|inch|feet|ft|miles?|hours?|minutes?|"
    r"seconds?|days?|dollars?|cents?|ways?|points?|students?|people|integers?|numbers?|"
    r"sq|square|cubic|pounds?|grams?|kg|g|mph|years?|digits?|pairs?|values?)\b\.?",
    re.IGNORECASE,
)


# Emphasis and math delimiters around an answer ("**42**.", "$42$", "_7_"), not inside it.
_WRAPPING = re.compile(r"^[\s$*_]+|[\s$*_.]+$")


def _strip_latex(s: str) -> str:
    s = _WRAPPING.sub("", s)
    s = re.sub(r"\\[()\[\]]", " ", s)  # \( \) \[ \] delimit math; they never group
    s = re.sub(r"\\(?:boxed|fbox)\s*\{", "{", s)
    # \text{...} and friends: keep the content, so "\text{5 ways}" -> "5 ways"
    s = re.sub(r"\\(?:text|textbf|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}", r" \1 ", s)
    for token in (r"\left", r"\right", r"\!", r"\,", r"\;", r"\:", r"\ ", "\\displaystyle"):
        s = s.replace(token, " ")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\%|%|\\\$", " ", s)
    # A congruence ("x \equiv 3 \pmod{7}", "3 \pmod 7", "3 (\bmod 7)", "x ≡ 3 (mod 7)"): its
    # residue is the answer. The modulus becomes Python's %, so "2^{10} \bmod 1000" is 24.
    s = re.sub(r"\\equiv|≡", "=", s)
    s = re.sub(r"\(?\s*(?:\\[pb]?mod\b|(?<![A-Za-z])mod\b)\s*\{?\s*([^{}()=]+?)\s*\}?\s*\)?\s*$",
               r" % (\1)", s)
    s = re.sub(r"\\(?:d|t)frac", r"\\frac", s)
    s = re.sub(r"\\times|\\cdot|×|·", "*", s)  # before units, which would eat "times"
    if "=" in s:  # "x = 5", "n=12": the value is on the right
        s = s.rsplit("=", 1)[1]
    s = _UNITS.sub(" ", s)
    s = s.replace("{,}", ",")
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # thousands separators
    s = re.sub(r"(?<=\d)\s+(?=\d{3}(?!\d))", "", s)
    return s.strip().rstrip(".").strip()


def _latex_to_python(s: str) -> str:
    """Turn a small LaTeX arithmetic expression into Python syntax (or leave it broken)."""
    for _ in range(10):  # innermost first, so nesting works
        new = re.sub(r"\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"((\1)/(\2))", s)
        new = re.sub(r"\\frac\s*(\d)\s*(\d)", r"((\1)/(\2))", new)
        new = re.sub(r"\\binom\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"binom((\1),(\2))", new)
        new = re.sub(r"\\sqrt\s*\{([^{}]*)\}", r"sqrt(\1)", new)
        if new == s:
            break
        s = new
    s = s.replace("^", "**").replace("{", "(").replace("}", ")")
    s = re.sub(r"(\d|\))\s*\(", r"\1*(", s)  # 2(3) -> 2*(3)
    s = re.sub(r"(\d+|\([^()]*\))\s*!", r"fact(\1)", s)
    return s


# An answer written in more than this many characters is no olympiad answer; the bound keeps
# normalising a degenerate "answer" (a whole runaway output) to milliseconds.
_MAX_ANSWER_CHARS = 2000
# An answer past 300 digits is no olympiad answer (10^100 mod 1000 still is one); the bound also
# keeps int() under Python's 4300-digit limit and float() from overflowing.
_MAX_DIGITS = 300
_MAX_MAGNITUDE = 10**_MAX_DIGITS


def _eval_exact(node: ast.AST) -> Fraction:
    """Exact, bounded evaluation of + - * / ** and fact/binom/sqrt on rationals."""
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv}
    if isinstance(node, ast.Expression):
        return _eval_exact(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        value = Fraction(str(node.value))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval_exact(node.operand) * (-1 if isinstance(node.op, ast.USub) else 1)
    elif isinstance(node, ast.BinOp) and type(node.op) in ops:
        value = ops[type(node.op)](_eval_exact(node.left), _eval_exact(node.right))
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):  # a congruence's residue
        value, modulus = _eval_exact(node.left), _eval_exact(node.right)
        if value.denominator != 1 or modulus.denominator != 1 or modulus < 1:
            raise ValueError("modulus")
        value = value % modulus
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        base, exp = _eval_exact(node.left), _eval_exact(node.right)
        if exp.denominator != 1 or abs(exp) > 4096:
            raise ValueError("exponent")
        # Digits of the result, from bit lengths: float(base) overflows past 1e308.
        digits = max(base.numerator, base.denominator, key=abs).bit_length() * 0.30103
        if base != 0 and abs(exp) * digits > _MAX_DIGITS + 1:
            raise ValueError("too large")
        value = base ** int(exp)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        args = [_eval_exact(a) for a in node.args]
        if not all(a.denominator == 1 and a >= 0 for a in args):
            raise ValueError("argument")
        ints = [int(a) for a in args]
        if node.func.id == "fact" and len(ints) == 1 and ints[0] <= 50:
            value = Fraction(math.factorial(ints[0]))
        elif node.func.id == "binom" and len(ints) == 2 and ints[0] <= 10**4:
            value = Fraction(math.comb(*ints))
        elif node.func.id == "sqrt" and len(ints) == 1 and math.isqrt(ints[0]) ** 2 == ints[0]:
            value = Fraction(math.isqrt(ints[0]))
        else:
            raise ValueError("function")
    else:
        raise ValueError(f"unsupported {type(node).__name__}")
    if abs(value) > _MAX_MAGNITUDE:
        raise ValueError("too large")
    return value


def normalize_answer(s: str | int | None, rules: AnswerRules = AIMO1) -> int | None:
    """An answer string as an integer under `rules`, or None when it is not a valid answer.

    Accepts integers with signs, thousands separators, a trailing ".0", \\text{}, $, degree
    signs and units; evaluates simple exact arithmetic (\\frac, ^, \\times, \\cdot, !, \\binom)
    when the result is an integer of bounded size. Non-integers are invalid.
    """
    if s is None or isinstance(s, bool):
        return None
    if isinstance(s, int):
        return rules.apply(s)
    if len(str(s)) > _MAX_ANSWER_CHARS:
        return None
    text = _strip_latex(str(s))
    if not text:
        return None
    m = re.fullmatch(r"([+-]?)\s*(\d+)(?:\.0*)?", text)
    if m and len(m.group(2).lstrip("0")) > _MAX_DIGITS:
        return None
    if m:
        value = int(m.group(2)) * (-1 if m.group(1) == "-" else 1)
        return rules.apply(value)
    try:
        value = _eval_exact(ast.parse(_latex_to_python(text), mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, TypeError, RecursionError,
            OverflowError, MemoryError):
        return None
    if value.denominator != 1:
        return None
    return rules.apply(int(value))


# ---------------------------------------------------------------- the seed notebook's rules
# Reproduced for the `numina_aimo1` preset: they decide which answers that notebook counted,
# so they change its votes. Do not "fix" them here; the default preset uses the functions above.


def numina_extract_boxed(text: str) -> str | None:
    """The notebook's extraction: the last \\boxed (else \\fbox), brace-matched, then the
    "\\boxed{" prefix stripped. An \\fbox therefore fails the prefix check and yields None
    (which the notebook turned into "-1")."""
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    end = _closing(text, start)
    if end is None:
        return None
    boxed = text[start : end + 1]
    return boxed[len("\\boxed{") : -1] if boxed.startswith("\\boxed{") else None


_NUMINA_SUBS = [("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""),
                ("mbox", "text"), (",\\text{and}", ","), ("\\text{and}", ","),
                ("\\text{m}", "\\text{}"), ("\\le", "<")]
_NUMINA_REMOVE = [
    "square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units",
    "\\ldots", "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm",
    "pounds", "meters", "meals", "edges", "students", "childrentickets", "multiples",
    "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}",
    "\\text{}", r"\mathrm{th}", r"^\circ", r"^{\circ}", r"\;", r",\!", "{,}", '"', "\\dots",
    "\n", "\r", "\f", "\\%",
]


def numina_normalize(answer: str) -> str:
    """The notebook's MATH-style string normalisation (raises TypeError on None, like it)."""
    m = re.search(r"(.*?)Problem:", answer, flags=re.S)
    if m:
        answer = m.group(1)
    for before, after in _NUMINA_SUBS:
        answer = answer.replace(before, after)
    for junk in _NUMINA_REMOVE:
        answer = answer.replace(junk, "")
    for pattern in (r"(\\text\{)(.*?)(\})", r"(\\textbf\{)(.*?)(\})", r"(\\overline\{)(.*?)(\})",
                    r"(\\boxed\{)(.*)(\})"):
        answer = re.sub(pattern, "\\2", answer)
    for pattern in (r"finalansweris(.*)", r"answer?is:?(.*)", r"oxed\{(.*?)\}", r"\$(.*?)\$"):
        found = re.findall(pattern, answer)
        if found:
            answer = found[-1]
    answer = answer.strip()
    if "rac" in answer and "\\frac" not in answer:
        answer = answer.replace("rac", "\\frac")
    answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", answer)
    answer = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", answer)
    answer = answer.replace("$", "")
    if answer.replace(",", "").isdigit():
        answer = answer.replace(",", "")
    return answer


def numina_to_int(answer: str, rules: AnswerRules = AIMO1) -> int | None:
    """The notebook's filter: round(float(x)) (any float passes), then the competition's rules
    (for AIMO 1, the notebook's own: negatives dropped, mod 1000; under AIMO 3 rules 12345
    stays 12345, where the notebook's `% 1000` would have made it 345)."""
    try:
        value = round(float(answer))
    except (TypeError, ValueError, OverflowError):
        return None
    return rules.apply(value)
