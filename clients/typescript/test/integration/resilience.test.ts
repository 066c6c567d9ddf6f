// Reconnects in the middle of a conversation, and a process killed mid-send.
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { afterAll, describe, expect, it } from "vitest";
import { ConversationKind, TidingsClient, type Message } from "../../dist/index.js";
import { client, mint, text, until, URL, user } from "./helpers.js";

const clients: TidingsClient[] = [];
afterAll(() => clients.forEach((c) => c.close()));

describe("resilience", () => {
  it("a forced disconnect of either side mid-conversation: nothing missed, nothing twice", async () => {
    const alice = user("alice");
    const bob = user("bob");
    const a = client(alice);
    const b = client(bob);
    clients.push(a, b);
    const got: Message[] = [];
    b.on("message", (m) => got.push(m));
    let reconnects = 0;
    b.on("connected", () => reconnects++);
    await a.connect();
    await b.connect();
    const conv = await a.createConversation({ kind: ConversationKind.DIRECT, members: [bob] });
    const total = 60;
    const acks: bigint[] = [];
    for (let i = 0; i < total; i += 5) {
      // Five in flight at a time.
      const batch = [0, 1, 2, 3, 4].map((k) => a.send(conv.id, `n${i + k}`));
      if (i === 15) b.reconnectNow(); // the receiver drops while messages flow
      if (i === 35) a.reconnectNow(); // the sender drops with sends in flight
      acks.push(...(await Promise.all(batch)).map((x) => x.seq));
    }
    expect([...acks].sort((x, y) => Number(x - y))).toEqual(Array.from({ length: total }, (_, i) => BigInt(i + 1)));
    await until(b, "message", () => got.length >= total, () => `${total} messages (got seqs ${got.map((m) => m.seq).join(",")})`);
    expect(got.map((m) => m.seq)).toEqual(Array.from({ length: total }, (_, i) => BigInt(i + 1)));
    expect(new Set(got.map((m) => text(m.content))).size).toBe(total);
    expect(reconnects).toBe(2);
  });

  it("a process killed mid-send sends the rest once when it starts again with its state", async () => {
    const alice = user("alice");
    const bob = user("bob");
    const b = client(bob);
    clients.push(b);
    await b.connect();
    const conv = await b.createConversation({ kind: ConversationKind.DIRECT, members: [alice] });
    const dir = mkdtempSync(join(tmpdir(), "tidings-sdk-"));
    const state = join(dir, "state.json");
    const script = new globalThis.URL("./sender.mjs", import.meta.url).pathname;
    const token = mint(alice);

    const first = spawn(process.execPath, [script, "start", URL, token, state, conv.id, "20"], { stdio: ["ignore", "pipe", "inherit"] });
    const line = await new Promise<string>((resolve, reject) => {
      createInterface({ input: first.stdout! }).on("line", (l) => l.startsWith("killme") && resolve(l));
      first.on("exit", (code) => reject(new Error(`sender exited early (${code})`)));
    });
    first.kill("SIGKILL");
    await new Promise((r) => first.on("exit", r));
    const pendingAtKill = JSON.parse(readFileSync(state, "utf8")).pending.length;
    // The frames held back never reached the server: at least 16 of 20 were unacknowledged.
    expect(Number(line.split(" ")[1])).toBeGreaterThanOrEqual(16);
    expect(pendingAtKill).toBeGreaterThanOrEqual(16);

    const second = spawn(process.execPath, [script, "resume", URL, token, state], { stdio: ["ignore", "pipe", "inherit"] });
    const done = await new Promise<string>((resolve, reject) => {
      createInterface({ input: second.stdout! }).on("line", (l) => l.startsWith("done") && resolve(l));
      second.on("exit", (code) => code !== 0 && reject(new Error(`resume exited with ${code}`)));
    });
    expect(done).toBe(`done ${pendingAtKill} 0`);
    expect(JSON.parse(readFileSync(state, "utf8")).pending).toEqual([]);

    const all: string[] = [];
    for await (const m of b.history({ conversationId: conv.id, limit: 7 })) all.push(text(m.content));
    expect(all.sort()).toEqual(Array.from({ length: 20 }, (_, i) => `m${i}`).sort());
  });
});
