"""Bearer-token authentication of mutating calls, with named tokens.

Each token has a label (an operator, a team, an automation): the label is who the audit log
names for every command sent with that token. Tokens come from token files
(``http.token_file``, one file or several), in either form:

* lines ``label:token`` (``#`` comments and blank lines allowed), one token per operator or
  automation: revoking one is deleting its line and sending the daemon SIGHUP;
* a file holding a single bare token (the historical form): its label is the file's name
  without its extension (``/etc/failoverd/tokens/ci-deploy.token`` is ``ci-deploy``).

Labels and tokens are unique across all the files (a token shared by two labels would make
the audit guess). Tokens contain no whitespace and no ``:``. CRLF line ends are fine.

Rules: no token configured means mutating calls are disabled (403: safer than open); a
missing, malformed or wrong token is 401 with a ``WWW-Authenticate`` challenge (RFC 6750).
The comparison is constant-time (every configured token is compared, digest against
digest), so response timing does not reveal how much of a guess matched, nor which token.
A token itself is never logged, echoed or shown in an error.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from orchestrator.api.errors import ApiError

_REALM = 'Bearer realm="failoverd"'
LABEL_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}"
_LABEL = re.compile(LABEL_PATTERN)
DEFAULT_LABEL = "api"  # a bare token whose file name is not a usable label


class TokenFileError(ValueError):
    """A token file that cannot be used; the message names the file and line, never a token."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_tokens(text: str, path: Path | str) -> dict[str, str]:
    """The ``label -> token`` pairs of one token file's ``text`` (see the module docstring).
    Raises :class:`TokenFileError` naming ``path`` and the line."""
    where = str(path)
    entries: list[tuple[int, str | None, str]] = []  # line, label (None: bare), token
    for number, raw in enumerate(text.lstrip("\ufeff").splitlines(), 1):
        line = raw.strip()  # also the \r of a CRLF file
        if not line or line.startswith("#"):
            continue
        label, sep, token = line.partition(":")
        if not sep:
            label, token = "", line
        label, token = label.strip(), token.strip()
        if sep and not _LABEL.fullmatch(label):
            raise TokenFileError(
                f"{where}:{number}: expected 'label:token' with a label of letters, digits,"
                f" '_', '.', '@' or '-' (at most 64), got a label {label[:64]!r}"
            )
        if not token or any(c.isspace() for c in token) or ":" in token:
            raise TokenFileError(
                f"{where}:{number}: the token is empty or has a space or a ':' in it"
            )
        entries.append((number, label if sep else None, token))
    if not entries:
        raise TokenFileError(f"{where}: no token in it (expected 'label:token' lines)")
    bare = [n for n, label, _ in entries if label is None]
    if bare and len(entries) > 1:
        raise TokenFileError(
            f"{where}:{bare[0]}: a token without a label; with several tokens in a file, write"
            " each as 'label:token'"
        )
    if bare:
        stem = Path(where).name.split(".", 1)[0]
        return {stem if _LABEL.fullmatch(stem) else DEFAULT_LABEL: entries[0][2]}
    out: dict[str, str] = {}
    for number, named, token in entries:
        assert named is not None
        if named in out:
            raise TokenFileError(f"{where}:{number}: the label {named!r} is given twice")
        out[named] = token
    return out


def merge_tokens(files: Iterable[tuple[Path | str, Mapping[str, str]]]) -> dict[str, str]:
    """The tokens of several files as one map; a label or a token in two places is an error
    naming both files."""
    out: dict[str, str] = {}
    seen_in: dict[str, str] = {}
    by_digest: dict[bytes, str] = {}
    for path, tokens in files:
        for label, token in tokens.items():
            if label in out:
                raise TokenFileError(
                    f"{path}: the label {label!r} is also given in {seen_in[label]}"
                )
            digest = _digest(token)
            if digest in by_digest:
                raise TokenFileError(
                    f"{path}: the token of {label!r} is also the token of {by_digest[digest]!r};"
                    " give every operator and automation a token of its own"
                )
            out[label], seen_in[label], by_digest[digest] = token, str(path), label
    return out


class TokenAuth:
    """Checks ``Authorization`` headers against the configured tokens and names who sent
    them. Safe to share between requests; :meth:`replace` swaps the tokens at once (a
    reload), and a request sees either the old set or the new one."""

    def __init__(self, tokens: Mapping[str, str] | None) -> None:
        self._tokens: tuple[tuple[bytes, str], ...] = ()
        self.replace(tokens)

    def replace(self, tokens: Mapping[str, str] | None) -> None:
        """Use ``tokens`` (label -> token) from now on; None or empty disables mutating calls."""
        pairs = []
        for label, token in (tokens or {}).items():
            if not token.strip():
                raise ValueError(f"the API token of {label!r} is empty")
            pairs.append((_digest(token), label))
        self._tokens = tuple(pairs)

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(sorted(label for _, label in self._tokens))

    def __repr__(self) -> str:  # never show a secret, even in a debugger or a traceback
        return f"TokenAuth(labels={list(self.labels)})"

    def check(self, authorization: str | None) -> str:
        """The label of the token ``authorization`` carries; raise :class:`ApiError`
        otherwise."""
        tokens = self._tokens  # one snapshot: a concurrent replace() does not tear it
        if not tokens:
            raise ApiError(403, "forbidden", "mutating calls are disabled: no token configured")
        if not authorization:
            raise ApiError(
                401,
                "unauthorized",
                "this call needs 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": _REALM},
            )
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise ApiError(
                401,
                "unauthorized",
                "the Authorization header must be 'Bearer <token>'",
                headers={"WWW-Authenticate": f'{_REALM}, error="invalid_request"'},
            )
        digest = _digest(presented.strip())
        found: str | None = None
        for known, label in tokens:  # every one, match or not: constant time in the guess
            if hmac.compare_digest(digest, known):
                found = label
        if found is None:
            raise ApiError(
                401,
                "unauthorized",
                "the token is not valid",
                headers={"WWW-Authenticate": f'{_REALM}, error="invalid_token"'},
            )
        return found
