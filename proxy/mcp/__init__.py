"""The MCP gateway: `/mcp/<name>` in front of configured MCP servers (Streamable HTTP),
with the route's policies on tool arguments, tool results and tool definitions."""
