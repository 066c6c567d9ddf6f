// The customer-service widget's loader, pasted into any site:
//
//   <script src="https://chat.example.com/widget/widget.js" data-backend="/support" async></script>
//
// It adds a floating button (in a shadow root, so the site's CSS and the widget's stay apart)
// that opens the chat in an iframe served by tidings. The iframe never sees the site's cookies:
// when it needs a token it asks this script over postMessage, and this script asks the site's
// own backend (same origin as the page, so the visitor's session cookie goes along).
//
// data- attributes:
//   data-backend   the site backend's path or URL: POST {backend}/chat/start, /chat/token and
//                  /chat/leave-message (see web/site-backend/). Without it: demo mode, where the
//                  chat gets tokens from the server's /demo/token and opens the chat itself.
//   data-agent     demo mode: the agent's user id (default "agent").
//   data-ttl       demo mode: the chat's lifetime in seconds (default: the server's).
//   data-title     the chat's title (default "Chat with us").
//   data-position  "left" or "right" (default).
//   data-server    where the widget's pages are (default: where this script came from).
//   data-ws        the tidings WebSocket URL (default: ws(s)://{data-server's host}/ws), for
//                  pages hosted apart from tidings.

interface Reply {
  [k: string]: unknown;
}

(() => {
  const script = document.currentScript as HTMLScriptElement | null;
  if (!script || (window as unknown as { __tidingsWidget?: boolean }).__tidingsWidget) return;
  (window as unknown as { __tidingsWidget?: boolean }).__tidingsWidget = true;
  const d = script.dataset;
  const server = d.server ? new URL(d.server, location.href).origin : new URL(script.src).origin;
  const backend = d.backend ? new URL(d.backend, location.href).href.replace(/\/$/, "") : undefined;
  const title = d.title ?? "Chat with us";
  const openKey = "tidings.widget.open";

  const host = document.createElement("div");
  host.setAttribute("data-tidings-widget", "");
  const shadow = host.attachShadow({ mode: "open" });
  const side = d.position === "left" ? "left" : "right";
  const style = document.createElement("style");
  style.textContent = `
    :host { all: initial; }
    .launcher { position: fixed; bottom: 20px; ${side}: 20px; z-index: 2147483000; border: 0; border-radius: 28px;
      background: #2357d8; color: #fff; font: 600 15px system-ui, sans-serif; padding: 14px 20px; cursor: pointer;
      box-shadow: 0 4px 14px rgba(0,0,0,.25); }
    .launcher:focus-visible { outline: 3px solid #f0a400; outline-offset: 2px; }
    .badge { display: inline-block; min-width: 1.4em; margin-left: .4em; padding: 0 .35em; border-radius: 1em; background: #fff; color: #2357d8; font-size: 12px; }
    .badge[hidden] { display: none; }
    iframe { position: fixed; bottom: 84px; ${side}: 20px; z-index: 2147483000; width: 370px; height: min(560px, calc(100vh - 110px));
      border: 0; border-radius: 12px; box-shadow: 0 6px 24px rgba(0,0,0,.3); background: #fff; }
    iframe[hidden] { display: none; }
    @media (max-width: 480px) { iframe { inset: 0; width: 100vw; height: 100vh; border-radius: 0; } }
  `;
  const launcher = document.createElement("button");
  launcher.type = "button";
  launcher.className = "launcher";
  launcher.setAttribute("aria-expanded", "false");
  launcher.append(title);
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.hidden = true;
  badge.setAttribute("aria-label", "unread messages");
  launcher.append(badge);
  shadow.append(style, launcher);

  let frame: HTMLIFrameElement | undefined;
  function iframe(): HTMLIFrameElement {
    if (frame) return frame;
    const q = new URLSearchParams({ host: location.origin, mode: backend ? "site" : "demo", title });
    if (d.agent) q.set("agent", d.agent);
    if (d.ttl) q.set("ttl", d.ttl);
    if (d.ws) q.set("ws", d.ws);
    const f = document.createElement("iframe");
    f.src = `${server}/widget/chat.html?${q}`;
    f.title = title;
    f.id = "tidings-chat";
    f.hidden = true;
    f.setAttribute("allow", "");
    launcher.setAttribute("aria-controls", f.id);
    shadow.append(f);
    frame = f;
    return f;
  }

  function post(msg: Reply): void {
    frame?.contentWindow?.postMessage({ tidings: true, ...msg }, server);
  }

  function setOpen(open: boolean): void {
    const f = iframe();
    f.hidden = !open;
    launcher.setAttribute("aria-expanded", String(open));
    sessionStorage.setItem(openKey, open ? "1" : "");
    post({ type: "visible", visible: open });
    if (open) {
      badge.hidden = true;
      f.focus();
    }
  }

  async function ask(path: string, body: unknown): Promise<Reply> {
    if (!backend) throw new Error("no data-backend");
    const r = await fetch(`${backend}${path}`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const json = (await r.json().catch(() => ({}))) as Reply;
    if (!r.ok) throw new Error(typeof json.error === "string" ? json.error : `the site answered ${r.status}`);
    return json;
  }

  const paths: Record<string, string> = { start: "/chat/start", token: "/chat/token", leave: "/chat/leave-message" };

  window.addEventListener("message", (e: MessageEvent) => {
    if (!frame || e.source !== frame.contentWindow || e.origin !== server) return;
    const m = e.data as Reply;
    if (!m || m.tidings !== true || typeof m.type !== "string") return;
    switch (m.type) {
      case "ready":
        post({ type: "visible", visible: !frame.hidden });
        break;
      case "close":
        setOpen(false);
        launcher.focus();
        break;
      case "unread":
        badge.textContent = String(m.count);
        badge.hidden = !m.count || !frame.hidden;
        break;
      case "start":
      case "token":
      case "leave": {
        const path = paths[m.type]!;
        ask(path, m.body ?? {}).then(
          (reply) => post({ type: "reply", id: m.id, ok: true, reply }),
          (err: unknown) => post({ type: "reply", id: m.id, ok: false, error: err instanceof Error ? err.message : String(err) }),
        );
        break;
      }
      default:
        break;
    }
  });

  launcher.addEventListener("click", () => setOpen(!frame || frame.hidden));
  const mount = () => {
    document.body.append(host);
    if (sessionStorage.getItem(openKey)) setOpen(true);
  };
  if (document.body) mount();
  else document.addEventListener("DOMContentLoaded", mount);
  (window as unknown as { TidingsWidget: unknown }).TidingsWidget = { open: () => setOpen(true), close: () => setOpen(false) };
})();
