// Alice's side of offline.mjs, run as its own process: `node as-alice.mjs <common args> <step>
// <args…>`. Prints one JSON line with what the other side needs.

import { sdk, within, sign, realtime, masterKey } from './common.mjs';

const { TextMessage } = sdk;
const [step, ...args] = process.argv.slice(7);

async function main() {
  const rt = realtime();
  const alice = await within(rt.createIMClient('alice', { signatureFactory: sign(masterKey) }), 'alice opens');
  let out;
  if (step === 'setup') {
    const team = await within(alice.createConversation({ members: ['bob'], name: 'team' }), 'create');
    const one = await within(team.send(new TextMessage('one')), 'send one');
    const two = await within(team.send(new TextMessage('two')), 'send two');
    // (SDK 5 makes conversations `unique` by default: this one must not be `team` again.)
    const leaving = await within(
      alice.createConversation({ members: ['bob'], name: 'leaving', unique: false }),
      'create',
    );
    const later = await within(alice.createConversation({ members: ['carol'], name: 'later' }), 'create');
    out = { team: team.id, one: one.id, two: two.id, leaving: leaving.id, later: later.id };
  } else if (step === 'add-dave') {
    const [team] = args;
    const conv = await within(alice.getConversation(team), 'alice gets the group');
    await within(conv.add(['dave']), 'add dave to the team');
    out = {};
  } else if (step === 'while-bob-is-away') {
    const [team, one, two, later, leaving] = args;
    const conv = await within(alice.getConversation(team), 'alice gets the group');
    const messages = await within(conv.queryMessages({ limit: 10 }), 'alice reads the history');
    const byId = (id) => {
      const m = messages.find((x) => x.id === id);
      if (!m) throw new Error(`no message ${id} in ${JSON.stringify(messages.map((x) => x.id))}`);
      return m;
    };
    await within(conv.update(byId(one), new TextMessage('one, edited')), 'edit one');
    await within(conv.recall(byId(two)), 'recall two');
    const laterConv = await within(alice.getConversation(later), 'alice gets another group');
    await within(laterConv.add(['bob']), 'add bob');
    const leavingConv = await within(alice.getConversation(leaving), 'alice gets a third group');
    await within(leavingConv.remove(['bob']), 'remove bob');
    // What the other members are told: carol joins the team, erin joins and leaves it, and
    // alice renames it.
    await within(conv.add(['carol', 'erin']), 'add carol and erin to the team');
    await within(conv.remove(['erin']), 'remove erin from the team');
    conv.name = 'team, renamed';
    await within(conv.save(), 'rename the team');
    // Group control the other members are told of: carol is muted and made a manager, and
    // mallory is put on the blacklist.
    await within(conv.muteMembers(['carol']), 'mute carol');
    await within(conv.updateMemberRole('carol', sdk.ConversationMemberRole.MANAGER), 'promote carol');
    await within(conv.blockMembers(['mallory']), 'block mallory');
    out = {};
  } else {
    throw new Error(`unknown step ${step}`);
  }
  await alice.close();
  console.log(JSON.stringify(out));
  process.exit(0);
}

main().catch((e) => {
  console.error(`FAILED: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
