// Verifies webhook deliveries with `standardwebhooks`, an implementation of the Standard
// Webhooks specification independent of tidings. Reads one JSON object per line on stdin:
// {"secret": "whsec_…", "headers": {"webhook-id": …, "webhook-timestamp": …,
// "webhook-signature": …}, "body": "…"}; prints "ok" or "bad: <why>" per line.
import { Webhook } from 'standardwebhooks';
import { createInterface } from 'node:readline';

for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const { secret, headers, body } = JSON.parse(line);
  try {
    new Webhook(secret).verify(body, headers);
    console.log('ok');
  } catch (e) {
    console.log(`bad: ${e.message}`);
  }
}
