"""Reviews of verdicts, kept in the audit store beside the records they judge.

A reviewer marks one verdict of one stored request (its row id and its index in the
record's `verdicts`) correct, wrong or unsure, with a note; the latest mark wins. Reviewed
verdicts become labeled cases that `policy test --cases` reads as they are: the model's
label when the reviewer found it correct, the other label when wrong (unsure ones, failed
classifications and content not kept in clear are left out).

The table is part of the audit store's schema (proxy.audit_schema, version 2); the SQL here
is plain enough for SQLite and PostgreSQL alike (`ON CONFLICT ... DO UPDATE`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.audit_backends import is_postgres, transaction

MARKS = ("correct", "wrong", "unsure")
MAX_NOTE = 4000


class ReviewError(ValueError):
    """A review that cannot be kept (unknown request or verdict, bad mark)."""


@dataclass(frozen=True, slots=True)
class Review:
    request: int  # the request's row id in the store
    verdict: int  # index in the record's `verdicts`
    policy: str | None
    side: str | None
    shadow: bool
    model_label: str | None
    mark: str
    note: str
    reviewer: str
    time: float


def save(
    conn: Any,
    request: int,
    verdict: int,
    mark: str,
    note: str,
    reviewer: str,
    *,
    now: float | None = None,
) -> Review:
    """Keep (or replace) the review of one verdict; raises ReviewError for what is not one."""
    if mark not in MARKS:
        raise ReviewError(f"mark must be one of {', '.join(MARKS)}")
    row = conn.execute("SELECT record FROM requests WHERE id = ?", (request,)).fetchone()
    if row is None:
        raise ReviewError(f"no stored request {request}")
    verdicts = orjson.loads(row[0]).get("verdicts") or []
    if not 0 <= verdict < len(verdicts) or not isinstance(verdicts[verdict], Mapping):
        raise ReviewError(f"request {request} has no verdict {verdict}")
    v = verdicts[verdict]
    review = Review(
        request,
        verdict,
        _text(v.get("policy")),
        _text(v.get("side")),
        bool(v.get("shadow")),
        _text(v.get("label")),
        mark,
        note.strip()[:MAX_NOTE],
        reviewer,
        time.time() if now is None else now,
    )
    with transaction(conn):
        conn.execute(
            "INSERT INTO reviews (request, verdict, policy, side, shadow, model_label, mark,"
            " note, reviewer, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (request, verdict) DO UPDATE SET mark = excluded.mark,"
            " note = excluded.note, reviewer = excluded.reviewer, time = excluded.time",
            (
                review.request,
                review.verdict,
                review.policy,
                review.side,
                int(review.shadow),
                review.model_label,
                review.mark,
                review.note,
                review.reviewer,
                review.time,
            ),
        )
    return review


def for_request(conn: Any, request: int) -> dict[int, Review]:
    """The reviews of one request's verdicts, by verdict index."""
    if not has_reviews(conn):
        return {}
    rows = conn.execute(f"SELECT {_COLUMNS} FROM reviews WHERE request = ?", (request,))
    return {row[1]: _review(row) for row in rows}


def has_reviews(conn: Any) -> bool:
    """Whether the store has the reviews table (a store no console has opened yet has not)."""
    if is_postgres(conn):
        return bool(conn.execute("SELECT to_regclass('reviews') IS NOT NULL").fetchone()[0])
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'reviews'"
    ).fetchone()
    return found is not None


def reviewed(
    conn: Any, *, policy: str | None = None, since: float | None = None
) -> Iterator[tuple[Review, dict]]:
    """(review, record) pairs, oldest review first, optionally for one policy."""
    if not has_reviews(conn):
        return
    where, params = ["1 = 1"], []
    if policy:
        where.append("v.policy = ?")
        params.append(policy)
    if since is not None:
        where.append("v.time >= ?")
        params.append(since)
    cols = ", ".join(f"v.{c.strip()}" for c in _COLUMNS.split(","))
    rows = conn.execute(
        f"SELECT {cols}, r.record FROM reviews v JOIN requests r ON r.id = v.request"
        f" WHERE {' AND '.join(where)} ORDER BY v.time, v.request, v.verdict",
        params,
    )
    for row in rows:
        yield _review(row[:-1]), orjson.loads(row[-1])


def case(review: Review, record: Mapping[str, Any]) -> dict | None:
    """The golden-set case (`policy test --cases` JSON line) a review makes, or None.

    label: the model's when the reviewer marked it correct, the other one when wrong.
    Unsure marks, failed verdicts and content kept only as a hash (or not at all) make none.
    """
    if review.mark == "unsure" or review.model_label not in ("violation", "safe"):
        return None
    content = record.get("content") or {}
    if content.get("retention") in ("hash", "none"):
        return None
    text = content.get("output" if review.side == "output" else "input")
    if not isinstance(text, str) or not text.strip():
        return None
    flagged = review.model_label == "violation"
    label = int(flagged if review.mark == "correct" else not flagged)
    verdicts = record.get("verdicts") or []
    verdict = verdicts[review.verdict] if review.verdict < len(verdicts) else {}
    category = verdict.get("category") if label and flagged else None
    out: dict[str, Any] = {"content": case_text(text), "label": label}
    if category:
        out["category"] = str(category)
    return out | {
        "policy": review.policy,
        "policy_version": verdict.get("version"),
        "side": review.side,
        "request_id": record.get("request_id"),
        "review": review.mark,
        "note": review.note or None,
    }


def export_cases(
    conn: Any, *, policy: str | None = None, since: float | None = None
) -> Iterator[dict]:
    """Every reviewed verdict that makes a case, oldest review first."""
    for review, record in reviewed(conn, policy=policy, since=since):
        if (made := case(review, record)) is not None:
            yield made


_TURN = re.compile(r"^\[(user|assistant|system|developer|tool)\] ", re.M)


def case_text(stored: str) -> str:
    """The stored input of a one-turn conversation without its `[user] ` label (what a
    `last_user` policy classified); a longer conversation stays as stored."""
    turns = _TURN.findall(stored)
    if len(turns) == 1 and stored.startswith(f"[{turns[0]}] "):
        return stored[len(turns[0]) + 3 :]
    return stored


_COLUMNS = "request, verdict, policy, side, shadow, model_label, mark, note, reviewer, time"


def _review(row: tuple) -> Review:
    request, verdict, policy, side, shadow, model_label, mark, note, reviewer, at = row
    return Review(
        request, verdict, policy, side, bool(shadow), model_label, mark, note or "", reviewer, at
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
