"""Keeping API keys and tokens out of everything a run writes.

Secrets reach a process three ways: the environment (``WANDB_API_KEY``,
``MLFLOW_TRACKING_TOKEN``, ``CLEARML_API_SECRET_KEY``, the values of
``OTEL_EXPORTER_OTLP_HEADERS``, ...), backend options (pydantic ``SecretStr``
fields of an exporter's options), and URLs that carry credentials
(``https://user:token@host``, a git remote with a token). tracelet

- never persists a ``SecretStr`` option, nor an option whose name says it is
  one (`public_options`);
- replaces a known secret found in a param, tag, saved state or log line by
  ``***`` (`redact`, `scrub`), and the password part of a URL likewise
  (`redact_url`);
- filters every record of the ``tracelet`` loggers through `RedactingFilter`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from pydantic import BaseModel, SecretBytes, SecretStr

__all__ = [
    "MASK",
    "RedactingFilter",
    "install_log_filter",
    "known_secrets",
    "public_options",
    "redact",
    "redact_url",
    "register",
    "register_from",
    "scrub",
]

MASK = "***"

#: Environment variable names whose values are secrets.
SECRET_ENV = re.compile(
    r"(^|_)(API_?KEY|ACCESS_?KEY|SECRET(_?KEY)?|TOKEN|PASSWORD|PASSWD|PRIVATE_?KEY|"
    r"CREDENTIALS?|AUTH_?HEADER)($|_)",
    re.IGNORECASE,
)
#: Environment variables of ``key=value,...`` pairs whose values are secrets (OTel headers).
HEADER_ENV = re.compile(r"^OTEL_EXPORTER_OTLP(_[A-Z]+)?_HEADERS$")
#: Option names that hold secrets even when not typed ``SecretStr``.
SECRET_OPTION = re.compile(
    r"(^|_)(api_?key|access_?key|secret(_?key)?|token|password|passwd|private_?key|"
    r"credentials?|headers?)($|_)",
    re.IGNORECASE,
)
#: Shortest value treated as a secret (shorter ones would mask ordinary words).
MIN_LEN = 6

_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s]+)@")
_URL_QUERY_SECRET = re.compile(
    r"(?P<key>[?&](?:access_?token|token|api_?key|key|secret|password|sig|signature)=)[^&#\s]+",
    re.IGNORECASE,
)

_lock = threading.Lock()
_registered: set[str] = set()


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
        elif SECRET_ENV.search(name):
            found.add(value)
    return {s for s in found if len(s) >= MIN_LEN}


def register_from(config: Any) -> None:
    """Register the secrets of a config mapping: ``SecretStr`` values and secret-named keys."""
    if isinstance(config, Mapping):
        for key, value in config.items():
            if isinstance(value, (SecretStr, SecretBytes)):
                register(value)
            elif isinstance(key, str) and SECRET_OPTION.search(key) and isinstance(value, str):
                register(value)
            else:
                register_from(value)
    elif isinstance(config, (list, tuple)):
        for value in config:
            register_from(value)


def known_secrets() -> list[str]:
    """Every secret known now: the environment's and the registered ones, longest first."""
    with _lock:
        found = set(_registered)
    found |= _env_secrets(os.environ)
    return sorted(found, key=len, reverse=True)


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
        if SECRET_OPTION.search(name):
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
            if isinstance(key, str) and SECRET_OPTION.search(key):
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
