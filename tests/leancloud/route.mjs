// Drives LeanCloud's unmodified JS realtime SDK against a tidings server that it knows only by
// its HTTP base (`server`, no `RTMServers`): the SDK must find the WebSocket through the
// router `GET {server}/v1/route`, as apps configured that way do.
//
// Usage: node route.mjs <ws-url> <http-base> <app-id> <master-key> <binary|base64>
// Prints one line per check that passed and exits 0, or prints the failure and exits 1.
// Every wait is on an SDK event or a reply, each with a deadline.

import crypto from 'node:crypto';
import sdk from 'leancloud-realtime';

const { Realtime, TextMessage, Event } = sdk;
const [url, server, appId, masterKey, mode] = process.argv.slice(2);

const DEADLINE_MS = 15000;

function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), DEADLINE_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`ok - ${what}`);
}

function equal(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`check failed: ${what}: expected ${e}, got ${a}`);
  console.log(`ok - ${what}`);
}

/** The next `event` an emitter fires (with its arguments). */
function next(emitter, event, what) {
  return within(new Promise((resolve) => emitter.once(event, (...args) => resolve(args))), what);
}

/** A login signature as an app's backend makes it: HMAC-SHA1 over appid:clientid::t:nonce. */
function sign(key) {
  return (clientId) => {
    const timestamp = Date.now();
    const nonce = crypto.randomBytes(8).toString('hex');
    const signature = crypto
      .createHmac('sha1', key)
      .update(`${appId}:${clientId}::${timestamp}:${nonce}`)
      .digest('hex');
    return { signature, timestamp, nonce };
  };
}

async function main() {
  // The router's answer, as the SDK asks for it (secure=true is its default).
  const res = await within(
    fetch(`${server}/v1/route?appId=${encodeURIComponent(appId)}&secure=true&_t=${Date.now()}`),
    'GET /v1/route',
  );
  equal(res.status, 200, 'the router answers');
  const body = await within(res.json(), 'route body');
  equal(
    Object.keys(body).sort().map((k) => [k, body[k]]),
    [['groupId', 'g0'], ['secondary', url], ['server', url], ['ttl', 3600]],
    'with the WebSocket URL',
  );

  // Record what the SDK's own router lookup returns (the SDK is not changed, only observed).
  const routed = [];
  const fetchRTMServers = Realtime._fetchRTMServers;
  check(typeof fetchRTMServers === 'function', 'the SDK has its router lookup');
  Realtime._fetchRTMServers = function (...args) {
    return fetchRTMServers.apply(this, args).then((info) => {
      routed.push(info);
      return info;
    });
  };

  // No RTMServers: only the HTTP base.
  const realtime = new Realtime({
    appId,
    appKey: 'the-app-key-proves-nothing',
    server,
    noBinary: mode === 'base64',
  });
  const alice = await within(
    realtime.createIMClient('alice', { signatureFactory: sign(masterKey) }),
    'alice opens',
  );
  equal(routed.length, 1, 'the SDK asked /v1/route once');
  equal(routed[0].server, url, 'and connected to the server it named');
  const bob = await within(
    realtime.createIMClient('bob', { signatureFactory: sign(masterKey) }),
    'bob opens',
  );
  check(alice.id === 'alice' && bob.id === 'bob', 'two clients open on the routed socket');

  const invited = next(bob, Event.INVITED, 'bob is invited');
  const conv = await within(
    alice.createConversation({ members: ['bob'], name: 'routed', unique: true }),
    'create',
  );
  const [, invitedConv] = await invited;
  equal(invitedConv.id, conv.id, 'the invitee gets the create event');

  const received = next(bob, Event.MESSAGE, 'bob receives');
  const sent = await within(conv.send(new TextMessage('found you')), 'send');
  const [message] = await received;
  check(message instanceof TextMessage, 'the push is a typed text message');
  equal(message.getText(), 'found you', 'with its text');
  equal(message.id, sent.id, 'and the id the sender got');

  await within(alice.close(), 'alice closes');
  await within(bob.close(), 'bob closes');
  console.log('all passed');
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`FAILED: ${e && e.stack ? e.stack : e}`);
    process.exit(1);
  },
);
