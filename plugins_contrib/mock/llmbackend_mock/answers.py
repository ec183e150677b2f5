"""How the mock picks an answer: classify the prompt by keywords, then pick a canned reply."""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Mapping

__all__ = ["ANSWERS", "Category", "answer_for", "classify"]


class Category(enum.StrEnum):
    """The kinds of prompt the mock recognises."""

    GREETING = "greeting"
    CODE = "code"
    QUESTION = "question"
    TRANSLATION = "translation"
    SUMMARY = "summary"
    DEFAULT = "default"


#: Checked in this order; the first match wins ("translate this code" is a translation).
_RULES: tuple[tuple[Category, re.Pattern[str]], ...] = (
    (
        Category.TRANSLATION,
        re.compile(
            r"\btranslat\w*|\bin (french|spanish|german|italian|japanese|chinese|portuguese)\b"
        ),
    ),
    (Category.SUMMARY, re.compile(r"\b(summari[sz]\w*|summary|tl;?dr|key points|condense)\b")),
    (
        Category.CODE,
        re.compile(
            r"\b(code|function|python|javascript|typescript|rust|sql|regex|bug|debug"
            r"|implement\w*|script|compile\w*|refactor\w*)\b"
        ),
    ),
    (
        Category.GREETING,
        re.compile(r"^\W*(hi|hello|hey|greetings|good (morning|afternoon|evening))\b"),
    ),
    (
        Category.QUESTION,
        re.compile(r"\?\s*$|^\W*(what|why|how|who|when|where|which|can|could|is|are|do|does)\b"),
    ),
)

#: Canned answers per category; one is picked deterministically from the prompt.
ANSWERS: Mapping[Category, tuple[str, ...]] = {
    Category.GREETING: (
        "Hello! How can I help you today?",
        "Hi there! What would you like to work on?",
    ),
    Category.CODE: (
        "Here is a small example to start from:\n\n```python\n"
        "def solve(items: list[int]) -> int:\n"
        '    """Return the sum of the even items."""\n'
        "    return sum(item for item in items if item % 2 == 0)\n```\n\n"
        "It runs in linear time; adapt the condition to your case.",
        "A clean way to structure this is one small function per step, each with a test. "
        "Start with the input parsing, then the core logic, then the output formatting.",
    ),
    Category.QUESTION: (
        "Good question. In short: it depends on your constraints, but the usual answer is to "
        "start simple, measure, and only then optimise the part that matters.",
        "The short answer is yes, with one caveat: check the edge cases first, because that "
        "is where most surprises come from.",
    ),
    Category.TRANSLATION: (
        "Here is the translation (mock): « Bonjour, comment allez-vous ? »",
        "Translation (mock): « Hola, ¿cómo estás? »",
    ),
    Category.SUMMARY: (
        "Summary: the text makes three points. First, the problem is real. Second, the "
        "proposed fix is simple. Third, it should be measured before and after.",
        "In brief: the main idea is stated up front, supported by two examples, and closed "
        "with a recommendation to act soon.",
    ),
    Category.DEFAULT: (
        "Understood. Here is a plausible answer from the mock backend: the request was "
        "received and processed successfully.",
        "Thanks for the message. This is a simulated reply; a real model would answer here.",
    ),
}


def classify(prompt: str) -> Category:
    """The category of ``prompt``, by keywords (case-insensitive)."""
    text = prompt.strip().lower()
    for category, pattern in _RULES:
        if pattern.search(text):
            return category
    return Category.DEFAULT


def answer_for(prompt: str) -> tuple[Category, str]:
    """The category of ``prompt`` and its canned answer (the same prompt, the same answer)."""
    category = classify(prompt)
    choices = ANSWERS[category]
    index = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big") % len(choices)
    return category, choices[index]
