"""Scenario `turns` (issue 13): classifier calls per turn of a growing conversation, by scope.

A client chats for 10 turns, each request sending the whole history plus one new user
message (the upstream echoes it). The route guards input and output with the same policy,
so the answer the model gave is judged on the way out and is a cache hit when the client
sends it back. Counted from the classifier's own `/stats`.
"""

from __future__ import annotations

import shutil
from typing import Any

import httpx

from tests.bench.harness import CHAT, KEY, POLICIES_DIR, Scenario, Settings, cluster, fmt
from tests.bench.harness import gateway_config as base_config

POLICY = "violence"
TURNS = 10
SCOPES = ("per_message", "last_user", "conversation")


def _policies(tmp: Any) -> Any:
    """The shipped policy once per scope (ids `violence-<scope>`)."""
    folder = tmp / "policies"
    folder.mkdir(parents=True, exist_ok=True)
    source = (POLICIES_DIR / f"{POLICY}.md").read_text()
    for scope in SCOPES:
        text = source.replace(f"id: {POLICY}", f"id: {POLICY}-{scope}")
        lines = [ln for ln in text.splitlines() if not ln.startswith("scope:")]
        lines.insert(1, f"scope: {scope}")
        (folder / f"{POLICY}-{scope}.md").write_text("\n".join(lines) + "\n")
    return folder


def _chat(client: httpx.Client, url: str, model: str, conversations: int) -> list[float]:
    """Classifier calls per turn (averaged over `conversations` distinct conversations)."""
    per_turn = [0.0] * TURNS
    for n in range(conversations):
        history: list[dict[str, str]] = [{"role": "system", "content": "Be brief."}]
        for turn in range(TURNS):
            history.append({"role": "user", "content": f"conversation {n} question {turn}"})
            before = client.get(url + "/stats").json()["calls"]
            reply = client.post(
                CHAT,
                json={"model": model, "messages": history},
                headers={"authorization": f"Bearer {KEY}"},
            )
            reply.raise_for_status()
            per_turn[turn] += client.get(url + "/stats").json()["calls"] - before
            history.append(reply.json()["choices"][0]["message"])
    return [calls / conversations for calls in per_turn]


def turns(settings: Settings) -> Scenario:
    sc = Scenario(
        "turns", "Classifier calls per turn of a conversation, by policy scope (issue 13)"
    )
    conversations = 3 if settings.quick else 10
    sc.notes += [
        f"{conversations} conversations of {TURNS} turns; each request sends the history plus one "
        f"new user message. Input and output policy: `{POLICY}` with the scope named; the "
        "upstream echoes the last user message, the classifier answers at once.",
    ]
    tmp = settings.log_dir / "turns"
    routes = {
        scope.replace("_", ""): {
            "upstream": "main",
            "input": {"policies": [f"{POLICY}-{scope}"]},
            "output": {"policies": [f"{POLICY}-{scope}"]},
        }
        for scope in SCOPES
    }
    rows, results = [], {}
    with cluster(settings) as cl:
        clf = cl.start("classifier", "classifier")
        up = cl.upstream(echo=True)
        config = base_config(up, tmp, routes=routes, classifier=clf)
        config["policies_dir"] = str(_policies(tmp))
        gw = cl.gateway("gateway", config)
        with httpx.Client(base_url=gw.url, timeout=30) as client:
            for scope in SCOPES:
                calls = _chat(client, clf.url, f"{scope.replace('_', '')}-bench", conversations)
                results[scope] = calls
                rows.append([scope, fmt(calls[0]), fmt(calls[-1]), fmt(sum(calls))])
    shutil.rmtree(tmp / "policies", ignore_errors=True)
    sc.table(
        "Classifier calls (input + output) per request",
        ["input scope", "turn 1", f"turn {TURNS}", f"all {TURNS} turns"],
        rows,
    )
    last = results["per_message"][-1]
    sc.check(
        f"per_message calls at turn {TURNS} vs last_user (one new turn)",
        f"{fmt(last)} vs {fmt(results['last_user'][-1])}",
        "<= last_user",
        last <= results["last_user"][-1],
    )
    sc.raw = results
    return sc
