// A process that sends messages with its catch-up state in a file, for the test that kills it
// mid-send and starts it again. Usage:
//   node sender.mjs start  <url> <token> <state.json> <conversation> <count>
//   node sender.mjs resume <url> <token> <state.json>
// `start` sends <count> messages, letting only the first few frames reach the server (a slow
// network), prints "killme" once those are acknowledged, and waits to be killed. `resume`
// loads the state, reconnects, and prints "done <n>" once the <n> restored sends are acknowledged.
import { readFileSync, writeFileSync, existsSync, renameSync } from "node:fs";
import WebSocket from "ws";
import { fromBinary } from "@bufbuild/protobuf";
import { TidingsClient, applyChange, ClientFrameSchema } from "../../dist/index.js";

const [mode, url, token, file, conv, count] = process.argv.slice(2);

/** A file store: the whole state as JSON, replaced atomically on every change. */
class FileStore {
  async load() {
    if (!existsSync(file)) return undefined;
    const s = JSON.parse(readFileSync(file, "utf8"));
    s.pending = s.pending.map((p) => ({ ...p, content: new Uint8Array(Buffer.from(p.content, "base64")) }));
    return s;
  }
  async update(_key, change) {
    const s = applyChange(await this.load(), change);
    const out = { ...s, pending: s.pending.map((p) => ({ ...p, content: Buffer.from(p.content).toString("base64") })) };
    writeFileSync(`${file}.tmp`, JSON.stringify(out));
    renameSync(`${file}.tmp`, file);
  }
}

/** A WebSocket that lets only the first `passSends` SendMessage frames out. */
function throttled(passSends) {
  let sends = 0;
  return class extends WebSocket {
    send(data) {
      const isSend = fromBinary(ClientFrameSchema, data).body.case === "sendMessage";
      if (isSend && ++sends > passSends) return;
      super.send(data);
    }
  };
}

const store = new FileStore();
if (mode === "start") {
  const c = new TidingsClient({ url, token, WebSocket: throttled(4), device: "sender", store, requestTimeoutMs: 60_000 });
  await c.connect();
  let acked = 0;
  for (let i = 0; i < Number(count); i++) {
    c.send(conv, `m${i}`).then(() => {
      if (++acked === 4) {
        // Everything is in the store (sends are stored before they go out); kill me now.
        c.flush().then(() => console.log(`killme ${c.pendingSends().length}`));
      }
    });
  }
  setInterval(() => {}, 1000);
} else {
  const c = new TidingsClient({ url, token, WebSocket, device: "sender", store });
  const restored = (await store.load()).pending.length;
  let acked = 0;
  c.on("sent", () => {
    if (++acked === restored) c.flush().then(() => {
      console.log(`done ${acked} ${c.pendingSends().length}`);
      c.close();
      process.exit(0);
    });
  });
  c.on("sendFailed", (e) => {
    console.error("send failed", e);
    process.exit(1);
  });
  await c.connect();
}
