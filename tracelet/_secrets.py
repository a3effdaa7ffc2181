"""Keeping API keys and tokens out of everything a run writes.

Secrets reach a process three ways: the environment (``WANDB_API_KEY``,
``MLFLOW_TRACKING_TOKEN``, ``CLEARML_API_SECRET_KEY``, the values of
``OTEL_EXPORTER_OTLP_HEADERS``, ...), backend options (pydantic ``SecretStr``
fields of an exporter's options), and URLs that carry credentials
(``https://user:token@host``, a git remote with a token). tracelet

- judges every name (param, tag, span attribute, option, environment
  variable, command-line flag) by one rule, `secret_name`;
- never persists a ``SecretStr`` option, nor an option whose name says it is
  one (`public_options`);
- stores the string under a secret-looking param, tag or attribute key as
  ``***`` (`mask_secret_keys`; `set_unmasked_keys` keeps chosen keys);
- replaces a known secret found in a param, tag, saved state or log line by
  ``***`` (`redact`, `scrub`), and the password part of a URL likewise
  (`redact_url`; `strip_url_credentials` for a remote URL recorded whole);
- filters every record of the ``tracelet`` loggers through `RedactingFilter`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

from pydantic import BaseModel, SecretBytes, SecretStr

__all__ = [
    "MASK",
    "RedactingFilter",
    "install_log_filter",
    "known_secrets",
    "mask_secret_keys",
    "public_options",
    "redact",
    "redact_url",
    "register",
    "register_from",
    "scrub",
    "secret_name",
    "secret_option",
    "set_unmasked_keys",
    "strip_url_credentials",
    "strip_userinfo",
]

MASK = "***"

_log = logging.getLogger("tracelet")

#: Words that make a name secret wherever they stand in it (``db_password``,
#: ``HF_TOKEN``, ``--secret-file``, ``apiKey``), also as the end of a word
#: (``hftoken``, ``clientsecret``).
SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "secret",
        "token",
        "apikey",
        "credential",
        "credentials",
        "authorization",
        "passphrase",
    }
)
#: Word pairs that make a name secret wherever they stand (``aws_secret_access_key_id``).
_SECRET_PAIRS = frozenset(
    {("api", "key"), ("access", "key"), ("private", "key"), ("auth", "header")}
)
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
#: Environment variables of ``key=value,...`` pairs whose values are secrets (OTel headers).
HEADER_ENV = re.compile(r"^OTEL_EXPORTER_OTLP(_[A-Z]+)?_HEADERS$")
#: Shortest value treated as a secret (shorter ones would mask ordinary words).
MIN_LEN = 6

_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s]+)@")
_URL_QUERY_SECRET = re.compile(
    r"(?P<key>[?&](?:access_?token|token|api_?key|key|secret|password|sig|signature)=)[^&#\s]+",
    re.IGNORECASE,
)

_lock = threading.Lock()
_registered: set[str] = set()
_unmasked: frozenset[str] = frozenset()
_warned: set[str] = set()


def _words(name: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(name)]


def secret_name(name: str, *, any_key: bool = False) -> bool:
    """True when `name` (a param, tag, option, variable or flag) says its value is a secret.

    One rule for every name tracelet judges: a word of `SECRET_WORDS`, or a
    word ending in one (``hftoken``); ``api key``, ``access key``, ``private
    key`` anywhere; or ``key`` as the last of several words (``ssh_key``,
    ``secret_key``; the ``*_key`` convention). ``key_frames``, ``keep_prob``,
    ``max_tokens``, ``monkey`` are not secret. With `any_key` (command-line
    flags, where masking too much costs nothing) ``key`` and ``auth`` are
    secret anywhere (``--key X``, ``--auth X``).
    """
    words = _words(name)
    for i, word in enumerate(words):
        if word in SECRET_WORDS or word.endswith(("token", "secret", "password", "apikey")):
            return True
        if i and (words[i - 1], word) in _SECRET_PAIRS:
            return True
        if any_key and word in ("key", "auth"):
            return True
    return len(words) > 1 and words[-1] == "key"


def secret_option(name: str) -> bool:
    """`secret_name`, and ``headers`` too: an option holding HTTP headers holds credentials."""
    return secret_name(name) or any(w in ("header", "headers") for w in _words(name))


def set_unmasked_keys(keys: Iterable[str]) -> None:
    """Param and tag keys whose values stay in clear though their names look secret."""
    global _unmasked
    _unmasked = frozenset(keys)


def unmasked_keys() -> frozenset[str]:
    """The keys `set_unmasked_keys` set."""
    return _unmasked


def mask_secret_keys(values: dict[str, Any], what: str) -> dict[str, Any]:
    """`values` with the string under each secret-looking key masked (`secret_name`).

    Numbers and booleans stay (``token_budget=4096`` is no secret); a masked
    value is registered, so it is masked wherever else it shows up; each key
    is warned about once per process, with how to keep it.
    """
    for key, value in values.items():
        if not isinstance(value, str) or not value or value == MASK or not secret_name(key):
            continue
        if key in _unmasked:
            continue
        register(value)
        values[key] = MASK
        if key not in _warned:
            _warned.add(key)
            _log.warning(
                "%s %r looks like a secret; its value is stored as %r. To keep it, "
                "list the key in the unmasked_keys setting (TRACELET_UNMASKED_KEYS)",
                what,
                key,
                MASK,
            )
    return values


def register(value: str | SecretStr | SecretBytes | None) -> None:
    """Add a secret (e.g. a ``SecretStr`` option) to those `redact` masks."""
    if value is None:
        return
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    elif isinstance(value, SecretBytes):
        value = value.get_secret_value().decode(errors="replace")
    if isinstance(value, str) and len(value) >= MIN_LEN:
        with _lock:
            _registered.add(value)


def _env_secrets(environ: Mapping[str, str]) -> set[str]:
    found: set[str] = set()
    for name, value in environ.items():
        if not value:
            continue
        if HEADER_ENV.match(name):
            for pair in value.split(","):
                _, _, v = pair.partition("=")
                v = unquote(v.strip())
                found.add(v)
                # "Bearer abc..." → also the token alone
                found.update(part for part in v.split() if len(part) >= MIN_LEN)
        elif secret_name(name):
            found.add(value)
    return {s for s in found if len(s) >= MIN_LEN}


def register_from(config: Any) -> None:
    """Register the secrets of a config mapping: ``SecretStr`` values and secret-named keys."""
    if isinstance(config, Mapping):
        for key, value in config.items():
            if isinstance(value, (SecretStr, SecretBytes)):
                register(value)
            elif isinstance(key, str) and secret_option(key):
                _register_leaves(value)  # ``headers={"x-auth": "..."}``: every value
            else:
                register_from(value)
    elif isinstance(config, (list, tuple)):
        for value in config:
            register_from(value)


def _register_leaves(value: Any) -> None:
    if isinstance(value, Mapping):
        for item in value.values():
            _register_leaves(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _register_leaves(item)
    elif isinstance(value, str):
        register(value)
        # "Bearer abc..." → also the token alone
        for part in value.split():
            register(part)
        for pair in value.split(","):  # "k=v,k2=v2": OTel headers given as one string
            register(pair.partition("=")[2].strip())
    else:
        register(value if isinstance(value, (SecretStr, SecretBytes)) else None)


def known_secrets() -> list[str]:
    """Every secret known now: the environment's and the registered ones, longest first."""
    with _lock:
        found = set(_registered)
    found |= _env_secrets(os.environ)
    return sorted(found, key=len, reverse=True)


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.S)
_SSH_SCHEMES = {"ssh", "git+ssh", "ssh+git"}
_USERINFO_ONLY = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]*@")


def strip_url_credentials(url: str) -> str:
    """A remote URL without the credentials it may carry.

    - ``https://user:token@host/org/repo.git`` and ``https://token@host/…`` →
      ``https://host/org/repo.git`` (the whole user part goes: a token is often
      passed as the user name); a query or fragment is dropped too
      (``?private_token=…``).
    - ``ssh://git:pw@host/repo`` → ``ssh://git@host/repo``; scp-like
      ``git@host:org/repo.git`` is kept (over SSH the user name is no secret,
      a password is).
    - Local paths are returned as they are.

    As git does, the user part is what precedes the last ``@`` before the
    first ``/`` of the address.
    """
    url = url.strip()
    match = _SCHEME.match(url)
    if match:
        scheme, rest = match.groups()
        authority, slash, path = rest.partition("/")
        userinfo, at, host = authority.rpartition("@")
        host = re.split(r"[?#]", host, maxsplit=1)[0]
        path = re.split(r"[?#]", path, maxsplit=1)[0]
        user = ""
        if at and scheme.lower() in _SSH_SCHEMES:
            name = userinfo.partition(":")[0]
            user = f"{name}@" if name else ""
        return f"{scheme}://{user}{host}{slash}{path}"
    prefix = url.partition("/")[0]
    if "@" in prefix:  # scp-like [user[:password]@]host:path
        userinfo, _, rest = prefix.rpartition("@")
        name = userinfo.partition(":")[0]
        tail = url[len(prefix) :]
        return f"{name}@{rest}{tail}" if name else f"{rest}{tail}"
    return url


def strip_userinfo(text: str) -> str:
    """`text` with the user part of every URL in it removed (``https://u:p@h`` → ``https://h``)."""
    return _USERINFO_ONLY.sub(r"\1", text)


def redact_url(url: str) -> str:
    """Mask the credentials of URLs in `url` (``https://u:p@h`` → ``https://u:***@h``).

    A userinfo without a password (``https://token@host``, how git remotes
    carry tokens) is masked whole; secret query parameters too.
    """

    def userinfo(m: re.Match[str]) -> str:
        user, sep, _ = m.group("userinfo").partition(":")
        masked = f"{user}:{MASK}" if sep else MASK
        return f"{m.group('scheme')}{masked}@"

    text = _URL_USERINFO.sub(userinfo, url)
    return _URL_QUERY_SECRET.sub(lambda m: m.group("key") + MASK, text)


def redact(text: str, secrets: list[str] | None = None) -> str:
    """`text` with every known secret and URL credential masked."""
    for secret in known_secrets() if secrets is None else secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    if "@" in text or "=" in text:
        text = redact_url(text)
    return text


def scrub(value: Any, secrets: list[str] | None = None) -> Any:
    """`value` (a JSON-like structure) with secrets masked in every string it holds."""
    if secrets is None:
        secrets = known_secrets()
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, Mapping):
        return {k: scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v, secrets) for v in value]
    return value


def public_options(options: BaseModel) -> dict[str, Any]:
    """The options that may be written to disk: no ``SecretStr``, no secret-named field.

    Secret values are registered (`register`) on the way, so they are masked
    wherever they might show up later.
    """
    out: dict[str, Any] = {}
    for name in type(options).model_fields:
        value = getattr(options, name)
        if isinstance(value, (SecretStr, SecretBytes)):
            register(value)
            continue
        if secret_option(name):
            if isinstance(value, str):
                register(value)
            continue
        out[name] = value
    return dict(scrub(_drop_secret_keys(options.model_dump(mode="json", include=set(out)))))


def _drop_secret_keys(value: Any) -> Any:
    """`value` without the dict entries whose key names a secret, at any depth."""
    if isinstance(value, Mapping):
        kept: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(key, str) and secret_option(key):
                if isinstance(item, str):
                    register(item)
                continue
            kept[key] = _drop_secret_keys(item)
        return kept
    if isinstance(value, (list, tuple)):
        return [_drop_secret_keys(v) for v in value]
    return value


class RedactingFilter(logging.Filter):
    """Masks known secrets and URL credentials in log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string is the logging module's to report
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            formatted = logging.Formatter().formatException(record.exc_info)
            cleaned = redact(formatted)
            if cleaned != formatted:
                record.exc_text = cleaned
        return True


_FILTER = RedactingFilter()


def install_log_filter() -> None:
    """Attach `RedactingFilter` to the ``tracelet`` logger and its existing children."""
    names = ["tracelet"] + [
        name for name in list(logging.Logger.manager.loggerDict) if name.startswith("tracelet.")
    ]
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
