// Drives LeanCloud's unmodified JS realtime SDK against a tidings server.
//
// Opening clients, creating conversations, typed messages, mentions, history, temporary
// conversations, online status and counts, a refused signature. See common.mjs for how it is run.

import { sdk, within, check, equal, next, sign, realtime, run, masterKey } from './common.mjs';

const { TextMessage, Event } = sdk;

async function main() {
  // One Realtime per app and process (the SDK refuses a second): every client shares its
  // socket, as apps' clients do.
  const shared = realtime();
  const alice = await within(
    shared.createIMClient('alice', { signatureFactory: sign(masterKey) }),
    'alice opens',
  );
  const bob = await within(
    shared.createIMClient('bob', { signatureFactory: sign(masterKey) }),
    'bob opens',
  );
  check(alice.id === 'alice' && bob.id === 'bob', 'two clients open on one socket');

  // A conversation: the invitee gets the create event.
  const invited = next(bob, Event.INVITED, 'bob is invited');
  const conv = await within(
    alice.createConversation({ members: ['bob'], name: 'demo', unique: true, color: 'red' }),
    'create',
  );
  const [payload, invitedConv] = await invited;
  equal(payload.invitedBy, 'alice', 'the create event names who invited');
  equal(invitedConv.id, conv.id, 'the create event names the conversation');
  equal(invitedConv.name, 'demo', 'the invitee fetches the name');
  equal(invitedConv.get('color'), 'red', 'and the custom attribute');
  check([...invitedConv.members].sort().join() === 'alice,bob', 'and the members');

  // unique: the same pair gets the same conversation.
  const again = await within(
    bob.createConversation({ members: ['alice'], unique: true }),
    'create again',
  );
  equal(again.id, conv.id, 'a unique conversation of the same members is the same one');
  const renamed = await within(
    bob.createConversation({ members: ['alice'], unique: true, name: 'demo, renamed' }),
    'create again with a new name',
  );
  equal(renamed.id, conv.id, 'with a new name it is still the same one');
  const refetched = await within(alice.getConversation(conv.id, true), 'alice refetches it');
  equal(refetched.name, 'demo, renamed', 'and the new name renames it');
  equal(refetched.get('color'), 'red', 'keeping its attributes');

  // A typed text message, acked and pushed.
  const received = next(bob, Event.MESSAGE, 'bob receives');
  const sent = await within(conv.send(new TextMessage('hello 1')), 'send');
  check(typeof sent.id === 'string' && sent.id.length > 0, 'a sent message gets its id');
  check(sent.timestamp instanceof Date, 'and its time');
  const [message] = await received;
  check(message instanceof TextMessage, 'the push is a typed text message');
  equal(message.getText(), 'hello 1', 'with its text');
  equal(message.id, sent.id, 'and the same id');
  equal(message.from, 'alice', 'and its sender');

  await within(conv.send(new TextMessage('hello 2')), 'send 2');
  await within(conv.send(new TextMessage('hello 3')), 'send 3');

  // History, both ways and with bounds.
  const bobConv = await within(bob.getConversation(conv.id), 'bob gets the conversation');
  const newest = await within(bobConv.queryMessages({ limit: 2 }), 'history');
  equal(newest.map((m) => m.getText()), ['hello 2', 'hello 3'], 'history: the newest, ascending');
  const older = await within(
    bobConv.queryMessages({ limit: 10, beforeTime: newest[0].timestamp, beforeMessageId: newest[0].id }),
    'older page',
  );
  equal(older.map((m) => m.getText()), ['hello 1'], 'history: the page before, by time and id');
  const forward = await within(
    bobConv.queryMessages({ limit: 10, startClosed: true, direction: sdk.MessageQueryDirection.OLD_TO_NEW, startTime: newest[0].timestamp, startMessageId: newest[0].id }),
    'forward page',
  );
  equal(forward.map((m) => m.getText()), ['hello 2', 'hello 3'], 'history: forward from an inclusive start');

  // Temporary conversations.
  const tempInvited = next(bob, Event.INVITED, 'bob is invited to the temporary one');
  const temp = await within(
    alice.createTemporaryConversation({ members: ['bob'], ttl: 3600 }),
    'create temporary',
  );
  check(temp.id.startsWith('_tmp:'), 'a temporary conversation id starts with _tmp:');
  check(temp.expiredAt instanceof Date && temp.expiredAt > new Date(), 'and expires later');
  const [, tempConv] = await tempInvited;
  equal(tempConv.id, temp.id, 'the invitee learns of the temporary conversation');
  const tempReceived = next(bob, Event.MESSAGE, 'bob receives in the temporary one');
  await within(temp.send(new TextMessage('temp hi')), 'temporary send');
  equal((await tempReceived)[0].getText(), 'temp hi', 'a message in the temporary conversation arrives');

  // Mentions: a list and @all reach the other members, stay in history, and mark the unread
  // count of a member who was away.
  const group = await within(alice.createConversation({ members: ['bob', 'carol'], name: 'all' }), 'create a group');
  const mentionedBob = next(bob, Event.MESSAGE, 'bob receives the mention');
  await within(group.send(new TextMessage('@all @bob').setMentionList(['bob']).mentionAll()), 'send @all');
  const [mention] = await mentionedBob;
  equal(mention.mentionList, ['bob'], 'the mention list arrives');
  equal(mention.mentionedAll, true, 'and @all');
  equal(mention.mentioned, true, 'so bob is mentioned');
  const [kept] = await within((await bob.getConversation(group.id)).queryMessages({ limit: 1 }), 'mention history');
  equal([kept.mentionList, kept.mentionedAll], [['bob'], true], 'history keeps both');

  // Presence and counts.
  const carol = await within(
    shared.createIMClient('carol', { signatureFactory: sign(masterKey) }),
    'carol opens',
  );
  // (The SDK emits the counts after fetching their conversations, a round trip after the
  // open resolves, so the listener is in place.)
  const [counted] = await next(carol, Event.UNREAD_MESSAGES_COUNT_UPDATE, 'carol hears her unread counts');
  const carolsGroup = counted.find((c) => c.id === group.id);
  equal(carolsGroup && [carolsGroup.unreadMessagesCount, carolsGroup.unreadMessagesMentioned], [1, true], 'an unread @all counts as a mention');
  equal((await within(carol.ping(['alice', 'bob', 'nobody']), 'ping')).sort(), ['alice', 'bob'], 'online status');
  equal(await within(conv.count(), 'count'), 2, 'member count');

  // A wrong signature is refused.
  let refused = null;
  try {
    await within(shared.createIMClient('mallory', { signatureFactory: sign('wrong-key') }), 'mallory');
  } catch (e) {
    refused = e;
  }
  check(refused && refused.code === 4102, `a wrong signature is refused with 4102 (${refused && refused.code})`);

  await within(carol.close(), 'carol closes');
  await within(alice.close(), 'alice closes');
  await within(bob.close(), 'bob closes');
}

run(main);
