"""What a table's (or a figure's) columns compare, said on the table itself.

- `short_differences(runs, keys)`: the part of a column's name that sets its runs apart from the other
  columns of the same variant: only the keys that differ, a config group that differs as a whole named by
  its choice (`model=tiny`, not every model.* key), copies of one setting named once (composer.gate.* is
  gate.*), keys shortened to their last part where that stays unambiguous, at most `MAX_SUFFIX` characters.
- `column_caption(runs)`: one line per column: the model, the expert pool and the number of evaluated
  examples of its runs.
- `not_comparable(runs)`: why a cell of ours cannot be set beside the paper's number (another base model
  than the paper's FLAN-T5-large, or evaluation sets capped by data.eval_limit), or None.
- `extra_column_note(label)`: a column without a counterpart in the paper's table says so.
"""

from __future__ import annotations

from mole_exp.reporting.run_results import Run, setting

PAPER_MODEL = "google/flan-t5-large"  # the base of every NLP number in the paper (Tables 3-8)
MAX_SUFFIX = 80
UNSET = "unset"
# a config group that differs as a whole is named by its choice (from the run's overrides) or by these keys
GROUP_IDENTITY = {
    "model": ("name_or_path", "_target_"),
    "experts": ("ids_file", "source", "_target_"),  # source: the library, as configs before its _target_ named it
    "task": ("name",),
    "eval_task": ("name",),
    "trainer": ("_target_",),
}


def group_choice(run: Run, group: str, from_overrides: bool = True) -> str | None:
    """`group=<option>` as given on the command line (config.yaml's overrides), else the group's identity keys."""
    if from_overrides:
        for override in run.config.get("overrides") or []:
            key, _, value = str(override).lstrip("+~").partition("=")
            if key == group and value:
                return value
    values = setting(run)
    for key in GROUP_IDENTITY.get(group, ()):
        value = values.get(f"{group}.{key}")
        if value is not None:
            return value.rsplit(".", 1)[-1] if key == "_target_" else value
    return None


def collapse_groups(runs: list[Run], keys: list[str]) -> tuple[list[str], dict[str, bool]]:
    """Keys of a group that differs as a whole become the group, named by its choice where the choice tells the
    runs apart exactly as its keys do. Returns the keys left and {group: whether its name comes from overrides}."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        if "." in key and key.split(".", 1)[0] in GROUP_IDENTITY:
            groups.setdefault(key.split(".", 1)[0], []).append(key)
    collapsed = {}
    for group, members in groups.items():
        by_keys = [tuple(setting(r).get(k, UNSET) for k in members) for r in runs]
        for from_overrides in (True, False):
            choices = [group_choice(r, group, from_overrides) for r in runs]
            if None not in choices and len(set(zip(choices, by_keys, strict=True))) == len(set(by_keys)) == len(set(choices)):
                collapsed[group] = from_overrides
                keys = [k for k in keys if k not in members]
                break
    return keys, collapsed


def drop_copies(runs: list[Run], keys: list[str]) -> list[str]:
    """Of keys whose values agree on every run (an interpolated copy, e.g. composer.gate.x = gate.x), the shortest."""
    kept: dict[tuple, str] = {}
    for key in sorted(keys, key=lambda k: (k.count("."), len(k), k)):
        kept.setdefault(tuple(setting(r).get(key, UNSET) for r in runs), key)
    return sorted(kept.values())


def short_names(keys: list[str]) -> dict[str, str]:
    """Each key by its shortest unambiguous tail (granularity, not composer.gate.granularity)."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for size in range(1, len(parts) + 1):
            tail = ".".join(parts[-size:])
            if sum(k == tail or k.endswith("." + tail) for k in keys) == 1:
                names[key] = tail
                break
        else:
            names[key] = key
    return names


def short_differences(runs: list[Run], keys: set[str]) -> dict[str, str]:
    """Run path -> the short text that tells its column apart (see the module docstring); runs of different
    settings never get the same text."""
    all_keys = set(keys)
    keys = drop_copies(runs, sorted(keys))
    keys, groups = collapse_groups(runs, keys)
    names = short_names(keys)
    shown: dict[tuple, str] = {}  # the full setting (every differing key) -> its short text
    suffixes = {}
    for run in runs:
        values = setting(run)
        full = tuple(values.get(k, UNSET) for k in sorted(all_keys))
        if full not in shown:
            parts = [f"{group}={group_choice(run, group, from_overrides)}" for group, from_overrides in sorted(groups.items())]
            parts += [f"{names[k]}={values.get(k, UNSET)}" for k in keys]
            text = ", ".join(parts)
            text = text if len(text) <= MAX_SUFFIX else text[: MAX_SUFFIX - 1].rsplit(",", 1)[0] + ", …"
            if text in shown.values():  # shortened into another setting's name: never merge them
                text += f" #{len(shown) + 1}"
            shown[full] = text
        suffixes[str(run.path)] = shown[full]
    return suffixes


# ---- captions and comparability ---------------------------------------------------------------------------


def experts_pool(run: Run) -> str:
    experts = (run.metrics or {}).get("experts") or {}
    count = experts.get("count", run.config_value("experts.count"))
    target = run.config_value("experts._target_")  # the library's function; older runs wrote experts.source
    source = run.config_value("experts.source") or (str(target).rpartition(".")[2] if target else "?")
    where = run.config_value("experts.ids_file") or run.config_value("experts.library_dir") or ""
    selection = run.config_value("experts.selection")
    picked = f", {selection}" + (f" (seed {run.config_value('experts.seed')})" if selection == "random" else "") if selection else ""
    return f"{count} from {source}" + (f" {where}" if where and source != "tiny" else "") + picked


def examples_text(runs: list[Run]) -> str:
    counts = sorted({n for r in runs for n in ((r.metrics or {}).get("num_examples") or {}).values()})
    datasets = {d for r in runs for d in ((r.metrics or {}).get("num_examples") or {})}
    if not counts:
        return "no evaluated examples recorded"
    per = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    limit = {r.config_value("data.eval_limit") for r in runs} - {None}
    return f"{per} per dataset ({len(datasets)} datasets)" + (f", data.eval_limit={', '.join(map(str, sorted(limit)))}" if limit else "")


def column_caption(label: str, runs: list[Run]) -> str:
    if not runs:
        return f"{label}: no completed run"
    models = sorted({str((r.metrics or {}).get("model", "?")) for r in runs})
    pools = sorted({experts_pool(r) for r in runs})
    return f"{label}: model {', '.join(models)}; experts {'; '.join(pools)}; evaluated {examples_text(runs)}; {len(runs)} run(s)"


def not_comparable(runs: list[Run]) -> str | None:
    """Why these runs' value cannot stand beside the paper's number, or None."""
    reasons = []
    models = sorted({str((r.metrics or {}).get("model")) for r in runs} - {PAPER_MODEL})
    if models:
        reasons.append(f"model {', '.join(models)} (the paper's: {PAPER_MODEL})")
    limits = sorted({r.config_value("data.eval_limit") for r in runs} - {None})
    if limits:
        reasons.append(f"at most {', '.join(map(str, limits))} evaluated examples per dataset (data.eval_limit; the paper: the full test sets)")
    return "not comparable with the paper's numbers: " + "; ".join(reasons) if reasons else None


def extra_column_note(label: str) -> str:
    return f"{label}: a setting the paper's table does not have (its own column; no paper number to compare with)"
