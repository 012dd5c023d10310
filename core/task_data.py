"""Where task examples come from: local data files, the HF hub, and field-role mappings.

Public: HubSource, read_records(path), hub_rows(hub, split, *, task_name, fields_hint),
parse_fields(text), check_roles(fields), field_text(row, spec, role, where), ROLES, FILE_TYPES.

Local files are .json (a list, or an object with a "data" / "instances" list), .jsonl or .csv;
hub datasets load through `datasets` (imported lazily). Field overrides map the roles "prompt",
"answer" and "reference" to field names; "a+b" joins fields with a space.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from skd.core import metrics
from skd.core.errors import SkdError

ROLES = ("prompt", "answer", "reference")
FILE_TYPES = (".json", ".jsonl", ".csv")


@dataclass(frozen=True)
class HubSource:
    """Where a task lives on the HF hub. configs: none, one, or several concatenated in order
    (MATH's subjects); splits: skd split name -> hub split name; pair: (source config, target
    config, text field, key field) when sentences of two per-language configs are joined by key
    (FLORES+), giving fields "sentence_<config>"; keep: hub rows are kept only when it returns True
    (described by keep_doc); gated: the hub requires accepting terms and logging in."""

    path: str
    configs: tuple[str, ...] = ()
    splits: Mapping[str, str] = field(default_factory=dict)
    pair: tuple[str, str, str, str] | None = None
    keep: Callable[[Mapping[str, Any]], bool] | None = None
    keep_doc: str = ""
    gated: bool = False


def hub_rows(hub: HubSource, split: str, *, task_name: str, fields_hint: str) -> tuple[str, list[dict]]:
    """(source label, rows) of skd split `split` of `hub`; SkdError with the local-file fix when offline."""
    load_dataset = _import_load_dataset(task_name, fields_hint)
    hub_split = hub.splits[split]
    source = f"hub:{hub.path}:{hub_split}"
    # An unreachable hub makes `datasets` retry with back-off for ~25 s, printing each retry;
    # the models module's 3-second probe answers first. With HF_HUB_OFFLINE=1 set, the
    # library itself fails fast (or reads its local cache), so it is left to it.
    from skd.core.hub import hub_unavailable_reason

    reason = hub_unavailable_reason()
    if reason is not None and reason.startswith("offline or unreachable"):
        raise SkdError(f"cannot download dataset '{hub.path}' ({reason})",
                       f"pass a local file with --data path.jsonl ({fields_hint}), or set "
                       "HF_HUB_OFFLINE=1 to use a copy in the local Hugging Face cache")
    try:
        if hub.pair is not None:
            rows = _paired_rows(load_dataset, hub, hub_split)
        else:
            rows = []
            for config in hub.configs or (None,):
                rows.extend(load_dataset(hub.path, config, split=hub_split).to_list())
    except Exception as err:  # offline, gated, renamed: all leave the user with a local file
        raise _download_error(hub, err, fields_hint) from err
    if hub.keep is not None:
        rows = [row for row in rows if hub.keep(row)]
    return source, rows


def _download_error(hub: HubSource, err: Exception, fields_hint: str) -> SkdError:
    detail = (str(err).strip().splitlines() or [""])[0][:160]
    gated = (" (the dataset is gated: accept its terms on the hub and log in with "
             "`hf auth login`)") if hub.gated else ""
    return SkdError(
        f"cannot download dataset '{hub.path}' (offline or unreachable: "
        f"{type(err).__name__}: {detail}){gated}",
        f"pass a local file with --data path.jsonl ({fields_hint})")


def parse_fields(text: str | None) -> dict[str, str]:
    """ "prompt=question,answer=answer" -> {"prompt": "question", "answer": "answer"}. Roles:
    prompt, answer, reference; a value "Body+Question" joins those fields with a space."""
    if text is None or not text.strip():
        return {}
    out: dict[str, str] = {}
    for item in text.split(","):
        role, sep, name = (part.strip() for part in item.partition("="))
        if not sep or not role or not name:
            raise SkdError(f"cannot read field override '{item.strip()}'",
                           "write role=field pairs separated by commas, e.g. "
                           "--field prompt=question,answer=answer")
        if role in out:
            raise SkdError(f"field role '{role}' is given twice", "give each role once")
        out[role] = name
    return check_roles(out)


def check_roles(fields: Mapping[str, str] | None) -> dict[str, str]:
    """A role -> field mapping with known roles only (SkdError naming the others); {} for None."""
    if not fields:
        return {}
    unknown = [role for role in fields if role not in ROLES]
    if unknown:
        raise SkdError(f"unknown field role(s): {', '.join(unknown)}",
                       f"use the roles {', '.join(ROLES)}, e.g. --field prompt=question")
    return {role: str(name) for role, name in fields.items()}


def field_text(row: Mapping[str, Any], spec: str, role: str, where: str) -> str:
    """The text of field `spec` ("a" or "a+b", joined by a space) in `row`."""
    parts = []
    for name in spec.split("+"):
        name = name.strip()
        if name not in row:
            available = ", ".join(sorted(map(str, row))) or "none"
            raise SkdError(f"{where}: no field '{name}' for the {role} (fields there: {available})",
                           f"pass --field {role}=<one of those fields>")
        value = row[name]
        if value is None:
            raise SkdError(f"{where}: field '{name}' (the {role}) is empty",
                           "fill it in or drop that row")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise SkdError(f"{where}: field '{name}' holds a {type(value).__name__}, not text",
                           f"point --field {role}= at a text or number field")
        parts.append(value if isinstance(value, str) else metrics.normalize_number(value) or str(value))
    return " ".join(parts)


def read_records(path: str | Path) -> list[dict]:
    """Rows of a local data file: .json (a list, or an object with a "data" or "instances" list),
    .jsonl (one object per line, blank lines skipped) or .csv (header row). Malformed content
    raises SkdError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise SkdError(f"data file not found: {path}", "check the --data path")
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        raise SkdError(f"cannot read '{path.name}': unsupported file type '{suffix or '(none)'}'",
                       f"use one of {', '.join(FILE_TYPES)}")
    if suffix == ".csv":  # newline="": quoted fields may span lines (multi-line answers)
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return [dict(row) for row in csv.DictReader(handle)]
    text = path.read_text(encoding="utf-8-sig")
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise SkdError(f"{path}, line {number}: not valid JSON ({err.msg}, column {err.colno})",
                               "fix or remove that line (one JSON object per line)") from err
            if not isinstance(row, dict):
                raise SkdError(f"{path}, line {number}: a JSON {type(row).__name__}, not an object",
                               "write one JSON object per line")
            rows.append(row)
        return rows
    try:
        data = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as err:
        raise SkdError(f"{path}, line {err.lineno}: not valid JSON ({err.msg})",
                       "fix the file, or use .jsonl with one object per line") from err
    if isinstance(data, dict):
        key = next((k for k in ("data", "instances") if isinstance(data.get(k), list)), None)
        if key is None:
            raise SkdError(f"{path}: a JSON object without a 'data' or 'instances' list "
                           f"(keys: {', '.join(map(str, data)) or 'none'})",
                           "store a list of examples, or put it under \"data\"")
        data = data[key]
    if not isinstance(data, list):
        raise SkdError(f"{path}: JSON holds a {type(data).__name__}, not a list of examples",
                       "store a list of objects")
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise SkdError(f"{path}: item {number} is a {type(row).__name__}, not an object",
                           "store one object per example")
    return data


def _import_load_dataset(task_name: str, fields_hint: str):
    try:
        from datasets import load_dataset
    except ImportError as err:
        raise SkdError(f"loading '{task_name}' from the hub needs the 'datasets' library ({err})",
                       f"pip install datasets, or pass a local file with --data path.jsonl "
                       f"({fields_hint})") from err
    return load_dataset


def _paired_rows(load_dataset, hub: HubSource, hub_split: str) -> list[dict]:
    """Join two per-language configs (FLORES+) on their key field into
    {"id", "sentence_<src>", "sentence_<tgt>"} rows, in source order."""
    src_config, tgt_config, text, key = hub.pair
    src = load_dataset(hub.path, src_config, split=hub_split).to_list()
    tgt = {row[key]: row[text] for row in load_dataset(hub.path, tgt_config, split=hub_split)}
    return [{"id": row[key], f"sentence_{src_config}": row[text],
             f"sentence_{tgt_config}": tgt[row[key]]} for row in src if row[key] in tgt]
