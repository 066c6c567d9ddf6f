// A fake WebSocket for unit tests: the test plays the server.
import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { ClientFrameSchema, ServerFrameSchema, type ClientFrame } from "../../src/index.js";
import type { SocketLike } from "../../src/socket.js";

export class FakeSocket implements SocketLike {
  static instances: FakeSocket[] = [];
  binaryType = "blob";
  protocol: string;
  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  sent: ClientFrame[] = [];
  closedByClient: number | undefined;

  constructor(
    readonly url: string,
    protocols: string | string[],
  ) {
    this.protocol = Array.isArray(protocols) ? protocols[0]! : protocols;
    FakeSocket.instances.push(this);
  }

  send(data: string | Uint8Array): void {
    if (typeof data === "string") throw new Error("binary expected");
    this.sent.push(fromBinary(ClientFrameSchema, data));
  }

  close(code = 1000): void {
    this.closedByClient = code;
    this.readyState = 3;
  }

  // --- the server's side ---
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  frame(init: MessageInitShape<typeof ServerFrameSchema>): void {
    const bytes = toBinary(ServerFrameSchema, create(ServerFrameSchema, init));
    this.onmessage?.({ data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) });
  }

  /** Answers the request sent with this case (the last one). */
  lastRequest(kase: string): ClientFrame {
    const f = [...this.sent].reverse().find((f) => f.body.case === kase);
    if (!f) throw new Error(`no ${kase} sent; sent: ${this.sent.map((f) => f.body.case).join(", ")}`);
    return f;
  }

  requests(kase: string): ClientFrame[] {
    return this.sent.filter((f) => f.body.case === kase);
  }

  serverClose(code: number, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** Opens, answers the login with LoginOk and pushes the summary. */
  login(user = "alice", summary: MessageInitShape<typeof ServerFrameSchema>["body"] = { case: "unreadSummary", value: {} }): void {
    this.open();
    const login = this.lastRequest("login");
    this.frame({ id: login.id, body: { case: "loginOk", value: { userId: user, sessionId: "1", serverTime: BigInt(Date.now()) } } });
    this.frame({ id: 0n, body: summary });
  }
}

/** Lets pending promises and microtasks run. */
export async function settle(rounds = 20): Promise<void> {
  for (let i = 0; i < rounds; i++) await Promise.resolve();
}

/** The n-th socket created (0-based), once the client has made it. */
export async function socket(n: number): Promise<FakeSocket> {
  for (let i = 0; i < 200; i++) {
    const s = FakeSocket.instances[n];
    if (s) return s;
    await Promise.resolve();
  }
  throw new Error(`socket ${n} never created (have ${FakeSocket.instances.length})`);
}
