// Small helpers shared by the pages: DOM building (text only, never HTML from data), the
// server's URLs, the demo token endpoint, and how message content is shown.

import type { Message } from "@tidings/client";

/** Message types the pages agree on (the server gives `type` no meaning). */
export const TYPE_TEXT = 0;
/** Transient: "is typing". */
export const TYPE_TYPING = 100;
/** A will message: the sender's page went away without saying goodbye. */
export const TYPE_WENT_AWAY = 101;
/** A notice from the site (agent joined, chat handed over): shown centred, not as a bubble. */
export const TYPE_NOTICE = 102;

type Child = Node | string | null | undefined | false;

/** `el("button", {class: "x", onclick}, "text")`: attributes are set as properties when they exist, else as attributes. */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Record<string, unknown> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") {
      e.addEventListener(k.slice(2), v as EventListener);
    } else if (k === "class") {
      e.className = String(v);
    } else if (k === "dataset" && typeof v === "object") {
      Object.assign(e.dataset, v);
    } else if (k in e && !k.startsWith("aria") && k !== "role") {
      (e as unknown as Record<string, unknown>)[k] = v;
    } else {
      e.setAttribute(k, v === true ? "" : String(v));
    }
  }
  append(e, ...children);
  return e;
}

export function append(parent: Node, ...children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    parent.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
  }
}

export function clear(node: Node): void {
  while (node.firstChild) node.removeChild(node.firstChild);
}

/** The WebSocket URL of the server that served this page. */
export function wsUrl(origin: string = location.origin): string {
  return origin.replace(/^http/, "ws") + "/ws";
}

/** A login token from the demo's token endpoint (demo mode only). */
export async function demoToken(user: string, origin: string = location.origin): Promise<string> {
  const r = await fetch(`${origin}/demo/token`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user }),
  });
  const body = (await r.json()) as { token?: string; error?: string };
  if (!r.ok || !body.token) throw new Error(body.error ?? `token endpoint answered ${r.status}`);
  return body.token;
}

const decoder = new TextDecoder();

export function textOf(m: Pick<Message, "content">): string {
  return decoder.decode(m.content);
}

export function timeOf(ms: bigint | number): string {
  const d = new Date(Number(ms));
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** "4:05" for 245 s; "1:02:03" past an hour. */
export function duration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

/** Calls `fn` at most once per `ms`. */
export function throttle(fn: () => void, ms: number): () => void {
  let last = 0;
  return () => {
    const now = Date.now();
    if (now - last >= ms) {
      last = now;
      fn();
    }
  };
}

/** A name for a user id in the UI: the id itself. */
export function who(user: string, me: string): string {
  return user === me ? "You" : user;
}

/** Announces `text` to screen readers through the page's live region. */
export function announce(text: string): void {
  const region = document.getElementById("announce");
  if (region) region.textContent = text;
}
