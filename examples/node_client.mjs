// Call the gateway with the official openai Node SDK: only baseURL and the key change.
//
//   npm install openai
//   OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=sk-safeguard-dev \
//   MODEL=gpt-4o-mini node examples/node_client.mjs "How do I bake bread?"
//
// Exit status: 0 answered, 2 blocked by a policy (HTTP 400, code content_filter).
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.OPENAI_BASE_URL ?? "http://127.0.0.1:8080/v1",
  apiKey: process.env.OPENAI_API_KEY ?? "sk-safeguard-dev",
});
const model = process.env.MODEL ?? "gpt-4o-mini";
const prompt = process.argv.slice(2).join(" ") || "Say hello in one short sentence.";

try {
  const { data: completion, response } = await client.chat.completions
    .create({ model, messages: [{ role: "user", content: prompt }] })
    .withResponse();
  const choice = completion.choices[0];
  console.log(choice.message.content ?? "");
  if (choice.finish_reason === "content_filter") {
    console.log("[the answer was withheld by an output policy]");
  }
  // No x-safeguard-decision header means the route has no policies for this request.
  const decision = response.headers.get("x-safeguard-decision") ?? "-";
  console.error(`decision=${decision} request_id=${response.headers.get("x-request-id")}`);
} catch (err) {
  if (err instanceof OpenAI.BadRequestError && err.code === "content_filter") {
    console.log(`blocked (code=${err.code}): ${err.message}`);
    const detail = err.error?.innererror?.content_filter_result ?? {};
    for (const [policy, result] of Object.entries(detail)) {
      console.log(`  policy ${policy}: category ${result.category}`);
    }
    process.exit(2);
  }
  throw err;
}
