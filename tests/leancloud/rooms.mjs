// Drives LeanCloud's unmodified JS realtime SDK against a tidings server: a system conversation
// (服务号) that the app's backend creates and broadcasts to over the admin API, found with
// getConversation (a ServiceConversation: `sys`), subscribed to, written to by a subscriber
// (the message goes to the backend's webhook only: the test checks it arrived there) and
// unsubscribed from; and a chat room (聊天室: `tr`) created with createChatRoom, joined and
// quit while messages are sent (the members there hear of each join and quit), counted
// (members online), with nothing stored; both found by anyone through the SDK's
// getServiceConversationQuery() and getChatRoomQuery(). LC_ADMIN_URL and LC_ADMIN_KEY name
// the admin API. See common.mjs for how it is run.

import { sdk, within, check, equal, next, sign, realtime, run, masterKey } from './common.mjs';

const { TextMessage, Event } = sdk;

async function admin(method, path, body) {
  const r = await fetch(`${process.env.LC_ADMIN_URL}${path}`, {
    method,
    headers: { authorization: `Bearer ${process.env.LC_ADMIN_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const json = await r.json();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(json)}`);
  return json;
}

/** A typed text message as the backend writes it, so the SDK reads a TextMessage. */
const broadcast = (id, text) => admin('POST', `/v1/system-conversations/${id}/messages?by=news`, {
  text: JSON.stringify({ _lctype: -1, _lctext: text }),
});

/** Counts the messages a client receives in a conversation from now on. */
function counter(client, cid) {
  const got = [];
  client.on(Event.MESSAGE, (m, c) => { if (c.id === cid) got.push(m.getText()); });
  return got;
}

async function main() {
  const rt = realtime();
  const open = (id) => within(rt.createIMClient(id, { signatureFactory: sign(masterKey) }), `${id} opens`);
  const alice = await open('alice');
  const bob = await open('bob');
  const carol = await open('carol');

  // System conversation.
  const created = await admin('POST', '/v1/system-conversations?by=news', { name: 'News' });
  const listed = await within(carol.getServiceConversationQuery().find(), 'carol looks for system conversations');
  equal(listed.map((c) => c.id), [created.id], 'getServiceConversationQuery() finds it without its id');
  check(listed[0] instanceof sdk.ServiceConversation, 'as a ServiceConversation');
  const sys = await within(alice.getConversation(created.id), 'alice finds the system conversation');
  check(sys instanceof sdk.ServiceConversation, 'it is a ServiceConversation (sys)');
  equal(sys.name, 'News', 'with its name');
  await within(sys.subscribe(), 'alice subscribes');
  const heard = next(alice, Event.MESSAGE, 'alice receives the broadcast');
  await broadcast(created.id, 'v1.0 is out');
  const [message, where] = await heard;
  equal([message.getText(), message.from, where.id], ['v1.0 is out', 'news', created.id], 'the broadcast reaches the subscriber');
  const history = await within(sys.queryMessages({ limit: 10 }), 'history');
  equal(history.map((m) => m.getText()), ['v1.0 is out'], 'and is stored as history');
  const bobSys = await within(bob.getConversation(created.id), 'bob finds it');
  await within(bobSys.subscribe(), 'bob subscribes');
  const bobGotSys = counter(bob, created.id);
  // A subscriber writes: acked, for the backend only (its webhook), not for other subscribers.
  const sent = await within(sys.send(new TextMessage('my order is late')), 'alice writes to it');
  check(typeof sent.id === 'string' && sent.id.length > 0, 'a subscriber\'s message is acked');
  console.log(`system-message ${sent.id}`);
  const after = await within(sys.queryMessages({ limit: 10 }), 'history again');
  equal(after.map((m) => m.getText()), ['v1.0 is out'], 'and is not stored in the conversation');
  await within(sys.unsubscribe(), 'alice unsubscribes');
  const aliceGot = counter(alice, created.id);
  const bobHeard = next(bob, Event.MESSAGE, 'bob receives the next broadcast');
  await broadcast(created.id, 'v1.1 is out');
  equal((await bobHeard)[0].getText(), 'v1.1 is out', 'a new subscriber gets broadcasts');
  equal(aliceGot, [], 'one who unsubscribed does not');
  equal(bobGotSys, ['v1.1 is out'], 'another subscriber never got alice\'s message');

  // Chat room.
  const room = await within(alice.createChatRoom({ name: 'lobby' }), 'alice creates a chat room');
  check(room instanceof sdk.ChatRoom, 'it is a ChatRoom (tr)');
  const rooms = await within(carol.getChatRoomQuery().find(), 'carol looks for chat rooms');
  equal(rooms.map((c) => c.id), [room.id], 'getChatRoomQuery() finds it without its id, and only rooms');
  check(rooms[0] instanceof sdk.ChatRoom, 'as a ChatRoom');
  const bobRoom = await within(bob.getConversation(room.id), 'bob finds the room');
  check(bobRoom instanceof sdk.ChatRoom, 'others see a ChatRoom too');
  const aliceHearsBob = next(room, Event.MEMBERS_JOINED, 'alice hears bob join');
  await within(bobRoom.join(), 'bob joins');
  const [{ members: joinedBob, invitedBy: bobBy }] = await aliceHearsBob;
  equal([joinedBob, bobBy], [['bob'], 'bob'], 'a join is told to the members there (members_joined)');
  const carolRoom = await within(carol.getConversation(room.id), 'carol finds the room');
  const bobHearsCarol = next(bobRoom, Event.MEMBERS_JOINED, 'bob hears carol join');
  await within(carolRoom.join(), 'carol joins');
  equal((await bobHearsCarol)[0].members, ['carol'], 'also to one who joined before');
  equal(await within(room.count(), 'count'), 3, 'count() is the members online');
  const bobGot = counter(bob, room.id);
  const carolHears = next(carol, Event.MESSAGE, 'carol receives');
  await within(room.send(new TextMessage('one')), 'alice sends one');
  equal((await carolHears)[0].getText(), 'one', 'a member receives');
  // bob quits between two sends; the others hear it.
  const carolHearsQuit = next(carolRoom, Event.MEMBERS_LEFT, 'carol hears bob quit');
  await within(bobRoom.quit(), 'bob quits');
  const [{ members: gone, kickedBy }] = await carolHearsQuit;
  equal([gone, kickedBy], [['bob'], 'bob'], 'a quit is told to the members there (members_left)');
  const carolHearsTwo = next(carol, Event.MESSAGE, 'carol receives two');
  await within(room.send(new TextMessage('two')), 'alice sends two');
  equal((await carolHearsTwo)[0].getText(), 'two', 'the members still in receive');
  equal(bobGot, ['one'], 'one who quit receives nothing after');
  equal(await within(room.count(), 'count again'), 2, 'the count follows');
  const stored = await within(room.queryMessages({ limit: 10 }), 'room history');
  equal(stored.length, 0, 'chat room messages are not stored');

  await Promise.all([alice.close(), bob.close(), carol.close()]);
}

run(main);
