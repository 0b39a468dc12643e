"""Readers and writers for the two Switchboard releases the project uses.

Formats
-------
* **Zhao's JSONL** (``zhao/valid.jsonl``, ``zhao/test.jsonl``, and the prepared corpus written by
  :mod:`training.prepare`): one dialog per line,
  ``{"A": ..., "B": ..., "topic": ..., "utts": [[speaker, text, [act, sentiment]], ...]}``.
  The prepared corpus adds ``"id"`` and ``"source"`` and writes ``[act_or_null, []]``.
* **Zhao's pickle** (NeuralDialog-CVAE's ``full_swda_clean_42da_sentiment_dialog_corpus.p``): a
  dict with ``train``/``valid``/``test`` keys, each a list of dialogs in the same dict layout. It
  is read with :class:`RestrictedUnpickler`, which refuses to load *any* class or function, so
  only pickle's built-in containers and scalars (dict, list, tuple, set, str, bytes, int, float,
  bool, None) can come out of it and no code is ever run.
* **SwDA export** (NathanDuran/Switchboard-Corpus): a directory of ``NNNN.txt`` files, one
  conversation per file named by its conversation number, one ``speaker|text|tag`` utterance per
  line; or a directory whose ``train/`` and ``val/`` subdirectories hold such files.

Text
----
Every utterance's text goes through :func:`model.text.tokenize` with the reader's ``tokenizer``
(normalization to Zhao's conventions, the identity on Zhao's already-normalized text, then
Zhao's WordPunct split by default); a prepared corpus, whose text is already tokens joined by
spaces, is read with ``tokenizer=PRETOKENIZED``. An utterance that is empty after normalization
(``"Uh."``) is dropped and counted in :class:`ReadStats`; a dialog left without utterances is
dropped and counted too.

Segmentation
------------
SwDA splits a speaker's turn into dialog-act segments (7.1 words on average), Zhao's release into
longer utterances (12.0). With ``segmentation="sentence"`` (:func:`join_continuations`) a
speaker's consecutive SwDA segments are joined while the earlier one does not end a sentence
(no final ``.``, ``?`` or ``!``): "Oh, I haven't watched that very much," + "is that," + "do you
like that?" become one utterance, as in Zhao's twin of that call. ``"dialog-act"`` keeps SwDA's
segments.

Malformed input policy
----------------------
Readers never guess: a line or record that does not have the documented shape raises
:class:`CorpusError` (a :class:`ValueError`) whose message starts with ``file:line:`` (JSONL, SwDA)
or ``file: split[index]:`` (pickle) and shows the offending text. Blank lines are skipped. Files
must be UTF-8. Files in a SwDA directory whose name is not ``<digits>.txt`` (e.g.
``dialogue_acts.txt``) are not conversations and are ignored.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import pickle
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.files import atomic_write_text, os_error_reason, read_bytes
from model.text import DEFAULT_TOKENIZER, split_tokens, tokenize

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
SWDA_SUBDIRS = ("train", "val")
PRETOKENIZED = "pretokenized"  # text that is already tokens joined by spaces
SEGMENTATIONS = ("sentence", "dialog-act")
DEFAULT_SEGMENTATION = "sentence"
# A SwDA segment that ends a sentence (after any transcriber's note, see normalize_utterance).
_SENTENCE_END = re.compile(r"[.?!]\s*$")


class CorpusError(ValueError):
    """Malformed, missing or unreadable corpus input; the message names the file (and line)."""


@dataclass
class Utterance:
    speaker: str
    tokens: list[str]
    act: str | None = None


@dataclass
class Dialog:
    id: str
    source: str  # "swda" | "zhao"
    utterances: list[Utterance] = field(default_factory=list)

    def turns(self) -> list[tuple[str, list[str]]]:
        """``[(speaker, tokens), ...]``: the form :mod:`model.batch` takes."""
        return [(u.speaker, u.tokens) for u in self.utterances]

    def tokens(self) -> Iterator[str]:
        """All tokens of the dialog in order (utterance boundaries ignored)."""
        for u in self.utterances:
            yield from u.tokens


@dataclass
class ReadStats:
    """What a reader kept and dropped; pass one in to accumulate over several reads."""

    dialogs: int = 0
    utterances: int = 0
    dropped_empty_utterances: int = 0
    dropped_empty_dialogs: int = 0
    joined_segments: int = 0  # segments appended to the utterance before (join_continuations)

    def add(self, other: ReadStats) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def _short(text: Any, limit: int = 80) -> str:
    s = repr(text)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def text_to_tokens(tokenizer: str):
    """The function a reader applies to each utterance's text (see the module docstring)."""
    if tokenizer == PRETOKENIZED:
        return split_tokens
    tokenize("", tokenizer)  # an unknown name fails here, before any file is read
    return lambda text: tokenize(text, tokenizer)


def _make_dialog(
    dialog_id: str,
    source: str,
    raw: Iterable[tuple[str, str, str | None]],
    stats: ReadStats,
    tokenizer: str = DEFAULT_TOKENIZER,
    join: bool = False,
) -> Dialog | None:
    """Tokenize ``(speaker, text, act)`` triples; drop empty utterances (and an empty dialog).

    With ``join``, segments are joined as :func:`join_continuations` says.
    """
    to_tokens = text_to_tokens(tokenizer)
    utts: list[Utterance] = []
    open_sentence = False  # the last segment added to utts[-1] did not end a sentence
    for speaker, text, act in raw:
        tokens = to_tokens(text)
        if not tokens:
            stats.dropped_empty_utterances += 1
        elif join and open_sentence and utts and utts[-1].speaker == speaker:
            utts[-1].tokens.extend(tokens)
            stats.joined_segments += 1
        else:
            utts.append(Utterance(speaker, tokens, act))
        if tokens or (utts and utts[-1].speaker == speaker):
            open_sentence = join_continuations(text)
    if not utts:
        stats.dropped_empty_dialogs += 1
        return None
    stats.dialogs += 1
    stats.utterances += len(utts)
    return Dialog(dialog_id, source, utts)


def join_continuations(segment_text: str) -> bool:
    """Whether the speaker's next segment continues this one (see Segmentation above)."""
    return not _SENTENCE_END.search(segment_text.split("*", 1)[0].strip())


# --------------------------------------------------------------------------- Zhao dict layout


def _parse_utt(utt: Any, where: str) -> tuple[str, str, str | None]:
    """One ``[speaker, text, [act, sentiment]]`` entry (the act list may be missing or null)."""
    if not isinstance(utt, (list, tuple)) or len(utt) not in (2, 3):
        raise CorpusError(f"{where}: expected [speaker, text, [act, ...]], got {_short(utt)}")
    speaker, text = utt[0], utt[1]
    if not isinstance(speaker, str) or not speaker.strip():
        raise CorpusError(f"{where}: speaker must be a non-empty string, got {_short(speaker)}")
    if not isinstance(text, str):
        raise CorpusError(f"{where}: text must be a string, got {_short(text)}")
    act = None
    if len(utt) == 3 and utt[2] is not None:
        feat = utt[2]
        if not isinstance(feat, (list, tuple)):
            raise CorpusError(f"{where}: expected [act, sentiment], got {_short(feat)}")
        if feat:
            act = feat[0]
            if act is not None and not isinstance(act, str):
                raise CorpusError(
                    f"{where}: dialog act must be a string or null, got {_short(act)}"
                )
    return speaker.strip(), text, act


def _parse_dialog_obj(obj: Any, where: str) -> tuple[str | None, str | None, list]:
    if not isinstance(obj, dict):
        raise CorpusError(f"{where}: expected a dialog object, got {_short(obj)}")
    utts = obj.get("utts")
    if not isinstance(utts, list):
        raise CorpusError(f"{where}: dialog has no 'utts' list (keys: {sorted(map(str, obj))})")
    dialog_id, source = obj.get("id"), obj.get("source")
    if dialog_id is not None and not isinstance(dialog_id, str):
        raise CorpusError(f"{where}: 'id' must be a string, got {_short(dialog_id)}")
    if source is not None and source not in ("swda", "zhao"):
        raise CorpusError(f"{where}: 'source' must be 'swda' or 'zhao', got {_short(source)}")
    return dialog_id, source, [_parse_utt(u, f"{where}: utts[{i}]") for i, u in enumerate(utts)]


def read_zhao_jsonl(
    path: str | Path, stats: ReadStats | None = None, tokenizer: str = DEFAULT_TOKENIZER
) -> list[Dialog]:
    """Read one JSONL split (Zhao's release, or with ``tokenizer=PRETOKENIZED`` a prepared
    corpus file).

    Dialog ids are the ``"id"`` field when present (prepared corpus), else ``"<file stem>/<n>"``
    with ``n`` the 0-based dialog index in the file (``"test/17"``); the source is ``"source"``
    when present, else ``"zhao"``. Raises :class:`CorpusError` ``"path:line: ..."`` for invalid
    JSON or a record without the ``utts`` layout; blank lines are skipped.
    """
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    dialogs: list[Dialog] = []
    index = 0
    for lineno, line in _read_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{where}: invalid JSON ({e.msg}): {_short(line)}") from e
        dialog_id, source, raw = _parse_dialog_obj(obj, where)
        d = _make_dialog(
            dialog_id or f"{path.stem}/{index}", source or "zhao", raw, stats, tokenizer
        )
        index += 1
        if d is not None:
            dialogs.append(d)
    return dialogs


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that loads no class or function at all.

    Pickle builds dicts, lists, tuples, sets, str, bytes, int, float, bool and None from opcodes
    without :meth:`find_class`; everything else (class instances, ``__reduce__`` tricks such as
    ``os.system``, even numpy scalars) needs a global, which is refused here.
    """

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(
            f"refusing to load global '{module}.{name}' "
            "(only built-in containers, str, int and float may be unpickled)"
        )


def _decode_bytes(obj: Any) -> Any:
    """Python 2 pickles may carry byte strings; decode them (UTF-8) recursively."""
    if isinstance(obj, bytes):
        return obj.decode("utf-8")
    if isinstance(obj, dict):
        return {_decode_bytes(k): _decode_bytes(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_decode_bytes(v) for v in obj)
    return obj


def read_zhao_pickle(
    path: str | Path, stats: ReadStats | None = None, tokenizer: str = DEFAULT_TOKENIZER
) -> dict[str, list[Dialog]]:
    """Read Zhao's single pickle with ``train``/``valid``/``test`` keys (see module docstring).

    Dialog ids are ``"<split>/<n>"``. Raises :class:`CorpusError` naming the file if the pickle
    is unreadable, tries to load any class/function, lacks a split, or a dialog is malformed
    (``"path: train[3]: utts[5]: ..."``).
    """
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    try:
        raw_bytes = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"{path}: cannot read: {e}") from e
    try:
        data = RestrictedUnpickler(io.BytesIO(raw_bytes), encoding="utf-8").load()
        data = _decode_bytes(data)
    except Exception as e:  # pickle raises many types on corrupt input
        raise CorpusError(f"{path}: not a loadable Zhao corpus pickle: {e}") from e
    if not isinstance(data, dict):
        raise CorpusError(f"{path}: expected a dict with keys {SPLITS}, got {type(data).__name__}")
    missing = [s for s in SPLITS if s not in data]
    if missing:
        raise CorpusError(f"{path}: missing split(s) {missing} (keys: {sorted(map(str, data))})")
    out: dict[str, list[Dialog]] = {}
    for split in SPLITS:
        items = data[split]
        if not isinstance(items, (list, tuple)):
            raise CorpusError(f"{path}: split '{split}' must be a list of dialogs")
        dialogs = []
        for i, obj in enumerate(items):
            _, _, raw = _parse_dialog_obj(obj, f"{path}: {split}[{i}]")
            d = _make_dialog(f"{split}/{i}", "zhao", raw, stats, tokenizer)
            if d is not None:
                dialogs.append(d)
        out[split] = dialogs
    return out


def read_zhao(
    path: str | Path, stats: ReadStats | None = None, tokenizer: str = DEFAULT_TOKENIZER
) -> dict[str, list[Dialog]]:
    """Zhao's release: a pickle file, or a directory with ``valid.jsonl``/``test.jsonl``
    (and optionally ``train.jsonl``). Returns the splits found; valid and test are required."""
    path = Path(path)
    if path.is_file():
        return read_zhao_pickle(path, stats, tokenizer)
    if not path.is_dir():
        raise CorpusError(f"{path}: Zhao corpus not found (expected a directory or a pickle)")
    out = {}
    for split in SPLITS:
        f = path / f"{split}.jsonl"
        if f.is_file():
            out[split] = read_zhao_jsonl(f, stats, tokenizer)
        elif split != "train":
            raise CorpusError(f"{f}: missing (a Zhao directory needs valid.jsonl and test.jsonl)")
    return out


# --------------------------------------------------------------------------- SwDA export


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(1-based line number, line without the newline)``; UTF-8, errors name file and line."""
    try:
        data = read_bytes(path)
    except OSError as e:
        raise CorpusError(f"{path}: cannot read: {os_error_reason(e)}") from e
    for lineno, raw in enumerate(data.splitlines(), 1):
        try:
            yield lineno, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CorpusError(f"{path}:{lineno}: not valid UTF-8 ({e.reason})") from e


def parse_swda_line(line: str, where: str) -> tuple[str, str, str | None]:
    """``"speaker|text|tag"`` -> ``(speaker, text, tag or None)``.

    The speaker is the text before the first ``|`` and the tag the text after the last one, so a
    ``|`` inside the text survives. A line without two ``|`` or with an empty speaker raises
    :class:`CorpusError`; an empty tag becomes ``None``.
    """
    parts = line.split("|", 1)
    if len(parts) != 2 or "|" not in parts[1]:
        raise CorpusError(f"{where}: expected 'speaker|text|tag', got {_short(line)}")
    speaker = parts[0].strip()
    text, tag = parts[1].rsplit("|", 1)
    if not speaker:
        raise CorpusError(f"{where}: empty speaker in {_short(line)}")
    return speaker, text, tag.strip() or None


def read_swda_file(
    path: str | Path,
    dialog_id: str | None = None,
    stats: ReadStats | None = None,
    tokenizer: str = DEFAULT_TOKENIZER,
    segmentation: str = DEFAULT_SEGMENTATION,
) -> Dialog | None:
    """One SwDA conversation file. ``dialog_id`` defaults to the file stem (conversation number).

    Returns ``None`` (and counts it) when no utterance survives normalization.
    """
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    raw = [
        parse_swda_line(line, f"{path}:{lineno}")
        for lineno, line in _read_lines(path)
        if line.strip()
    ]
    if segmentation not in SEGMENTATIONS:
        raise ValueError(f"segmentation must be one of {SEGMENTATIONS}, got {segmentation!r}")
    join = segmentation == "sentence"
    return _make_dialog(dialog_id or path.stem, "swda", raw, stats, tokenizer, join)


def swda_files(path: str | Path, subdirs: Sequence[str] = SWDA_SUBDIRS) -> list[Path]:
    """The conversation files of a SwDA export directory (see :func:`read_swda`), in order;
    of those of ``subdirs`` that exist (all files of ``path`` if none does)."""
    path = Path(path)
    if not path.is_dir():
        raise CorpusError(f"{path}: SwDA directory not found")
    present = [path / s for s in subdirs if (path / s).is_dir()]
    files: list[Path] = []
    for d in present or [path]:
        convs = [f for f in d.glob("*.txt") if f.stem.isdigit() and f.is_file()]
        files.extend(sorted(convs, key=lambda f: (int(f.stem), f.name)))
    if not files:
        raise CorpusError(f"{path}: no SwDA conversation files (<number>.txt) found")
    return files


def read_swda(
    path: str | Path,
    stats: ReadStats | None = None,
    progress: bool = False,
    tokenizer: str = DEFAULT_TOKENIZER,
    segmentation: str = DEFAULT_SEGMENTATION,
    subdirs: Sequence[str] = SWDA_SUBDIRS,
) -> list[Dialog]:
    """Every conversation of a SwDA export: ``path/{train,val}/NNNN.txt`` if those subdirectories
    exist, else ``path/NNNN.txt``. Dialog ids are the conversation numbers; the same number twice
    (e.g. in both train/ and val/) raises :class:`CorpusError`."""
    from tqdm import tqdm

    stats = stats if stats is not None else ReadStats()
    files = swda_files(path, subdirs)
    dialogs: list[Dialog] = []
    seen: dict[str, Path] = {}  # conversation number: the file it was read from
    for f in tqdm(files, desc="read swda", unit="conv", disable=not progress):
        if f.stem in seen:
            raise CorpusError(f"{f}: conversation {f.stem} already read from {seen[f.stem]}")
        seen[f.stem] = f
        d = read_swda_file(f, f.stem, stats, tokenizer, segmentation)
        if d is not None:
            dialogs.append(d)
    return dialogs


# --------------------------------------------------------------------------- writing


def dialog_to_json(dialog: Dialog) -> dict:
    """The prepared-corpus record: Zhao's layout plus ``id``/``source``, sentiment left empty."""
    return {
        "id": dialog.id,
        "source": dialog.source,
        "utts": [[u.speaker, " ".join(u.tokens), [u.act, []]] for u in dialog.utterances],
    }


def write_jsonl(dialogs: Iterable[Dialog], path: str | Path) -> None:
    """Write dialogs in the prepared JSONL format (atomically); :func:`read_zhao_jsonl` reads it."""
    text = "".join(json.dumps(dialog_to_json(d), ensure_ascii=False) + "\n" for d in dialogs)
    atomic_write_text(path, text)
