import { createHmac } from "node:crypto";
import WebSocket from "ws";
import { TidingsClient, type ClientOptions, type SocketFactory } from "../../dist/index.js";

export const URL = process.env.TIDINGS_URL ?? "";
const SECRET = process.env.TIDINGS_SECRET ?? "";
if (!URL || !SECRET) throw new Error("TIDINGS_URL and TIDINGS_SECRET must be set (tests/it/sdk_typescript.rs sets them)");

const b64url = (s: string | Buffer) => Buffer.from(s).toString("base64url");

/** An HS256 token for `user`, valid `ttlSecs` from now. */
export function mint(user: string, ttlSecs = 3600): string {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify({ sub: user, iat: now, exp: now + ttlSecs }));
  const sig = createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

let n = 0;
/** A unique user name per test run (the server is shared by the tests). */
export function user(name: string): string {
  return `${name}-${process.pid}-${++n}`;
}

export function client(u: string, o: Partial<ClientOptions> = {}): TidingsClient {
  return new TidingsClient({
    url: URL,
    token: () => mint(u),
    WebSocket: WebSocket as unknown as SocketFactory,
    reconnect: { initialDelayMs: 50, maxDelayMs: 500 },
    ...o,
  });
}

/** Resolves when `check` holds, re-checking on each `event` of the client; fails after 30 s (CI runs these beside the server's own tests on two cores). */
export function until(c: TidingsClient, event: "message" | "conversationEvent" | "receipt" | "presence" | "messageUpdated" | "state" | "sent" | "readPosition" | "listEntryChanged" | "listEntriesDeleted" | "messagesDeleted" | "profileChanged", check: () => boolean, what: string | (() => string) = "condition"): Promise<void> {
  return new Promise((resolve, reject) => {
    if (check()) return resolve();
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out waiting for ${typeof what === "string" ? what : what()}`));
    }, 30_000);
    const off = c.on(event, () => {
      if (check()) {
        clearTimeout(timer);
        off();
        resolve();
      }
    });
  });
}

export const text = (b: Uint8Array) => new TextDecoder().decode(b);
