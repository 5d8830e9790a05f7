#!/usr/bin/env python3
"""RULER-style long-context retrieval tasks, generated deterministically from a seed.

A task is (context, question, answer). The context is bland synthetic filler (sentences built from
word lists about weather, markets, gardens, ...) with facts ("needles") inserted at random depths.
The question is written so that the answer is its direct continuation, RULER style:

    context  = "... filler ... The access code of Maria Lopez is 482913. ... filler ..."
    question = "\nQuestion: What is the access code of Maria Lopez?\n"
               "Answer: The access code of Maria Lopez is"
    answer   = " 482913"          (the model then emits end-of-text)

Serving layout (what the demo model is trained on): the context is registered on its own and
tokenized as [BOS] + Encode(context); the question is the Generate input, tokenized separately as
Encode(question) (no BOS); the answer is the greedy continuation. Exact match compares the
generated text, stripped, with the answer, stripped.

Variants:
  single      one fact; the answer's digits occur exactly once in the context.
  multikey    many facts about different people and attributes; names of distractors share the
              first or the last name with the asked person, or the person has other attributes.
  multivalue  one (person, attribute) has 2-5 values ("One access code of X is N."); the answer is
              all of them in order of appearance, comma-separated; plus a few distractor facts.
  vartrack    variable chains "VAR ABCDE = 12345." then "VAR FGHIJ = VAR ABCDE." ...; the answer is
              every variable of the chain holding the asked value, in order of appearance.

Length: `approx_words` counts whitespace-separated words of the context. With the demo model's
SentencePiece tokenizer (BPE, 2048 pieces, digits split; the text's vocabulary is small enough
that every word is one piece) one word is about TOKENS_PER_WORD tokens: measured 1.21 for pure
filler, 1.22 multivalue, 1.25 multikey and vartrack (a six-digit number costs 7 tokens). Use
words_for_tokens() to aim at a token length, and tokenize to know it exactly.

Seeding: every task has its own random.Random seeded with the string "<namespace>:<seed>:<index>"
(string seeds are hashed with SHA-512 by Python, so this is stable across runs, platforms and
PYTHONHASHSEED). The training script uses the namespaces "tok", "train" and "eval"; the CLI uses
"cli" unless told otherwise, so CLI tasks never coincide with training tasks.

Stdlib only, so the C++ side (make demo, bench) can call it with any python3.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
from typing import Callable, Optional

VARIANTS = ("single", "multikey", "multivalue", "vartrack")

# Tokens per context word with the demo tokenizer; see the module docstring (measured with
# spm_train and the training script's settings on 20 contexts of 3000 words per variant).
TOKENS_PER_WORD = 1.25

DEMO_SEED = 20240611
DEMO_WORDS = 2500

FIRST_NAMES = (
    "Maria", "James", "Aisha", "Wei", "Olga", "Pedro", "Fatima", "Lars", "Yuki", "Samuel",
    "Elena", "Omar", "Grace", "Ivan", "Priya", "Lucas", "Hannah", "Kenji", "Sofia", "Daniel",
    "Amara", "Mateo", "Nina", "Tariq", "Clara", "Hugo", "Leila", "Arjun", "Ingrid", "Diego",
    "Mei", "Felix", "Zara", "Tomas", "Chloe", "Rafael", "Anika", "Victor", "Rosa", "Emil",
    "Naomi", "Kofi", "Greta", "Hassan", "Lucia", "Oscar", "Keiko", "Bruno", "Alma", "Ravi",
    "Jonas", "Esther", "Malik", "Irene", "Pablo", "Sana", "Walter", "Adele", "Chen", "Marta",
    "Nikolai", "Ines", "Thabo", "Vera", "Andre", "Lina", "George", "Nadia", "Soren", "Beatriz",
    "Kwame", "Helen", "Jorge", "Yara", "Anton", "Mila", "Edgar", "Rina", "Louis", "Daria",
    "Farid", "Joanna", "Mikko", "Teresa", "Ade", "Lorena", "Stefan", "Hana", "Marcus", "Olivia",
    "Ruben", "Freya", "Imran", "Celia", "Tobias", "Ayumi", "Carlos", "Petra", "Ibrahim", "Laura",
)

LAST_NAMES = (
    "Lopez", "Smith", "Khan", "Zhang", "Petrova", "Silva", "Haddad", "Nilsson", "Tanaka", "Okafor",
    "Rossi", "Novak", "Kim", "Ivanov", "Sharma", "Moreau", "Fischer", "Sato", "Garcia", "Cohen",
    "Mensah", "Herrera", "Berg", "Aziz", "Dubois", "Keller", "Nasser", "Patel", "Larsen", "Torres",
    "Wang", "Bauer", "Ali", "Horvat", "Martin", "Costa", "Mehta", "Romano", "Ortiz", "Lindqvist",
    "Adeyemi", "Navarro", "Kowalski", "Hussein", "Ferreira", "Jensen", "Ito", "Weber", "Reyes",
    "Chen", "Popescu", "Andersen", "Nakamura", "Bianchi", "Vargas", "Schmidt", "Rahman", "Eriksen",
    "Morales", "Yilmaz", "Lambert", "Suzuki", "Castillo", "Becker", "Mwangi", "Santos", "Olsen",
    "Fontaine", "Gupta", "Kaur", "Hoffmann", "Molina", "Virtanen", "Moreno", "Sokolova", "Duarte",
    "Tran", "Nguyen", "Park", "Vogel", "Salazar", "Dahl", "Barros", "Hayes", "Kruger", "Ahmed",
    "Marino", "Pereira", "Lund", "Brennan", "Costello", "Ramos", "Iqbal", "Wolff", "Delgado",
    "Holm", "Mendez", "Richter", "Obi", "Fujita",
)

# (singular, plural) attribute names; every attribute value is a six-digit number.
ATTRIBUTES = (
    ("access code", "access codes"),
    ("locker number", "locker numbers"),
    ("badge number", "badge numbers"),
    ("vault code", "vault codes"),
    ("parcel number", "parcel numbers"),
    ("account pin", "account pins"),
    ("desk extension", "desk extensions"),
    ("permit number", "permit numbers"),
)

# ---------------------------------------------------------------------------------------------
# Filler. Each topic has its own nouns, verbs and places; sentences come from shared templates.
# The filler never names a person, never uses an attribute phrase and never holds a number of
# more than four digits, so needles and answers cannot be confused with it.

_TOPICS = {
    "weather": dict(
        nouns=["cloud", "breeze", "storm", "drizzle", "fog", "frost", "sky", "wind", "rain",
               "sunshine", "thunder", "mist", "hail", "front", "forecast"],
        adjs=["grey", "mild", "damp", "bright", "chilly", "humid", "calm", "gusty", "pale",
              "heavy", "cool", "warm", "hazy", "steady"],
        verbs=["drifted over", "settled on", "rolled across", "lingered above", "swept past",
               "cleared from", "gathered near", "moved toward", "faded over", "pressed against"],
        places=["valley", "harbor", "hillside", "coast", "plain", "ridge", "bay", "moor", "lake",
                "airfield"],
        units=["degrees", "millimeters", "knots", "percent"],
    ),
    "markets": dict(
        nouns=["index", "share price", "bond yield", "currency", "trader", "broker", "fund",
               "market", "commodity", "futures contract", "dividend", "rally", "forecast"],
        adjs=["modest", "volatile", "quiet", "cautious", "strong", "weak", "flat", "brisk",
              "uneven", "sluggish", "firm", "nervous"],
        verbs=["edged above", "slipped below", "held near", "climbed past", "dipped under",
               "hovered around", "recovered toward", "drifted from"],
        places=["exchange", "trading floor", "bank", "market hall", "clearing house", "desk",
                "auction room"],
        units=["points", "percent", "cents", "basis points"],
    ),
    "gardens": dict(
        nouns=["rose", "tulip", "hedge", "lawn", "vine", "orchard", "seedling", "fern", "tomato",
               "herb bed", "compost heap", "apple tree", "sunflower", "greenhouse", "trellis"],
        adjs=["tidy", "overgrown", "fragrant", "leafy", "young", "tall", "sturdy", "wilted",
              "lush", "neat", "colorful", "shady"],
        verbs=["grew beside", "leaned against", "spread along", "bloomed near", "climbed over",
               "shaded", "bordered", "crowded around"],
        places=["fence", "path", "pond", "wall", "shed", "gate", "terrace", "allotment"],
        units=["centimeters", "rows", "plants", "buckets"],
    ),
    "trains": dict(
        nouns=["train", "platform", "carriage", "conductor", "timetable", "signal", "locomotive",
               "ticket office", "freight wagon", "station clock", "junction", "sleeper car"],
        adjs=["late", "crowded", "empty", "punctual", "noisy", "old", "modern", "slow",
              "express", "regional", "busy", "silent"],
        verbs=["waited at", "pulled into", "rattled past", "departed from", "stopped near",
               "curved around", "crossed", "idled beside"],
        places=["station", "viaduct", "tunnel", "depot", "border", "yard", "bridge", "crossing"],
        units=["minutes", "kilometers", "carriages", "passengers"],
    ),
    "kitchens": dict(
        nouns=["soup", "bread", "kettle", "oven", "pastry", "stew", "sauce", "baker", "recipe",
               "cutting board", "pan", "spice jar", "dough", "salad", "pie"],
        adjs=["hot", "fresh", "simple", "rich", "spicy", "savory", "sweet", "crisp", "golden",
              "thick", "plain", "hearty"],
        verbs=["simmered on", "cooled near", "rested beside", "baked in", "waited on",
               "steamed above", "filled", "warmed"],
        places=["stove", "counter", "window", "pantry", "table", "cellar", "hearth", "shelf"],
        units=["grams", "minutes", "spoons", "cups"],
    ),
    "libraries": dict(
        nouns=["book", "reader", "archive", "catalogue", "librarian", "reading lamp", "journal",
               "atlas", "manuscript", "bookshelf", "study desk", "map drawer", "newspaper"],
        adjs=["dusty", "quiet", "rare", "worn", "heavy", "tidy", "ancient", "thin", "popular",
              "careful", "patient", "curious"],
        verbs=["rested on", "stood beside", "lay under", "waited in", "filled", "lined",
               "leaned on", "covered"],
        places=["reading room", "stack room", "gallery", "basement", "annex", "corridor", "attic",
                "study hall"],
        units=["volumes", "pages", "shelves", "boxes"],
    ),
    "rivers": dict(
        nouns=["river", "ferry", "current", "barge", "heron", "fisherman", "canoe", "dam",
               "stream", "reed bed", "lock keeper", "tide", "jetty"],
        adjs=["muddy", "clear", "swift", "shallow", "broad", "cold", "gentle", "winding",
              "still", "deep", "rippling", "bright"],
        verbs=["flowed under", "drifted past", "bent around", "rose near", "slowed beside",
               "ran along", "rushed through", "circled"],
        places=["bank", "mill", "bridge", "weir", "delta", "meadow", "quay", "island"],
        units=["meters", "liters", "boats", "hours"],
    ),
    "workshops": dict(
        nouns=["carpenter", "hammer", "workbench", "lathe", "plank", "toolbox", "saw", "chisel",
               "ladder", "cabinet", "paint pot", "mason", "scaffold", "drill"],
        adjs=["rusty", "sharp", "sturdy", "dented", "polished", "rough", "smooth", "heavy",
              "handy", "spare", "narrow", "solid"],
        verbs=["hung above", "stood near", "rested against", "lay across", "waited by",
               "leaned on", "blocked", "supported"],
        places=["garage", "barn", "yard", "loft", "storeroom", "porch", "site office",
                "courtyard"],
        units=["nails", "boards", "meters", "hours"],
    ),
    "music": dict(
        nouns=["choir", "violin", "drummer", "melody", "orchestra", "piano", "rehearsal", "tune",
               "trumpet", "concert", "song", "cellist", "chorus"],
        adjs=["soft", "lively", "solemn", "cheerful", "slow", "loud", "tuneful", "gentle",
              "brassy", "hushed", "bold", "sweet"],
        verbs=["echoed through", "drifted across", "filled", "carried over", "rang through",
               "faded from", "opened", "closed"],
        places=["hall", "chapel", "square", "bandstand", "studio", "theater", "park", "cafe"],
        units=["bars", "minutes", "songs", "seats"],
    ),
}

_TIMES = ["In the morning", "By noon", "Later that day", "Early on", "Toward evening",
          "During the week", "On most days", "After a while", "That afternoon", "At dawn",
          "Before long", "Every so often", "Once again", "For a time", "Near midnight"]
_CONNECTIVES = ["and", "while", "as", "but", "so", "although", "since", "until"]
_OBSERVERS = ["the neighbors", "the visitors", "the workers", "the children", "a passerby",
              "the staff", "the locals", "the guests", "an old friend", "the committee",
              "the volunteers", "the travelers"]
_REACTIONS = ["hardly noticed", "talked about it", "made a note of it", "seemed pleased",
              "shrugged", "stayed indoors", "went on as usual", "waited patiently",
              "took a photograph", "wrote a letter about it", "kept their plans",
              "looked the other way", "smiled quietly", "compared notes"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]


def _small_number(rng: random.Random) -> str:
    """A number of at most four digits, so it never collides with a needle value."""
    r = rng.random()
    if r < 0.4:
        return str(rng.randint(2, 99))
    if r < 0.7:
        return str(rng.randint(100, 999))
    return str(rng.randint(1900, 2030))


def _np(rng: random.Random, t: dict) -> str:
    """Noun phrase: 'the grey cloud' or 'the cloud'."""
    if rng.random() < 0.6:
        return f"the {rng.choice(t['adjs'])} {rng.choice(t['nouns'])}"
    return f"the {rng.choice(t['nouns'])}"


def _filler_sentence(rng: random.Random) -> str:
    t = _TOPICS[rng.choice(list(_TOPICS))]
    k = rng.randrange(8)
    if k == 0:
        s = f"{rng.choice(_TIMES)}, {_np(rng, t)} {rng.choice(t['verbs'])} the {rng.choice(t['places'])}."
    elif k == 1:
        s = (f"{_np(rng, t).capitalize()} {rng.choice(t['verbs'])} the {rng.choice(t['places'])}, "
             f"{rng.choice(_CONNECTIVES)} {rng.choice(_OBSERVERS)} {rng.choice(_REACTIONS)}.")
    elif k == 2:
        s = (f"On {rng.choice(_DAYS)} the report counted {_small_number(rng)} "
             f"{rng.choice(t['units'])} near the {rng.choice(t['places'])}.")
    elif k == 3:
        s = (f"Nobody expected {_np(rng, t)} to look so {rng.choice(t['adjs'])} "
             f"in {rng.choice(_MONTHS)}.")
    elif k == 4:
        s = (f"{rng.choice(_OBSERVERS).capitalize()} said that {_np(rng, t)} was "
             f"{rng.choice(t['adjs'])} and {rng.choice(t['adjs'])} this year.")
    elif k == 5:
        s = (f"There were {_small_number(rng)} {rng.choice(t['units'])} of difference between "
             f"{_np(rng, t)} and {_np(rng, t)}.")
    elif k == 6:
        s = (f"{rng.choice(_TIMES)}, {rng.choice(_OBSERVERS)} {rng.choice(_REACTIONS)} "
             f"{rng.choice(_CONNECTIVES)} {_np(rng, t)} {rng.choice(t['verbs'])} "
             f"the {rng.choice(t['places'])}.")
    else:
        s = (f"The {rng.choice(t['places'])} was {rng.choice(t['adjs'])}, "
             f"and {_np(rng, t)} {rng.choice(t['verbs'])} it for {_small_number(rng)} "
             f"{rng.choice(t['units'])}.")
    return s[0].upper() + s[1:]


def _filler(rng: random.Random, n_words: int, repeat: float = 0.0) -> list[str]:
    """Filler sentences of about n_words words in all. With `repeat` > 0 that fraction of the
    sentences repeats an earlier one verbatim (copyable text, used in training to make induction
    heads form early); with 0 the rng is consumed exactly as without the option."""
    out: list[str] = []
    words = 0
    while words < n_words:
        if repeat and out and rng.random() < repeat:
            s = rng.choice(out)
        else:
            s = _filler_sentence(rng)
        out.append(s)
        words += len(s.split())
    return out


def _assemble(rng: random.Random, filler: list[str], needles: list[str]) -> tuple[str, list[float]]:
    """Inserts `needles` (kept in this order) between filler sentences at random depths and
    groups sentences into paragraphs of 3-8 sentences. Returns (context, depth of each needle in
    [0, 1], measured in sentences)."""
    slots = sorted(rng.randint(0, len(filler)) for _ in needles)
    sentences: list[str] = []
    is_needle: list[bool] = []
    j = 0
    for i in range(len(filler) + 1):
        while j < len(needles) and slots[j] == i:
            sentences.append(needles[j])
            is_needle.append(True)
            j += 1
        if i < len(filler):
            sentences.append(filler[i])
            is_needle.append(False)
    n = len(sentences)
    depths = [round(i / max(1, n - 1), 4) for i, flag in enumerate(is_needle) if flag]
    paragraphs: list[str] = []
    i = 0
    while i < n:
        k = rng.randint(3, 8)
        paragraphs.append(" ".join(sentences[i:i + k]))
        i += k
    return "\n".join(paragraphs), depths


# ---------------------------------------------------------------------------------------------
# Needles and questions.

def _code(rng: random.Random, used: set[str], digits: int = 6) -> str:
    while True:
        c = str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))
        if c not in used:
            used.add(c)
            return c


def _name(rng: random.Random) -> tuple[str, str]:
    return rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)


def _full(name: tuple[str, str]) -> str:
    return f"{name[0]} {name[1]}"


def _fact(attr: str, name: tuple[str, str], code: str) -> str:
    return f"The {attr} of {_full(name)} is {code}."


def _single_question(attr: str, name: tuple[str, str]) -> str:
    who = _full(name)
    return f"\nQuestion: What is the {attr} of {who}?\nAnswer: The {attr} of {who} is"


@dataclasses.dataclass
class Task:
    variant: str
    context: str
    question: str
    answer: str  # starts with a space: the exact continuation of `question`
    depths: list  # needle depths in [0, 1] (every needle, distractors included)
    id: str = ""
    # Other questions this context answers, as (question, answer) pairs: training appends some
    # after the first answer for denser supervision. Not part of the JSON form.
    extra: list = dataclasses.field(default_factory=list)

    def to_json(self) -> dict:
        return {"id": self.id, "variant": self.variant, "context": self.context,
                "question": self.question, "answer": self.answer, "depths": self.depths}


def _make_single(rng: random.Random, words: int, repeat: float = 0.0) -> Task:
    attr = rng.choice(ATTRIBUTES)[0]
    name = _name(rng)
    code = _code(rng, set())
    needle = _fact(attr, name, code)
    context, depths = _assemble(rng, _filler(rng, words - len(needle.split()), repeat), [needle])
    return Task("single", context, _single_question(attr, name), " " + code, depths)


def _distractor_names(rng: random.Random, target: tuple[str, str], n: int) -> list[tuple[str, str]]:
    """Names that share the first or the last name with `target` (hard) or are unrelated."""
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.3:
            out.append((target[0], rng.choice(LAST_NAMES)))
        elif r < 0.6:
            out.append((rng.choice(FIRST_NAMES), target[1]))
        else:
            out.append(_name(rng))
    return out


def _make_multikey(rng: random.Random, words: int, repeat: float = 0.0) -> Task:
    n_keys = rng.randint(4, max(8, min(48, words // 100)))
    attrs = [a for a, _ in ATTRIBUTES]
    target_name = _name(rng)
    target_attr = rng.choice(attrs)
    pairs = [(target_attr, target_name)]
    seen = {(target_attr, target_name)}
    # Same person, other attributes: the question's attribute must matter too.
    for attr in rng.sample(attrs, rng.randint(0, 2)):
        if (attr, target_name) not in seen:
            seen.add((attr, target_name))
            pairs.append((attr, target_name))
    tries = 0
    while len(pairs) < n_keys and tries < 10 * n_keys:
        tries += 1
        name = _distractor_names(rng, target_name, 1)[0]
        attr = target_attr if rng.random() < 0.5 else rng.choice(attrs)
        if (attr, name) not in seen:
            seen.add((attr, name))
            pairs.append((attr, name))
    used: set[str] = set()
    facts = [(attr, name, _code(rng, used)) for attr, name in pairs]
    extra = [(_single_question(a, n), " " + c) for a, n, c in facts[1:]]
    answer = " " + facts[0][2]
    rng.shuffle(facts)
    needles = [_fact(a, n, c) for a, n, c in facts]
    n_needle_words = sum(len(f.split()) for f in needles)
    context, depths = _assemble(rng, _filler(rng, max(0, words - n_needle_words), repeat), needles)
    return Task("multikey", context, _single_question(target_attr, target_name), answer, depths,
                extra=extra)


def _all_question(attr: str, name: tuple[str, str]) -> str:
    plural = dict(ATTRIBUTES)[attr]
    who = _full(name)
    return f"\nQuestion: What are all the {plural} of {who}?\nAnswer: The {plural} of {who} are"


def _make_multivalue(rng: random.Random, words: int, repeat: float = 0.0) -> Task:
    attr = rng.choice(ATTRIBUTES)[0]
    name = _name(rng)
    used: set[str] = set()
    # Needles keyed by what asks for them: ("all", attr, name) for "One <attr> of <name> is N."
    # (possibly several values) and ("one", attr, name) for a plain fact (exactly one value).
    needles = [(("all", attr, name), _code(rng, used)) for _ in range(rng.randint(2, 5))]
    for other in _distractor_names(rng, name, rng.randint(0, 6)):
        if other == name:
            continue
        if rng.random() < 0.5:
            needles.append((("all", attr, other), _code(rng, used)))
        else:
            key = ("one", rng.choice(ATTRIBUTES)[0], other)
            if key not in [k for k, _ in needles]:
                needles.append((key, _code(rng, used)))
    rng.shuffle(needles)
    sentences = [f"One {a} of {_full(n)} is {c}." if kind == "all" else _fact(a, n, c)
                 for (kind, a, n), c in needles]
    n_needle_words = sum(len(s.split()) for s in sentences)
    context, depths = _assemble(rng, _filler(rng, max(0, words - n_needle_words), repeat), sentences)
    answers: dict = {}
    for key, c in needles:  # in order of appearance
        answers.setdefault(key, []).append(c)
    extra = []
    for (kind, a, n), codes in answers.items():
        if (kind, a, n) == ("all", attr, name):
            continue
        q = _all_question(a, n) if kind == "all" else _single_question(a, n)
        extra.append((q, " " + ", ".join(codes)))
    return Task("multivalue", context, _all_question(attr, name),
                " " + ", ".join(answers[("all", attr, name)]), depths, extra=extra)


def _var_name(rng: random.Random, used: set[str]) -> str:
    while True:
        v = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
        if v not in used:
            used.add(v)
            return v


def _make_vartrack(rng: random.Random, words: int, repeat: float = 0.0) -> Task:
    used_vars: set[str] = set()
    used_values: set[str] = set()
    chains = []  # each: (value, [var names in assignment order])
    for c in range(1 + rng.randint(1, 3)):
        n_vars = rng.randint(3, 5) if c == 0 else rng.randint(2, 5)
        chains.append((_code(rng, used_values, digits=5),
                       [_var_name(rng, used_vars) for _ in range(n_vars)]))
    # Statements of one chain keep their order; chains interleave at random.
    pending = [0] * len(chains)
    statements = []
    while any(p < len(ch[1]) for p, ch in zip(pending, chains)):
        c = rng.choice([i for i, ch in enumerate(chains) if pending[i] < len(ch[1])])
        value, names = chains[c]
        k = pending[c]
        rhs = value if k == 0 else f"VAR {names[k - 1]}"
        statements.append(f"VAR {names[k]} = {rhs}.")
        pending[c] += 1
    n_needle_words = sum(len(s.split()) for s in statements)
    context, depths = _assemble(rng, _filler(rng, max(0, words - n_needle_words), repeat), statements)
    qa = [(f"\nQuestion: Which variables are assigned the value {value}, directly or through "
           f"other variables?\nAnswer: The variables assigned the value {value} are",
           " " + ", ".join(names)) for value, names in chains]
    return Task("vartrack", context, qa[0][0], qa[0][1], depths, extra=qa[1:])


_MAKERS: dict[str, Callable[[random.Random, int, float], Task]] = {
    "single": _make_single,
    "multikey": _make_multikey,
    "multivalue": _make_multivalue,
    "vartrack": _make_vartrack,
}


def make_task(rng: random.Random, variant: str, approx_words: int,
              filler_repeat: float = 0.0) -> Task:
    """One task of `variant` whose context has about `approx_words` words (never fewer than the
    needles need). Consumes `rng`; the same rng state gives the same task. `filler_repeat` is the
    fraction of filler sentences that repeat an earlier one (training only; default none)."""
    if variant not in _MAKERS:
        raise ValueError(f"unknown variant '{variant}'; expected one of {', '.join(VARIANTS)}")
    if approx_words < 1:
        raise ValueError(f"approx_words must be positive, got {approx_words}")
    return _MAKERS[variant](rng, approx_words, filler_repeat)


def task_rng(namespace: str, seed: int, index: int) -> random.Random:
    """The per-task generator: independent of every other task, stable across runs."""
    return random.Random(f"{namespace}:{seed}:{index}")


def words_for_tokens(tokens: int, tokens_per_word: float = TOKENS_PER_WORD) -> int:
    return max(1, int(tokens / tokens_per_word))


def make_tasks(seed: int, n: int, approx_words: int, variant: str = "single",
               namespace: str = "cli") -> list[Task]:
    """`n` tasks; variant 'all' cycles through VARIANTS. Task i depends only on (namespace, seed,
    i), so a prefix of a longer list is the shorter list."""
    tasks = []
    for i in range(n):
        v = VARIANTS[i % len(VARIANTS)] if variant == "all" else variant
        t = make_task(task_rng(namespace, seed, i), v, approx_words)
        t.id = f"{namespace}-{seed}-{v}-{approx_words}w-{i}"
        tasks.append(t)
    return tasks


def demo_document() -> Task:
    """The fixed document of facts used by `make demo`: a multikey task (about 20 facts among
    ~2500 words, roughly 3.3K tokens)."""
    t = make_task(task_rng("demo", DEMO_SEED, 0), "multikey", DEMO_WORDS)
    t.id = "demo"
    return t


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=10, help="number of tasks")
    p.add_argument("--words", type=int, default=None,
                   help="approximate context length in words (default 3000)")
    p.add_argument("--tokens", type=int, default=None,
                   help=f"approximate context length in tokens; converted with "
                        f"{TOKENS_PER_WORD} tokens/word (alternative to --words)")
    p.add_argument("--variant", default="single", choices=list(VARIANTS) + ["all"])
    p.add_argument("--namespace", default="cli",
                   help="seed namespace; 'train', 'eval' and 'tok' are the training script's")
    p.add_argument("--out", default="-", help="output JSONL path, or - for stdout")
    p.add_argument("--demo-document", action="store_true",
                   help="write the demo document (one JSON object) instead of tasks")
    p.add_argument("--field", choices=["context", "question", "answer"],
                   help="with --demo-document: write only this field, as raw text")
    args = p.parse_args(argv)

    if args.words is not None and args.tokens is not None:
        p.error("give --words or --tokens, not both")
    if args.field and not args.demo_document:
        p.error("--field only applies to --demo-document")
    words = args.words if args.words is not None else (
        words_for_tokens(args.tokens) if args.tokens is not None else 3000)
    if words < 1 or args.n < 0:
        p.error("--words/--tokens and --n must be positive")
    if args.namespace in ("train", "tok") and not args.demo_document:
        print(f"warning: namespace '{args.namespace}' holds the demo model's training data",
              file=sys.stderr)

    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")
    try:
        if args.demo_document:
            t = demo_document()
            if args.field:
                out.write(getattr(t, args.field))
            else:
                out.write(json.dumps(t.to_json(), ensure_ascii=False) + "\n")
        else:
            for t in make_tasks(args.seed, args.n, words, args.variant, args.namespace):
                out.write(json.dumps(t.to_json(), ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
