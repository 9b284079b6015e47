"""Token and workspace names: one set of rules for every way a name arrives (the API, the
console, a datafile's TOKEN line).

A name must look like what it is. It is refused when it could be read as something else: a token
value or id (by us, or by anything built on `UUID()`), or another name that looks the same in a
list, an export or an audit row (invisible characters, special spaces, compatibility forms,
consecutive spaces). Names that imitate the default tokens' (`admin token`, `admin <email>`, …)
are reserved for them.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from tokentrail.domain.errors import InvalidInput
from tokentrail.domain.refs import looks_like_reference

MAX_NAME_LENGTH = 256


def validate_name(raw: Any, what: str = "token") -> str:
    """The name, stripped, or `InvalidInput` saying what is wrong with it."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidInput(f"{what} name is mandatory")
    name: str = raw.strip()
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"{what} name is longer than {MAX_NAME_LENGTH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidInput(f"{what} name must not contain control characters")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in name):  # a lone surrogate (JSON "\ud800"): not storable
        raise InvalidInput(f"{what} name must be valid Unicode text")
    if what == "token" and looks_like_reference(name):
        raise InvalidInput("token name must not look like a token id or value")
    _check_visible(name, what)
    return name


def validate_custom_name(raw: Any) -> str:
    """A name for a token made through the API or the console: not one the default tokens own."""
    name = validate_name(raw)
    if imitates_default(name):
        raise InvalidInput(
            f"token name {name!r} is reserved: it imitates a default token's name "
            "('admin token', 'create datasource token', 'user token', 'admin <email>')"
        )
    return name


def _check_visible(name: str, what: str) -> None:
    """No invisible or look-alike characters that would make `admin\u200b token` read exactly
    like `admin token`."""
    if unicodedata.normalize("NFKC", name) != name:
        raise InvalidInput(f"{what} name must be in Unicode normal form NFKC (no compatibility characters)")
    for char in name:
        category = unicodedata.category(char)
        if category[0] == "C" or (category[0] == "Z" and char != " "):
            raise InvalidInput(
                f"{what} name must not contain invisible or special space characters (U+{ord(char):04X})"
            )
    if "  " in name:
        raise InvalidInput(f"{what} name must not contain consecutive spaces")


# Letters of other scripts that are drawn like the Latin ones of the default tokens' names
# (Cyrillic and Greek); NFKC leaves them alone, so they are mapped here before comparing.
_CONFUSABLES = str.maketrans(
    {
        "а": "a",
        "е": "e",
        "о": "o",
        "р": "p",
        "с": "c",
        "у": "y",
        "х": "x",
        "і": "i",
        "ѕ": "s",
        "ј": "j",
        "к": "k",
        "м": "m",
        "т": "t",
        "н": "h",
        "ԁ": "d",
        "ո": "n",
        "ս": "u",
        "ı": "i",
        "α": "a",
        "ε": "e",
        "ο": "o",
        "ι": "i",
        "κ": "k",
        "ν": "v",
        "τ": "t",
        "υ": "u",
        "ρ": "p",
    }
)
_RESERVED_NAMES = frozenset({"admin token", "create datasource token", "user token"})


def name_key(name: str) -> str:
    """A token name as a reader sees it: NFKC-normalised, without invisible format characters
    (zero-width spaces, joiners, direction marks), look-alike letters of other scripts mapped to
    Latin, runs of whitespace collapsed to one space, and case folded."""
    text = unicodedata.normalize("NFKC", name)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    text = " ".join(text.split())
    return unicodedata.normalize("NFKC", text.casefold()).translate(_CONFUSABLES)


def is_reserved_name(name: str) -> bool:
    """The default tokens' names and their look-alikes: `admin token`, `create datasource token`,
    `user token` and any `admin <something>` (the per-user `admin <email>`)."""
    key = name_key(name)
    return key in _RESERVED_NAMES or key.startswith("admin ")


def imitates_default(name: str) -> bool:
    """The default tokens' names and look-alikes of them, `admin <email>` included (any
    `admin …` holding an `@`)."""
    key = name_key(name)
    return key in _RESERVED_NAMES or (key.startswith("admin ") and "@" in key)
