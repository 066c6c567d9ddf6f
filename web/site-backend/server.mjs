// A reference site backend for the customer-service widget: an example to copy into your own
// backend, in plain Node (no dependencies). tidings only carries the chat; this is where the
// site decides who the visitor is and which agent gets them:
//
// - mints visitor tokens (admin API `POST /v1/tokens`), the visitor known by an HttpOnly cookie;
// - opens the temporary conversation with an available agent (online, fewest open chats) through
//   the admin API (`POST /v1/conversations`, kind temporary, unique, ttl), or, with no agent
//   online, takes a message to answer later ("leave a message");
// - hands a chat over to another agent or brings in a supervisor;
// - listens to tidings' webhooks (signed, Standard Webhooks) to know when chats end.
//
//   TIDINGS_ADMIN_URL=http://127.0.0.1:7401 TIDINGS_ADMIN_KEY=… TIDINGS_PUBLIC_URL=http://127.0.0.1:7400 \
//   AGENTS=agent,agent2 AGENT_KEY=… WEBHOOK_SECRET=whsec_… node web/site-backend/server.mjs
//
// See docs/web.md for the whole picture.

import { createHmac, randomBytes, randomUUID, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import { pathToFileURL } from "node:url";

/** Message types the pages agree on (web/src/common/util.ts). */
const TYPE_NOTICE = 102;
const MAX_BODY = 16 * 1024;

/**
 * The backend as an http.Server (not listening yet).
 * @param {object} o
 * @param {string} o.adminUrl tidings' admin API, e.g. http://127.0.0.1:7401
 * @param {string} o.adminKey one of tidings' admin_api_keys
 * @param {string} o.publicUrl where browsers reach tidings (the widget script, the chat iframe)
 * @param {string[]} o.agents the agents' user ids
 * @param {number} [o.ttlSecs] a chat's lifetime (tidings' temporary_ttl_default_secs when 0)
 * @param {string} [o.agentKey] what staff tools send as `Authorization: Bearer …` for /agent/*
 * @param {string} [o.webhookSecret] the `whsec_…` secret of tidings' webhook endpoint for this backend
 */
export function createSiteBackend(o) {
  const state = {
    /** conversation id → {visitor, agent, lastActivity} */
    open: new Map(),
    /** Messages left while no agent was online. */
    leftMessages: [],
    /** Webhook event ids seen (delivery is at least once). */
    seen: new Set(),
    events: [],
  };
  /** Callers of `nextEvent` waiting for an event that matches. */
  const waiters = new Set();

  async function admin(method, path, body) {
    const r = await fetch(`${o.adminUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${o.adminKey}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await r.json().catch(() => ({}));
    if (!r.ok) throw Object.assign(new Error(`${method} ${path}: ${r.status} ${json.message ?? ""}`), { status: r.status, body: json });
    return json;
  }

  const token = async (user) => (await admin("POST", "/v1/tokens", { user, ttl_secs: 3600 })).token;

  /** An online agent with the fewest open chats, or undefined. */
  async function pickAgent(except = []) {
    const candidates = o.agents.filter((a) => !except.includes(a));
    if (candidates.length === 0) return undefined;
    const { users } = await admin("GET", `/v1/presence?users=${candidates.map(encodeURIComponent).join(",")}`);
    const load = (a) => [...state.open.values()].filter((c) => c.agent === a).length;
    return users
      .filter((u) => u.online)
      .map((u) => u.user)
      .sort((a, b) => load(a) - load(b) || a.localeCompare(b))[0];
  }

  /** Opens a temporary conversation between the visitor and `agent` (and `extra`), with a notice. */
  async function openChat(visitor, agent, info, extra = []) {
    const conv = await admin("POST", `/v1/conversations?as=${encodeURIComponent(agent)}`, {
      kind: "temporary",
      members: [visitor, ...extra],
      name: `${info.name} <${info.email}>`,
      attributes: { visitor, visitor_name: info.name, visitor_email: info.email },
      ttl_secs: o.ttlSecs ?? 0,
      unique: extra.length === 0,
    });
    state.open.set(conv.id, { visitor, agent, info, lastActivity: Date.now() });
    await admin("POST", `/v1/conversations/${conv.id}/messages?as=${encodeURIComponent(agent)}`, {
      text: extra.length ? `${agent} joined the chat with ${extra.join(", ")}` : `${agent} joined the chat`,
      type: TYPE_NOTICE,
      client_message_id: `joined-${conv.id}`,
    });
    return conv;
  }

  /**
   * Hands a chat to another agent (`to`), or brings a supervisor in (`supervisor`), in the same
   * temporary conversation: the backend changes its members (the admin API may, within
   * tidings' `max_temporary_members`), so the visitor keeps the chat and its history, and the
   * new agent reads what was said before. A notice carrying `agent` tells the widget whom it
   * talks to now.
   */
  async function move(conversationId, { to, supervisor }) {
    const chat = state.open.get(conversationId);
    if (!chat) throw Object.assign(new Error("no such open chat"), { status: 404 });
    const path = `/v1/conversations/${encodeURIComponent(conversationId)}`;
    if (supervisor) {
      await admin("POST", `${path}/members`, { members: [supervisor] });
      return { conversationId, agent: chat.agent };
    }
    if (to === chat.agent) return { conversationId, agent: to };
    await admin("POST", `${path}/members`, { members: [to] });
    await admin("POST", `${path}/members/remove`, { members: [chat.agent] });
    chat.agent = to;
    await admin("POST", `${path}/messages?as=${encodeURIComponent(to)}`, {
      text: `You are now chatting with ${to}`,
      type: TYPE_NOTICE,
      attributes: { agent: to },
      client_message_id: `agent-${randomUUID()}`,
    });
    return { conversationId, agent: to };
  }

  function verifyWebhook(raw, headers) {
    if (!o.webhookSecret) return false;
    const id = headers["webhook-id"];
    const ts = headers["webhook-timestamp"];
    const sigs = String(headers["webhook-signature"] ?? "").split(" ");
    if (!id || !ts || Math.abs(Date.now() / 1000 - Number(ts)) > 300) return false;
    const key = Buffer.from(o.webhookSecret.replace(/^whsec_/, ""), "base64");
    const want = createHmac("sha256", key).update(`${id}.${ts}.${raw}`).digest();
    return sigs.some((s) => {
      const got = Buffer.from(s.replace(/^v1,/, ""), "base64");
      return got.length === want.length && timingSafeEqual(got, want);
    });
  }

  function onEvent(e) {
    if (state.seen.has(e.id)) return;
    state.seen.add(e.id);
    state.events.push(e);
    if (state.events.length > 1000) state.events.shift();
    for (const w of waiters) if (w.match(e)) w.resolve(e);
    const d = e.data ?? {};
    if (e.type === "conversation.expired" || e.type === "conversation.deleted") state.open.delete(d.conversation_id);
    if (e.type === "message.created") {
      const c = state.open.get(d.message?.conversation_id);
      if (c) c.lastActivity = Number(d.message.server_time);
    }
  }

  function hostPage() {
    const src = `${o.publicUrl}/widget/widget.js`;
    return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<title>Example Shop</title>
<style>body{font-family:system-ui,sans-serif;max-width:40em;margin:2em auto;padding:0 1em;line-height:1.5}</style>
</head><body>
<h1>Example Shop</h1>
<p>Questions about your order? Use the chat button.</p>
<script src="${src}" data-backend="/" data-title="Chat with us" async></script>
</body></html>`;
  }

  const server = createServer(async (req, res) => {
    const send = (status, body, headers = {}) => {
      const text = typeof body === "string" ? body : JSON.stringify(body);
      res.writeHead(status, { "content-type": typeof body === "string" ? "text/html; charset=utf-8" : "application/json", ...headers });
      res.end(text);
    };
    try {
      const url = new URL(req.url ?? "/", "http://x");
      const raw = await readBody(req);
      const body = raw && req.headers["content-type"]?.includes("json") ? JSON.parse(raw) : {};
      const cookie = /(?:^|;\s*)visitor=([\w-]+)/.exec(req.headers.cookie ?? "")?.[1];
      const staff = () => o.agentKey && safeEqual(req.headers.authorization ?? "", `Bearer ${o.agentKey}`);
      switch (`${req.method} ${url.pathname}`) {
        case "GET /":
          return send(200, hostPage());
        case "POST /chat/start": {
          // Who the visitor is: your own session (a login, a cart cookie). Here a random id in
          // an HttpOnly cookie, so the chat iframe on tidings' origin never holds it.
          const visitor = cookie ?? `visitor-${randomUUID().slice(0, 12)}`;
          const setCookie = { "set-cookie": `visitor=${visitor}; HttpOnly; SameSite=Lax; Path=/` };
          const info = { name: String(body.name ?? "").slice(0, 100), email: String(body.email ?? "").slice(0, 200) };
          const agent = await pickAgent();
          if (!agent) return send(200, { user: visitor, token: await token(visitor), leaveMessage: true }, setCookie);
          const conv = await openChat(visitor, agent, info);
          return send(200, { user: visitor, token: await token(visitor), conversationId: conv.id, agent }, setCookie);
        }
        case "POST /chat/token":
          if (!cookie) return send(401, { error: "no chat started" });
          return send(200, { token: await token(cookie) });
        case "POST /chat/leave-message":
          state.leftMessages.push({ id: randomUUID(), visitor: cookie, name: body.name, email: body.email, text: String(body.text ?? "").slice(0, 4000), at: Date.now() });
          return send(200, { ok: true });
        case "GET /agent/left-messages":
          if (!staff()) return send(401, { error: "staff only" });
          return send(200, { messages: state.leftMessages });
        case "GET /agent/chats":
          if (!staff()) return send(401, { error: "staff only" });
          return send(200, { chats: [...state.open].map(([id, c]) => ({ id, ...c })) });
        case "POST /agent/transfer":
          if (!staff()) return send(401, { error: "staff only" });
          return send(200, await move(String(body.conversationId), { to: String(body.to) }));
        case "POST /agent/supervise":
          if (!staff()) return send(401, { error: "staff only" });
          return send(200, await move(String(body.conversationId), { supervisor: String(body.supervisor) }));
        case "POST /webhooks/tidings":
          if (!verifyWebhook(raw, req.headers)) return send(400, { error: "bad signature" });
          for (const e of JSON.parse(raw).events ?? []) onEvent(e);
          res.writeHead(204).end();
          return;
        case "GET /healthz":
          return send(200, { ok: true });
        default:
          return send(404, { error: "not found" });
      }
    } catch (e) {
      return send(e.status && e.status < 500 ? e.status : 500, { error: e.message });
    }
  });
  /** The first webhook event (already received, or to come) that `match`es. */
  function nextEvent(match) {
    const seen = state.events.find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => {
      const w = { match, resolve: (e) => (waiters.delete(w), resolve(e)) };
      waiters.add(w);
    });
  }
  return { server, state, nextEvent };
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks = [];
    req.on("data", (c) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(Object.assign(new Error("body too large"), { status: 413 }));
        req.destroy();
      } else chunks.push(c);
    });
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

function safeEqual(a, b) {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const env = process.env;
  const need = (k) => env[k] ?? (console.error(`set ${k}`), process.exit(2));
  const { server } = createSiteBackend({
    adminUrl: need("TIDINGS_ADMIN_URL"),
    adminKey: need("TIDINGS_ADMIN_KEY"),
    publicUrl: need("TIDINGS_PUBLIC_URL"),
    agents: need("AGENTS").split(","),
    ttlSecs: Number(env.CHAT_TTL_SECS ?? 0),
    agentKey: env.AGENT_KEY ?? randomBytes(24).toString("hex"),
    webhookSecret: env.WEBHOOK_SECRET,
  });
  server.listen(Number(env.PORT ?? 8080), env.HOST ?? "127.0.0.1", () => {
    console.log(`site backend on http://${env.HOST ?? "127.0.0.1"}:${server.address().port}`);
  });
}
