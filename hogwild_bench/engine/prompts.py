"""Prompt text for N workers sharing one workspace.

The text is this project's own. It tells each worker who the others are, that their writing is shared
as it happens, and how steps are labelled (``**Bob [3]:** ``), and it is rendered with the tokenizer's own
chat template (Qwen-style templates get the ``<think>`` opener reasoning models expect).
"""

from __future__ import annotations

from dataclasses import dataclass

WORKER_NAMES = ("Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Mallory", "Niaj")

SOLO_SYSTEM_PROMPT = (
    "Solve the problem below. Think step by step, check your work, and put the final answer inside \\boxed{{}}."
)

TEAM_SYSTEM_PROMPT = """\
You are {names}: {count} assistants solving one problem together, at the same time, in one shared \
workspace. Everything any of you writes appears in the workspace while it is being written, so you can \
read each other's unfinished work and react to it right away.

{steps_note} {layout_note}

How to collaborate well:
- Before you start something, read what the others are doing. If it is done or in progress, do not \
repeat it: take a different part, or check their result.
- Split the work early and say who does what. Follow the plan, and say so plainly when you change it.
- Keep steps short and concrete, so the others can use them quickly.
- Point out mistakes you see in anyone's work, including your own.
- When the group has an answer you trust, write it once, inside \\boxed{{}}."""

LAYOUT_NOTES = {
    "contiguous": "Each of you writes in your own section; the others' sections are shown above yours.",
    "interleaved": "Finished steps are shown in the order they were completed; a step becomes visible to the "
    "others once its writer finishes it.",
    "combined": "Finished steps are shown first, in the order they were completed; then every assistant's "
    "step in progress, yours last.",
}

STEPS_NOTES = {
    True: "Work is written in short steps, each labelled with its writer and number, like **{first} [1]:** or "
    "**{second} [2]:**.",
    False: "Work is written in short paragraphs; each of you opens your first one with your name, like "
    "**{first}:** or **{second}:**.",
}
HISTORY_HEADER = "### Past steps\n\n"
COLLAB_PROMPT = "Quick check: am I doing redundant work? (yes/no): "


@dataclass
class PromptFormat:
    """Renders prompts for ``n_workers`` workers with a tokenizer's chat template.

    ``system_as_user`` folds the system prompt into the user message (for templates without a system
    role, as in the colab notebook). ``step_labels=False`` drops the ``**Alice [1]:**`` labels: plain chain
    of thought for a single worker; with several, only the first step opens with the writer's name
    (``**Alice:**``), since greedy workers that start from the same text would write the same text.
    ``greeting=False`` opens each worker's first step with its label alone instead of "Hi, I'm Alice.".
    ``think_prefix``: ``"auto"`` appends ``<think>\\n`` after the
    generation prompt when the tokenizer knows that token and the template did not add it.
    """

    tokenizer: object
    n_workers: int
    layout: str = "combined"
    system_as_user: bool = False
    think_prefix: str | None = "auto"
    collab_prompt: str = COLLAB_PROMPT
    step_labels: bool = True
    greeting: bool = True

    def __post_init__(self):
        if not 1 <= self.n_workers <= len(WORKER_NAMES):
            raise ValueError(f"n_workers must be between 1 and {len(WORKER_NAMES)}, got {self.n_workers}")
        if self.layout not in LAYOUT_NOTES:
            raise ValueError(f"unknown layout {self.layout!r}; valid layouts: {', '.join(LAYOUT_NOTES)}")

    @property
    def names(self) -> list[str]:
        return list(WORKER_NAMES[: self.n_workers])

    def system_prompt(self) -> str:
        if self.n_workers == 1:
            return SOLO_SYSTEM_PROMPT.format()
        names = self.names
        listed = ", ".join(names[:-1]) + f" and {names[-1]}"
        steps_note = STEPS_NOTES[self.step_labels].format(first=names[0], second=names[1])
        return TEAM_SYSTEM_PROMPT.format(
            names=listed, count=self.n_workers, steps_note=steps_note, layout_note=LAYOUT_NOTES[self.layout]
        )

    def step_prefix(self, worker: int, step: int) -> str:
        return f"**{self.names[worker]} [{step}]:** " if self.step_labels else ""

    def first_step(self, worker: int) -> str:
        if self.n_workers == 1:
            return self.step_prefix(worker, 1)
        opener = self.step_prefix(worker, 1) or f"**{self.names[worker]}:** "
        return f"{opener}Hi, I'm {self.names[worker]}." if self.greeting else opener

    def prompt_text(self, problem: str, has_history: bool = True) -> str:
        """The full prompt, rendered with the tokenizer's chat template, ending where workers start."""
        if self.system_as_user:
            messages = [{"role": "user", "content": f"{self.system_prompt()}\n\n{problem}"}]
        else:
            messages = [{"role": "system", "content": self.system_prompt()}, {"role": "user", "content": problem}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if self.think_prefix == "auto":
            vocab = self.tokenizer.get_vocab()
            if "<think>" in vocab and "<think>" not in text[-20:]:
                text += "<think>\n"
        elif self.think_prefix:
            text += self.think_prefix
        if self.n_workers > 1 and has_history:
            text += HISTORY_HEADER
        return text

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)
