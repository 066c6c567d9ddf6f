// Drives LeanCloud's unmodified JS realtime SDK's ConversationQuery against a tidings server:
// equality, members, comparisons, contains/startsWith/endsWith, sizes, sort, skip, limit,
// compact, the last message in rows, and what a non-member finds (any open group, not
// temporary conversations). See common.mjs for how it is run.

import { sdk, within, check, equal, sign, realtime, run, masterKey } from './common.mjs';

const names = (convs) => convs.map((c) => c.name);

async function main() {
  const rt = realtime();
  const open = (id) => within(rt.createIMClient(id, { signatureFactory: sign(masterKey) }), `${id} opens`);
  const alice = await open('alice');
  const carol = await open('carol');
  await within(alice.createConversation({ members: ['bob'], name: 'alpha', level: 1, unique: false }), 'alpha');
  await within(alice.createConversation({ members: ['carol'], name: 'beta', level: 2, unique: false }), 'beta');
  await within(alice.createConversation({ members: ['bob', 'carol'], name: 'gamma', level: 3, unique: false }), 'gamma');

  const q = () => alice.getQuery();
  equal(names(await within(q().equalTo('name', 'beta').find(), 'equalTo')), ['beta'], 'equalTo');
  equal(
    names(await within(q().containsMembers(['bob']).addAscending('name').find(), 'containsMembers')),
    ['alpha', 'gamma'],
    'containsMembers',
  );
  equal(names(await within(q().withMembers(['bob'], true).find(), 'withMembers')), ['alpha'], 'withMembers (exact set)');
  equal(
    names(await within(q().greaterThan('level', 1).addDescending('level').find(), 'greaterThan')),
    ['gamma', 'beta'],
    'greaterThan with a descending sort',
  );
  equal(names(await within(q().lessThanOrEqualTo('level', 1).find(), 'lte')), ['alpha'], 'lessThanOrEqualTo');
  equal(names(await within(q().startsWith('name', 'g').find(), 'startsWith')), ['gamma'], 'startsWith');
  equal(names(await within(q().contains('name', 'lph').find(), 'contains')), ['alpha'], 'contains');
  equal(names(await within(q().endsWith('name', 'ta').find(), 'endsWith')), ['beta'], 'endsWith');
  equal(
    names(await within(q().containedIn('name', ['alpha', 'gamma', 'delta']).addAscending('name').find(), 'in')),
    ['alpha', 'gamma'],
    'containedIn',
  );
  equal(names(await within(q().notEqualTo('name', 'alpha').addAscending('name').find(), 'ne')), ['beta', 'gamma'], 'notEqualTo');
  equal(names(await within(q().sizeEqualTo('m', 3).find(), 'size')), ['gamma'], 'sizeEqualTo on members');
  equal(
    names(await within(q().addAscending('name').skip(1).limit(1).find(), 'skip and limit')),
    ['beta'],
    'skip and limit',
  );
  const compact = await within(q().equalTo('name', 'gamma').compact(true).find(), 'compact');
  equal(compact.length, 1, 'compact finds the row');
  equal(compact[0].members, [], 'compact leaves the members out');

  // Rows carry the last message (lastMessage, lastMessageAt) for members.
  const [alicesBeta] = await within(q().equalTo('name', 'beta').find(), 'alice finds beta');
  const sent = await within(alicesBeta.send(new sdk.TextMessage('latest')), 'alice sends into beta');
  const [beta] = await within(carol.getQuery().equalTo('name', 'beta').withLastMessagesRefreshed(true).find(), 'carol finds beta');
  equal(beta.lastMessage && beta.lastMessage.getText(), 'latest', 'a member\'s row carries the last message');
  equal(beta.lastMessage.id, sent.id, 'with its id');
  check(beta.lastMessageAt instanceof Date, 'and lastMessageAt');
  // Anyone finds open groups without naming a member or an id (newest first); a
  // non-member's row says when the last message was sent, not what it was.
  const dave = await open('dave');
  const all = await within(dave.getQuery().limit(100).find(), 'dave asks for everything');
  equal(names(all), ['gamma', 'beta', 'alpha'], 'a client in no conversation finds every open group, newest first');
  const [seen] = await within(dave.getQuery().equalTo('name', 'beta').find(), 'dave finds beta');
  check(seen.lastMessageAt instanceof Date, 'a non-member sees when the last message was sent');
  check(!seen.lastMessage, 'but not the message');
  const active = await within(dave.getQuery().addDescending('lm').limit(1).find(), 'dave sorts by activity');
  equal(names(active), ['beta'], 'so sort by lm works for non-members too');

  // A non-member finds open groups through a member they name, but only groups.
  const byBob = await within(carol.getQuery().containsMembers(['bob']).addAscending('name').find(), 'carol asks');
  equal(names(byBob), ['alpha', 'gamma'], 'a non-member finds open groups by their members');
  const temp = await within(alice.createTemporaryConversation({ members: ['bob'], ttl: 600 }), 'temporary');
  const notTemp = await within(carol.getQuery().equalTo('objectId', temp.id).find(), 'carol looks for the temporary one');
  equal(notTemp.length, 0, 'temporary conversations are never found by non-members');

  let bad = null;
  try {
    await carol.getQuery().matches('name', /(a|b)/).find();
  } catch (e) {
    bad = e;
  }
  check(bad !== null, 'an unsupported regex is refused, not answered wrongly');
  await within(alice.close(), 'alice closes');
  await within(carol.close(), 'carol closes');
  await within(dave.close(), 'dave closes');
}

run(main);
