"""Prompt formats: a named template, a custom string with {problem}, or the model's own chat
template, rendered by the engine's tokenizer: "model" (the bare problem as the user turn, the
format of NuminaMath's data and of checkpoints trained by training/), "chat" (the problem with
the TIR instruction, for instruct models), or "auto" (the default: "model" where the engine's
model has a chat template, else "chatml_tir")."""

from __future__ import annotations

# The AIMO-1 winner's format (NuminaMath-7B-TIR): a user turn renders as "### Problem: {p}\n",
# an assistant turn as "### Solution: {s}\n"; the generation prompt is the two heads.
NUMINA_PROBLEM, NUMINA_SOLUTION = "### Problem: ", "### Solution: "
# ...as the chat template a checkpoint trained in it carries (BOS first, EOS after each
# solution: their packing appended one per sample).
NUMINA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '" + NUMINA_PROBLEM + "' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '" + NUMINA_SOLUTION + "' + message['content'] + '\\n' + eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '" + NUMINA_SOLUTION + "' }}{% endif %}"
)

TIR_INSTRUCTION = (
    "Please integrate natural language reasoning with programs to solve the problem above, "
    "and put your final answer within \\boxed{}."
)


# The AIMO 3 2nd place's "highest-leverage change", with the answer range: a list to check
# before boxing (SolverConfig.check_before_boxing).
CHECK_BEFORE_BOXING = (
    "Before you put the answer within \\boxed{}, check: that it answers exactly what the "
    "problem asks; that it meets every condition the problem states; that it is an integer in "
    "the range above; and that a second, independent computation gives it too.")


def problem_statement(problem: str, answer_rules: str | None = None,
                      check: bool = False) -> str:
    """The problem as the prompt states it: the competition's answer rules and the
    check-before-boxing list after it, when asked for."""
    parts = [problem, answer_rules or "", CHECK_BEFORE_BOXING if check else ""]
    return "\n\n".join(p for p in parts if p)


def verification_problem(problem: str, candidates: list[int]) -> str:
    """The problem as a second wave sees it: with the answers the first wave disagreed on,
    to check (the adaptive retry of the AIMO 3 solutions)."""
    if not candidates:
        return problem
    listed = ", ".join(str(c) for c in candidates)
    return (f"{problem}\n\nEarlier attempts at this problem disagreed; their answers were "
            f"{listed}. Solve it again carefully, check which of them, if any, is right, and "
            "put your final answer within \\boxed{}.")


# A one-shot demonstration of the ToRA format: small models (SmolLM2-135M) follow an example
# far better than an instruction.
_SHOT_PROBLEM = "What is the sum of the first 10 positive integers?"
_SHOT_SOLUTION = (
    "I will compute it with Python.\n```python\nprint(sum(range(1, 11)))\n```\n"
    "```output\n55\n```\nThe answer is $\\boxed{55}$."
)

TEMPLATES = {
    # The AIMO-1 winner's chat template (NuminaMath-7B-TIR), rendered.
    "numina": NUMINA_PROBLEM + "{problem}\n" + NUMINA_SOLUTION,
    # ChatML with the Qwen2.5-Math / ToRA tool-integrated-reasoning instruction.
    "chatml_tir": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n{problem}\n\n" + TIR_INSTRUCTION + "<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    # ChatML with one worked example: the default for the embedded SmolLM2.
    "chatml_tir_1shot": (
        "<|im_start|>system\nYou are a helpful assistant that solves math problems by writing "
        "Python code.<|im_end|>\n"
        f"<|im_start|>user\n{_SHOT_PROBLEM}<|im_end|>\n"
        f"<|im_start|>assistant\n{_SHOT_SOLUTION}<|im_end|>\n"
        "<|im_start|>user\n{problem}<|im_end|>\n<|im_start|>assistant\n"
    ),
}


def render_prompt(template: str, problem: str, engine: object = None) -> str:
    """The prompt text for `problem`.

    template: a name from TEMPLATES; "model" (the engine's chat template, the bare problem as
    the user turn); "chat" (the same with the TIR instruction); "auto" ("model" when the
    engine's model has a chat template, else "chatml_tir"); or a custom string containing
    "{problem}" (other braces are kept as is).
    """
    if template == "auto":
        template = "model" if getattr(engine, "has_chat_template", False) else "chatml_tir"
    if template in ("model", "chat"):
        render = getattr(engine, "apply_chat_template", None)
        if render is None or not getattr(engine, "has_chat_template", True):
            raise ValueError(f"prompt_template={template!r} needs an engine whose model has a "
                             "chat template; name a template instead (e.g. 'chatml_tir')")
        content = problem if template == "model" else f"{problem}\n\n{TIR_INSTRUCTION}"
        return render([{"role": "user", "content": content}])
    text = TEMPLATES.get(template, template)
    if "{problem}" not in text:
        raise ValueError(f"unknown prompt template {template!r}: use one of "
                         f"{sorted(TEMPLATES)}, 'auto', 'model' or 'chat', or a string "
                         "containing {problem}")
    return text.replace("{problem}", problem)
