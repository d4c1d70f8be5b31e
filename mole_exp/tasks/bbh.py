"""BIG-Bench Hard: its 27 tasks, each a dataset of the suite; rows carry `source`/`target` (no FLAN template).

Prompt: by default (`shots: 0`) the task's own input, zero-shot. With `shots: 1..3` the task's
chain-of-thought prompt (`bbh/cot-prompts/<task>.txt`, its description and first `shots` exemplars)
precedes "Q: <input>\\nA: Let's think step by step.", as in the BBH paper; the answer is then read after
"the answer is" by the `bbh_em` metric (give such runs room: generation.max_new_tokens=256 or so).

Splits: BBH has one split (250 examples a task, fewer for three). A seeded, disjoint split carves
train (gates) and eval out of it, locally (`bbh/data/<task>.json`) and from the Hub (`lukaemon/bbh`).
The chain-of-thought prompts come from the local copy either way (they are not in the Hub dataset).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mole_exp.tasks.base import LoadedSplits, carve, local_file, register_loader
from mole_exp.tasks.sources import file_rows, hub_rows

BBH_TASKS = (
    "boolean_expressions",
    "causal_judgement",
    "date_understanding",
    "disambiguation_qa",
    "dyck_languages",
    "formal_fallacies",
    "geometric_shapes",
    "hyperbaton",
    "logical_deduction_five_objects",
    "logical_deduction_seven_objects",
    "logical_deduction_three_objects",
    "movie_recommendation",
    "multistep_arithmetic_two",
    "navigate",
    "object_counting",
    "penguins_in_a_table",
    "reasoning_about_colored_objects",
    "ruin_names",
    "salient_translation_error_detection",
    "snarks",
    "sports_understanding",
    "temporal_sequences",
    "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects",
    "tracking_shuffled_objects_three_objects",
    "web_of_lies",
    "word_sorting",
)
COT_SOURCE = "suzgunmirac/BIG-Bench-Hard (GitHub), cot-prompts/"
EXEMPLAR_BREAK = "\n\nQ: "
PROMPTS = ("input", "lorahub")  # zero-shot prompt forms (see the module docstring)


def cot_prompt(path: Path, shots: int) -> str:
    """The task description and the first `shots` exemplars of a BBH chain-of-thought prompt file."""
    text = path.read_text(encoding="utf-8")
    if "-----" in text:  # the canary header ends at a line of dashes
        text = text.split("-----", 1)[1]
    description, *exemplars = text.strip().split(EXEMPLAR_BREAK)
    if shots > len(exemplars):
        raise ValueError(f"{path} has {len(exemplars)} exemplars; shots={shots} asks for more")
    return EXEMPLAR_BREAK.join([description.strip(), *exemplars[:shots]])


def bbh_row(question: str, target: str, prompt: str | None, chain_of_thought: bool = True) -> dict[str, Any]:
    """A BBH row: the question alone (`prompt` None), or after `prompt` (a task description, and exemplars)
    as "Q: <question>\nA:", with "Let's think step by step." when `chain_of_thought`."""
    if prompt is None:
        source = question
    else:
        source = f"{prompt}{EXEMPLAR_BREAK}{question}\nA:" + (" Let's think step by step." if chain_of_thought else "")
    target = str(target).strip()
    return {"source": source, "target": target, "answers": [target]}


def _prompt_file(data_dir: str | None, task: str) -> Path:
    path = Path(data_dir or ".") / "bbh" / "cot-prompts" / f"{task}.txt"
    if not path.exists():
        raise FileNotFoundError(
            f"BBH chain-of-thought prompt {path} does not exist: shots>0 and prompt=lorahub need the prompts of {COT_SOURCE} under data_dir"
        )
    return path


@register_loader("bbh")
def load_bbh(
    name: str,
    source: str,
    data_dir: str | None,
    seed: int,
    task: str | None = None,
    shots: int = 0,
    eval_fraction: float = 0.8,
    hub_id: str = "lukaemon/bbh",
    prompt: str = "input",
) -> LoadedSplits:
    task = task or name
    if task not in BBH_TASKS:
        raise ValueError(f"BBH task {task!r} does not exist; the 27 tasks: {list(BBH_TASKS)}")
    if not 0 <= int(shots) <= 3:
        raise ValueError(f"BBH shots={shots}: 0 (zero-shot, the default) to 3 (the full chain-of-thought prompt)")
    if prompt not in PROMPTS:
        raise ValueError(f"BBH prompt={prompt!r} is not one of {list(PROMPTS)} (task.args.prompt)")
    if shots and prompt != "input":
        raise ValueError(f"BBH prompt={prompt!r} is a zero-shot form; shots={shots} uses the chain-of-thought prompt")
    description = cot_prompt(_prompt_file(data_dir, task), int(shots)) if shots or prompt == "lorahub" else None
    if source == "hub":
        examples, origin = hub_rows(hub_id, task, "test"), f"hub {hub_id} ({task})"
    else:
        examples, origin = file_rows("json", local_file(data_dir, f"bbh/data/{task}.json", f"{hub_id} ({task})"), field="examples"), "local"
    rows = [bbh_row(e["input"], e["target"], description, chain_of_thought=bool(shots)) for e in examples]
    train, test = carve(rows, eval_fraction, seed)
    style = f"{shots}-shot chain-of-thought prompt" if shots else ("zero-shot, LoRAHub's prompt" if prompt == "lorahub" else "zero-shot inputs")
    return LoadedSplits(
        train,
        test,
        f"{origin}: BBH has one split ({len(rows)} examples); seeded (seed={seed}) disjoint split, "
        f"{len(train)} train / {len(test)} eval; {style}",
    )
