"""Language-model datasets: token sequences `x [N, T]` with next tokens `y [N, T]`.

Every sample is a window of `context + 1` consecutive tokens `s`: `x = s[:-1]` (stored as
float32 ids by the task, exact below 2^24) and `y = s[1:]`. Windows do not overlap, so a held-out
sequence shares no token position with a training one (except LEAF Shakespeare, whose samples
are LEAF's own stride-1 windows). `context` is shared with the `transformer` model (the `[task]`
section is flat: one key sets both). Label-skew partitions (dirichlet, shards) do not apply;
allowed are iid, natural, contiguous (consecutive sequences in text order) and quantity.

- `grammar_text` (built in): text generated from a seeded probabilistic grammar, deterministic
  in `data_seed`, generated in well under a second. A lexicon of made-up words (consonant-vowel
  syllables) in five parts of speech; sentences `NP [PREP NP] VERB [NP] [ADV].` with
  `NP = DET ADJ{0,2} NOUN` and number agreement: a plural determiner takes a plural noun
  (suffix `s`) and a verb without the singular `s`, so predicting a verb's ending needs the
  subject a few words back. Vocabulary: the 30 characters `\\n ,.a-z`. Each natural client
  writes in its own style: word choice p_c = (1 − style)·p_shared + style·p_own (Zipf laws
  over a shared and a client-specific ranking of each word class) and its own rates of
  adjectives, prepositional phrases, objects, adverbs and plurals. `partition = "natural"`
  (default) is therefore non-iid, `iid` shuffles all clients' sequences together; `style = 0`
  makes clients alike.
- `text:PATH`: any file read as bytes (byte-level, vocabulary 256; UTF-8 characters outside
  ASCII become several tokens). `split` sets the natural clients: `contiguous` gives client i
  the i-th block of consecutive sequences of the file (non-iid: different parts of the text),
  `random` deals sequences to clients at random (iid shards).
- `shakespeare:DIR`: LEAF's Shakespeare (Caldas et al., "LEAF: A Benchmark for Federated
  Settings", arXiv 1812.01097): JSON files whose `x` are 80-character strings and `y` the next
  character, one user per speaking role. DIR is LEAF's `data/` folder with `train/` and `test/`
  (both are pooled, fedbench holds out `test_fraction` of each role) or a folder of `*.json`.
  A sample is the last `context + 1` characters of `x + y` (so `context <= 80`), tokens are
  character codes (vocabulary 256, other characters become `?`); one natural client per role.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from fedbench.data.base import DATASETS, DataError, RawData
from fedbench.data.leaf import read_leaf
from fedbench.params import Component, Param

# the same field as the transformer's `context` (one flat [task] key; tests check they agree)
CONTEXT = Param(
    64, "tokens per training sequence (shared with the LM datasets)", "int", low=2, high=4096
)
LM = {
    "partitions": ("iid", "natural", "contiguous", "quantity"),
    "default_partition": "natural",
    "sequences": True,  # token sequences: only language models (grid check)
}
BYTES = 256


def windows(tokens: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows of `context + 1` tokens -> (x [S, T] float32, y [S, T] int64)."""
    s = tokens[: tokens.shape[0] // (context + 1) * (context + 1)].reshape(-1, context + 1)
    return s[:, :-1].astype(np.float32), s[:, 1:].astype(np.int64)


# -- grammar_text ------------------------------------------------------------------------------

ALPHABET = "\n ,." + "abcdefghijklmnopqrstuvwxyz"
CONSONANTS, VOWELS = "bdfgklmnprstvz", "aeiou"
WORD_CLASSES = {"noun": 48, "verb": 32, "adj": 24, "adv": 12, "prep": 8}
DETERMINERS = (("the", "a", "this", "each"), ("the", "some", "these", "many"))  # (sg, pl)
ZIPF = 1.1  # exponent of the within-class word frequencies


def _lexicon(rng: np.random.Generator) -> dict[str, list[str]]:
    """Distinct made-up words (1-3 consonant-vowel syllables, nouns/verbs not ending in `s`)."""
    seen = {w for pair in DETERMINERS for w in pair}
    out: dict[str, list[str]] = {}
    for cls, count in WORD_CLASSES.items():  # loop over word classes
        words: list[str] = []
        while len(words) < count:
            k = int(rng.integers(1, 4))
            w = "".join(CONSONANTS[rng.integers(14)] + VOWELS[rng.integers(5)] for _ in range(k))
            if cls in ("noun", "verb") and rng.random() < 0.3:
                w += "rn"[int(rng.integers(2))]  # closed final syllable, never `s`
            if w not in seen:
                seen.add(w)
                words.append(w)
        out[cls] = words
    return out


def _zipf(count: int) -> np.ndarray:
    p = 1.0 / np.arange(1, count + 1) ** ZIPF
    return p / p.sum()


class _Style:
    """A client's word distributions (per class) and rule rates."""

    def __init__(self, rng: np.random.Generator, shared: dict[str, np.ndarray], s: float) -> None:
        self.p = {
            c: (1 - s) * shared[c] + s * _zipf(len(shared[c]))[rng.permutation(len(shared[c]))]
            for c in shared
        }
        base = np.array([0.5, 0.3, 0.6, 0.25, 0.4])  # adjective, PP, object, adverb, plural
        self.adj, self.pp, self.obj, self.adv, self.plural = (
            (1 - s) * base + s * rng.uniform(0.05, 0.8, 5)
        ).tolist()


class _Draws:
    """Pre-drawn words (per class, from the style's distribution) and uniforms, refilled in
    vectorised blocks: one numpy call per block instead of one per word."""

    def __init__(
        self, rng: np.random.Generator, lex: dict[str, list[str]], st: _Style, block: int
    ) -> None:
        self.rng, self.lex, self.st, self.block = rng, lex, st, block
        self.pools: dict[str, list[str]] = {c: [] for c in lex}
        self.u: list[float] = []

    def word(self, c: str) -> str:
        if not self.pools[c]:
            idx = self.rng.choice(len(self.lex[c]), size=self.block, p=self.st.p[c])
            self.pools[c] = [self.lex[c][i] for i in idx]
        return self.pools[c].pop()

    def uniform(self) -> float:
        if not self.u:
            self.u = self.rng.random(4 * self.block).tolist()
        return self.u.pop()


def _sentences(rng: np.random.Generator, lex: dict[str, list[str]], st: _Style, chars: int) -> str:
    """Sentences of one style until `chars` characters are reached."""
    d = _Draws(rng, lex, st, block=max(64, chars // 16))  # ~chars/6 words in all
    out: list[str] = []
    total = 0

    def phrase(plural: bool) -> list[str]:
        ws = [DETERMINERS[plural][int(4 * d.uniform())]]
        while d.uniform() < st.adj and len(ws) < 3:
            ws.append(d.word("adj"))
        return [*ws, d.word("noun") + ("s" if plural else "")]

    while total < chars:
        pl = d.uniform() < st.plural
        ws = phrase(pl)
        if d.uniform() < st.pp:
            ws += [d.word("prep"), *phrase(d.uniform() < st.plural)]
        ws.append(d.word("verb") + ("" if pl else "s"))  # agreement with the subject
        if d.uniform() < st.obj:
            ws += phrase(d.uniform() < st.plural)
        if d.uniform() < st.adv:
            ws.append(d.word("adv"))
        s = " ".join(ws) + (".\n" if d.uniform() < 0.15 else ". ")
        out.append(s)
        total += len(s)
    return "".join(out)


def encode(text: str) -> np.ndarray:
    """Characters of ALPHABET -> ids [len] int64."""
    table = np.zeros(128, dtype=np.int64)
    table[[ord(c) for c in ALPHABET]] = np.arange(len(ALPHABET))
    return table[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]


def grammar_text(
    rng: np.random.Generator, *, clients: int, context: int, chars: int, style: float
) -> RawData:
    """`chars` characters of grammar text split evenly over `clients` natural clients."""
    per = chars // clients
    if per < context + 1:
        raise DataError(
            f"dataset grammar_text: {chars} characters give each of {clients} clients fewer "
            f"than context + 1 = {context + 1}; raise chars or lower clients or context"
        )
    lex = _lexicon(rng)
    shared = {c: _zipf(len(w))[rng.permutation(len(w))] for c, w in lex.items()}
    xs, ys = [], []
    for _ in range(clients):  # loop over clients: each writes its own text
        x, y = windows(encode(_sentences(rng, lex, _Style(rng, shared, style), per)), context)
        xs.append(x)
        ys.append(y)
    client = np.repeat(np.arange(clients, dtype=np.int64), [x.shape[0] for x in xs])
    return RawData(np.concatenate(xs), np.concatenate(ys), len(ALPHABET), client, "grammar_text")


# -- text:PATH ---------------------------------------------------------------------------------


MAX_TEXT_BYTES = 1 << 30  # a whole file read without [task] max_bytes


@functools.lru_cache(maxsize=2)
def _file_bytes(path: str, max_bytes: int) -> np.ndarray:
    p = Path(path)
    if p.exists() and not p.is_file():
        raise DataError(
            f"{path}: not a regular file (a device, pipe or directory); allowed: a file"
        )
    try:
        size = p.stat().st_size if p.exists() else 0
    except OSError:
        size = 0
    if not max_bytes and size > MAX_TEXT_BYTES:
        raise DataError(
            f"{path}: {size} bytes; set [task] max_bytes (<= {MAX_TEXT_BYTES}) to read a prefix"
        )
    try:
        with p.open("rb") as f:
            data = f.read(max_bytes or -1)
    except OSError as e:
        raise DataError(f"{path}: cannot read text file ({e.strerror or e})") from None
    return np.frombuffer(data, dtype=np.uint8)


def text(
    rng: np.random.Generator,
    *,
    clients: int,
    path: str,
    context: int,
    split: str,
    max_bytes: int,
) -> RawData:
    """A file as byte sequences; natural clients by `split` (module docstring)."""
    if not path:
        raise DataError("dataset text needs a path: dataset = 'text:FILE'")
    x, y = windows(_file_bytes(str(Path(path).resolve()), max_bytes), context)
    num = x.shape[0]
    if num < clients:
        raise DataError(
            f"{path}: {num} sequences of {context + 1} bytes cannot give {clients} clients one "
            "each; use a longer file, fewer clients or a smaller context"
        )
    block = np.minimum(np.arange(num, dtype=np.int64) * clients // num, clients - 1)  # [S]
    client = block if split == "contiguous" else block[rng.permutation(num)]
    return RawData(x, y, BYTES, client, f"text({Path(path).name})")


# -- shakespeare:DIR ---------------------------------------------------------------------------


def _codes(s: str) -> list[int]:
    return [ord(c) if ord(c) < BYTES else ord("?") for c in s]


@functools.lru_cache(maxsize=2)
def _shakespeare(path: str, context: int, roles: int) -> RawData:
    root = Path(path)
    parts = [root / "train", root / "test"] if (root / "train").is_dir() else [root]
    merged: dict[str, list[str]] = {}
    for part in parts:
        if part.is_dir():
            for uid, xs, ys in read_leaf(part):
                merged.setdefault(uid, []).extend(
                    str(a) + str(b) for a, b in zip(xs, ys, strict=True)
                )
    users = [u for u, s in merged.items() if s][: roles or None]
    seqs = [s[-(context + 1) :] for u in users for s in merged[u]]
    if any(len(s) < context + 1 for s in seqs):
        raise DataError(
            f"{path}: LEAF Shakespeare samples have {min(map(len, seqs))} characters with "
            f"their label; use context <= {min(map(len, seqs)) - 1}"
        )
    tok = np.array([_codes(s) for s in seqs], dtype=np.int64)  # [S, T+1]
    client = np.repeat(np.arange(len(users), dtype=np.int64), [len(merged[u]) for u in users])
    return RawData(tok[:, :-1].astype(np.float32), tok[:, 1:], BYTES, client, "shakespeare")


def shakespeare(
    rng: np.random.Generator, *, clients: int, path: str, context: int, roles: int
) -> RawData:
    """LEAF Shakespeare; `rng` and `clients` are unused (roles are the clients)."""
    if not path:
        raise DataError("dataset shakespeare needs a path: dataset = 'shakespeare:DIR'")
    return _shakespeare(str(Path(path).resolve()), context, roles)


DATASETS.add(
    Component(
        "grammar_text",
        grammar_text,
        {
            "context": CONTEXT,
            "chars": Param(200_000, "characters generated in all", "int", low=1),
            "style": Param(
                1.0,
                "how much each client's word choice and grammar rates depart from the shared "
                "ones (0 = clients alike)",
                low=0.0,
                high=1.0,
            ),
        },
        summary="character LM on text from a seeded probabilistic grammar, one style per "
        "client (30 characters)",
        kind="builtin",
        extra=LM,
    )
)
DATASETS.add(
    Component(
        "text",
        text,
        {
            "context": CONTEXT,
            "split": Param(
                "contiguous",
                "natural clients: consecutive blocks of the file or random sequences",
                "str",
                choices=("contiguous", "random"),
            ),
            "max_bytes": Param(0, "read only the first N bytes (0 = the whole file)", "int", low=0),
        },
        summary="byte-level LM on any file (text:PATH), vocabulary 256",
        kind="file",
        extra=LM,
    )
)
DATASETS.add(
    Component(
        "shakespeare",
        shakespeare,
        {
            "context": CONTEXT,
            "roles": Param(0, "keep only the first N roles in file order (0 = all)", "int", low=0),
        },
        summary="LEAF Shakespeare (shakespeare:DIR): next character, one client per role",
        paper="Caldas et al., LEAF: A Benchmark for Federated Settings, arXiv 1812.01097",
        kind="file",
        extra=LM,
    )
)
