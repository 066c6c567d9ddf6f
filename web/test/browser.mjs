// The pages in a real browser: Debian's Chromium driven by playwright-core (nothing is
// downloaded), against a tidings started here in demo mode (`serve --demo`, a random secret)
// with the admin API on and its webhooks going to the reference site backend, which runs here
// too. One browser for every scenario; each step leaves a screenshot in the folder printed at
// the start. Nothing sleeps to wait for an event: every wait is for a state of the page. The one
// timed wait is the point of its scenario: two tabs of one user stay connected for a minute.
//
//   TIDINGS_BIN=target/debug/tidings node test/browser.mjs [name filter]
//   (CHROMIUM overrides /usr/bin/chromium; SHOTS_DIR the screenshot folder)

import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer as createHttpServer } from "node:http";
import { createServer as createTcpServer, connect as tcpConnect } from "node:net";
import { createSiteBackend } from "../site-backend/server.mjs";

const bin = process.env.TIDINGS_BIN;
if (!bin) {
  console.error("set TIDINGS_BIN to the tidings binary");
  process.exit(2);
}
const filter = process.argv[2] ?? "";
const work = mkdtempSync(join(tmpdir(), "tidings-web-"));
const shots = process.env.SHOTS_DIR ?? join(work, "screenshots");
mkdirSync(shots, { recursive: true });
console.log(`screenshots: ${shots}`);

const WAIT = 20_000;
const TWO_TABS_MS = 60_000;
const DEADLINE_MS = 360_000;

// ---- The site backend, then tidings with its webhooks pointing at it ----

const adminKey = randomBytes(32).toString("hex");
const webhookSecret = `whsec_${randomBytes(32).toString("base64")}`;
const agentKey = randomBytes(24).toString("hex");
const siteOptions = { adminUrl: "", adminKey, publicUrl: "", agents: ["agent-w", "agent-w2"], agentKey, webhookSecret };
const site = createSiteBackend(siteOptions);
await new Promise((r) => site.server.listen(0, "127.0.0.1", r));
const siteUrl = `http://127.0.0.1:${site.server.address().port}`;

const config = join(work, "tidings.toml");
writeFileSync(
  config,
  `admin_listen = "127.0.0.1:0"
admin_api_keys = ["${adminKey}"]
webhook_batch_wait_ms = 10

[[webhooks]]
name = "site"
url = "${siteUrl}/webhooks/tidings"
secret = "${webhookSecret}"
`,
);
const env = { ...process.env, TIDINGS_LOG: "info" };
delete env.TIDINGS_JWT_HS256_SECRET;
const server = spawn(bin, ["serve", "--demo", "--listen", "127.0.0.1:0", "--data-dir", join(work, "data"), "--config", config], {
  env,
  stdio: ["ignore", "ignore", "pipe"],
});
const log = [];
const { addr, admin } = await new Promise((resolve, reject) => {
  let buf = "";
  server.stderr.on("data", (chunk) => {
    buf += chunk;
    const lines = buf.split("\n");
    buf = lines.pop();
    for (const line of lines) {
      log.push(line);
      const m = /listening addr=(\S+).* admin=Some\((\S+)\)/.exec(line);
      if (m) resolve({ addr: m[1], admin: m[2] });
    }
  });
  server.on("exit", (code) => reject(new Error(`tidings exited (${code}):\n${log.join("\n")}`)));
  setTimeout(() => reject(new Error(`no listening line:\n${log.join("\n")}`)), 30_000);
});
const base = `http://${addr}`;
process.on("exit", () => server.kill("SIGKILL"));
// The whole stage has a deadline, so a hang fails instead of blocking CI.
setTimeout(() => {
  console.log(`FAIL: the browser scenarios took over ${DEADLINE_MS / 1000} s`);
  process.exit(1);
}, DEADLINE_MS).unref();
let stopping = false;
server.on("exit", (code, signal) => {
  if (!stopping) console.log(`tidings exited early (${code ?? signal}); its last lines:\n${log.slice(-40).join("\n")}`);
});

// Visitors of the site reach tidings through a TCP proxy the test can cut, as a network (or a
// tab killed without a word) would: the server then sees the connection end without a close
// frame. (A browser closing a tab sends a close frame, 1001, which discards a will.)
const proxied = new Set();
let proxyCut = false;
const proxy = createTcpServer((down) => {
  if (proxyCut) return down.destroy();
  const [host, port] = addr.split(":");
  const up = tcpConnect(Number(port), host);
  down.pipe(up).pipe(down);
  for (const s of [down, up]) {
    proxied.add(s);
    s.on("close", () => proxied.delete(s));
    s.on("error", () => undefined);
  }
});
await new Promise((r) => proxy.listen(0, "127.0.0.1", r));
const viaProxy = `http://127.0.0.1:${proxy.address().port}`;
function cutProxy() {
  proxyCut = true;
  for (const s of proxied) s.resetAndDestroy();
}

siteOptions.adminUrl = `http://${admin}`;
siteOptions.publicUrl = viaProxy;
console.log(`tidings at ${base} (admin ${admin}, ${viaProxy} through the proxy), site backend at ${siteUrl}`);

// ---- The browser ----

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-default-apps", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"],
});

let shot = 0;
async function snap(page, name) {
  const file = join(shots, `${String(++shot).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file });
}

const open = new Set();
async function newPage(url, opts = {}) {
  const context = await browser.newContext({ viewport: opts.viewport ?? { width: 1100, height: 760 } });
  const page = await context.newPage();
  open.add(page);
  page.on("close", () => open.delete(page));
  page.setDefaultTimeout(WAIT);
  page.on("pageerror", (e) => console.log(`  page error (${url}): ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") console.log(`  console (${url}): ${m.text()}`);
  });
  if (url) await page.goto(url);
  return { context, page };
}

/** Texts of the messages shown in `scope` (a page or a frame locator), in order. */
async function bodies(scope) {
  return scope.locator(".log .msg .body").allTextContents();
}

async function startConversation(page, members, kind = "direct") {
  await page.locator("#kind-0").selectOption(kind);
  await page.locator("#members-0").fill(members);
  await page.getByRole("button", { name: "Start" }).click();
  await page.locator(".conv-header h3", { hasText: members }).waitFor();
}

async function say(scope, text) {
  await scope.getByLabel("Message", { exact: true }).fill(text);
  await scope.getByLabel("Message", { exact: true }).press("Enter");
  await scope.locator(".msg.mine:not(.pending) .body", { hasText: text }).waitFor();
}

const results = [];
async function scenario(name, fn) {
  if (filter && !name.includes(filter)) return;
  const started = Date.now();
  try {
    await fn();
    results.push([name, true]);
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    results.push([name, false]);
    console.log(`FAIL ${name}: ${e.stack ?? e}`);
    for (const p of open) await snap(p, "failed").catch(() => undefined);
  }
}

// The minute-long scenario runs beside the others: its two tabs open first, are checked last.
let twoTabs;
if (!filter || "two tabs of one user stay connected side by side for a minute".includes(filter)) {
  const { context, page } = await newPage(`${base}/demo/?user=dana`);
  const second = await context.newPage();
  second.setDefaultTimeout(WAIT);
  await second.goto(`${base}/demo/?user=dana`);
  for (const p of [page, second]) await p.locator('.pane[data-connects="1"] .state[data-state=connected]').waitFor();
  twoTabs = { context, page, second, since: Date.now() };
}

await scenario("two browser contexts exchange messages", async () => {
  const a = await newPage(`${base}/demo/?user=alice`);
  const b = await newPage(`${base}/demo/?user=bob`);
  await startConversation(a.page, "bob");
  await say(a.page, "hello bob");
  // bob's list gets the conversation live, with an unread badge.
  const entry = b.page.locator(".conversations li", { hasText: "alice" });
  await entry.locator(".badge", { hasText: "1" }).waitFor();
  await snap(b.page, "bob-sees-unread");
  await entry.locator("button.open").click();
  await b.page.locator(".msg.theirs .body", { hasText: "hello bob" }).waitFor();
  await say(b.page, "hi alice");
  await a.page.locator(".msg.theirs .body", { hasText: "hi alice" }).waitFor();
  await snap(a.page, "alice-conversation");

  // The receiver's read tick appears at the sender (bob has the conversation open: read).
  await a.page.locator(".msg.mine", { hasText: "hello bob" }).locator('.tick[data-state="read"]').waitFor();
  await snap(a.page, "alice-read-tick");
  results.push(["the receiver's read tick appears at the sender", true]);

  // Recall shows at the other side.
  await a.page.locator(".msg.mine", { hasText: "hello bob" }).getByRole("button", { name: "Recall message" }).click();
  await b.page.locator(".msg.recalled .body", { hasText: "This message was recalled" }).waitFor();
  await snap(b.page, "bob-sees-recall");
  results.push(["recall shows at the other side", true]);

  // Edit shows too.
  await b.page.locator(".msg.mine", { hasText: "hi alice" }).getByRole("button", { name: "Edit message" }).click();
  await b.page.getByLabel("Edited text").fill("hi alice!");
  await b.page.getByLabel("Edited text").press("Enter");
  await a.page.locator(".msg.theirs .body", { hasText: "hi alice!" }).waitFor();

  // A reload keeps history and the list.
  await b.page.reload();
  await b.page.locator(".conversations li", { hasText: "alice" }).waitFor();
  await b.page.locator(".msg.theirs .body", { hasText: "This message was recalled" }).waitFor();
  await b.page.locator(".msg.mine .body", { hasText: "hi alice!" }).waitFor();
  if ((await bodies(b.page)).length !== 2) throw new Error(`after the reload: ${await bodies(b.page)}`);
  await snap(b.page, "bob-after-reload");
  results.push(["a reload keeps history and the list", true]);
  await a.context.close();
  await b.context.close();
});

await scenario("the two-pane page at phone width, with a group and live reordering", async () => {
  const { context, page } = await newPage(`${base}/demo/`, { viewport: { width: 390, height: 844 } });
  await page.locator("#user-0").fill("carol");
  await page.locator(".pane").nth(0).getByRole("button", { name: "Sign in" }).click();
  await page.locator("#user-1").fill("erin");
  await page.locator(".pane").nth(1).getByRole("button", { name: "Sign in" }).click();
  const left = page.locator(".pane").nth(0);
  const right = page.locator(".pane").nth(1);
  await left.locator(".state[data-state=connected]").waitFor();
  await left.locator("#kind-0").selectOption("group");
  await left.locator("#members-0").fill("erin");
  await left.locator("#name-0").fill("team");
  await left.getByRole("button", { name: "Start" }).click();
  await left.locator(".conv-header h3", { hasText: "team" }).waitFor();
  await say(left, "group hello");
  await right.locator(".conversations li", { hasText: "team" }).locator(".badge").waitFor();
  await left.locator("#kind-0").selectOption("direct");
  await left.locator("#members-0").fill("erin");
  await left.getByRole("button", { name: "Start" }).click();
  await left.locator(".conv-header h3", { hasText: "erin" }).waitFor();
  await say(left, "direct hello");
  // The newest activity comes first.
  await right.locator(".conversations li").first().filter({ hasText: "direct hello" }).waitFor();
  // Pinning puts the group back on top.
  await right.getByRole("button", { name: "Pin team" }).click();
  await right.locator(".conversations li").first().filter({ hasText: "team" }).locator(".pin").waitFor();
  await snap(page, "two-panes-phone-width");
  await page.setViewportSize({ width: 1280, height: 720 });
  await right.locator(".conversations li", { hasText: "team" }).locator("button.open").click();
  await right.locator(".msg.theirs .body", { hasText: "group hello" }).waitFor();
  await say(right, "hello from erin");
  await left.locator(".conversations li", { hasText: "team" }).locator("button.open").click();
  await left.locator(".msg.theirs .body", { hasText: "hello from erin" }).waitFor();
  await snap(page, "two-panes-desktop");
  await context.close();
});

await scenario("a visitor chats through the widget with an agent in the console", async () => {
  const agent = await newPage(`${base}/widget/agent.html`);
  await agent.page.getByLabel("Agent name").fill("agent-w");
  await agent.page.getByRole("button", { name: "Sign in" }).click();
  await agent.page.locator(".state[data-state=connected]").waitFor();
  const visitor = await newPage(`${siteUrl}/`, { viewport: { width: 900, height: 760 } });
  await visitor.page.getByRole("button", { name: "Chat with us" }).click();
  const chat = visitor.page.frameLocator("iframe#tidings-chat");
  await chat.getByLabel("Name").fill("Ann");
  await chat.getByLabel("Email").fill("ann@example.com");
  await snap(visitor.page, "widget-prechat");
  await chat.getByRole("button", { name: "Start chat" }).click();
  await chat.locator(".notice", { hasText: "agent-w joined the chat" }).waitFor();
  await say(chat, "Where is my order?");
  // The console shows the chat live.
  const entry = agent.page.locator(".chats li", { hasText: "Ann" });
  await entry.locator(".badge", { hasText: "1" }).waitFor();
  await entry.locator(".dot.online").waitFor();
  await entry.locator("button.open").click();
  const panel = agent.page.locator(".panel", { hasText: "Ann" });
  await panel.locator(".msg.theirs .body", { hasText: "Where is my order?" }).waitFor();
  // Typing shows at the visitor.
  await panel.getByLabel("Message", { exact: true }).pressSequentially("Let");
  await chat.locator(".typing", { hasText: "typing" }).waitFor();
  await panel.getByLabel("Message", { exact: true }).fill("Let me check.");
  await panel.getByLabel("Message", { exact: true }).press("Enter");
  await chat.locator(".msg.theirs .body", { hasText: "Let me check." }).waitFor();
  await snap(visitor.page, "widget-visitor");
  await snap(agent.page, "agent-console");

  // The visitor's network drops; the agent writes meanwhile; the widget reconnects and shows
  // the message once.
  cutProxy();
  await chat.locator(".state", { hasText: "Reconnecting" }).waitFor();
  await panel.getByLabel("Message", { exact: true }).fill("Are you still there?");
  await panel.getByLabel("Message", { exact: true }).press("Enter");
  await panel.locator(".msg.mine:not(.pending) .body", { hasText: "Are you still there?" }).waitFor();
  proxyCut = false;
  await chat.locator(".msg.theirs .body", { hasText: "Are you still there?" }).waitFor();
  await chat.locator(".state", { hasText: "Reconnecting" }).waitFor({ state: "hidden" });
  const seen = (await bodies(chat)).filter((t) => t === "Are you still there?").length;
  if (seen !== 1) throw new Error(`the message shown ${seen} times after the reconnect`);

  // The site backend heard about the chat through the signed webhooks.
  await Promise.race([
    site.nextEvent((e) => e.type === "message.created" && e.data.message.text === "Where is my order?"),
    new Promise((_, reject) => setTimeout(() => reject(new Error("no webhook event")), WAIT).unref()),
  ]);

  // Transfer to another agent in the same conversation: the visitor keeps the chat, and the
  // new agent reads what was said before.
  const second = await newPage(`${base}/widget/agent.html`);
  await second.page.getByLabel("Agent name").fill("agent-w2");
  await second.page.getByRole("button", { name: "Sign in" }).click();
  await second.page.locator(".state[data-state=connected]").waitFor();
  const conversationId = await chat.locator(".chat").getAttribute("data-conversation");
  const r = await fetch(`${siteUrl}/agent/transfer`, {
    method: "POST",
    headers: { authorization: `Bearer ${agentKey}`, "content-type": "application/json" },
    body: JSON.stringify({ conversationId, to: "agent-w2" }),
  });
  if (!r.ok) throw new Error(`transfer: ${r.status} ${await r.text()}`);
  await chat.locator(".notice", { hasText: "agent-w2 joined the chat" }).waitFor();
  await chat.locator(".agent", { hasText: "You are chatting with agent-w2" }).waitFor();
  if ((await chat.locator(".chat").getAttribute("data-conversation")) !== conversationId) throw new Error("the transfer moved the chat");
  await say(chat, "Thanks!");
  await second.page.locator(".chats li", { hasText: "Ann" }).locator(".badge").waitFor();
  await panel.locator(".ended").waitFor();
  // A supervisor joins the same conversation.
  const supervised = await fetch(`${siteUrl}/agent/supervise`, {
    method: "POST",
    headers: { authorization: `Bearer ${agentKey}`, "content-type": "application/json" },
    body: JSON.stringify({ conversationId, supervisor: "supervisor-w" }),
  });
  if (!supervised.ok) throw new Error(`supervise: ${supervised.status} ${await supervised.text()}`);
  await chat.locator(".notice", { hasText: "supervisor-w joined the chat" }).waitFor();
  await snap(visitor.page, "widget-after-transfer");

  // The visitor's tab goes away abruptly (its connection drops without a close frame): the
  // agent sees the will message and the offline state.
  await second.page.locator(".chats li", { hasText: "Ann" }).locator("button.open").click();
  const panel2 = second.page.locator(".panel", { hasText: "Ann" });
  await panel2.locator(".msg.theirs .body", { hasText: "Where is my order?" }).waitFor();
  await panel2.locator(".presence.online").waitFor();
  // (The network drop above left one will message in this conversation already.)
  const wills = panel2.locator(".notice", { hasText: "left the page" });
  const before = await wills.count();
  cutProxy();
  await visitor.page.close();
  await wills.nth(before).waitFor();
  await panel2.locator("header .presence.offline").waitFor();
  await snap(second.page, "agent-sees-visitor-gone");
  results.push(["the visitor's tab closed abruptly: the agent sees the will message and offline", true]);
  proxyCut = false;
  for (const x of [agent, visitor, second]) await x.context.close();
});

await scenario("with no agent online the visitor leaves a message", async () => {
  const visitor = await newPage(`${siteUrl}/`, { viewport: { width: 390, height: 700 } });
  await visitor.page.getByRole("button", { name: "Chat with us" }).click();
  const chat = visitor.page.frameLocator("iframe#tidings-chat");
  await chat.getByLabel("Name").fill("Bo");
  await chat.getByLabel("Email").fill("bo@example.com");
  await chat.getByRole("button", { name: "Start chat" }).click();
  await chat.getByLabel("Your message").fill("Call me back please");
  await chat.getByRole("button", { name: "Send" }).click();
  await chat.locator(".thanks").waitFor();
  await snap(visitor.page, "widget-leave-message-phone");
  if (!site.state.leftMessages.some((m) => m.text === "Call me back please")) throw new Error("the backend has no message");
  await visitor.context.close();
});

await scenario("a temporary conversation expiring shows its notice on both sides", async () => {
  const agent = await newPage(`${base}/widget/agent.html`);
  await agent.page.getByLabel("Agent name").fill("agent-x");
  await agent.page.getByRole("button", { name: "Sign in" }).click();
  await agent.page.locator(".state[data-state=connected]").waitFor();
  // A host page on another origin, in demo mode (the chat opens itself, with a short TTL).
  const shop = createHttpServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end(`<!doctype html><title>shop</title><h1>Shop</h1><script src="${base}/widget/widget.js" data-agent="agent-x" data-ttl="6"></script>`);
  });
  await new Promise((r) => shop.listen(0, "127.0.0.1", r));
  const visitor = await newPage(`http://127.0.0.1:${shop.address().port}/`);
  await visitor.page.getByRole("button", { name: "Chat with us" }).click();
  const chat = visitor.page.frameLocator("iframe#tidings-chat");
  await chat.getByLabel("Name").fill("Cy");
  await chat.getByLabel("Email").fill("cy@example.com");
  await chat.getByRole("button", { name: "Start chat" }).click();
  await say(chat, "quick question");
  await agent.page.locator(".chats li", { hasText: "Cy" }).locator("button.open").click();
  const panel = agent.page.locator(".panel", { hasText: "Cy" });
  await panel.locator(".msg.theirs .body", { hasText: "quick question" }).waitFor();
  // The server expires it at its deadline; both sides are told.
  await chat.locator(".ended", { hasText: "time ran out" }).waitFor({ timeout: 30_000 });
  await panel.locator(".ended", { hasText: "expired" }).waitFor({ timeout: 30_000 });
  await snap(visitor.page, "widget-expired");
  await snap(agent.page, "agent-expired");
  // And the visitor can start again.
  await chat.getByRole("button", { name: "Start a new chat" }).click();
  await chat.getByLabel("Name").waitFor();
  if ((await chat.getByLabel("Name").inputValue()) !== "Cy") throw new Error("the form forgot the name");
  await agent.context.close();
  await visitor.context.close();
  shop.close();
});

await scenario("a reload in the middle of a conversation keeps every message once; history pages upwards", async () => {
  const a = await newPage(`${base}/demo/?user=frank`);
  const b = await newPage(`${base}/demo/?user=gina`);
  await startConversation(a.page, "gina");
  await say(a.page, "m1");
  await b.page.locator(".conversations li", { hasText: "frank" }).locator("button.open").click();
  await b.page.locator(".msg.theirs .body", { hasText: "m1" }).waitFor();
  const sent = ["m1"];
  // gina reloads while frank keeps writing.
  const reload = b.page.reload();
  for (let i = 2; i <= 8; i++) {
    await say(a.page, `m${i}`);
    sent.push(`m${i}`);
  }
  await reload;
  await b.page.locator(".msg.theirs .body", { hasText: "m8" }).waitFor();
  await say(a.page, "m9");
  sent.push("m9");
  await b.page.locator(".msg.theirs .body", { hasText: "m9" }).waitFor();
  const shown = await bodies(b.page);
  if (JSON.stringify(shown) !== JSON.stringify(sent)) throw new Error(`shown ${JSON.stringify(shown)}, sent ${JSON.stringify(sent)}`);
  await snap(b.page, "reload-keeps-every-message-once");

  // History pages upwards: 31 more messages (through the admin API), a reload shows the newest
  // 30, and "Load older messages" brings the rest, each once, in order.
  const id = await b.page.locator(".chat").getAttribute("data-conversation");
  for (let i = 10; i <= 40; i++) {
    const r = await fetch(`http://${admin}/v1/conversations/${id}/messages?as=frank`, {
      method: "POST",
      headers: { authorization: `Bearer ${adminKey}`, "content-type": "application/json" },
      body: JSON.stringify({ text: `m${i}` }),
    });
    if (!r.ok) throw new Error(`admin send: ${r.status}`);
    sent.push(`m${i}`);
  }
  await b.page.reload();
  await b.page.locator(".msg.theirs .body", { hasText: "m40" }).waitFor();
  if ((await bodies(b.page)).length !== 30) throw new Error(`first page: ${(await bodies(b.page)).length} messages`);
  await b.page.getByRole("button", { name: "Load older messages" }).click();
  await b.page.locator(".msg.theirs .body", { hasText: /^m1$/ }).waitFor();
  const all = await bodies(b.page);
  if (JSON.stringify(all) !== JSON.stringify(sent)) throw new Error(`after paging: ${JSON.stringify(all)}`);
  if (await b.page.getByRole("button", { name: "Load older messages" }).isVisible()) throw new Error("more to load after the first message");
  await a.context.close();
  await b.context.close();
});

if (twoTabs) {
  await scenario("two tabs of one user stay connected side by side for a minute", async () => {
    const { page, second, context, since } = twoTabs;
    const left = TWO_TABS_MS - (Date.now() - since);
    // The point of this scenario is time passing: two sessions of one user, each with its own
    // device tag, must not replace each other (close 4006) and reconnect in a loop.
    if (left > 0) await page.waitForTimeout(left);
    for (const p of [page, second]) {
      const connects = await p.locator(".pane").getAttribute("data-connects");
      if (connects !== "1") throw new Error(`a tab logged in ${connects} times in a minute`);
      await p.locator(".state[data-state=connected]").waitFor();
    }
    // Both still get what is sent to the user.
    const hank = await newPage(`${base}/demo/?user=hank`);
    await startConversation(hank.page, "dana");
    await say(hank.page, "to both tabs");
    for (const p of [page, second]) await p.locator(".conversations li", { hasText: "to both tabs" }).waitFor();
    await snap(second, "two-tabs-after-a-minute");
    await hank.context.close();
    await context.close();
  });
}

await browser.close();
proxy.close();
stopping = true;
server.kill("SIGTERM");
site.server.close();
site.server.closeAllConnections();
const failed = results.filter(([, ok]) => !ok).length;
console.log(`${results.length - failed} passed, ${failed} failed`);
if (failed === 0 && results.length > 0) console.log("all passed");
process.exit(failed === 0 && results.length > 0 ? 0 : 1);
