/**
 * The part of the WebSocket API the client uses: the browsers' native `WebSocket`, Node 22's
 * global one, or the `ws` package's (`import WebSocket from "ws"`), all fit.
 */
export interface SocketLike {
  binaryType: string;
  readonly protocol: string;
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
}

/** A WebSocket constructor. */
export type SocketFactory = new (url: string, protocols: string | string[]) => SocketLike;

/** The global `WebSocket`, when there is one. */
export function defaultSocket(): SocketFactory | undefined {
  const g = globalThis as { WebSocket?: unknown };
  return typeof g.WebSocket === "function" ? (g.WebSocket as SocketFactory) : undefined;
}

export const OPEN = 1;
