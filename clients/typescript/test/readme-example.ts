// The READMEs' examples (the repository's and the package's), type-checked by `tsc --noEmit`,
// never run; test/unit/readme.test.ts checks that the READMEs show these lines.
import { TidingsClient, ConversationKind } from "@tidings/client";

export async function repositoryReadme(): Promise<void> {
  const client = new TidingsClient({
    url: "wss://chat.example.com/ws",
    token: () => fetch("/chat-token").then((r) => r.text()), // your backend mints it
  });
  client.on("message", (m) => console.log(m.sender, new TextDecoder().decode(m.content)));
  await client.connect();
  const conv = await client.createConversation({ kind: ConversationKind.DIRECT, members: ["bob"] });
  await client.send(conv.id, "hello"); // resolves once the message is durable
}

export async function packageReadme(): Promise<void> {
  const client = new TidingsClient({
    url: "wss://chat.example.com/ws",
    token: () => fetch("/chat-token").then((r) => r.text()), // called at every (re)connect
  });
  client.on("message", (m) => console.log(m.sender, new TextDecoder().decode(m.content)));
  client.on("disconnected", (d) => console.log("closed", d.code, "retrying:", d.willRetry));
  await client.connect();
  const conv = await client.createConversation({ kind: ConversationKind.DIRECT, members: ["bob"] });
  await client.send(conv.id, "hello"); // resolves once the message is durable
}
