"""What the console reads from the audit store: pages of decisions, one request, queues,
and per-policy history. Each function takes an open connection and returns plain data;
the views run them in a thread.

Pages are newest first and fetched one row beyond the page to know whether more follow
(no COUNT over a store of millions).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.audit_backends import is_postgres, transaction
from proxy.audit_store import Filters
from proxy.reviews import for_request, has_reviews

PAGE = 50
# Free text without a time range reads only the newest SEARCH_ROWS requests: the text is
# not indexed, and a rare word would otherwise read the whole store (seconds at 1M records).
SEARCH_ROWS = 20_000
QUEUES = {
    "blocks": "Unreviewed blocks",
    "shadow": "Shadow disagreements",
}

# A shadow verdict disagrees when its label differs from its side's enforced outcome
# (flagged by any enforced policy of that side, or by none); failed checks are not compared.
# Conditions on verdicts are correlated EXISTS, as Filters.where's policy filter (why there).
# Whether an enforced policy of the shadow verdict `s`'s side flagged its request.
_ENFORCED_FLAGGED = (
    "EXISTS (SELECT 1 FROM verdicts e WHERE e.request = s.request AND e.shadow = 0"
    " AND COALESCE(e.side, '') = COALESCE(s.side, '') AND e.label = 'violation')"
)
_DISAGREES = (
    "EXISTS (SELECT 1 FROM verdicts s WHERE s.request = r.id AND s.shadow = 1"
    f" AND s.label IN ('violation', 'safe') AND (s.label = 'violation') <> {_ENFORCED_FLAGGED})"
)
_UNREVIEWED = "NOT EXISTS (SELECT 1 FROM reviews v WHERE v.request = r.id)"


@dataclass(frozen=True, slots=True)
class Query:
    """The list's filters as the user gave them (echoed back into the form)."""

    tenant: str = ""
    route: str = ""
    policy: str = ""
    decision: str = ""
    shadow: str = ""  # "" | "1": only requests with a shadow verdict
    since: str = ""
    until: str = ""
    q: str = ""  # free text over the kept content
    page: int = 1
    queue: str = ""  # "" | blocks | shadow

    @classmethod
    def from_params(cls, params: Mapping[str, str], *, queue: str = "") -> Query:
        page = params.get("page", "1")
        return cls(
            **{k: (params.get(k) or "").strip()[:200] for k in _TEXT},
            page=max(1, min(int(page), 10_000)) if page.isdigit() else 1,
            queue=queue,
        )

    def params(self, **changes: Any) -> dict[str, str]:
        """The query string of this list (for paging and live-update links)."""
        values = {k: getattr(self, k) for k in _TEXT} | {"page": self.page}
        values |= changes
        return {
            k: str(v)
            for k, v in values.items()
            if v not in ("", None) and not (k == "page" and str(v) == "1")
        }

    def where(self, reviews: bool, pg: bool = False) -> tuple[str, list[Any]]:
        """SQL condition on `requests r` (raises AuditQueryError for a malformed time)."""
        where, params = Filters.build(
            tenant=self.tenant,
            route=self.route,
            policy=self.policy,
            decision=self.decision,
            since=self.since,
            until=self.until,
        ).where()
        clauses = [where]
        if self.shadow:
            clauses.append(
                "EXISTS (SELECT 1 FROM verdicts v WHERE v.request = r.id AND v.shadow = 1)"
            )
        if self.q:
            if not _ESCAPED.search(self.q):  # the raw JSON text holds it as typed: a cheap
                find = "strpos" if pg else "instr"
                clauses.append(f"{find}(lower(r.record), lower(?)) > 0")  # first pass
                params.append(self.q)
            clauses.append(_CONTAINS_PG if pg else _CONTAINS)
            params.append(self.q)
            if not (self.since or self.until):  # from the time of the SEARCH_ROWS-th newest
                clauses.append(
                    "r.time >= COALESCE((SELECT time FROM requests WHERE id >="
                    " (SELECT MAX(id) FROM requests) - ? ORDER BY id LIMIT 1), 0)"
                )
                params.append(SEARCH_ROWS)
        if self.queue == "blocks":
            clauses.append("r.decision = 'block'")
        elif self.queue == "shadow":
            clauses.append(_DISAGREES)
        if self.queue and reviews:
            clauses.append(_UNREVIEWED)
        return " AND ".join(clauses), params


# Characters JSON text escapes: a needle with none is found in the raw record as typed.
_ESCAPED = re.compile(r'["\\\x00-\x1f]')
# Free text: a case-insensitive substring of the kept input or output.
_CONTAINS = (
    "instr(lower(COALESCE(json_extract(r.record, '$.content.input'), '') || ' ' ||"
    " COALESCE(json_extract(r.record, '$.content.output'), '')), lower(?)) > 0"
)
_CONTAINS_PG = (
    "strpos(lower(COALESCE(r.record::jsonb #>> '{content,input}', '') || ' ' ||"
    " COALESCE(r.record::jsonb #>> '{content,output}', '')), lower(?)) > 0"
)
_TEXT = ("tenant", "route", "policy", "decision", "shadow", "since", "until", "q")


@dataclass(slots=True)
class Page:
    rows: list[tuple[int, dict]]
    marks: dict[int, list[str]]  # row id -> review marks on it
    has_more: bool
    query: Query
    newest: int = 0  # the largest row id shown (live updates ask for newer)
    extra: dict[str, Any] = field(default_factory=dict)


def decisions(conn: Any, query: Query, *, size: int = PAGE) -> Page:
    reviews = has_reviews(conn)
    where, params = query.where(reviews, is_postgres(conn))
    cur = conn.execute(
        f"SELECT r.id, r.record FROM requests r WHERE {where}"
        " ORDER BY r.time DESC, r.id DESC LIMIT ? OFFSET ?",
        [*params, size + 1, (query.page - 1) * size],
    )
    rows = [(row_id, orjson.loads(text)) for row_id, text in cur]
    has_more = len(rows) > size
    rows = rows[:size]
    marks: dict[int, list[str]] = {}
    if reviews and rows:
        ids = [row_id for row_id, _ in rows]
        for request, mark in conn.execute(
            f"SELECT request, mark FROM reviews WHERE request IN ({','.join('?' * len(ids))})"
            " ORDER BY verdict",
            ids,
        ):
            marks.setdefault(request, []).append(mark)
    newest = max((row_id for row_id, _ in rows), default=0)
    return Page(rows, marks, has_more, query, newest)


def request(conn: Any, row_id: int) -> tuple[dict, dict] | None:
    """One stored record and its reviews by verdict index, or None."""
    row = conn.execute("SELECT record FROM requests WHERE id = ?", (row_id,)).fetchone()
    if row is None:
        return None
    return orjson.loads(row[0]), for_request(conn, row_id)


@dataclass(slots=True)
class PolicyHistory:
    versions: list[tuple[str, float, float, int]]  # version, first seen, last seen, verdicts
    hourly: dict[int, dict[str, int]]  # hour (unix // 3600) -> label -> verdicts
    agreement: dict[int, tuple[int, int]]  # hour -> (agreeing, compared), shadow verdicts
    shadow: bool  # seen as a shadow policy in the window


def policy_history(conn: Any, policy: str, since: float) -> PolicyHistory:
    # CROSS JOIN keeps SQLite's join order: the window's requests by time, then their
    # verdicts (not every verdict the policy ever had, then their times). PostgreSQL
    # plans the join itself and takes no ON after CROSS JOIN.
    cross = "JOIN" if is_postgres(conn) else "CROSS JOIN"
    join = (
        f"FROM requests r {cross} verdicts v ON v.request = r.id WHERE v.policy = ? AND r.time >= ?"
    )
    versions = conn.execute(
        f"SELECT COALESCE(v.version, '?'), MIN(r.time), MAX(r.time), COUNT(*) {join}"
        " GROUP BY 1 ORDER BY 2",
        (policy, since),
    ).fetchall()
    hourly: dict[int, dict[str, int]] = {}
    shadow = False
    for hour, label, is_shadow, count in conn.execute(
        f"SELECT CAST(r.time AS BIGINT) / 3600, COALESCE(v.label, 'error'), v.shadow, COUNT(*)"
        f" {join} GROUP BY 1, 2, 3",
        (policy, since),
    ):
        cell = hourly.setdefault(hour, {})
        cell[label] = cell.get(label, 0) + count
        shadow = shadow or bool(is_shadow)
    agreement: dict[int, tuple[int, int]] = {}
    if shadow:
        for hour, agree, compared in conn.execute(
            "SELECT CAST(r.time AS BIGINT) / 3600, SUM(CASE WHEN (s.label = 'violation') ="
            f" {_ENFORCED_FLAGGED} THEN 1 ELSE 0 END), COUNT(*)"
            f" FROM requests r {cross} verdicts s ON s.request = r.id WHERE s.policy = ?"
            " AND s.shadow = 1 AND s.label IN ('violation', 'safe') AND r.time >= ? GROUP BY 1",
            (policy, since),
        ):
            agreement[hour] = (int(agree or 0), int(compared))
    return PolicyHistory([tuple(v) for v in versions], hourly, agreement, shadow)


def signed_out(conn: Any, session: str) -> bool:
    """Whether this console session was signed out (on any worker or pod)."""
    found = conn.execute("SELECT 1 FROM console_logouts WHERE session = ?", (session,))
    return found.fetchone() is not None


def sign_out(conn: Any, session: str, expires: float, now: float) -> None:
    """Keep the session's id until it would have expired (and forget expired ones)."""
    with transaction(conn):
        conn.execute("DELETE FROM console_logouts WHERE expires < ?", (now,))
        conn.execute(
            "INSERT INTO console_logouts (session, expires) VALUES (?, ?)"
            " ON CONFLICT (session) DO NOTHING",
            (session, expires),
        )
