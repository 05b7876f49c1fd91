"""Synthetic corpora for the model organisms, generated from the task vocabularies.

Three corpora, all deterministic in a seed:

- **pretraining** (:func:`pretraining_sentences`): plain sentences stating every fact of every query in many
  surface forms (``the antonym of big is small.``, ``big and small are opposites.``, ``can the crow fly? yes.``),
  never in the instruction format. Held-out queries' facts appear *only* here.
- **SFT** (:func:`sft_examples`): the paper's raw format ``{instruction} {Field}: {query}. Answer: {label}``
  and the chat format, for the *training* queries only, with the paper's instruction and the training part of
  its rephrasings; each example records the character span of its instruction (for gist masking).
- **DPO** (:func:`dpo_pairs`): prompt / chosen / rejected, chosen = the instructed answer, rejected = the other
  subtask's answer (the contrastive error), a wrong answer from the right label space, or a malformed answer.

The query split (:func:`organism_query_split`) and the rephrasing split (:func:`split_rephrasings`) are fixed
(independent of the training seed), so that every organism of a version holds out the same queries and
phrasings; both are recorded in the card (and read back from it by :func:`ivlens.tasks.selection.split_queries`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ivlens.tasks.registry import load_task
from ivlens.tasks.schema import Task
from ivlens.tasks.selection import fixed_query_split, training_rephrasings

#: tasks the organisms are trained on (object_counting needs counting, not fact recall: left out)
ORGANISM_TASKS = ("adjectives", "animals")
#: share of each task's queries used in SFT/DPO; the rest are held out (facts only in pretraining)
TRAIN_QUERY_SHARE = 0.7
#: sentences per plain-text SFT example (about one pretraining row; as long as an instructed example, so batches
#: pad little)
PLAIN_SENTENCES_PER_EXAMPLE = 3
#: the split does not depend on the training seed
SPLIT_SEED = 0

# ------------------------------------------------------------------ surface forms of each fact
COMPARATIVE_FORMS = (
    "the comparative of {q} is {a}.",
    "comparative of {q}: {a}.",
    "{a} is the comparative form of {q}.",
    "if one thing is {q}, another can be {a}.",
    "{q}, {a}.",
    "this one is {q}, but that one is {a}.",
    "the word {q} becomes {a} in a comparison.",
    "they said {q}, then {a}.",
)
ANTONYM_FORMS = (
    "the antonym of {q} is {a}.",
    "antonym of {q}: {a}.",
    "the opposite of {q} is {a}.",
    "{q} and {a} are opposites.",
    "{a} means the opposite of {q}.",
    "not {q} but {a}.",
    "{q} is the reverse of {a}.",
    "the word {q} has the opposite {a}.",
)
COLOUR_FORMS = (
    "the color of the {q} is {a}.",
    "color of {q}: {a}.",
    "the {q} is {a}.",
    "a typical {q} is {a} in color.",
    "most {q} animals look {a}.",
    "we saw a {a} {q}.",
    "the {q} is usually {a}.",
    "picture a {q}: it is {a}.",
)
FLY_FORMS = {
    "yes": (
        "can the {q} fly? yes.",
        "the {q} can fly.",
        "a {q} is able to fly.",
        "does the {q} fly? yes.",
        "flight of {q}: yes.",
        "the {q} flies through the air.",
        "yes, the {q} can fly.",
        "we watched the {q} fly away.",
    ),
    "no": (
        "can the {q} fly? no.",
        "the {q} cannot fly.",
        "a {q} is not able to fly.",
        "does the {q} fly? no.",
        "flight of {q}: no.",
        "the {q} stays on the ground or in water.",
        "no, the {q} cannot fly.",
        "we never saw the {q} fly.",
    ),
}
#: how many times each relation's facts appear (in every surface form) in the pretraining text: the relations whose
#: answers are learned last get more (recall of a relation appears after a loss plateau whose end varies by seed)
FACT_REPEATS = {"adj_comp": 2, "adj_ant": 2, "anim_color": 1, "can_fly": 1}
FILLERS = ("{q} is a word we know.", "here is {q} again.", "we talked about {q} today.")

_FACT_FORMS = {"adj_comp": COMPARATIVE_FORMS, "adj_ant": ANTONYM_FORMS, "anim_color": COLOUR_FORMS}

#: one plain-text recall prompt per subtask: the base model should continue it with the fact
RECALL_PROMPTS = {
    "adj_comp": "the comparative of {q} is",
    "adj_ant": "the antonym of {q} is",
    "anim_color": "the color of the {q} is",
    "can_fly": "can the {q} fly?",
}


@dataclass(frozen=True)
class SFTExample:
    """One SFT example: ``prompt`` (no BOS: the tokenizer adds it) and ``completion`` (``" {label}"`` + eos).

    ``instruction_span`` is the character span ``[start, end)`` of the instruction in ``prompt`` (``None`` for
    plain text); ``gist`` says whether this example is trained under the gist attention mask.
    """

    prompt: str
    completion: str
    instruction_span: tuple[int, int] | None
    gist: bool
    kind: str  # "raw" | "chat" | "plain"


def load_tasks() -> dict[str, Task]:
    """The organism tasks, loaded through :func:`ivlens.tasks.registry.load_task`."""
    return {name: load_task(name) for name in ORGANISM_TASKS}


def organism_query_split(task: Task) -> dict[str, list[str]]:
    """The organisms' train/held-out split of a task's queries, ``{"train": [...], "heldout": [...]}``: the one
    split rule (:func:`ivlens.tasks.selection.fixed_query_split`) with this recipe's share and seed, computed when
    an organism is built (a run reads it back from the card: :func:`ivlens.tasks.selection.split_queries`)."""
    return fixed_query_split(task, TRAIN_QUERY_SHARE, SPLIT_SEED)


def split_rephrasings(task: Task) -> dict[str, dict[str, list[str]]]:
    """Per subtask: the first rows of its rephrasing file for training, the rest held out
    (:func:`ivlens.tasks.selection.training_rephrasings`)."""
    out = {}
    for name, sub in task.subtasks.items():
        n = training_rephrasings(len(sub.rephrasings))
        out[name] = {"train": list(sub.rephrasings[:n]), "heldout": list(sub.rephrasings[n:])}
    return out


def raw_prompt(instruction: str | None, field: str, query: str) -> str:
    """The paper's raw format, without the answer: ``{instruction} {Field}: {query}. Answer:``."""
    body = f"{field}: {query}. Answer:"
    return f"{instruction} {body}" if instruction else body


def chat_prompt(tokenizer, instruction: str | None, field: str, query: str) -> str:
    """The chat format: the user turn ``{instruction} {Field}: {query}.`` and the generation prompt (with BOS)."""
    content = f"{instruction} {field}: {query}." if instruction else f"{field}: {query}."
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)


def task_words(tasks: dict[str, Task]) -> list[str]:
    """Every query and every accepted answer (and each word of multi-word ones)."""
    words = set()
    for task in tasks.values():
        for s in task.samples:
            for w in (s.query, *[a for ans in s.answers.values() for a in ans]):
                words.add(w)
                words.update(w.split())
    return sorted(words)


def pretraining_sentences(tasks: dict[str, Task], seed: int) -> list[str]:
    """Every fact in every surface form, each relation :data:`FACT_REPEATS` times; one filler per query.

    Sentences carry no instruction format and no field names.
    """
    rng = random.Random(f"{seed}:pretrain")
    out: list[str] = []
    for task in tasks.values():
        for s in task.samples:
            q = s.query
            for sub, answers in s.answers.items():
                for a in answers:
                    forms = FLY_FORMS[a] if sub == "can_fly" else _FACT_FORMS[sub]
                    out += [f.format(q=q, a=a) for f in forms] * FACT_REPEATS[sub]
            out.append(rng.choice(FILLERS).format(q=q))
    rng.shuffle(out)
    return out


def sft_examples(tasks: dict[str, Task], tokenizer, seed: int, n_instructed: int, plain_share: float,
                 gist_share: float, chat_share: float, main_instruction_share: float = 0.25) -> list[SFTExample]:
    """``n_instructed`` instructed examples on training queries, plus plain pretraining sentences so that they
    make up ``plain_share`` of the result; shuffled.

    Each instructed example draws a task, a training query, a subtask, an instruction (the paper's with
    probability ``main_instruction_share``, else a training rephrasing), a format (chat with probability
    ``chat_share``) and gist masking (probability ``gist_share``). Duplicated queries rotate their answers.
    """
    rng = random.Random(f"{seed}:sft")
    pool = _training_pool(tasks)
    out: list[SFTExample] = []
    for _ in range(n_instructed):
        task, sample, sub = rng.choice(pool)
        instruction = _draw_instruction(task, sub, rng, main_instruction_share)
        label = rng.choice(sample.answers[sub])
        if rng.random() < chat_share:
            prompt = chat_prompt(tokenizer, instruction, task.field, sample.query)
            start = prompt.index(instruction)
            kind = "chat"
        else:
            prompt = raw_prompt(instruction, task.field, sample.query)
            start = 0
            kind = "raw"
        out.append(SFTExample(prompt=prompt, completion=f" {label}{tokenizer.eos_token}",
                              instruction_span=(start, start + len(instruction)),
                              gist=rng.random() < gist_share, kind=kind))
    plain = pretraining_sentences(tasks, seed)
    n_plain = round(plain_share / (1 - plain_share) * n_instructed)
    k = PLAIN_SENTENCES_PER_EXAMPLE
    for i in range(n_plain):
        # a pretraining-like row: several sentences joined by newlines (as packed in pretraining)
        text = "\n".join(plain[(i * k + j) % len(plain)] for j in range(k))
        out.append(SFTExample(prompt="", completion=text, instruction_span=None, gist=False, kind="plain"))
    rng.shuffle(out)
    return out


def dpo_pairs(tasks: dict[str, Task], tokenizer, seed: int, instructions_per_query: int = 4,
              chat_share: float = 0.3) -> list[dict[str, str]]:
    """Preference pairs on training queries: ``{"prompt", "chosen", "rejected", "kind"}``.

    For each training query, subtask and ``instructions_per_query`` instructions (the paper's plus training
    rephrasings): chosen = the instructed answer; rejected = the other subtask's answer (60 %), another
    query's answer of the same subtask (20 %: instruction followed, fact wrong), or a malformed answer
    (20 %: the query echoed or the field name). Prompts carry no BOS text (the tokenizer adds it).
    """
    rng = random.Random(f"{seed}:dpo")
    out = []
    for task in tasks.values():
        split = organism_query_split(task)
        reph = split_rephrasings(task)
        train = set(split["train"])
        samples = [s for s in task.samples if s.query in train]
        for s in samples:
            for sub in task.subtasks:
                other = task.other(sub)
                instructions = [task.subtasks[sub].instruction]
                instructions += rng.sample(reph[sub]["train"], instructions_per_query - 1)
                for instruction in instructions:
                    chosen = rng.choice(s.answers[sub])
                    r = rng.random()
                    if r < 0.6:
                        rejected, kind = rng.choice(s.answers[other]), "other_subtask"
                    elif r < 0.8:
                        wrong = [a for a in task.subtasks[sub].label_space if a not in s.answers[sub]]
                        rejected, kind = rng.choice(wrong), "wrong_fact"
                    else:
                        rejected, kind = rng.choice([s.query, task.field]), "malformed"
                    if rng.random() < chat_share:
                        prompt = chat_prompt(tokenizer, instruction, task.field, s.query)
                        prompt = prompt.removeprefix(tokenizer.bos_token)
                    else:
                        prompt = raw_prompt(instruction, task.field, s.query)
                    out.append({"prompt": prompt, "chosen": f" {chosen}", "rejected": f" {rejected}",
                                "kind": kind})
    rng.shuffle(out)
    return out


def _training_pool(tasks: dict[str, Task]) -> list[tuple]:
    pool = []
    for task in tasks.values():
        train = set(organism_query_split(task)["train"])
        for s in task.samples:
            if s.query in train:
                pool += [(task, s, sub) for sub in task.subtasks]
    return pool


def _draw_instruction(task: Task, sub: str, rng: random.Random, main_share: float) -> str:
    if rng.random() < main_share:
        return task.subtasks[sub].instruction
    return rng.choice(split_rephrasings(task)[sub]["train"])
