"""What one MCP exchange was about, for the audit record, span attributes and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.mcp import messages as m

# Metric labels: JSON-RPC methods come from clients, so only MCP's own are named.
_KNOWN_METHODS = frozenset(
    (
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "server/discover",
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/roots/list_changed",
    )
)


@dataclass(slots=True)
class McpCall:
    server: str
    http_method: str
    kind: str | None = None  # request | notification | response | error (a POST's message)
    method: str | None = None
    tool: str | None = None
    rpc_id: Any = None
    session: str | None = None
    version: str | None = None  # the client's MCP-Protocol-Version
    dropped: dict[str, str] = field(default_factory=dict)  # tools/list: tool -> why

    def take(self, message: m.Message) -> None:
        self.kind, self.method, self.rpc_id = message.kind, message.method, message.id
        if message.method == m.TOOLS_CALL:
            self.tool = message.tool

    @property
    def method_label(self) -> str:
        if self.method is None:
            return self.kind or self.http_method  # GET, DELETE, or a posted response
        return self.method if self.method in _KNOWN_METHODS else "other"

    def span_attributes(self) -> dict[str, Any]:
        """OTel MCP conventions (`mcp.method.name`, `gen_ai.tool.name`, ...)."""
        attributes: dict[str, Any] = {"mcp.server": self.server}
        if self.method:
            attributes["mcp.method.name"] = self.method_label
        if self.tool:
            attributes["gen_ai.tool.name"] = self.tool
            attributes["gen_ai.operation.name"] = "execute_tool"
        if self.session:
            attributes["mcp.session.id"] = self.session
        if self.rpc_id is not None:
            attributes["jsonrpc.request.id"] = str(self.rpc_id)
        return attributes

    def record(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "http_method": self.http_method,
            "kind": self.kind,
            "method": self.method,
            "tool": self.tool,
            "id": self.rpc_id,
            "session": self.session,
            "protocol_version": self.version,
            "dropped_tools": self.dropped or None,
        }
