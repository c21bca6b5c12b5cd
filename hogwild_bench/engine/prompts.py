"""Prompt text for N workers sharing one workspace.

The text is this project's own. It tells each worker who the others are, that their writing is shared
as it happens, and how steps are labelled (``**Bob [3]:** ``), and it is rendered with the tokenizer's own
chat template (Qwen-style templates get the ``<think>`` opener reasoning models expect).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from hogwild_bench.engine.pieces import encode_short, vocabulary

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


PAPER_TEAM_SYSTEM_PROMPT = """\
# Collaborative Reasoning

You are one of {count} assistants, {names}, solving one problem together. All of you write at the same \
time, and each of you can read the others' thoughts while they are being written, so you can divide the \
work, check each other and avoid doing anything twice.

{steps_note} {layout_note} The others keep writing while you write, so what you see of their work grows.

# How to collaborate

- Plan first: propose how to divide the problem. If you disagree about a plan, follow {first}'s.
- Split the work into parts that do not overlap, and prefer a part nobody has started over re-checking a \
small calculation.
- Try different methods in parallel when it is not clear which one is faster.
- Talk to each other: ask questions, announce what you will do next, and point out mistakes.
- Every few steps, ask yourself whether you are repeating someone else's work. If you are, stop at once \
(e.g. "Wait, {second} is already doing this.") and switch to something useful.

When the answer is settled, any one of you writes the final answer once as \\boxed{{answer}}; it cannot be \
changed after that.

# Solve the following problem

{names}, solve the next problem together. Keep track of who does what, and communicate so that no work is \
done twice."""

PAPER_LAYOUT_NOTES = {
    **LAYOUT_NOTES,
    "combined": "Under '### Past steps' the system gathers every finished step, in the order they were finished. "
    "After '### Work in progress (others)' you see the other assistants' unfinished steps, each cut off at <...> "
    "where its writer currently is; after '### Work in progress (own)' comes your own current step.",
}


@dataclass(frozen=True)
class PromptStyle:
    """The texts that frame a problem for the workers, as one named choice.

    ``ours`` puts short collaboration rules in the system prompt. ``paper`` (the default) follows the layout
    of the Hogwild! paper's prompt (arXiv 2504.06261): the rules, a section on how to collaborate and a
    closing call to solve the problem, folded into the user message ahead of the problem, and a first
    worker who opens by proposing a plan. Its wording is this project's own; ``system_text`` replaces the
    team prompt with any text (e.g. a researcher's copy of the paper's exact prompt), used as it is.
    """

    name: str
    team_system: str
    system_as_user: bool = False
    lead_opener: str = ""
    layout_notes: dict[str, str] = field(default_factory=lambda: LAYOUT_NOTES)
    system_text: str | None = None

    def team_prompt(self, names: list[str], step_labels: bool, layout: str) -> str:
        if self.system_text is not None:
            return self.system_text
        listed = ", ".join(names[:-1]) + f" and {names[-1]}"
        steps_note = STEPS_NOTES[step_labels].format(first=names[0], second=names[1])
        return self.team_system.format(names=listed, count=len(names), first=names[0], second=names[1],
                                       steps_note=steps_note, layout_note=self.layout_notes[layout])  # fmt: skip


PROMPT_STYLES = {
    "ours": PromptStyle("ours", TEAM_SYSTEM_PROMPT),
    "paper": PromptStyle(
        "paper",
        PAPER_TEAM_SYSTEM_PROMPT,
        system_as_user=True,
        lead_opener=" Here's how we should collaborate:",
        layout_notes=PAPER_LAYOUT_NOTES,
    ),
}


def prompt_style(name: str, system_text: str | None = None) -> PromptStyle:
    """The named style, with its team prompt replaced by ``system_text`` when that is given."""
    if name not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {name!r}; valid styles: {', '.join(PROMPT_STYLES)}")
    return replace(PROMPT_STYLES[name], system_text=system_text)


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
    style: PromptStyle = field(default_factory=lambda: PROMPT_STYLES["paper"])

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
        return self.style.team_prompt(self.names, self.step_labels, self.layout)

    def step_prefix(self, worker: int, step: int) -> str:
        return f"**{self.names[worker]} [{step}]:** " if self.step_labels else ""

    def first_step(self, worker: int) -> str:
        if self.n_workers == 1:
            return self.step_prefix(worker, 1)
        opener = self.step_prefix(worker, 1) or f"**{self.names[worker]}:** "
        if not self.greeting:
            return opener
        lead = self.style.lead_opener if worker == 0 else ""
        return f"{opener}Hi, I'm {self.names[worker]}.{lead}"

    def prompt_text(self, problem: str, has_history: bool = True) -> str:
        """The full prompt, rendered with the tokenizer's chat template, ending where workers start."""
        if self.system_as_user or (self.style.system_as_user and self.n_workers > 1):
            messages = [{"role": "user", "content": f"{self.system_prompt()}\n\n{problem}"}]
        else:
            messages = [{"role": "system", "content": self.system_prompt()}, {"role": "user", "content": problem}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if self.think_prefix == "auto":
            vocab = vocabulary(self.tokenizer)
            if "<think>" in vocab and "<think>" not in text[-20:]:
                text += "<think>\n"
        elif self.think_prefix:
            text += self.think_prefix
        if self.n_workers > 1 and has_history:
            text += HISTORY_HEADER
        return text

    def encode(self, text: str) -> list[int]:
        return encode_short(self.tokenizer, text)
