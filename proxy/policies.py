"""Policy files: Markdown bodies handed to the classifier verbatim, YAML front matter.

A policy's version is the short sha256 of its file bytes, so any edit (front matter
included) yields a new version and a new verdict-cache key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

Action = Literal["block", "redact", "annotate", "log"]
# per_message (the default): every message, field and tool definition on its own, so moving
# text to another field is never a bypass; last_user is an explicit opt-in.
Scope = Literal["per_message", "last_user", "conversation", "assistant"]

ACTIONS: tuple[str, ...] = ("block", "redact", "annotate", "log")
SCOPES: tuple[str, ...] = ("per_message", "last_user", "conversation", "assistant")


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class Policy:
    id: str
    text: str  # the Markdown body, sent as the classifier's system message
    version: str  # short sha256 of the file
    action: Action = "block"
    scope: Scope = "per_message"
    reasoning_effort: str | None = None
    detectors: tuple[str, ...] = ()
    category: str | None = None  # label used in Azure-style filter results
    path: str | None = None
    shadows: str | None = None  # as a shadow, the enforced policy it is a candidate for
    detectors_only: bool = False  # the detectors decide alone: never a model call


def split_front_matter(source: str) -> tuple[dict, str]:
    """Return (front matter mapping, body). A file without front matter has an empty one."""
    if not source.startswith("---"):
        return {}, source
    head, sep, body = source[3:].partition("\n---")
    if not sep:
        raise PolicyError("front matter opened with '---' but never closed")
    meta = yaml.safe_load(head) or {}
    if not isinstance(meta, dict):
        raise PolicyError("front matter must be a YAML mapping")
    return meta, body.partition("\n")[2].lstrip("\n")


def parse_policy(source: bytes, *, name: str, path: str | None = None) -> Policy:
    """Build a Policy from file bytes; `name` (the file stem) is the id unless overridden."""
    from proxy.guard.detectors import DETECTORS  # local: detectors import nothing from here

    where = path or name
    try:
        meta, body = split_front_matter(source.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError, PolicyError) as exc:
        raise PolicyError(f"{where}: {exc}") from None
    policy_id = str(meta.get("id", name))
    action = meta.get("action", "block")
    scope = meta.get("scope", "per_message")
    detectors = meta.get("detectors") or []
    if action not in ACTIONS:
        raise PolicyError(f"{where}: action must be one of {', '.join(ACTIONS)}, got {action!r}")
    if scope not in SCOPES:
        raise PolicyError(f"{where}: scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if not isinstance(detectors, list) or any(d not in DETECTORS for d in detectors):
        raise PolicyError(f"{where}: detectors must be a list drawn from {', '.join(DETECTORS)}")
    if not body.strip():
        raise PolicyError(f"{where}: the policy text is empty")
    shadows = meta.get("shadows")
    if shadows is not None and not isinstance(shadows, str):
        raise PolicyError(f"{where}: shadows must be a policy id")
    detectors_only = meta.get("detectors_only", False)
    if not isinstance(detectors_only, bool):
        raise PolicyError(f"{where}: detectors_only must be true or false")
    if detectors_only and not detectors:
        raise PolicyError(f"{where}: detectors_only needs a detectors list")
    effort = meta.get("reasoning_effort")
    if effort is not None and effort not in ("low", "medium", "high"):
        raise PolicyError(f"{where}: reasoning_effort must be low, medium or high")
    return Policy(
        id=policy_id,
        text=body,
        version=hashlib.sha256(source).hexdigest()[:12],
        action=action,
        scope=scope,
        reasoning_effort=effort,
        detectors=tuple(detectors),
        category=str(meta["category"]) if "category" in meta else None,
        path=path,
        shadows=shadows,
        detectors_only=detectors_only,
    )


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{path}: {exc.strerror}") from None
    return parse_policy(source, name=path.stem, path=str(path))


def load_policies(directory: str | Path) -> dict[str, Policy]:
    """Load every `*.md` in a directory; any broken file fails the whole load."""
    directory = Path(directory)
    if not directory.is_dir():
        where = "" if directory.is_absolute() else f" (resolved from {Path.cwd()})"
        raise PolicyError(f"{directory.absolute()}: policies_dir is not a directory{where}")
    policies: dict[str, Policy] = {}
    for path in sorted(directory.glob("*.md")):
        policy = load_policy(path)
        if policy.id in policies:
            raise PolicyError(
                f"{path}: duplicate policy id {policy.id!r}, already used by "
                f"{policies[policy.id].path}; give the copy its own `id:` (e.g. "
                f"id: {path.stem}) in its front matter"
            )
        policies[policy.id] = policy
    return policies


def resolve(policies: Mapping[str, Policy], id_or_path: str) -> Policy:
    """A CLI argument naming either a loaded policy id or a policy file."""
    if id_or_path in policies:
        return policies[id_or_path]
    return load_policy(id_or_path)
