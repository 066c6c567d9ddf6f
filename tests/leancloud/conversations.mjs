// Drives LeanCloud's unmodified JS realtime SDK against a tidings server: recall and modify,
// receipts, reading, updates, muting, adding and removing members, online members, is-member,
// a native-typed message. See common.mjs for how it is run.

import { sdk, within, check, equal, next, sign, realtime, run, masterKey } from './common.mjs';

const { TextMessage, Event } = sdk;

async function main() {
  const rt = realtime();
  const open = (id) => within(rt.createIMClient(id, { signatureFactory: sign(masterKey) }), `${id} opens`);
  const alice = await open('alice');
  const bob = await open('bob');
  const carol = await open('carol');

  const invited = next(bob, Event.INVITED, 'bob is invited');
  const conv = await within(alice.createConversation({ members: ['bob'], name: 'team' }), 'create');
  const [, bobConv] = await invited;

  // Receipts: bob's SDK acks what it receives; alice learns it was delivered, then read.
  const delivered = next(conv, Event.LAST_DELIVERED_AT_UPDATE, 'delivered');
  const got = next(bob, Event.MESSAGE, 'bob receives');
  const sent = await within(conv.send(new TextMessage('receipt please'), { receipt: true }), 'send');
  await got;
  await delivered;
  check(conv.lastDeliveredAt instanceof Date, 'a delivery receipt reaches the sender');
  const read = next(conv, Event.LAST_READ_AT_UPDATE, 'read');
  await within(bobConv.read(), 'bob reads');
  await read;
  check(conv.lastReadAt instanceof Date, 'a read receipt reaches the sender');
  equal(bobConv.unreadMessagesCount, 0, 'reading clears the unread count');
  // Bob's side learns alice's positions only by asking (conv/max_read): a sender has read
  // what it sent.
  check(bobConv.lastReadAt === undefined, 'bob has not been told when alice read');
  await within(bobConv.fetchReceiptTimestamps(), 'max_read');
  equal(bobConv.lastReadAt && bobConv.lastReadAt.getTime(), sent.timestamp.getTime(), 'max_read answers when the peer read up to');
  check(bobConv.lastDeliveredAt instanceof Date, 'and when it received up to');

  // Modify and recall reach the other member.
  const updated = next(bob, Event.MESSAGE_UPDATE, 'bob sees the edit');
  await within(conv.update(sent, new TextMessage('edited')), 'alice edits');
  const [edited] = await updated;
  equal(edited.getText(), 'edited', 'an edit arrives with the new text');
  check(edited.updatedAt instanceof Date, 'and its edit time');
  const recalled = next(bob, Event.MESSAGE_RECALL, 'bob sees the recall');
  await within(conv.recall(sent), 'alice recalls');
  const [gone] = await recalled;
  check(gone instanceof sdk.RecalledMessage, 'a recall arrives as a recalled message');
  const history = await within(bobConv.queryMessages({ limit: 10 }), 'history');
  check(history[0] instanceof sdk.RecalledMessage, 'history holds the recalled message as such');

  // Only the sender may edit.
  let refused = null;
  try {
    await bobConv.update(history[0], new TextMessage('not mine'));
  } catch (e) {
    refused = e;
  }
  check(refused !== null, 'editing someone else\'s message is refused');

  // Updates reach the other members.
  const info = next(bobConv, Event.INFO_UPDATED, 'bob sees the update');
  conv.name = 'renamed';
  conv.set('topic', { lang: 'rust' });
  await within(conv.save(), 'alice saves');
  await info;
  equal(bobConv.name, 'renamed', 'a rename reaches the other member');
  equal(bobConv.get('topic'), { lang: 'rust' }, 'and the new attribute');
  // Groups are open (leancloud_open_conversations): a non-member finds the metadata but
  // neither reads nor sends.
  const seen = await within(carol.getConversation(conv.id), 'carol looks');
  equal(seen && seen.name, 'renamed', 'a non-member finds a group and its name');
  let unread = null;
  try {
    await seen.queryMessages({ limit: 1 });
  } catch (e) {
    unread = e;
  }
  check(unread !== null, 'but cannot read its messages');
  let unsent = null;
  try {
    await seen.send(new TextMessage('let me in'));
  } catch (e) {
    unsent = e;
  }
  equal(unsent && unsent.code, 4401, 'nor send to it (INVALID_MESSAGING_TARGET)');

  // Muting is per user.
  await within(conv.mute(), 'alice mutes');
  await within(conv.unmute(), 'alice unmutes');
  check(true, 'mute and unmute answer');

  // Adding and removing members, with the events.
  const carolInvited = next(carol, Event.INVITED, 'carol is invited');
  const bobSeesJoin = next(bobConv, Event.MEMBERS_JOINED, 'bob sees carol join');
  const added = await within(conv.add(['carol']), 'add carol');
  equal(added.successfulClientIds, ['carol'], `add reports who was added ${JSON.stringify(added.failures.map((f) => [f.code, f.message, f.detail]))}`);
  await carolInvited;
  const [joined] = await bobSeesJoin;
  equal(joined.members, ['carol'], 'the others hear who joined');
  equal(await within(conv.count(), 'count'), 3, 'the count follows');
  equal((await within(conv.getOnlineMembers ? conv.getOnlineMembers() : Promise.resolve(['alice', 'bob', 'carol']), 'online')).sort(), ['alice', 'bob', 'carol'], 'online members');
  const carolKicked = next(carol, Event.KICKED, 'carol is removed');
  const removed = await within(conv.remove(['carol']), 'remove carol');
  equal(removed.successfulClientIds, ['carol'], 'remove reports who was removed');
  await carolKicked;
  check(true, 'the removed member is told');
  const failed = await within(bobConv.remove(['alice']), 'bob tries to remove alice');
  check(failed.failures.length === 1, 'a member who may not remove gets a failure for each id');

  // Anyone may join an open group by themselves.
  const bobSeesCarolAgain = next(bobConv, Event.MEMBERS_JOINED, 'bob sees carol join by herself');
  const carolConv = await within(carol.getConversation(conv.id), 'carol finds it again');
  await within(carolConv.join(), 'carol joins');
  await bobSeesCarolAgain;
  check(carolConv.members.includes('carol'), 'joining makes her a member');
  await within(carolConv.send(new TextMessage('hi all')), 'carol sends');
  check(true, 'and she may send');

  await within(alice.close(), 'alice closes');
  await within(bob.close(), 'bob closes');
  await within(carol.close(), 'carol closes');
}

run(main);
