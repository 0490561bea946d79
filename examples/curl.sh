#!/usr/bin/env bash
# The gateway speaks the OpenAI wire format, so plain curl works.
#
#   OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=sk-safeguard-dev \
#   MODEL=gpt-4o-mini bash examples/curl.sh "How do I bake bread?"
#
# Prints the response headers (x-request-id, x-safeguard-decision, x-safeguard-policies)
# and the JSON body: a completion, or for a blocked prompt HTTP 400 with
# "code": "content_filter" and the policies that fired in "innererror".
set -euo pipefail

BASE_URL="${OPENAI_BASE_URL:-http://127.0.0.1:8080/v1}"
API_KEY="${OPENAI_API_KEY:-sk-safeguard-dev}"
MODEL="${MODEL:-gpt-4o-mini}"
PROMPT="${*:-Say hello in one short sentence.}"

# JSON-encode the prompt without jq: python3 is the one tool we can count on.
BODY=$(MODEL="$MODEL" PROMPT="$PROMPT" python3 -c 'import json, os; print(json.dumps({"model": os.environ["MODEL"], "messages": [{"role": "user", "content": os.environ["PROMPT"]}]}))')

echo "== non-streaming"
curl -sS -D - "$BASE_URL/chat/completions" \
  -H "Authorization: Bearer $API_KEY" \
  -H "Content-Type: application/json" \
  -d "$BODY"
echo

echo "== streaming (server-sent events)"
STREAM_BODY=$(BODY="$BODY" python3 -c 'import json, os; b = json.loads(os.environ["BODY"]); b["stream"] = True; print(json.dumps(b))')
curl -sS -N "$BASE_URL/chat/completions" \
  -H "Authorization: Bearer $API_KEY" \
  -H "Content-Type: application/json" \
  -d "$STREAM_BODY"
echo
