// Drives LeanCloud's unmodified JS realtime SDK against a tidings server that it knows only by
// its HTTP base (`server`, no `RTMServers`): the SDK must find the WebSocket through the
// router `GET {server}/v1/route`, as apps configured that way do.
//
// See common.mjs for how it is run.

import { sdk, within, check, equal, next, sign, run, url, server, appId, masterKey, mode } from './common.mjs';

const { Realtime, TextMessage, Event } = sdk;

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
}

run(main);
