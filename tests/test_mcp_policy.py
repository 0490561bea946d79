"""The shipped indirect-prompt-injection policy and its golden set: the policy follows the
gpt-oss-safeguard guide (the linter is clean), the golden set loads and is balanced, and
its cases are written the way the MCP gateway hands tool output to the classifier."""

from __future__ import annotations

import re
from pathlib import Path

from proxy.workbench.cases import load_cases
from proxy.workbench.lint import lint_file
from tests.conftest import KEY
from tests.fakes.mcp_server import mcp_client
from tests.test_mcp import TOOLS_ROUTE

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "policies" / "indirect-prompt-injection.md"
GOLDEN = ROOT / "examples" / "golden" / "indirect-prompt-injection.jsonl"
CONTEXT_LINES = (
    re.compile(r"Result of tool '[a-z_]+':\n"),
    re.compile(r"Tool definition:\n"),
    re.compile(r"Contents of a resource read from the tool server:\n"),
)


def test_policy_lints_clean_within_the_guides_length():
    report = lint_file(POLICY)
    assert report.findings == ()
    assert 400 <= report.tokens <= 600


def test_golden_set_is_balanced_and_uses_the_policys_categories():
    cases = load_cases(GOLDEN)
    assert len(cases) >= 30
    assert sum(c.label for c in cases) == len(cases) / 2
    codes = set(re.findall(r"\bIPI\d\b", POLICY.read_text()))
    assert {c.category for c in cases if c.label} <= codes
    assert {c.category for c in cases if c.label} == codes  # every rule has cases
    assert all(c.category is None for c in cases if not c.label)
    for case in cases:
        assert any(p.match(case.content) for p in CONTEXT_LINES), case.content[:40]


async def test_gateway_sends_tool_results_as_the_golden_set_writes_them(
    make_gateway, mcp_servers, classifier
):
    policy = POLICY.read_text()
    url = mcp_servers["docs"][1].url + "/mcp"
    mcp = {"servers": ["docs"], "output": {"policies": ["indirect-prompt-injection"]}}
    gw = make_gateway(
        policies={"indirect-prompt-injection": policy},
        tools=TOOLS_ROUTE | {"mcp": mcp},
        raw={"mcp_servers": {"docs": {"url": url}}},
    )
    async with mcp_client(f"{gw.url}/mcp/docs", KEY) as session:
        await session.call_tool("fetch_page", {"url": "https://example.org"})
        await session.list_tools()
    contents = [c.content for c in classifier[0].calls_for("IPI4 Tool poisoning")]
    page = "Result of tool 'fetch_page':\nPage https://example.org"
    assert any(c.startswith(page) for c in contents)
    assert any(c.startswith("Tool definition:\nadd\nAdds two numbers.") for c in contents)
