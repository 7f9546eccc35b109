"""Training data: the common dataset shapes normalised to prompt/completion, checks, and replay mixing.

Every example becomes a conversational prompt/completion pair (one user turn, one assistant turn, or
a longer conversation whose last assistant turn is the completion) so that TRL renders it through the
base model's chat template and computes the loss on the completion only.

Shapes accepted (the first that fits a row wins):
- ``prompt`` / ``completion`` (strings, or lists of chat messages)
- ``instruction`` / ``input`` (optional) / ``output`` (Alpaca style)
- ``messages``: a chat; the last message must be the assistant's answer
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import DatasetError
from harness.util.files import write_text_atomic

if TYPE_CHECKING:
    from harness.models.base import LoadedBase

REPLAY_POOL = Path(__file__).parent / "replay_pool" / "prompts.jsonl"
REPLAY_VERSION = "2"  # bump when the way replay answers are generated changes
#: long enough that most of the base's answers end on their own; an answer cut at this length is not used
#: (trained on, a cut answer followed by end-of-turn teaches the adapter to stop mid-sentence: v1 cut at 64
#: tokens, and its replay adapter answered "What is 8 + 8?" with "To add 8 and 8, you simply add them together.")
REPLAY_MAX_NEW_TOKENS = 192

Conversation = dict[str, list[dict[str, str]]]


def _msg(role: str, content: Any) -> dict[str, str]:
    return {"role": role, "content": str(content)}


def normalize_row(row: Mapping[str, Any], where: str) -> Conversation:
    """Turn one data row of any accepted shape into ``{"prompt": [...], "completion": [...]}``."""
    if "prompt" in row and "completion" in row:
        p, c = row["prompt"], row["completion"]
        prompt = p if isinstance(p, list) else [_msg("user", p)]
        completion = c if isinstance(c, list) else [_msg("assistant", c)]
    elif "instruction" in row and "output" in row:
        text = str(row["instruction"])
        if row.get("input"):
            text += "\n\n" + str(row["input"])
        prompt, completion = [_msg("user", text)], [_msg("assistant", row["output"])]
    elif "messages" in row:
        msgs = list(row["messages"] or [])
        if not msgs or msgs[-1].get("role") != "assistant":
            raise DatasetError(f"{where}: 'messages' must end with the assistant's answer (the turn the loss is on)")
        prompt, completion = [_msg(m["role"], m["content"]) for m in msgs[:-1]], [_msg("assistant", msgs[-1]["content"])]
        if not prompt:
            raise DatasetError(f"{where}: 'messages' holds only an assistant turn; add the user turn it answers")
    else:
        raise DatasetError(
            f"{where}: unknown shape (columns: {', '.join(sorted(row)) or 'none'}); use prompt/completion, "
            "instruction/input/output, or messages, or map your columns in the spec: "
            "data: {path: FILE, fields: {prompt: COLUMN, completion: COLUMN}}"
        )
    if not str(completion[-1]["content"]).strip():
        raise DatasetError(f"{where}: empty answer; every example needs text to learn from")
    return {"prompt": prompt, "completion": completion}


def load_rows(path: Path | str) -> list[dict[str, Any]]:
    """Read a JSONL/JSON/CSV/Parquet file or a saved dataset directory (``harness.util.datafiles``)."""
    from harness.suites.data import scan_jsonl
    from harness.util.datafiles import DATA_SUFFIXES, is_reader_error, pad_rows, read_rows

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"training data {path} does not exist; pass a JSONL, CSV or Parquet file or a dataset directory")
    if path.is_file():
        if path.suffix.lower() not in DATA_SUFFIXES:
            raise DatasetError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .json, .csv or .parquet")
        scanned, problems = scan_jsonl(path)  # JSONL: read once, each bad line named with its number
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise DatasetError(problems[0] + more)
        if scanned:
            return pad_rows(scanned)[0]
    try:
        rows, _ = read_rows(path)
    except Exception as exc:
        if not is_reader_error(exc):
            raise
        raise DatasetError(f"cannot read training data {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    if not rows:
        raise DatasetError(f"training data {path} is empty")
    return rows


def map_fields(rows: list[dict[str, Any]], fields: Mapping[str, str], where: str) -> list[dict[str, Any]]:
    """Rename the columns of data as it is (``{prompt: ticket, completion: answer}``) to a shape
    ``normalize_row`` knows; a column that is not there is a DatasetError naming the columns that are."""
    if not fields:
        return rows
    have = set(rows[0]) if rows else set()
    missing = sorted({c for c in fields.values() if c not in have})
    if missing:
        raise DatasetError(f"{where}: data.fields names column(s) {', '.join(missing)}, which the data does not have; "
                           f"columns: {', '.join(sorted(have)) or 'none'}")
    return [{shape: row.get(col) for shape, col in fields.items()} for row in rows]


def data_hash(rows: Sequence[Mapping[str, Any]]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class TokenCheck:
    n_examples: int
    n_truncated: int
    n_supervised_tokens: int
    max_length: int


def check_supervision(tokenizer, rows: Sequence[Conversation], max_length: int,
                      labels: Sequence[str] | None = None) -> TokenCheck:
    """Refuse data where an example keeps no answer token after truncation; count truncations.

    Such an example contributes loss 0 with no gradient: a run made of them logs a loss of 0.0 from
    the first step and learns nothing (DOMAIN.md). ``labels`` names each row where it came from
    (``FILE row N``, 1-based, as every other data error does); without them rows are numbered from 1.
    """
    empty, truncated, supervised = [], 0, 0
    for i, row in enumerate(rows):
        prompt_ids = tokenizer.apply_chat_template(row["prompt"], tokenize=True, add_generation_prompt=True)
        full_ids = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True)
        prompt_ids = prompt_ids["input_ids"] if isinstance(prompt_ids, Mapping) else prompt_ids
        full_ids = full_ids["input_ids"] if isinstance(full_ids, Mapping) else full_ids
        n_answer = min(len(full_ids), max_length) - len(prompt_ids)
        if len(full_ids) > max_length:
            truncated += 1
        if n_answer <= 0:
            empty.append(i)
        else:
            supervised += n_answer
    if empty:
        named = [labels[i] for i in empty] if labels is not None and len(labels) == len(rows) else [f"row {i + 1}" for i in empty]
        shown = ", ".join(named[:10]) + (" ..." if len(empty) > 10 else "")
        raise DatasetError(
            f"{len(empty)} of {len(rows)} examples keep no answer token after truncation to max_seq_length="
            f"{max_length} ({shown}); their loss would be 0.0 and teach nothing. Raise max_seq_length "
            "or shorten the prompts"
        )
    return TokenCheck(len(rows), truncated, supervised, max_length)


def replay_rows(base: LoadedBase, n: int, seed: int, log: Callable[[str], None] = print) -> list[Conversation]:
    """``n`` general examples: the base model's own greedy answers to prompts of the built-in pool, each
    an answer that ended on its own (one cut at ``REPLAY_MAX_NEW_TOKENS`` is replaced by the next prompt's).

    Training on them pulls the adapter towards what the base model already does on general input,
    which limits forgetting and format leakage. Answers are generated once per base model and cached
    under ``$HARNESS_HOME/replay/``. The pool is disjoint from the ``general-knowledge`` suite, so
    replay never trains on the test questions.
    """
    from harness.generation.generate import GenerationSettings, generate, render_prompt
    from harness.models.base import harness_home
    from harness.util.progress import Progress

    pool = [json.loads(line)["prompt"] for line in REPLAY_POOL.read_text(encoding="utf-8").splitlines() if line.strip()]
    # The prompts used are the first n of a seeded shuffle of the pool whose answers ended on their own;
    # only those (and the next ones, in place of cut answers) are generated.
    order = list(pool)
    random.Random(seed).shuffle(order)
    cache = harness_home() / "replay" / base.ref.model_id[:16] / f"answers-v{REPLAY_VERSION}-{base.device}.jsonl"
    answers: dict[str, tuple[str, bool]] = {}  # prompt -> (answer, cut at REPLAY_MAX_NEW_TOKENS)
    if cache.exists():
        try:
            for line in cache.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    a = json.loads(line)
                    answers[a["prompt"]] = (str(a["answer"]), bool(a["truncated"]))
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            answers = {}  # a damaged cache is rebuilt, never trusted
    settings = GenerationSettings(max_new_tokens=REPLAY_MAX_NEW_TOKENS)
    usable: list[str] = []
    pos, generated = 0, False
    while len(usable) < n and pos < len(order):
        take = order[pos: pos + n - len(usable)]
        pos += len(take)
        missing = [p for p in take if p not in answers]
        if missing:
            log(f"  generating the base model's answers to {len(missing)} general prompts for replay (cached afterwards)")
            with Progress(len(missing), "replay answers", log) as bar:
                gens = generate(base.model, base.tokenizer, [render_prompt(base.tokenizer, p) for p in missing], settings,
                                batch_size=16, progress=bar.update)
            answers.update({p: ((g.text or "").strip(), g.truncated) for p, g in zip(missing, gens)})
            generated = True
        usable += [p for p in take if answers[p][0] and not answers[p][1]]
    if generated:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cache, "".join(json.dumps({"prompt": p, "answer": a, "truncated": cut}, ensure_ascii=False) + "\n"
                                         for p, (a, cut) in answers.items()))
    if not usable:
        raise DatasetError("the base model gave no usable (non-empty, ended on its own) answer to any replay prompt; mix in "
                           "your own general data instead")
    if n > len(usable):
        # More replay than the pool holds: repeat it rather than invent data.
        usable = usable * (n // len(usable) + 1)
    return [{"prompt": [_msg("user", p)], "completion": [_msg("assistant", answers[p][0])]} for p in usable[:n]]


def sample_rows(pool: list[Conversation], n: int, seed: int) -> list[Conversation]:
    """``n`` rows drawn from ``pool`` without replacement (repeating the pool when it is smaller)."""
    if not pool:
        raise DatasetError("the data to mix in is empty")
    order = list(pool)
    random.Random(seed).shuffle(order)
    return (order * (n // len(order) + 1))[:n]


def mix_in(task: list[Conversation], general: list[Conversation], seed: int) -> list[Conversation]:
    """Shuffle general rows in among the task rows, deterministically."""
    rows = task + general
    random.Random(seed).shuffle(rows)
    return rows


def n_general_for(n_task: int, share: float) -> int:
    """How many general rows make ``share`` of the mixed set."""
    return round(n_task * share / (1.0 - share))
